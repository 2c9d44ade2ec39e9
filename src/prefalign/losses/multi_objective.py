"""Multi-objective objectives: one preference pair plus the margins of other, already-trained rewards.

Column 0 of every [B, 2] tensor is the chosen response, column 1 the rejected one (chosen and
rejected under the objective being learned directly from the preference data).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prefalign.losses.registry import objective
from prefalign.types import LossOut, SeqLogps


@objective("modpo", kind="multi_objective", paper="2310.03708", reference=True, features=("reward_margins",))
def modpo(batch: SeqLogps, *, beta: float = 0.1, weights: tuple[float, ...] = (0.5, 0.5)) -> LossOut:
    """Multi-Objective DPO: DPO on a weighted sum of the implicit reward and M other rewards.

    Zhou et al. 2023, "Beyond One-Preference-Fits-All Alignment: Multi-Objective Direct
    Preference Optimization", arXiv:2310.03708, the MODPO loss (Section 3):
        loss = -log sig( (1/w_1) (beta d - w_rest . (r_rest(w) - r_rest(l))) ),  d = h_w - h_l,
    the policy learning the objective with weight w_1 from this pair's labels while the other
    M objectives enter through their (frozen) reward models' margins. `weights` = (w_1, w_2, ...,
    w_{M+1}) (the paper's w, on the simplex, w_1 > 0); with weights = (1, 0, ..., 0) it is DPO.

    Feature: features["reward_margins"] [B, M] = r_rest(x, chosen) - r_rest(x, rejected), one
    column per other objective, in the order of weights[1:].
    h = summed policy - reference logps (reference = the SFT model, as in the paper).
    Shapes: policy, reference [B, 2]. rewards: beta * h [B, 2].
    extras: "margin_penalty" = batch mean of w_rest . margins / w_1.
    """
    if batch.policy.shape[1] != 2:
        raise ValueError(f"modpo needs exactly 2 responses per prompt, got {batch.policy.shape[1]}")
    margins = batch.feature("reward_margins").to(batch.policy.dtype)
    if margins.dim() != 2 or margins.shape[1] != len(weights) - 1:
        raise ValueError(
            f"modpo: weights {tuple(weights)} need reward_margins of shape [B, {len(weights) - 1}], "
            f"got {tuple(margins.shape)}"
        )
    if weights[0] <= 0:
        raise ValueError(f"modpo: the first weight (this pair's objective) must be > 0, got {weights[0]}")
    w_rest = torch.tensor(weights[1:], dtype=margins.dtype, device=margins.device)
    h = batch.logratio()
    penalty = margins @ w_rest / weights[0]
    logits = beta * (h[:, 0] - h[:, 1]) / weights[0] - penalty
    return LossOut(-F.logsigmoid(logits), (beta * h).detach(), {"margin_penalty": penalty.detach().mean()})
