"""Pairwise objectives on (chosen, rejected) sequence log-probs: the K = 2 case.

Column 0 of every [B, 2] tensor is the chosen response, column 1 the rejected one.
"""

from __future__ import annotations

import torch.nn.functional as F

from prefalign.losses.registry import objective
from prefalign.types import LossOut, SeqLogps


def require_pairs(batch: SeqLogps, name: str) -> None:
    if batch.policy.shape[1] != 2:
        raise ValueError(
            f"{name} is a pairwise objective and needs exactly 2 responses per prompt, got "
            f"{batch.policy.shape[1]}; turn lists into pairs first (data.list_to_pairs)"
        )


@objective("dpo", kind="pairwise", paper="2305.18290", reference=True)
def dpo(batch: SeqLogps, *, beta: float = 0.1, label_smoothing: float = 0.0) -> LossOut:
    """Direct Preference Optimization: -log sigmoid(beta * (h_w - h_l)).

    Rafailov et al. 2023, arXiv:2305.18290, eq. 7; with `label_smoothing` eps > 0 it is
    conservative DPO (cDPO): -(1 - eps) ls(beta d) - eps ls(-beta d), i.e. the labels are
    assumed flipped with probability eps.

    h = policy - reference summed log-probs (no length normalisation); d = h_w - h_l.
    rewards: beta * h for chosen and rejected, [B, 2].
    """
    require_pairs(batch, "dpo")
    h = batch.logratio()
    logits = beta * (h[:, 0] - h[:, 1])
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return LossOut(losses, (beta * h).detach())
