"""An optional vLLM sampler (`pip install prefalign[vllm]`, a CUDA machine): the Sampler protocol on a
vLLM engine, with a log-prob check after every weight sync.

Users of other libraries hit stale or half-synced weights in colocated vLLM engines (trl#5312,
trl#6765) that silently sample from the wrong policy. Here `sync(model)` copies the policy's
weights into the engine and then scores a fixed probe (prompt + continuation token ids) with
both: if any token's log-prob differs by more than `tolerance`, it stops with the numbers
rather than sample from a policy that is not the one being trained. Samples keep vLLM's token
ids as drawn (no re-tokenising; no EOS added to a sample cut by max_new_tokens).

Not exercised by the test suite (no GPU or vLLM there): the probe check runs against any engine
object with the two methods it uses, which the tests supply.
"""

from __future__ import annotations

import torch

from prefalign.models.generation import GenerateSettings, fit_prompts
from prefalign.online.samplers import Sample, _check_prompts


class WeightSyncError(RuntimeError):
    pass


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The policy's full weights by the base model's parameter names; a LoRA adapter merged in."""
    if hasattr(model, "merge_adapter"):  # peft: merge, read, unmerge, so training continues on the adapter
        model.merge_adapter()
        try:
            state = {k.replace("base_model.model.", "", 1).replace(".base_layer", ""): v.detach().clone()
                     for k, v in model.state_dict().items() if "lora_" not in k}
        finally:
            model.unmerge_adapter()
        return state
    return {k: v.detach() for k, v in model.state_dict().items()}


@torch.no_grad()
def policy_probe_logps(model, prompt: list[int], continuation: list[int]) -> list[float]:
    """Each continuation token's log-prob given what precedes it, under an HF causal LM (float32)."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt + continuation], device=device)
    logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(continuation, device=device)[:, None])[:, 0].tolist()


def check_probe(engine_logps: list[float], policy_logps: list[float], tolerance: float) -> None:
    if len(engine_logps) != len(policy_logps):
        raise WeightSyncError(f"the probe has {len(policy_logps)} tokens but the engine scored {len(engine_logps)}")
    worst = max(abs(a - b) for a, b in zip(engine_logps, policy_logps))
    if worst > tolerance:
        raise WeightSyncError(f"after the weight sync the sampler's log-probs differ from the policy's by up to "
                              f"{worst:.4g} (tolerance {tolerance}) on the probe: it would sample from another "
                              f"policy. engine {engine_logps[:6]} vs policy {policy_logps[:6]}")


class VLLMSampler:
    """Samples with a vLLM `LLM` built from the policy's starting folder; `sync` loads new weights.

    `engine` may be given (an object with `generate(prompts, settings, seed) -> [(ids, finished)]`
    lists per prompt, `load_weights(state_dict)` and `probe_logps(prompt, continuation)`); by
    default a VLLMEngine is built from `model_path`."""

    def __init__(self, model, tokenizer, model_path: str | None = None, engine=None, probe: tuple | None = None,
                 tolerance: float = 1e-2, **engine_args):
        self.model, self.tokenizer, self.tolerance = model, tokenizer, tolerance
        self.engine = engine if engine is not None else VLLMEngine(model_path, **engine_args)
        # a fixed probe: a short prompt and continuation in the policy's own vocabulary
        self.probe = probe or (tokenizer("The quick brown fox", add_special_tokens=True)["input_ids"],
                               tokenizer(" jumps over the lazy dog.", add_special_tokens=False)["input_ids"])

    def sync(self, model) -> None:
        self.model = model
        self.engine.load_weights(merged_state_dict(model))
        was_training = model.training
        model.eval()
        check_probe(self.engine.probe_logps(*self.probe), policy_probe_logps(model, *self.probe), self.tolerance)
        model.train(was_training)

    def sample(self, prompts: list[list[int]], settings: GenerateSettings, seed: int) -> list[Sample]:
        _check_prompts(prompts)
        fitted, _ = fit_prompts(self.model, self.tokenizer, prompts, settings)
        drawn = self.engine.generate(fitted, settings, seed)
        eos = self.tokenizer.eos_token_id
        out = []
        for i, (prompt, rows) in enumerate(zip(fitted, drawn)):
            for k, (ids, finished) in enumerate(rows):
                ids = list(ids)
                if finished and (not ids or ids[-1] != eos):
                    finished = False  # stopped for another reason (a stop string): not an EOS
                out.append(Sample(list(prompt), ids, finished, i, k))
        return out


class VLLMEngine:
    """The vLLM calls VLLMSampler needs, in one place (vLLM's API moves between releases)."""

    def __init__(self, model_path: str, dtype: str = "float32", gpu_memory_utilization: float = 0.4,
                 max_model_len: int | None = None):
        try:
            from vllm import LLM
        except ImportError as err:
            raise ImportError("online.sampler=vllm needs vLLM on a CUDA machine: pip install 'prefalign[vllm]'") \
                from err
        self.llm = LLM(model=model_path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                       max_model_len=max_model_len, trust_remote_code=False, enable_prefix_caching=True)

    def params(self, settings: GenerateSettings, seed: int | None, n: int, **extra):
        from vllm import SamplingParams

        return SamplingParams(n=n, temperature=settings.temperature if settings.do_sample else 0.0,
                              top_p=settings.top_p, top_k=settings.top_k or -1, max_tokens=settings.max_new_tokens,
                              seed=seed, **extra)

    def generate(self, prompts: list[list[int]], settings: GenerateSettings, seed: int) -> list[list[tuple]]:
        from vllm.inputs import TokensPrompt

        # one seed per prompt, derived from the shard's: the same shard draws the same samples
        params = [self.params(settings, (seed + i) % (2**31), settings.num_return_sequences)
                  for i in range(len(prompts))]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return [[(o.token_ids, o.finish_reason == "stop") for o in out.outputs] for out in outputs]

    def load_weights(self, state: dict) -> None:
        executor = self.llm.llm_engine.model_executor
        worker = getattr(executor, "driver_worker", None)
        runner = getattr(getattr(worker, "worker", worker), "model_runner", None)
        if runner is None:
            raise WeightSyncError("this vLLM release does not expose the model runner prefalign syncs weights into")
        runner.model.load_weights(state.items())

    def probe_logps(self, prompt: list[int], continuation: list[int]) -> list[float]:
        from vllm.inputs import TokensPrompt

        settings = GenerateSettings(max_new_tokens=1, do_sample=False)
        out = self.llm.generate([TokensPrompt(prompt_token_ids=prompt + continuation)],
                                self.params(settings, 0, 1, prompt_logprobs=0), use_tqdm=False)[0]
        scored = out.prompt_logprobs[len(prompt):]
        return [float(pos[tok].logprob) for pos, tok in zip(scored, continuation)]
