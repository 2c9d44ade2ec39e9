"""Unpaired objectives: one response per example (K = 1) with a 0/1 desirability label in `target`."""

from __future__ import annotations

import torch

from prefalign.losses.registry import objective
from prefalign.types import LossOut, SeqLogps


def require_unpaired(batch: SeqLogps, name: str) -> None:
    if batch.policy.shape[1] != 1 or batch.target is None:
        raise ValueError(
            f"{name} is an unpaired objective: it needs one response per example ([B, 1]) and a 0/1 "
            f"desirability label in `target`; got K = {batch.policy.shape[1]}, target "
            f"{'missing' if batch.target is None else 'given'}"
        )


@objective("kto", kind="unpaired", paper="2402.01306", reference=True, features=("unpaired", "kl_logratio"),
           couples_batch=True)
def kto(batch: SeqLogps, *, beta: float = 0.1, desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0) -> LossOut:
    """Kahneman-Tversky Optimization: lambda_y - v(x, y) on unpaired desirable/undesirable data.

    Ethayarajh et al., "KTO: Model Alignment as Prospect Theoretic Optimization",
    arXiv:2402.01306, the KTO loss (eq. 8): r = log pi(y|x) - log pi_ref(y|x);
    v = lambda_D sig(beta (r - z0)) if y is desirable, lambda_U sig(beta (z0 - r)) if not;
    loss = lambda_y - v. desirable_weight = lambda_D, undesirable_weight = lambda_U (paper
    defaults beta = 0.1, lambda_D = lambda_U = 1; with n_D desirable and n_U undesirable
    examples the paper advises lambda_D n_D / (lambda_U n_U) in [1, 4/3]).
    Written as lambda_y sig(-beta s (r - z0)), s = +1 desirable / -1 undesirable: the same value
    as the paper's lambda_y - v (and as the lambda_y (1 - sig(.)) that the authors' and most
    library code writes), without the cancellation of 1 - sig(.) once sig(.) is near 1. It is
    not the -log sigmoid loss of the earlier paired "kto_pair" variant in some libraries.

    Shapes: policy, reference [B, 1] summed log-probs of (x_i, y_i); target [B, 1], 1 desirable,
    0 undesirable. The trainer must supply features["kl_logratio"]: either [B], entry i =
    logp_policy(y_j | x_i) - logp_ref(y_j | x_i) summed over y_j's tokens with j = (i + 1) mod B
    (each prompt paired with another example's completion; with B = 1 take a completion from
    elsewhere), or a 0-dim tensor already averaged (e.g. over all data-parallel ranks, as the
    authors' code does). Here z0 = max(0, mean) and is detached: the paper does not
    back-propagate through it.
    couples_batch: z0 is a batch mean, so one example's loss value depends on the others (not
    its gradient); with gradient accumulation, each micro-batch gets its own z0 unless the
    trainer supplies a step-wide scalar.
    rewards: beta * r, [B, 1]. extras: "kl" = z0.
    """
    require_unpaired(batch, "kto")
    logratio = batch.logratio()[:, 0]
    z0 = batch.feature("kl_logratio").to(logratio.dtype).mean().clamp(min=0).detach()
    # Built by arithmetic in logratio's dtype: torch.where on Python scalars would round the
    # weights through float32 even for float64 inputs.
    desirable = (batch.target[:, 0] > 0.5).to(logratio.dtype)
    sign = 2 * desirable - 1
    weight = desirable_weight * desirable + undesirable_weight * (1 - desirable)
    losses = weight * torch.sigmoid(-beta * sign * (logratio - z0))
    return LossOut(losses, (beta * batch.logratio()).detach(), {"kl": z0})
