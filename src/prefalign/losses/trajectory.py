"""Preference likelihoods for reward learning from trajectory segments.

Both of Knox et al.'s preference models are Bradley-Terry on a score of each segment; they differ
only in that score (partial return, or negated regret), which the trajectory family computes
(families/trajectory.py). So one reference-free objective serves both, and PEARL's Gaussian
reward feeds it a sampled return. Column 0 is the preferred segment, column 1 the other.
"""

from __future__ import annotations

import torch.nn.functional as F

from prefalign.losses.pairwise import require_pairs
from prefalign.losses.registry import objective
from prefalign.types import LossOut, SeqLogps


@objective("bradley_terry", kind="pairwise", paper="2206.02231", reference=False)
def bradley_terry(batch: SeqLogps, *, beta: float = 1.0) -> LossOut:
    """Bradley-Terry cross-entropy on segment scores: -log sigmoid(beta * (s_w - s_l)).

    Knox et al., "Models of human preference for learning reward functions", arXiv:2206.02231:
    with s = partial return sum_t r(s_t, a_t) it is the partial-return model; with
    s = -regret = sum_t A*_r(s_t, a_t) (the learned reward's optimal advantages) it is the regret
    model. PEARL's robust reward learning (arXiv:2306.03615) feeds it a reparameterised sample of
    a Gaussian return. No reference: s is the reward model's own score, not a log-ratio.
    beta = 1 is the papers' (the preference probability is sigmoid of the score difference).
    rewards: beta * s, [B, 2].
    """
    require_pairs(batch, "bradley_terry")
    s = batch.policy
    losses = -F.logsigmoid(beta * (s[:, 0] - s[:, 1]))
    return LossOut(losses, (beta * s).detach())
