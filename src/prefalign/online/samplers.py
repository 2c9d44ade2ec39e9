"""Samplers for online alignment: one protocol, token ids in and out, seeded per (seed, round, shard).

A sample keeps the exact token ids that were drawn, so training scores what was sampled: nothing is
re-tokenised and no EOS is appended to a sample that ran out of new tokens (`finished` says whether
EOS was emitted; a finished sample's response ends with it).

- HFSampler: the batched `generate` path of prefalign.models.generation.
- MixtureSampler: token-by-token decoding from softmax(sum_i w_i * log_softmax(logits_i / T)) with
  one KV cache per model. Weights (1 - b, b) give the geometric mixture pi^(1-b) mu^b of Nash-MD
  (arXiv 2312.00886), also used by IPO-MD (arXiv 2403.08635); weights (1 + a, -a) give APO's
  extrapolation pi_t (pi_t / pi_{t-1})^a in logit space (arXiv 2410.06293).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from dataclasses import dataclass
from typing import Protocol

import torch

from prefalign.models.generation import GenerateSettings, fit_prompts, generate_batch, left_pad


def sample_seed(seed: int, round: int, shard: int) -> int:
    """A 63-bit seed for one (seed, round, shard): the first 8 bytes of sha256("seed:round:shard").

    A fixed hash, not Python's hash() (salted per process), so every process and every run derives
    the same seed; different shards or rounds get unrelated seeds.
    """
    digest = hashlib.sha256(f"{int(seed)}:{int(round)}:{int(shard)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


@dataclass
class Sample:
    """One drawn response: the prompt ids it continues and the response ids, exactly as sampled."""

    prompt_ids: list[int]
    response_ids: list[int]  # ends with EOS iff finished; nothing appended otherwise
    finished: bool  # EOS emitted within max_new_tokens
    prompt_index: int  # which input prompt
    sample_index: int  # which of that prompt's num_return_sequences samples


class Sampler(Protocol):
    def sample(self, prompts: list[list[int]], settings: GenerateSettings, seed: int) -> list[Sample]:
        """`settings.num_return_sequences` samples per prompt, in prompt order; `seed` (see sample_seed)
        decides the draws, `settings.seed` is not used."""
        ...

    def sync(self, model) -> None:
        """Point the sampler at the current policy weights."""
        ...


def _check_prompts(prompts: list[list[int]]) -> None:
    for i, p in enumerate(prompts):
        if not isinstance(p, list) or not p or not all(isinstance(t, int) for t in p):
            raise ValueError(f"prompt {i}: a sampler takes a non-empty list of token ids")


class HFSampler:
    """Samples with the model's own `generate` (top_p, top_k and temperature as GenerateSettings says).

    `generate` draws from torch's global generator, so each call forks the global RNG state, seeds
    it with `seed` and restores it afterwards: the caller's random stream is left untouched.
    """

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def sync(self, model) -> None:
        # the sampler holds the live policy module, so there are no weights to copy
        self.model = model

    @torch.no_grad()
    def sample(self, prompts: list[list[int]], settings: GenerateSettings, seed: int) -> list[Sample]:
        _check_prompts(prompts)
        device = next(self.model.parameters()).device
        devices = [device] if device.type == "cuda" else []
        was_training = self.model.training
        self.model.eval()
        samples = []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for start in range(0, len(prompts), settings.batch_size):
                batch = generate_batch(self.model, self.tokenizer, prompts[start:start + settings.batch_size], settings)
                for row, (ids, attention, response) in enumerate(
                        zip(batch.ids, batch.attention_mask.bool(), batch.response_mask)):
                    samples.append(Sample(prompt_ids=ids[attention & ~response].tolist(),
                                          response_ids=ids[response].tolist(), finished=batch.finished[row],
                                          prompt_index=start + batch.prompt_index[row],
                                          sample_index=row % settings.num_return_sequences))
        self.model.train(was_training)
        return samples


def extrapolation_weights(alpha: float) -> list[float]:
    """APO in logit space (arXiv 2410.06293): pi_(t+1) ~ pi_hat_(t+1) (pi_hat_(t+1) / pi_t)^alpha is the
    mixture of (the trained iterate, the one before it) with weights (1 + alpha, -alpha)."""
    return [1.0 + float(alpha), -float(alpha)]


def previous_iterate(initial_model, round_dir, r: int):
    """APO in logit space: the policy at the start of round r - 1, frozen. The starting model for
    r = 1, else the policy round r - 2 ended with (round_dir(r - 2)/policy; in logit space no round
    extrapolates its weights, so that is pi_(r-1))."""
    import copy

    from prefalign.train.checkpoint import load_weights

    model = copy.deepcopy(initial_model)
    if r >= 2:
        load_weights(model, round_dir(r - 2) / "policy")
    return model.eval().requires_grad_(False)


def mixture_logprobs(logits: list[torch.Tensor], weights: list[float], temperature: float) -> torch.Tensor:
    """log softmax(sum_i w_i * log_softmax(logits_i / T)) over the last dimension, in float32."""
    total = sum(w * torch.log_softmax(x.float() / temperature, -1) for w, x in zip(weights, logits))
    return torch.log_softmax(total, -1)


@functools.lru_cache(maxsize=None)
def forward_params(model_class) -> frozenset:
    # looked up once per model class rather than on every decoding step of every model
    return frozenset(inspect.signature(model_class.forward).parameters)


def forward_last(model, ids, mask, positions, use_cache: bool, cache=None):
    """Last-position logits and the returned KV cache, across transformers versions: the cache
    argument and output are `cache` in recent releases, `past_key_values` before; only the last
    position's logits are computed where the model supports `logits_to_keep`."""
    params = forward_params(type(model))
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    if cache is not None:
        extra["cache" if "cache" in params else "past_key_values"] = cache
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=use_cache, **extra)
    new_cache = getattr(out, "cache", None) if "cache" in params else getattr(out, "past_key_values", None)
    if use_cache and new_cache is None:  # else every step would silently re-run the whole prefix
        raise ValueError(f"{type(model).__name__} returned no KV cache; use MixtureSampler(use_cache=False)")
    return out.logits[:, -1], new_cache


