"""KL(policy || reference) estimated from the policy's own samples.

For y ~ pi(.|x), E[log pi(y|x) - log ref(y|x)] = KL(pi || ref): the mean log-ratio over
sampled responses is an unbiased estimate (the log-ratio on the dataset's fixed responses is
not: those were not drawn from the policy).
"""

from __future__ import annotations

import torch

from prefalign.models.generation import GeneratedBatch, GenerateSettings, generate_batch
from prefalign.logging import progress_iter
from prefalign.logps import token_logps


def device_of(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def sampled_logprobs(policy, reference, tokenizer, prompts: list,
                     settings: GenerateSettings) -> tuple[GeneratedBatch, torch.Tensor, torch.Tensor]:
    """One batch of the policy's samples with their summed log pi(y|x) and log ref(y|x) [N] (on the CPU)."""
    b = generate_batch(policy, tokenizer, prompts, settings)
    # generate_batch returns CPU tensors; score them where each model lives
    sums = []
    for model in (policy, reference):
        d = device_of(model)
        sums.append(token_logps(model, b.ids.to(d), b.attention_mask.to(d), b.response_mask.to(d), "full")
                    .sum(1).float().cpu())
    return b, sums[0], sums[1]


def sampled_logratios(policy, reference, tokenizer, prompts: list,
                      settings: GenerateSettings) -> tuple[GeneratedBatch, torch.Tensor]:
    """One batch of the policy's samples and their summed log pi(y|x) - log ref(y|x) [N] (on the CPU)."""
    b, policy_sums, ref_sums = sampled_logprobs(policy, reference, tokenizer, prompts, settings)
    return b, policy_sums - ref_sums


@torch.no_grad()
def sample_kl(policy, reference, tokenizer, prompts: list[str], max_new_tokens: int = 48, seed: int = 0,
              batch_size: int = 8, max_prompt_tokens: int = 256, progress: bool = False) -> dict[str, float]:
    torch.manual_seed(seed)
    settings = GenerateSettings(max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens)
    values, truncated = [], 0
    for s in progress_iter(range(0, len(prompts), batch_size), "sample KL", enabled=progress):
        b, ratios = sampled_logratios(policy, reference, tokenizer, prompts[s:s + batch_size], settings)
        values += ratios.tolist()
        truncated += b.truncated
    t = torch.tensor(values)
    return {"kl": float(t.mean()), "kl_stderr": float(t.std() / len(values) ** 0.5) if len(values) > 1 else 0.0,
            "samples": len(values), "truncated_prompts": truncated}
