"""The bandit testbed of online alignment: one-token responses from a tiny model over a 12-token
vocabulary, so the policy at a prompt is an exact softmax and every optimum is computable.

The judge knows a reward R per token text; it compares with the Bradley-Terry link
P(a > b) = sigmoid(R(a) - R(b)), so the DPO/RLHF optimum is pi* = mu exp(R / beta) / Z.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

ARMS = ["a", "b", "c", "d", "e", "f"]
PROMPTS = ["q0", "q1", "q2", "q3"]
REWARD = {arm: 0.4 * i for i, arm in enumerate(ARMS)}  # prompt tokens and specials: 0


def reward(text: str) -> float:
    return REWARD.get(text.strip(), 0.0)


def compare(prompt, a, b) -> float:
    """The judge: P(a preferred over b) = sigmoid(R(a) - R(b))."""
    return 1.0 / (1.0 + math.exp(-(reward(a) - reward(b))))


def build_bandit(folder: Path, seed: int = 0, sharpen: float = 2.0) -> Path:
    """A 1-layer Llama over the 12-token vocabulary, its head scaled so mu is far from uniform."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<eos>": 0, "<bos>": 1, **{p: 2 + i for i, p in enumerate(PROMPTS)},
             **{a: 2 + len(PROMPTS) + i for i, a in enumerate(ARMS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<eos>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32, bos_token_id=1,
                         eos_token_id=0, pad_token_id=0, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    model.save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    return folder


def write_prompts(path: Path, prompts: list[str] = PROMPTS) -> Path:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


# two domains for the cross-domain checks: q0, q1 prefer later arms, q2, q3 earlier ones
DOMAIN_A, DOMAIN_B = ["q0", "q1"], ["q2", "q3"]


def domain_reward(prompt: str, text: str) -> float:
    r = reward(text)
    return REWARD[ARMS[-1]] - r if prompt.strip() in DOMAIN_B and text.strip() in REWARD else r


def compare_domains(prompt, a, b) -> float:
    """The two-domain judge: Bradley-Terry on domain_reward."""
    return 1.0 / (1.0 + math.exp(-(domain_reward(prompt, a) - domain_reward(prompt, b))))


@torch.no_grad()
def distributions(model, tokenizer) -> torch.Tensor:
    """[prompts, vocab] next-token probabilities at each prompt (float64)."""
    model.eval()
    out = []
    for p in PROMPTS:
        ids = torch.tensor([tokenizer(p)["input_ids"]])
        out.append(torch.softmax(model(input_ids=ids).logits[0, -1].double(), -1))
    return torch.stack(out)


def token_rewards(tokenizer, prompt: str | None = None) -> torch.Tensor:
    """R of every token; with a prompt, that prompt's domain_reward."""
    texts = [tokenizer.decode([i], skip_special_tokens=True) for i in range(len(tokenizer))]
    values = [reward(x) if prompt is None else domain_reward(prompt, x) for x in texts]
    return torch.tensor(values, dtype=torch.float64)


def kl(p: torch.Tensor, q: torch.Tensor) -> float:
    """Mean over prompts of KL(p || q)."""
    return float((p * (p.log() - q.log())).sum(-1).mean())
