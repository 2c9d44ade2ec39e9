"""Pairwise objectives that TRL's DPOTrainer offers as `loss_type`s: EXO, NCA, BCO, AOT, APO, DiscoPOP.

Each is written from its paper and checked against the behaviour TRL documents for the same
`loss_type` (prefalign.losses.trl_names maps TRL's names and parameters onto these). Column 0 of
every [B, 2] tensor is the chosen response, column 1 the rejected one; h = policy - reference
SUMMED response log-probs (no length normalisation), d = h_w - h_l.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from prefalign.losses.pairwise import require_pairs
from prefalign.losses.registry import objective
from prefalign.types import LossOut, SeqLogps

# Largest exponent discopop passes to exp(), as fdpo does: finite in float32 with room for beta.
_EXP_MAX = 50.0


@objective("exo_pair", kind="pairwise", paper="2402.00856", reference=True)
def exo_pair(batch: SeqLogps, *, beta: float = 0.1, epsilon: float = 1e-3) -> LossOut:
    """EXO on preference pairs: reverse KL from the policy's pair distribution to (1 - eps, eps).

    Ji et al., "Towards Efficient Exact Optimization of Language Model Alignment",
    arXiv:2402.00856, EXO with preference data (the K = 2 case of its objective, the equation TRL
    cites as eq. 16): the policy induces p_f = softmax(beta h) over {chosen, rejected}, i.e.
    q_w = sigmoid(z), q_l = sigmoid(-z) with z = beta d, and the preference label induces the target
    p = (1 - eps, eps). The loss is KL(p_f || p):
        q_w (log q_w - log(1 - eps)) + q_l (log q_l - log eps).
    Unlike DPO's forward KL (cross-entropy to (1, 0)), this is mode-seeking; its minimum, 0, is at
    z = log((1 - eps) / eps) (a finite margin), and as z -> +inf it tends to -log(1 - eps) ~ eps.
    eps = 0 makes the target degenerate (log 0), so 0 < epsilon < 1 is required. Default
    eps = 1e-3, the value TRL's documentation attributes to the paper; the authors' release
    (haozheji/exact-optimization, src/align_stage/loss.py) instead uses the unnormalised target
    log-probabilities (0, -10), i.e. eps ~ e^-10 = 4.5e-5. beta = 0.1 is TRL's default (the
    paper's recommended beta_pi could not be confirmed here).
    Shapes: policy, reference [B, 2]. rewards: beta * h, [B, 2].
    """
    require_pairs(batch, "exo_pair")
    if not 0.0 < epsilon < 1.0:
        raise ValueError(f"exo_pair needs 0 < epsilon < 1 (the rejected response's target probability), got {epsilon}")
    h = batch.logratio()
    z = beta * (h[:, 0] - h[:, 1])
    # sigmoid(.) * logsigmoid(.) stays finite at any z: the product tends to 0 where sigmoid does
    losses = (torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-epsilon))
              + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(epsilon)))
    return LossOut(losses, (beta * h).detach())


@objective("nca_pair", kind="pairwise", paper="2402.05369", reference=True)
def nca_pair(batch: SeqLogps, *, beta: float = 0.01) -> LossOut:
    """NCA on preference pairs: -log sig(r_w) - 1/2 log sig(-r_w) - 1/2 log sig(-r_l), r = beta h.

    Chen et al., "Noise Contrastive Alignment of Language Models with Explicit Rewards",
    arXiv:2402.05369, NCA (noise contrastive estimation) with hard pairwise labels: each response's
    reward r = beta h is classified against noise on its own, the chosen one as data with weight 1,
    and both as noise with weight 1/K = 1/2. Unlike DPO (pairwise InfoNCA), which only sees r_w - r_l,
    this pins absolute rewards: the chosen response's likelihood is pushed up, not only the margin.
    The formula matches the authors' release (thu-ml/Noise-Contrastive-Alignment,
    preference_trainer.py, loss_type "NCA") and TRL's nca_pair; the paper's equation number could not
    be read here. beta = 0.01 follows the authors' recipe (yamls/preference_qlora.yaml); TRL's
    default is 0.1.
    Shapes: policy, reference [B, 2]. rewards: beta * h, [B, 2].
    """
    require_pairs(batch, "nca_pair")
    h = batch.logratio()
    r = beta * h
    losses = -F.logsigmoid(r[:, 0]) - 0.5 * F.logsigmoid(-r[:, 0]) - 0.5 * F.logsigmoid(-r[:, 1])
    return LossOut(losses, r.detach())


@objective("bco_pair", kind="pairwise", paper="2404.04656", reference=True, couples_batch=True)
def bco_pair(batch: SeqLogps, *, beta: float = 0.1, reward_shift: float | str = "batch_mean") -> LossOut:
    """BCO on preference pairs: -log sig(r_w - delta) - log sig(-(r_l - delta)), r = beta h.

    Jung et al., "Binary Classifier Optimization for Large Language Model Alignment",
    arXiv:2404.04656: train a binary classifier whose logit is the implicit reward r = beta h,
    chosen responses labelled 1 and rejected 0; its binary cross-entropy bounds the DPO loss from
    above, and shifting the rewards by delta (the paper's reward shift, an average of the rewards)
    tightens that bound. Here each pair contributes one positive and one negative example.
    The paper's density-ratio weighting for unpaired data (underlying distribution matching) is
    not included.

    `reward_shift` is how delta is obtained; it is detached (no gradient), as in the paper:
      "batch_mean" (default): the mean of the 2B rewards beta h of this micro-batch. The paper and
          TRL's DPOTrainer from April 2024 to February 2026 keep a RUNNING mean over training
          steps; a running mean is optimiser state that a pure loss cannot hold, so this uses the
          current batch's mean, a noisier estimate of the same average. It couples the examples of
          a micro-batch (couples_batch: one loss value depends on the others; batch_size >= 2).
      a number: delta itself, in reward units (after beta). 0.0 is TRL's bco_pair since its 2026
          DPO refactor, which dropped the shift.
    The paper's exact estimator of delta (which rewards it averages, and over how many steps)
    could not be read here. beta = 0.1 is TRL's default.
    Shapes: policy, reference [B, 2]. rewards: beta * h, [B, 2]. extras: "reward_shift" = delta.
    """
    require_pairs(batch, "bco_pair")
    h = batch.logratio()
    r = beta * h
    if reward_shift == "batch_mean":
        delta = r.detach().mean()
    elif isinstance(reward_shift, (int, float)) and not isinstance(reward_shift, bool):
        delta = torch.tensor(float(reward_shift), dtype=r.dtype, device=r.device)
    else:
        raise ValueError(f"bco_pair reward_shift must be 'batch_mean' or a number, got {reward_shift!r}")
    losses = -F.logsigmoid(r[:, 0] - delta) - F.logsigmoid(-(r[:, 1] - delta))
    return LossOut(losses, r.detach(), {"reward_shift": delta.detach()})


def _sorted_logistic(x: torch.Tensor, y: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """[B] smoothed logistic loss l(beta (x_(i) - y_(i))) between the i-th smallest of x and of y."""
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"aot needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    z = beta * (torch.sort(x).values - torch.sort(y).values)
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


@objective("aot", kind="pairwise", paper="2406.05882", reference=True, couples_batch=True)
def aot(batch: SeqLogps, *, beta: float = 0.1, label_smoothing: float = 0.0) -> LossOut:
    """AOT, paired: the policy's chosen/rejected log-likelihood ratio should dominate the reference's.

    Melnyk et al., "Distributional Preference Alignment of LLMs via Optimal Transport",
    arXiv:2406.05882, alignment via optimal transport for paired data: with
    u_i = log pi(y_w)/pi(y_l) and v_i = log pi_ref(y_w)/pi_ref(y_l) over the B pairs of a batch,
    first-order stochastic dominance of u over v is relaxed to a 1-D optimal transport with a
    smooth convex cost, whose solution matches sorted values: the loss of quantile i is
    l(beta (u_(i) - v_(i))), u_(i) and v_(i) the i-th smallest. Here l is the logistic loss with
    cDPO-style smoothing, l(z) = -(1 - eps) log sig(z) - eps log sig(-z), as TRL's aot uses; the
    paper's other costs (hinge, least squares) and its soft sorting are not included.
    Entry i of per_example is quantile i's loss, not pair i's: the trainer only sums them, so the
    batch loss is the paper's average over quantiles. With B = 1, or when the pairs' u and v sort
    alike, it is DPO (cDPO with eps). couples_batch: each value depends on the whole micro-batch
    (batch_size >= 2; a bigger batch is a finer estimate of the distributions). beta = 0.1 and
    label_smoothing = 0 are TRL's defaults (the paper's could not be confirmed here).
    Shapes: policy, reference [B, 2]. rewards: beta * h per pair (unsorted), [B, 2].
    """
    require_pairs(batch, "aot")
    h = batch.logratio()
    u = batch.policy[:, 0] - batch.policy[:, 1]
    v = (batch.reference[:, 0] - batch.reference[:, 1]).to(u.dtype)
    return LossOut(_sorted_logistic(u, v, beta, label_smoothing), (beta * h).detach())


@objective("aot_unpaired", kind="pairwise", paper="2406.05882", reference=True, couples_batch=True)
def aot_unpaired(batch: SeqLogps, *, beta: float = 0.1, label_smoothing: float = 0.0) -> LossOut:
    """AOT, unpaired: the chosen responses' rewards should dominate the rejected responses' rewards.

    Melnyk et al., arXiv:2406.05882 (see `aot`), alignment via optimal transport for unpaired
    data: the chosen rewards h_w and the rejected rewards h_l of a batch are two samples of
    distributions, and the loss of quantile i is l(beta (h_w(i) - h_l(i))) between the i-th
    smallest of each; which rejected response came with which chosen one is ignored. As in TRL
    (its "aot_unpaired", named "aot_pair" before February 2026) the data are the usual pairs,
    column 0 giving the positive sample and column 1 the negative one. l is the smoothed logistic
    loss of `aot`; entry i of per_example is quantile i's loss. B = 1 gives DPO.
    couples_batch, defaults and what is left out: as for `aot`.
    Shapes: policy, reference [B, 2]. rewards: beta * h per pair (unsorted), [B, 2].
    """
    require_pairs(batch, "aot_unpaired")
    h = batch.logratio()
    return LossOut(_sorted_logistic(h[:, 0], h[:, 1], beta, label_smoothing), (beta * h).detach())


@objective("apo_zero", kind="pairwise", paper="2408.06266", reference=True)
def apo_zero(batch: SeqLogps, *, beta: float = 0.1) -> LossOut:
    """APO-zero: push the chosen log-ratio up and the rejected one down, each anchored at zero.

    D'Oosterlinck et al., "Anchored Preference Optimization and Contrastive Revisions: Addressing
    Underspecification in Alignment", arXiv:2408.06266, APO-zero (the equation TRL cites as
    eq. 7): loss = -sig(beta h_w) + sig(beta h_l) + 1, written here as sig(-beta h_w) + sig(beta h_l),
    in [0, 2] (the paper's form without the constant 1, which TRL adds; same gradient). For data
    whose chosen responses are better than the model's own outputs. At h = 0 it is 1 with
    gradient (-beta/4, +beta/4). beta = 0.1 is TRL's default (the paper's could not be confirmed).
    Shapes: policy, reference [B, 2]. rewards: beta * h, [B, 2].
    """
    require_pairs(batch, "apo_zero")
    h = batch.logratio()
    losses = torch.sigmoid(-beta * h[:, 0]) + torch.sigmoid(beta * h[:, 1])
    return LossOut(losses, (beta * h).detach())


@objective("apo_down", kind="pairwise", paper="2408.06266", reference=True)
def apo_down(batch: SeqLogps, *, beta: float = 0.1) -> LossOut:
    """APO-down: push the chosen log-ratio down, and the rejected one down more (margin up).

    D'Oosterlinck et al., arXiv:2408.06266, APO-down (the equation TRL cites as eq. 8):
    loss = sig(beta h_w) - sig(beta d) + 1, written here as sig(beta h_w) + sig(-beta d), in [0, 2]
    (the constant 1 is TRL's; same gradient). For data whose chosen responses are worse than the
    model's own outputs: the chosen likelihood falls, but the margin d still grows. At h = 0 it is
    1 with gradient (beta/4 - beta/4, beta/4) = (0, beta/4) in (h_w, h_l). beta = 0.1 is TRL's
    default (the paper's could not be confirmed).
    Shapes: policy, reference [B, 2]. rewards: beta * h, [B, 2].
    """
    require_pairs(batch, "apo_down")
    h = batch.logratio()
    losses = torch.sigmoid(beta * h[:, 0]) + torch.sigmoid(-beta * (h[:, 0] - h[:, 1]))
    return LossOut(losses, (beta * h).detach())


@objective("discopop", kind="pairwise", paper="2406.08414", reference=True)
def discopop(batch: SeqLogps, *, beta: float = 0.1, tau: float = 0.05) -> LossOut:
    """DiscoPOP (log-ratio modulated loss): a sigmoid(rho/tau) blend of logistic and exponential losses.

    Lu et al., "Discovering Preference Optimization Algorithms with and for Large Language Models",
    arXiv:2406.08414, the discovered LRML objective (eq. 5): with rho = beta d and
    w = sigmoid(rho / tau),
        loss = (1 - w) * (-log sigmoid(rho)) + w * exp(-rho).
    Wrongly ordered pairs (rho << 0) get the logistic (DPO) loss, well-ordered ones (rho >> 0) the
    exponential loss; tau sets how sharp the switch is: tau -> 0 is a hard switch at rho = 0,
    tau -> inf an even mixture. tau = 0.05 is the paper's (and TRL's discopop_tau); beta = 0.1 is
    TRL's default (the paper's beta for its main runs could not be confirmed here). Also in the
    authors' release (luchris429/DiscoPOP, scripts/plotting/plot_losses.py).
    Not convex: at rho = 0 (policy = reference) d loss / d rho = (1 - ln 2) / (4 tau) - 3/4, which
    is +0.78 at tau = 0.05, so training from the reference first pushes the margin DOWN, into a
    local minimum at rho = -0.12 (loss 0.786), below a bump at rho = +0.07 (0.878); past the bump
    the exponential term takes over. Only tau > (1 - ln 2)/3 = 0.102 pushes the margin up at rho = 0.
    Stability (a departure in form, not in value): w exp(-rho) is computed as
    exp(log sigmoid(rho/tau) - rho), which stays finite where exp(-rho) alone overflows
    (rho < -88 in float32, where the naive product is inf * 0 = nan); with tau >= 1 that exponent
    can still grow without bound as rho -> -inf, and is clamped at 50 (no gradient past it).
    Shapes: policy, reference [B, 2]. rewards: beta * h, [B, 2].
    """
    require_pairs(batch, "discopop")
    if tau <= 0:
        raise ValueError(f"discopop needs tau > 0, got {tau}")
    h = batch.logratio()
    rho = beta * (h[:, 0] - h[:, 1])
    logistic = -F.logsigmoid(rho)
    exponential = torch.exp((F.logsigmoid(rho / tau) - rho).clamp(max=_EXP_MAX))
    losses = torch.sigmoid(-rho / tau) * logistic + exponential
    return LossOut(losses, (beta * h).detach())