class MixtureSampler:
    """Samples from the normalised product of several models' next-token distributions, token by token.

    Each model keeps its own KV cache, so a step costs one new-token forward per model instead of
    re-running the whole prefix (`use_cache=False` does that; it is the reference path for tests and
    the benchmark). Weights (1 - b, b) over (policy, reference) give Nash-MD's geometric mixture
    (arXiv 2312.00886) and IPO-MD's (arXiv 2403.08635); (1 + a, -a) over (current, previous iterate)
    gives APO's extrapolation in logit space (arXiv 2410.06293). The models must share a vocabulary.
    Only temperature is applied (top_p / top_k are refused: the mixture is the distribution). Draws
    come from a CPU torch.Generator seeded with `seed`, so they do not depend on the device.
    """

    def __init__(self, models: list, weights: list[float], tokenizer, use_cache: bool = True):
        if len(models) != len(weights) or not models:
            raise ValueError(f"MixtureSampler needs one weight per model: {len(models)} models, {len(weights)} weights")
        self.models, self.weights = list(models), [float(w) for w in weights]
        self.tokenizer, self.use_cache = tokenizer, use_cache

    def sync(self, model) -> None:
        # the first model is the policy being trained; the others (reference, previous iterate) stay
        self.models[0] = model

    @torch.no_grad()
    def sample(self, prompts: list[list[int]], settings: GenerateSettings, seed: int) -> list[Sample]:
        _check_prompts(prompts)
        if settings.top_p < 1.0 or settings.top_k > 0:
            raise ValueError("MixtureSampler samples the full mixture: top_p must be 1.0 and top_k 0")
        if settings.do_sample and settings.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {settings.temperature}")
        generator = torch.Generator().manual_seed(seed)
        fitted, _ = fit_prompts(self.models[0], self.tokenizer, prompts, settings)
        n = settings.num_return_sequences
        rows = [(i, k) for i in range(len(fitted)) for k in range(n)]
        states = [m.training for m in self.models]
        for m in self.models:
            m.eval()
        samples = []
        for start in range(0, len(rows), settings.batch_size):
            chunk = rows[start:start + settings.batch_size]
            tokens, finished = self.decode([fitted[i] for i, _ in chunk], settings, generator)
            for (i, k), ids, done in zip(chunk, tokens, finished):
                samples.append(Sample(list(fitted[i]), ids, done, i, k))
        for m, training in zip(self.models, states):
            m.train(training)
        return samples

    def step_logits(self, model, ids, mask, positions, cache):
        """The next-token logits of one model, and its updated cache (None without a cache)."""
        if not self.use_cache:
            return forward_last(model, ids, mask, positions, use_cache=False)[0], None
        if cache is None:  # first step: the whole left-padded prompt fills the cache
            return forward_last(model, ids, mask, positions, use_cache=True)
        # later steps: only the newest token, attending (through the mask) to everything cached
        return forward_last(model, ids[:, -1:], mask, positions[:, -1:], use_cache=True, cache=cache)

    def decode(self, prompts: list[list[int]], s: GenerateSettings,
               generator: torch.Generator, steps: list | None = None) -> tuple[list[list[int]], list[bool]]:
        """Response ids (each cut after its first EOS) and finished flags for one left-padded batch.

        `steps`, when given, receives each step's mixture log-probs [batch, vocab] (for tests)."""
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        device = next(self.models[0].parameters()).device
        ids, mask = left_pad(prompts, pad)
        ids, mask = ids.to(device), mask.to(device)
        # positions count real tokens only, so a left-padded row sees the same positions as unpadded
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        caches = [None] * len(self.models)
        done = torch.zeros(len(prompts), dtype=torch.bool)
        drawn = []
        for _ in range(s.max_new_tokens):
            logits = []
            for j, model in enumerate(self.models):
                step, caches[j] = self.step_logits(model, ids, mask, positions, caches[j])
                logits.append(step)
            if len({x.shape[-1] for x in logits}) != 1:
                raise ValueError(f"the mixed models' vocabularies differ: {[x.shape[-1] for x in logits]}")
            logp = mixture_logprobs(logits, self.weights, s.temperature if s.do_sample else 1.0).cpu()
            if steps is not None:
                steps.append(logp)
            if s.do_sample:
                token = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
            else:
                token = logp.argmax(-1)
            token = torch.where(done, torch.full_like(token, pad), token)
            drawn.append(token)
            if eos is not None:
                done = done | (token == eos)
            ids = torch.cat([ids, token[:, None].to(device)], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            positions = torch.cat([positions, positions[:, -1:] + 1], 1)
            if bool(done.all()):
                break
        out, finished = [], []
        for row in torch.stack(drawn, 1).tolist():
            ended = eos is not None and eos in row
            out.append(row[:row.index(eos) + 1] if ended else row)
            finished.append(ended)
        return out, finished
