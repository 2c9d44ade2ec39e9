"""The only place a loss is reduced over examples.

Each micro-batch contributes sum(per_example) / examples_per_step, where examples_per_step is
what one process sees in one optimizer step (batch_size x accumulation). Data-parallel
all-reduce then averages over processes, so the gradient is the plain mean over every example
of the global step: batch 4 x accumulation 1 == batch 2 x accumulation 2 == 2 processes x
batch 2 (trl#2617: accumulation that silently rescales the loss).
"""

from __future__ import annotations

import torch


def reduce_loss(per_example: torch.Tensor, examples_per_step: int) -> torch.Tensor:
    if per_example.dim() != 1:
        raise ValueError(f"an objective must return per-example losses [B], got shape {tuple(per_example.shape)}")
    return per_example.sum() / examples_per_step
