"""Listwise objectives: B prompts x K responses, ragged (`batch.valid`), scored by `batch.target`.

`target[b, k]` is a score, higher is better (rewards, win rates or negated ranks). Padding
entries (`valid` False) never enter a loss; their policy/target values may be anything.

Ties. Two responses with equal scores are never compared with each other: every objective
here only contrasts a response with responses whose score is *strictly* lower. For the
Plackett-Luce objectives this means a tied response is left out of the other's normalising set
(order-independent; exactly Plackett-Luce when there are no ties); for LiPO-lambda a tied pair
has no term (its gain difference is 0 anyway).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prefalign.losses.registry import objective
from prefalign.types import LossOut, SeqLogps


def scores(batch: SeqLogps, name: str) -> torch.Tensor:
    """[B, K] target scores in the policy's dtype, 0 at padding (so padding never makes NaNs)."""
    if batch.target is None:
        raise ValueError(f"{name} needs scores in batch.target ([B, K], higher is better)")
    return torch.where(batch.valid, batch.target.to(batch.policy.dtype), 0.0)


def strictly_better(psi: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[B, K, K] bool: entry [b, i, j] is True when response i outscores response j (both real)."""
    both = valid.unsqueeze(2) & valid.unsqueeze(1)
    return both & (psi.unsqueeze(2) > psi.unsqueeze(1))


def best_index(psi: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[B] column of the highest-scored real response (the first one on ties)."""
    return psi.masked_fill(~valid, float("-inf")).argmax(dim=1)


def mean_logps(batch: SeqLogps) -> torch.Tensor:
    """[B, K] policy log-prob per response token, 0 at padding.

    Padding lengths are replaced before dividing: a 0 or NaN length there would otherwise send
    0/0 = NaN back through the division into the model's gradients.
    """
    lengths = torch.where(batch.valid, batch.lengths(), 1.0).clamp(min=1)
    return torch.where(batch.valid, batch.policy / lengths, 0.0)


def plackett_luce(s: torch.Tensor, better: torch.Tensor, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """[B] sum over stages k of log sum_{i in {k} + worse(k)} exp(m_ki s_i) - m_kk s_k.

    `scale` [B, K, K] holds the multipliers m_ki (1 for plain Plackett-Luce). The diagonal is
    always in the normalising set, so a stage without worse responses (the last one, padding)
    contributes exactly 0 and the logsumexp never sees an all -inf row (no NaN gradients).
    """
    k = s.shape[1]
    eye = torch.eye(k, dtype=torch.bool, device=s.device)
    logits = scale * s.unsqueeze(1).expand(-1, k, k)  # [B, stage k, item i]: m_ki * s_i
    lse = torch.logsumexp(logits.masked_fill(~(better | eye), float("-inf")), dim=2)
    return (lse - logits.diagonal(dim1=1, dim2=2)).sum(dim=1)


@objective("lipo_lambda", kind="listwise", paper="2402.01878", reference=True, features=("scores",))
def lipo_lambda(batch: SeqLogps, *, beta: float = 0.1) -> LossOut:
    """LiPO-lambda: LambdaLoss-weighted pairwise logistic loss over a scored list.

    Liu et al. 2024, "LiPO: Listwise Preference Optimization through Learning-to-Rank",
    arXiv:2402.01878, the LiPO-lambda objective (Section "LiPO-lambda"):
        loss = sum_{psi_i > psi_j} Delta_ij * log(1 + exp(-(s_i - s_j))),   s = beta * h,
        Delta_ij = |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|,  G = 2^psi - 1,  D(tau) = log2(1 + tau),
    tau_i the 1-based rank of response i under the current s (descending; equal s keep column
    order). Delta is a constant weight (detached), as in LambdaLoss.

    Shapes: policy, reference, target [B, K], valid [B, K]. h = summed policy - reference logps
    (no length normalisation). psi = target is used as given: the paper's labels are win-rate
    like values in [0, 1]; rescale large raw reward scores first (2^psi grows fast).
    With K = 2 and psi = (1, 0) the loss is (1 - 1/log2 3) * DPO, i.e. DPO up to a constant.
    rewards: beta * h [B, K] (0 at padding).
    """
    psi, valid = scores(batch, "lipo_lambda"), batch.valid
    s = torch.where(valid, beta * batch.logratio(), 0.0)
    order = s.detach().masked_fill(~valid, float("-inf")).argsort(dim=1, descending=True, stable=True)
    tau = order.argsort(dim=1).to(s.dtype) + 1.0
    inv_discount = 1.0 / torch.log2(1.0 + tau)
    gain = torch.pow(2.0, psi) - 1.0
    better = strictly_better(psi, valid)
    gain_gap = (gain.unsqueeze(2) - gain.unsqueeze(1)).abs()
    delta = gain_gap * (inv_discount.unsqueeze(2) - inv_discount.unsqueeze(1)).abs()
    # Zero the weight outside the compared pairs *before* multiplying, so no 0 * inf reaches backward.
    delta = torch.where(better, delta, 0.0)
    pair_losses = F.softplus(-(s.unsqueeze(2) - s.unsqueeze(1)))
    return LossOut((delta * pair_losses).sum(dim=(1, 2)), s.detach())


@objective("listwise_dpo", kind="listwise", paper="2402.01878", reference=True, features=("scores",))
def listwise_dpo(batch: SeqLogps, *, beta: float = 0.1) -> LossOut:
    """Plackett-Luce DPO (DPO_PL): the likelihood of the score order under s = beta * h.

    The Plackett-Luce form of DPO (Rafailov et al. 2023, arXiv:2305.18290, Appendix A.3), which
    LiPO (arXiv:2402.01878) names DPO_PL and uses as its listwise baseline:
        loss = - sum_k log( exp(s_(k)) / sum_{i >= k} exp(s_(i)) ),  responses ordered by target.
    Ties: a response's normalising set holds itself and the strictly lower-scored responses only
    (module docstring); without ties this is exactly Plackett-Luce, and with K = 2 it equals `dpo`.

    Shapes: policy, reference, target, valid [B, K]; h = summed policy - reference logps.
    rewards: beta * h [B, K] (0 at padding).
    """
    psi, valid = scores(batch, "listwise_dpo"), batch.valid
    s = torch.where(valid, beta * batch.logratio(), 0.0)
    return LossOut(plackett_luce(s, strictly_better(psi, valid)), s.detach())


@objective("pro", kind="listwise", paper="2306.17492", reference=False, features=("scores", "lengths"))
def pro(batch: SeqLogps, *, sft_weight: float = 0.05, dynamic_temperature: bool = True) -> LossOut:
    """Preference Ranking Optimization: reference-free Plackett-Luce on mean token log-probs + SFT.

    Song et al. 2023, "Preference Ranking Optimization for Human Alignment", arXiv:2306.17492:
    the PRO ranking loss over y^1 > ... > y^n (ordered by target), on the length-normalised score
    r(y) = logp(y) / |y|, with the dynamic temperatures of "Grafting RLHF onto PRO":
        L_PRO = - sum_k log( exp(r_k / T_k^k) / sum_{i >= k} exp(r_i / T_k^i) ),
        1/T_k^i = psi_k - psi_i (i > k),  1/T_k^k = max_{i > k} 1/T_k^i,
    where psi = target plays the reward model's score r_phi. Total loss L_PRO + beta_sft * NLL(y^1)
    with beta_sft = sft_weight * (n - 1)^2, n the number of real responses of the prompt (the
    paper's 0.05 (l - 1)^2). NLL(y^1) is the summed token NLL of the best response, as in the
    authors' release. `dynamic_temperature=False` gives the plain PRO loss (all T = 1).
    Equation numbers could not be pinned here; the form was cross-checked against the authors'
    release (AlibabaResearch/DAMO-ConvAI, PRO/train). Ties: see the module docstring (the
    release keeps tied candidates in the denominator with multiplier 0; we drop them).

    Shapes: policy, n_tokens, target, valid [B, K]; no reference.
    rewards: r = policy / n_tokens [B, K]; extras: "nll" (batch mean of NLL(y^1)).
    """
    psi, valid = scores(batch, "pro"), batch.valid
    r = mean_logps(batch)
    better = strictly_better(psi, valid)
    scale: torch.Tensor | float = 1.0
    if dynamic_temperature:
        gap = torch.where(better, psi.unsqueeze(2) - psi.unsqueeze(1), 0.0)  # 1 / T_k^i
        scale = gap + torch.diag_embed(gap.amax(dim=2))  # diagonal: 1 / T_k^k
    best = best_index(psi, valid).unsqueeze(1)
    nll = -batch.policy.gather(1, best).squeeze(1)
    n = valid.sum(dim=1).to(r.dtype)
    losses = plackett_luce(r, better, scale) + sft_weight * (n - 1) ** 2 * nll
    return LossOut(losses, r.detach(), {"nll": nll.detach().mean()})


@objective("sppo", kind="listwise", paper="2405.00675", reference=True, features=("samples", "scores"),
           beta_hint="eta = 1/beta plays beta's role: beta 0.001 is eta 1000")
def sppo(batch: SeqLogps, *, eta: float = 1000.0) -> LossOut:
    """Self-Play Preference Optimization: regress h(y) onto eta * (P_hat(y > pi_t) - 1/2).

    Wu et al. 2024, "Self-Play Preference Optimization for Language Model Alignment",
    arXiv:2405.00675, the SPPO loss of Section 4 / Algorithm 1 with log Z replaced by eta / 2:
        loss = sum_k ( h(y_k) - eta * (P_hat(y_k > pi_t | x) - 1/2) )^2,
    h = log pi_theta(y|x) - log pi_t(y|x): `batch.reference` holds the log-probs under pi_t, the
    policy of the previous iteration that sampled the responses.

    Data: the K responses of a prompt are samples from pi_t (ragged via `valid`); `target[b, k]`
    is the estimated win probability P_hat(y_k > pi_t | x) in [0, 1], e.g. the mean preference-
    model probability of y_k beating the prompt's other samples. The sum over the real samples
    gives every (x, y, P_hat) triple of the paper's dataset the same weight once the trainer
    averages over prompts (as `sppo_hard`; the authors' code averages a pair, i.e. half this).
    With K = 2 and P_hat = (1, 0) it equals `sppo_hard`. Default eta = 1000 is the authors'
    release (beta = 1e-3 with eta = 1 / beta).
    rewards: h / eta [B, K] (the implicit estimate of P_hat - 1/2; KL coefficient 1 / eta).
    """
    p_hat, valid = scores(batch, "sppo"), batch.valid
    h = torch.where(valid, batch.logratio(), 0.0)
    squared = torch.where(valid, (h - eta * (p_hat - 0.5)) ** 2, 0.0)
    return LossOut(squared.sum(dim=1), (h / eta).detach())


@objective("logo", kind="listwise", paper="2410.18533", reference=False, features=("scores", "lengths"))
def logo(batch: SeqLogps, *, beta: float = 10.0, gamma: float = 3.0, lam: float = 0.1) -> LossOut:
    """LOGO: reference-free preference of one response over the mean of M dispreferred, + SFT.

    Tang et al. 2024, "LOGO -- Long cOntext aliGnment via efficient preference Optimization",
    arXiv:2410.18533, the LOGO training objective (SimPO-style reward, several dis-preference
    instances, SFT regulariser weighted by lambda):
        loss = -log sig( r(y_w) - (1/M) sum_j r(y_l^j) - gamma ) + lam * NLL(y_w),
        r(y) = beta * logp(y) / |y|,   NLL(y_w) = -logp(y_w) / |y_w| (per-token mean).
    Data: y_w is the highest-scored real response (first on ties); the dispreferred are the real
    responses scored strictly lower (other responses tied with y_w are ignored); a prompt without
    any gets the SFT term only. Defaults are the authors' Llama-3 setting (beta = 10,
    gamma = 3 = 0.3 beta, lambda = 0.1, M = 2 in the paper). The equation number could not be
    pinned here; the form was cross-checked against the authors' release (ZetangForward/LCM_Stack).
    With M = 1 and lam = 0 it is SimPO.

    Shapes: policy, n_tokens, target, valid [B, K]; no reference.
    rewards: beta * logp / |y| [B, K]; extras: "nll" (batch mean of NLL(y_w)).
    """
    psi, valid = scores(batch, "logo"), batch.valid
    per_token = mean_logps(batch)
    r = beta * per_token
    best = best_index(psi, valid).unsqueeze(1)
    dispreferred = valid & (psi < psi.gather(1, best))
    n_dis = dispreferred.sum(dim=1)
    r_l = torch.where(dispreferred, r, 0.0).sum(dim=1) / n_dis.clamp(min=1)
    margin = r.gather(1, best).squeeze(1) - r_l - gamma
    preference = torch.where(n_dis > 0, F.softplus(-margin), 0.0)
    nll = -per_token.gather(1, best).squeeze(1)
    return LossOut(preference + lam * nll, r.detach(), {"nll": nll.detach().mean()})
