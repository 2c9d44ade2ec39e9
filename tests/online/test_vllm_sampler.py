"""The vLLM sampler's weight-sync check and sample handling, against an engine stand-in backed by a
second HF copy of the model (vLLM itself needs a GPU; the check is what matters here)."""

from __future__ import annotations

import copy

import pytest
import torch

from prefalign.models.causal_lm import add_lora, load_model
from prefalign.models.generation import GenerateSettings
from prefalign.online.vllm_sampler import (VLLMSampler, WeightSyncError, check_probe, merged_state_dict,
                                           policy_probe_logps)


class CopyEngine:
    """What VLLMSampler needs from an engine, on an HF model copy: load_weights can be made stale."""

    def __init__(self, model, stale: bool = False):
        self.model, self.stale = copy.deepcopy(model).eval(), stale

    def load_weights(self, state):
        if not self.stale:
            self.model.load_state_dict(state, strict=False)

    def probe_logps(self, prompt, continuation):
        return policy_probe_logps(self.model, prompt, continuation)

    def generate(self, prompts, settings, seed):
        # a scripted draw: token 5 repeated, ending with EOS on even prompts
        return [[([5, 5, 0] if i % 2 == 0 else [5, 5, 5], i % 2 == 0)] for i, _ in enumerate(prompts)]


def trained_copy(model):
    moved = copy.deepcopy(model)
    with torch.no_grad():  # a random change (a constant shift of every logit would leave the softmax as it was)
        moved.lm_head.weight.add_(torch.randn(moved.lm_head.weight.shape, generator=torch.Generator().manual_seed(0)))
    return moved


def test_sync_passes_when_the_engine_has_the_policy_weights(tiny_model_dir, tokenizer):
    start = load_model(str(tiny_model_dir))
    sampler = VLLMSampler(start, tokenizer, engine=CopyEngine(start))
    sampler.sync(trained_copy(start))  # the engine now holds the trained weights: probe agrees


def test_sync_stops_on_stale_weights(tiny_model_dir, tokenizer):
    start = load_model(str(tiny_model_dir))
    sampler = VLLMSampler(start, tokenizer, engine=CopyEngine(start, stale=True))
    with pytest.raises(WeightSyncError, match="differ from the policy's"):
        sampler.sync(trained_copy(start))


def test_check_probe_tolerance():
    check_probe([-1.0, -2.0], [-1.001, -2.0], 1e-2)
    with pytest.raises(WeightSyncError):
        check_probe([-1.0, -2.0], [-1.5, -2.0], 1e-2)
    with pytest.raises(WeightSyncError, match="tokens"):
        check_probe([-1.0], [-1.0, -2.0], 1e-2)


def test_merged_lora_state_matches_the_merged_model(tiny_model_dir):
    model = add_lora(load_model(str(tiny_model_dir)), r=4, alpha=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # a trained adapter (B starts at zero)
    state = merged_state_dict(model)
    reference = copy.deepcopy(model).merge_and_unload().state_dict()
    assert set(state) == set(reference)
    assert all(torch.allclose(state[k], reference[k]) for k in state)
    assert any("lora_" in n for n, _ in model.named_parameters())  # the adapter is still there to train


def test_samples_keep_ids_and_unfinished_rows_get_no_eos(tiny_model_dir, tokenizer):
    start = load_model(str(tiny_model_dir))
    sampler = VLLMSampler(start, tokenizer, engine=CopyEngine(start))
    samples = sampler.sample([[1, 7, 9], [1, 8]], GenerateSettings(max_new_tokens=3), seed=0)
    assert [s.response_ids for s in samples] == [[5, 5, 0], [5, 5, 5]]
    assert [s.finished for s in samples] == [tokenizer.eos_token_id == 0, False]
