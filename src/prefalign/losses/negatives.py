"""Objectives that learn from human negative samples only, anchored by self-generated samples.

Layout (kind "listwise": a ragged list per prompt, `valid` marks real entries): one human
dispreferred response and K self-generated samples per prompt, told apart by `target`:
target 0 = the human negative, target 1 = a self-generated sample. The suggested layout is
column 0 the negative and columns 1..K the samples, but only the marks matter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prefalign.losses.registry import objective
from prefalign.types import LossOut, SeqLogps


@objective("d2o", kind="listwise", paper="2403.03419", reference=True, features=("samples",))
def d2o(batch: SeqLogps, *, beta: float = 0.1, alpha: float = 0.1) -> LossOut:
    """Distributional Dispreference Optimization: samples' mean log-ratio over the negative's.

    Duan et al. 2024, "Negating Negatives: Alignment with Human Negative Samples via
    Distributional Dispreference Optimization", arXiv:2403.03419, the D2O loss (Section 3):
        loss = -log sig( (beta/K) sum_i log pi(y_i|x)/pi_r^-(y_i|x) - alpha log pi(y_l|x)/pi_r^+(y_l|x) ),
    y_i the K self-generated samples (the anchors), y_l the human negative.
    Reference models: the paper pairs each term with its own reference, pi_r^- for the samples
    and pi_r^+ for the negative; `batch.reference[b, k]` is the log-prob of entry k under the
    reference of its term, so the trainer supplies pi_r^- log-probs in sample columns and pi_r^+
    log-probs in the negative's column. With one reference model (e.g. the SFT model, the
    common offline setting) both are that model. We could not read the paper's text here to
    confirm how pi_r^+ and pi_r^- are built; the formula follows its published loss.
    Defaults beta = alpha = 0.1 are assumed (not confirmed from the paper). With K = 1 and
    alpha = beta it is DPO with the sample as chosen and the negative as rejected.

    Shapes: policy, reference, target, valid [B, 1 + K] (see the module docstring; one negative
    per prompt, several are averaged). h = summed policy - reference logps.
    rewards: beta * h [B, 1 + K] (0 at padding).
    extras: "sample_logratio", "negative_logratio" (batch means of the two mean log-ratios).
    """
    if batch.target is None:
        raise ValueError("d2o needs batch.target: 0 marks the human negative, 1 the self-generated samples")
    valid = batch.valid
    h = torch.where(valid, batch.logratio(), 0.0)
    sample, negative = valid & (batch.target > 0), valid & (batch.target <= 0)
    n_sample, n_negative = sample.sum(dim=1), negative.sum(dim=1)
    if not bool((n_sample > 0).all() and (n_negative > 0).all()):
        raise ValueError("d2o needs at least one sample (target 1) and one negative (target 0) per prompt")
    h_sample = torch.where(sample, h, 0.0).sum(dim=1) / n_sample
    h_negative = torch.where(negative, h, 0.0).sum(dim=1) / n_negative
    losses = -F.logsigmoid(beta * h_sample - alpha * h_negative)
    extras = {"sample_logratio": h_sample.detach().mean(), "negative_logratio": h_negative.detach().mean()}
    return LossOut(losses, (beta * h).detach(), extras)
