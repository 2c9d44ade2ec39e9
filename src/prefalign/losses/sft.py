"""Supervised fine-tuning on the preferred response, as an objective like any other."""

from __future__ import annotations

import torch

from prefalign.losses.registry import objective
from prefalign.types import LossOut, SeqLogps


def best_column(batch: SeqLogps) -> torch.Tensor:
    """[B] index of the preferred response: the highest target among valid entries."""
    target = batch.target if batch.target is not None else torch.zeros_like(batch.policy)
    masked = target.masked_fill(~batch.valid, float("-inf"))
    return masked.argmax(dim=1)


@objective("sft", kind="sft", paper="", reference=False, features=("lengths",))
def sft(batch: SeqLogps) -> LossOut:
    """Negative log-likelihood of the preferred response, averaged over its tokens.

    The per-token mean (not the sum) per example keeps long and short responses on one scale,
    as standard SFT does; the trainer then averages over examples.
    rewards: the policy's mean token log-prob of each response (no reference).
    """
    idx = best_column(batch).unsqueeze(1)
    per_token = batch.policy / batch.lengths().clamp(min=1)
    losses = -per_token.gather(1, idx).squeeze(1)
    return LossOut(losses, per_token.detach())
