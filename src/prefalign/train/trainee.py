"""What the loop trains: the Trainee protocol, and the preference policy that implements it.

The loop (train/loop.py) knows a trainee only through this protocol; the reward model
(recipes/reward_model.py RewardTrainee) implements it too. A trainee owns how its examples become a batch,
the per-example loss, and how its weights are written to and read from a folder
(checkpoints, best/, final/). Evaluation is the loop's: the same make_batch and loss under
no_grad, with metric sums reduced across processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from prefalign.losses import Objective
from prefalign.train.checkpoint import load_weights, write_model
from prefalign.train.loop import make_batch
from prefalign.train.step import forward_batch, run_objective


class Trainee(Protocol):
    module: torch.nn.Module  # what the optimizer updates; prepared by accelerate (DDP-wrapped on several processes)

    def make_batch(self, examples: list, indices: list[int], split: str) -> dict:
        """Host tensors of examples[indices] with an `attention_mask`; split is "train" or "eval"."""

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Per-example losses [B] and metric sums of one micro-batch already on the device."""

    def save(self, folder: Path) -> None:
        """Write the trainable weights into `folder` (an existing, empty folder: callers make it atomic)."""

    def load(self, folder: Path) -> None:
        """Read weights written by `save` back in place (the optimizer keeps pointing at the same tensors)."""


class PolicyTrainee:
    """A causal LM policy trained by a registered objective against a reference."""

    def __init__(self, accelerator, module: torch.nn.Module, objective: Objective, objective_params: dict,
                 reference, tokenizer, pad_multiple: int = 1, features: tuple[str, ...] | None = None,
                 pack=None):
        self.accelerator, self.module, self.objective, self.params = accelerator, module, objective, objective_params
        self.reference, self.tokenizer, self.pad_multiple = reference, tokenizer, pad_multiple
        self.pack = pack  # packing.PackOptions: batches packed without padding, or None
        # the features whose suppliers add to each batch (precomputed reference values travel with the examples)
        self.features = tuple(objective.features if features is None else features)

    def make_batch(self, examples: list, indices: list[int], split: str):
        return make_batch(examples, indices, self.tokenizer.pad_token_id, self.features, self.pad_multiple, self.pack)

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        seq = forward_batch(self.module, batch, self.reference, self.objective)
        out, metrics = run_objective(self.objective, seq, self.params)
        return out.per_example, metrics

    def save(self, folder: Path) -> None:
        unwrapped = self.accelerator.unwrap_model(self.module)
        write_model(unwrapped.model, self.tokenizer, folder, unwrapped.mask_head)

    def load(self, folder: Path) -> None:
        from prefalign.models.causal_lm import load_mask_head

        unwrapped = self.accelerator.unwrap_model(self.module)
        load_weights(unwrapped.model, folder)
        if unwrapped.mask_head is not None:
            load_mask_head(folder, unwrapped.mask_head)
