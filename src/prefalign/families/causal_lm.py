"""The causal-LM family: the existing language-model path seen through the family interface.

A thin wrapper, not a second implementation: batches are data.collate's, the score is the
summed response log-probs of models.causal_lm, and weights are written as the policy recipe
writes them. `prefalign train` keeps the full LM recipe (recipes/policy.py: references, LoRA,
precomputed log-probs, feature suppliers); this class says which objectives that recipe trains
and lets code written against any family (FamilyTrainee) score a language model too.
"""

from __future__ import annotations

from pathlib import Path

import torch

from prefalign.families.base import family
from prefalign.features import SUPPLIERS
from prefalign.losses.registry import KINDS
from prefalign.models.causal_lm import model_args, sequence_sums
from prefalign.train.checkpoint import load_weights, write_model
from prefalign.train.loop import make_batch


@family("causal_lm")
class CausalLMFamily:
    kinds = KINDS  # every kind: self_supervised objectives train in `prefalign online`
    supplies = tuple(SUPPLIERS)  # the LM recipe's feature suppliers (prefalign.features)

    def __init__(self, tokenizer=None, pad_multiple: int = 1):
        self.tokenizer, self.pad_multiple = tokenizer, pad_multiple

    def make_batch(self, examples: list, indices: list[int], split: str) -> dict:
        # the collated Batch travels whole; the keys FamilyTrainee and the loop read are lifted out of it
        batch = make_batch(examples, indices, self.tokenizer.pad_token_id, (), self.pad_multiple)
        return {"rows": batch, "attention_mask": batch.attention_mask, "target": batch.target, "valid": batch.valid}

    def score(self, module: torch.nn.Module, batch: dict, generator_seed: int) -> torch.Tensor:
        # deterministic: the seed is unused (a causal LM's log-likelihood is exact)
        rows = batch["rows"]
        sums, _ = sequence_sums(module(*model_args(rows)), rows)
        return sums

    def sample(self, module: torch.nn.Module, n: int, seed: int, prompt: str = "", max_new_tokens: int = 32) -> list:
        from prefalign.models.generation import GenerateSettings, generate

        settings = GenerateSettings(max_new_tokens=max_new_tokens, seed=seed, num_return_sequences=n)
        return generate(getattr(module, "model", module), self.tokenizer, [prompt], settings, progress=False)[0]

    def save(self, module: torch.nn.Module, folder: Path) -> None:
        write_model(getattr(module, "model", module), self.tokenizer, folder, getattr(module, "mask_head", None))

    def load(self, module: torch.nn.Module, folder: Path) -> None:
        load_weights(getattr(module, "model", module), folder)
