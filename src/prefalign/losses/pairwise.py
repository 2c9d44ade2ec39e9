"""Pairwise objectives on (chosen, rejected) sequence log-probs: the K = 2 case.

Column 0 of every [B, 2] tensor is the chosen response, column 1 the rejected one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from prefalign.losses.registry import objective
from prefalign.types import LossOut, SeqLogps

# Largest exponent fdpo passes to exp(): exp(50) ~ 5e21 is finite in float32 (as are its products
# with beta and the gradient), and a log-ratio of 50 nats is far outside any useful training regime.
_EXP_MAX = 50.0


def require_pairs(batch: SeqLogps, name: str) -> None:
    if batch.policy.shape[1] != 2:
        raise ValueError(
            f"{name} is a pairwise objective and needs exactly 2 responses per prompt, got "
            f"{batch.policy.shape[1]}; turn lists into pairs first (data.list_to_pairs)"
        )


@objective("dpo", kind="pairwise", paper="2305.18290", reference=True,
           features_when=(("length_normalize", True, ("lengths",)),))
def dpo(batch: SeqLogps, *, beta: float = 0.1, label_smoothing: float = 0.0,
        length_normalize: bool = False) -> LossOut:
    """Direct Preference Optimization: -log sigmoid(beta * (h_w - h_l)).

    Rafailov et al. 2023, arXiv:2305.18290, eq. 7; with `label_smoothing` eps > 0 it is
    conservative DPO (cDPO): -(1 - eps) ls(beta d) - eps ls(-beta d), i.e. the labels are
    assumed flipped with probability eps.

    h = policy - reference summed log-probs (no length normalisation, the paper's); d = h_w - h_l.
    length_normalize=True divides each h by its response's token count (per-token MEAN log-ratios,
    needs n_tokens): the length-normalised DPO the SimPO paper (arXiv:2405.14734) compares against,
    TRL's loss_type "sigmoid_norm". A different objective: beta then acts on a per-token scale.
    rewards: beta * h for chosen and rejected (the h the loss used), [B, 2].
    """
    require_pairs(batch, "dpo")
    h = batch.logratio()
    if length_normalize:
        h = h / batch.lengths().clamp(min=1)
    logits = beta * (h[:, 0] - h[:, 1])
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return LossOut(losses, (beta * h).detach())


@objective("robust_dpo", kind="pairwise", paper="2403.00409", reference=True)
def robust_dpo(batch: SeqLogps, *, beta: float = 0.1, epsilon: float = 0.1) -> LossOut:
    """Robust DPO (rDPO): the DPO loss de-biased for labels flipped at rate epsilon.

    Chowdhury, Kini, Natarajan, "Provably Robust DPO: Aligning Language Models with Noisy
    Feedback", arXiv:2403.00409, the rDPO loss (Sec. 3): with l(z) = -log sigmoid(z),
    loss = ((1 - eps) l(beta d) - eps l(-beta d)) / (1 - 2 eps), an unbiased estimate of the
    clean-label DPO loss when each pair's label is flipped with probability eps < 1/2.
    Unlike cDPO (dpo's label_smoothing) the eps term enters with a minus sign, so the loss
    can be negative and decreases without bound as the margin grows; this is the paper's loss.
    epsilon = 0 gives DPO exactly. The paper treats eps as known: set it to the estimated flip
    rate of your data (the default 0.1 is illustrative, not a recommendation from the paper).

    h = policy - reference summed log-probs (no length normalisation); d = h_w - h_l.
    Shapes: policy, reference [B, 2] (chosen, rejected). rewards: beta * h, [B, 2].
    """
    require_pairs(batch, "robust_dpo")
    if not 0.0 <= epsilon < 0.5:
        raise ValueError(f"robust_dpo needs 0 <= epsilon < 0.5 (a flip rate), got {epsilon}")
    h = batch.logratio()
    logits = beta * (h[:, 0] - h[:, 1])
    losses = (-(1 - epsilon) * F.logsigmoid(logits) + epsilon * F.logsigmoid(-logits)) / (1 - 2 * epsilon)
    return LossOut(losses, (beta * h).detach())


@objective("ipo", kind="pairwise", paper="2310.12036", reference=True, features=("lengths",))
def ipo(batch: SeqLogps, *, beta: float = 0.1, length_normalize: bool = False) -> LossOut:
    """Identity Preference Optimisation: (h_w - h_l - 1/(2 beta))^2.

    Azar et al., "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", arXiv:2310.12036, the sampled IPO loss, eq. 17:
    (h_pi(y_w, y_l) - tau^-1 / 2)^2; `beta` is the paper's regulariser tau.

    Normalisation: by default (length_normalize=False) h = policy - reference SUMMED response
    log-probs, as in the paper. length_normalize=True uses per-token MEAN log-probs instead,
    h = policy/|y| - reference/|y| (the variant several libraries call "IPO"; it needs
    n_tokens), which keeps the target margin 1/(2 beta) on a per-token scale. The two are
    different objectives: report which one a run used.
    Shapes: policy, reference [B, 2] (chosen, rejected); n_tokens [B, 2] when normalising.
    rewards: beta * h with the h the loss used (summed or per-token), [B, 2].
    """
    require_pairs(batch, "ipo")
    h = batch.logratio()
    if length_normalize:
        h = h / batch.lengths().clamp(min=1)
    losses = (h[:, 0] - h[:, 1] - 1 / (2 * beta)) ** 2
    return LossOut(losses, (beta * h).detach())


@objective("hinge", kind="pairwise", paper="2309.06657", reference=True)
def hinge(batch: SeqLogps, *, beta: float = 0.1) -> LossOut:
    """SLiC / RSO hinge loss on the normalised likelihood margin: max(0, 1 - beta (h_w - h_l)).

    Liu et al., "Statistical Rejection Sampling Improves Preference Optimization" (RSO),
    arXiv:2309.06657, the "hinge-norm" loss of its unified framework (Sec. 3): the SLiC-HF
    calibration hinge applied to log-ratios against the SFT/reference policy,
    max(0, 1 - [gamma log pi(y_w)/pi_sft(y_w) - gamma log pi(y_l)/pi_sft(y_l)]).
    `beta` is the paper's gamma. Departure: the plain SLiC-HF hinge on raw policy log-probs
    (no reference) and its SFT regulariser are not included. The default 0.1 matches dpo's
    beta; we could not confirm a recommended gamma from the paper text.

    h = policy - reference summed log-probs (no length normalisation); d = h_w - h_l.
    Shapes: policy, reference [B, 2]. rewards: beta * h, [B, 2].
    """
    require_pairs(batch, "hinge")
    h = batch.logratio()
    losses = torch.relu(1 - beta * (h[:, 0] - h[:, 1]))
    return LossOut(losses, (beta * h).detach())


@objective("fdpo", kind="pairwise", paper="2309.16240", reference=True)
def fdpo(
    batch: SeqLogps, *, beta: float = 0.1, divergence: str = "reverse_kl", alpha: float = 0.5
) -> LossOut:
    """f-DPO: DPO under an f-divergence, -log sigmoid(beta (f'(u_w) - f'(u_l))), u = pi/pi_ref.

    Wang et al., "Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse
    Divergence Constraints", arXiv:2309.16240, the f-DPO objective (Sec. 4): the reward is
    beta f'(pi(y|x)/pi_ref(y|x)) up to a prompt constant, plugged into Bradley-Terry.
    divergence and f'(u), with h = log u:
      reverse_kl  f'(u) = log u + 1       -> exactly DPO (the constant cancels);
      forward_kl  f'(u) = -1/u = -exp(-h);
      js          f'(u) = log(2u/(1+u)) = log 2 + log sigmoid(h)  (computed in that stable form);
      alpha       f'(u) = (1 - u^-alpha)/alpha, alpha > 0 (the paper's convention: alpha -> 0
                  recovers reverse KL, alpha = 1 is forward KL shifted by 1; the paper
                  studies alpha in (0, 1); 0.5 here is a mid-range default).
    Overflow guard (a departure): exp() arguments are clamped at 50, so for a response whose
    log-ratio is below -50 (-50/alpha) the forward-KL / alpha term saturates and passes no
    gradient instead of overflowing to inf/nan.
    h = policy - reference summed log-probs. Shapes: policy, reference [B, 2].
    rewards: beta * h, [B, 2] (every f' here is increasing, so its ranking is that of h).
    """
    require_pairs(batch, "fdpo")
    h = batch.logratio()
    if divergence == "reverse_kl":
        fp = h
    elif divergence == "forward_kl":
        fp = -torch.exp((-h).clamp(max=_EXP_MAX))
    elif divergence == "js":
        fp = math.log(2.0) + F.logsigmoid(h)
    elif divergence == "alpha":
        if alpha <= 0:
            raise ValueError(f"fdpo alpha-divergence needs alpha > 0, got {alpha} (alpha -> 0 is reverse_kl)")
        fp = -torch.expm1((-alpha * h).clamp(max=_EXP_MAX)) / alpha
    else:
        raise ValueError(f"fdpo divergence must be reverse_kl, forward_kl, js or alpha, got {divergence!r}")
    losses = -F.logsigmoid(beta * (fp[:, 0] - fp[:, 1]))
    return LossOut(losses, (beta * h).detach())


@objective("simpo", kind="pairwise", paper="2405.14734", reference=False, features=("lengths",))
def simpo(batch: SeqLogps, *, beta: float = 2.0, gamma: float = 1.0) -> LossOut:
    """SimPO: -log sigmoid(beta logp_w/|w| - beta logp_l/|l| - gamma), reference-free.

    Meng, Xia, Chen, "SimPO: Simple Preference Optimization with a Reference-Free Reward",
    arXiv:2405.14734, eq. 6. `gamma` is the paper's target reward margin itself (not the
    gamma/beta ratio the authors' later configs tune). Defaults follow the authors'
    recommendation: beta = 2.0 and gamma/beta = 0.5 as a starting point, i.e. gamma = 1.0.

    Normalisation: per-token MEAN log-probs (logp / |y|), the length-normalised reward that
    defines SimPO; needs n_tokens. No reference model.
    Shapes: policy [B, 2] summed log-probs; n_tokens [B, 2].
    rewards: beta * logp / |y|, the paper's implicit reward, [B, 2].
    """
    require_pairs(batch, "simpo")
    r = beta * batch.policy / batch.lengths().clamp(min=1)
    losses = -F.logsigmoid(r[:, 0] - r[:, 1] - gamma)
    return LossOut(losses, r.detach())


@objective("cpo", kind="pairwise", paper="2401.08417", reference=False, features=("lengths",))
def cpo(batch: SeqLogps, *, beta: float = 0.1, lam: float = 1.0) -> LossOut:
    """Contrastive Preference Optimization: -log sigmoid(beta (logp_w - logp_l)) + lam * NLL(w).

    Xu et al., "Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance
    in Machine Translation", arXiv:2401.08417, the CPO objective (Sec. 3): the preference term
    is DPO with a uniform reference (the reference drops out), plus a behaviour-cloning NLL on
    the preferred response. The paper adds the two unweighted (lam = 1) with beta = 0.1; `lam`
    is exposed to weight the NLL (lam = 0 leaves reference-free DPO).

    Normalisation: the preference term uses SUMMED log-probs; the NLL is the chosen
    response's per-token MEAN (the token-averaged cross-entropy of the authors' training),
    averaged per example here so no example depends on another. Needs n_tokens.
    Shapes: policy [B, 2] (chosen, rejected); n_tokens [B, 2]. No reference model.
    rewards: beta * logp (summed), [B, 2]. extras: "nll" = mean chosen NLL per token.
    """
    require_pairs(batch, "cpo")
    nll = -batch.policy[:, 0] / batch.lengths()[:, 0].clamp(min=1)
    losses = -F.logsigmoid(beta * (batch.policy[:, 0] - batch.policy[:, 1])) + lam * nll
    return LossOut(losses, (beta * batch.policy).detach(), {"nll": nll.detach().mean()})


@objective("orpo", kind="pairwise", paper="2403.07691", reference=False, features=("lengths",),
           beta_hint="lam weights the odds-ratio term; TRL's ORPOConfig calls it beta",
           features_when=(("nll_tokens", "prompt_and_response", ("prompt_and_response_nll",)),))
def orpo(batch: SeqLogps, *, lam: float = 0.1, nll_tokens: str = "response") -> LossOut:
    """ORPO: NLL(w) - lam * log sigmoid(log odds(w) - log odds(l)), odds = p / (1 - p).

    Hong, Lee, Thorne, "ORPO: Monolithic Preference Optimization without Reference Model",
    arXiv:2403.07691, eq. 6 (L_SFT + lambda L_OR) with the odds-ratio loss of eq. 7;
    `lam` is the paper's lambda (0.1, as in the authors' Mistral-ORPO-beta recipe).

    Normalisation: p = exp(mean token log-prob) (the paper's length-normalised likelihood), so
    log odds = x - log(1 - e^x) with x = logp / |y|; log(1 - e^x) is computed as
    log(-expm1(x)) for x > -log 2 and log1p(-exp(x)) below it (no cancellation either side).
    x is clamped to <= -1e-6 (a departure): at p = 1 the odds are infinite. Needs n_tokens.
    No reference model.

    The SFT term's tokens (`nll_tokens`): "response" (default) is the chosen response's
    per-token mean NLL, as TRL's ORPOTrainer (huggingface/trl, trl/trainer/orpo_trainer.py:
    prompt labels masked). "prompt_and_response" is the authors' own choice: xfactlab/orpo
    (src/orpo_trainer.py, src/args.py) masks the prompt only under --disable_prompt_loss, which
    is off by default, so their NLL is the mean over the prompt and response tokens of the chosen
    sequence; that needs features["prompt_and_response_nll"] [B] (with grad). The odds ratio is
    over response tokens either way (their compute_logps). The trainer cannot supply that
    feature yet, so `prefalign train` refuses nll_tokens=prompt_and_response; pass the feature
    yourself through pairwise_loss.
    Shapes: policy [B, 2] summed log-probs; n_tokens [B, 2].
    rewards: log odds of each response, [B, 2] (their difference is the log odds ratio).
    extras: "nll" (mean SFT term per token), "log_odds_ratio" (mean).
    """
    require_pairs(batch, "orpo")
    if nll_tokens not in ("response", "prompt_and_response"):
        raise ValueError(f"orpo nll_tokens must be 'response' or 'prompt_and_response', got {nll_tokens!r}")
    x = (batch.policy / batch.lengths().clamp(min=1)).clamp(max=-1e-6)
    log_half = -math.log(2.0)
    log1m_p = torch.where(
        x > log_half,
        torch.log(-torch.expm1(x.clamp(min=log_half))),
        torch.log1p(-torch.exp(x.clamp(max=log_half))),
    )
    log_odds = x - log1m_p
    ratio = log_odds[:, 0] - log_odds[:, 1]
    if nll_tokens == "response":
        nll = -x[:, 0]
    else:
        nll = batch.feature("prompt_and_response_nll").to(x.dtype)
    losses = nll - lam * F.logsigmoid(ratio)
    extras = {"nll": nll.detach().mean(), "log_odds_ratio": ratio.detach().mean()}
    return LossOut(losses, log_odds.detach(), extras)


@objective("irepo", kind="pairwise", paper="2405.15230", reference=True, features=("soft_label",))
def irepo(batch: SeqLogps, *, beta: float = 0.1, label_clip: float = 1e-3) -> LossOut:
    """iREPO: regress the implicit reward difference on the logit of the empirical preference.

    Le et al., "iREPO: implicit Reward pairwise difference based Empirical Preference
    Optimization", arXiv:2405.15230: loss = (beta d - logit(p_hat))^2 with d = h_w - h_l and
    p_hat the empirical probability that the chosen response is preferred (annotator
    agreement or a judge's probability). Assumed form: the paper body could not be read
    here, so this is the squared regression of the project's PAPERS.md; an equation number is
    not cited. Under Bradley-Terry the optimum is beta d = logit(p), i.e. the DPO reward scale.
    Scaling: the other candidate reading, (d - logit(p_hat) / beta)^2, is this loss divided by
    beta^2: the same minimiser, and gradients smaller by 1/beta^2 (a learning-rate factor).
    Departure: p_hat is clipped to [label_clip, 1 - label_clip] so unanimous labels (p_hat = 1)
    give a finite target (logit(0.999) = 6.9).

    Feature: features["soft_label"] [B], float in [0, 1], P(chosen preferred) for the pair in
    columns (0, 1). h = policy - reference summed log-probs. Shapes: policy, reference [B, 2].
    rewards: beta * h, [B, 2].
    """
    require_pairs(batch, "irepo")
    h = batch.logratio()
    p = batch.feature("soft_label").to(h.dtype).clamp(label_clip, 1 - label_clip)
    losses = (beta * (h[:, 0] - h[:, 1]) - torch.logit(p)) ** 2
    return LossOut(losses, (beta * h).detach())


@objective("sppo_hard", kind="pairwise", paper="2405.00675", reference=True,
           beta_hint="eta = 1/beta plays beta's role: beta 0.001 is eta 1000")
def sppo_hard(batch: SeqLogps, *, eta: float = 1000.0) -> LossOut:
    """SPPO with hard labels: (h_w - eta/2)^2 + (h_l + eta/2)^2.

    Wu et al., "Self-Play Preference Optimization for Language Model Alignment",
    arXiv:2405.00675, the SPPO objective (Sec. 3, Algorithm 1):
    sum over sampled y of (log pi(y|x)/pi_t(y|x) - eta (P_hat(y > pi_t | x) - 1/2))^2, with
    the win probability replaced by the hard label (1 for chosen, 0 for rejected). Here the
    reference plays pi_t (the previous iterate). eta = 1000 as in the authors' pipeline
    (beta = 1/eta = 0.001). Departure: the two squares are summed (the paper's sum over y);
    the authors' code averages them, i.e. half this loss.

    h = policy - reference summed log-probs (no length normalisation).
    Shapes: policy, reference [B, 2] (chosen, rejected).
    rewards: h / eta, [B, 2] (1/eta plays beta; the targets are +-1/2).
    """
    require_pairs(batch, "sppo_hard")
    h = batch.logratio()
    losses = (h[:, 0] - eta / 2) ** 2 + (h[:, 1] + eta / 2) ** 2
    return LossOut(losses, (h / eta).detach())


@objective("selm", kind="pairwise", paper="2405.19332", reference=True, features=("ref_sample",))
def selm(batch: SeqLogps, *, beta: float = 0.01, alpha: float = 0.001) -> LossOut:
    """SELM: DPO plus the optimism term alpha * beta * h(y_ref), y_ref ~ pi_ref.

    Zhang et al., "Self-Exploring Language Models: Active Preference Elicitation for Online
    Alignment", arXiv:2405.19332, the SELM objective (Sec. 4): the bilevel optimistic reward
    objective with the reward reparameterised as beta log(pi/pi_ref) reduces to
    -log sigmoid(beta d) + alpha beta (log pi(y_ref|x) - log pi_ref(y_ref|x)), with y_ref a
    response sampled from the reference policy. The paper's exact equation could not be read
    here; the form follows the authors' release (shenao-zhang/SELM, scripts/selm_trainer.py,
    optimistic_dpo_loss) and so do the defaults: every released recipe uses beta = 0.01, with
    alpha = 0.001 (recipes/zephyr-selm and recipes/phi3-selm, selm_config_full.yaml) or 0.0001
    for Llama-3 (recipes/llama3-selm/selm_config_full.yaml, used by train_llama.sh); the
    trainer class's own beta = 0.1 is overridden by every recipe. alpha = 0 gives DPO.

    Features: features["ref_sample_logps"] [B] policy summed log-probs of y_ref (with grad)
    and features["ref_sample_reference_logps"] [B] its reference summed log-probs (the
    latter only shifts the value, not the gradient); offline, y_ref is the row field
    `ref_sample`, scored by the trainer as an extra row next to the pair. If y_ref is one of
    the pair (online data), pass that column's entries.
    h = policy - reference summed log-probs; d = h_w - h_l. Shapes: policy, reference [B, 2].
    rewards: beta * h, [B, 2]. extras: "optimism" = mean alpha beta h(y_ref).
    """
    require_pairs(batch, "selm")
    h = batch.logratio()
    h_ref = batch.feature("ref_sample_logps") - batch.feature("ref_sample_reference_logps")
    optimism = alpha * beta * h_ref.to(h.dtype)
    losses = -F.logsigmoid(beta * (h[:, 0] - h[:, 1])) + optimism
    return LossOut(losses, (beta * h).detach(), {"optimism": optimism.detach().mean()})


@objective("xpo", kind="pairwise", paper="2405.21046", reference=True, features=("ref_sample",))
def xpo(batch: SeqLogps, *, beta: float = 0.1, alpha: float = 1e-5) -> LossOut:
    """XPO: DPO plus the exploration bonus alpha * log pi(y_ref|x), y_ref ~ pi_ref.

    Xie et al., "Exploratory Preference Optimization: Harnessing Implicit Q*-Approximation for
    Sample-Efficient RLHF", arXiv:2405.21046, the policy update of Algorithm 1:
    argmin alpha sum log pi(y~|x) - sum log sigmoid(beta d), y~ sampled from pi_ref.
    Minimising alpha log pi(y_ref) lowers the likelihood of what the reference already
    produces, pushing the policy to explore. alpha = 0 gives (online) DPO. The default
    alpha = 1e-5 is TRL's (huggingface/trl, trl/trainer/xpo_config.py), not the paper's: the
    paper text could not be read here, and OAT's XPO (sail-sg/oat, XPOArgs.xpo_alpha) uses 5e-6.

    Feature: features["ref_sample_logps"] [B], the POLICY's summed log-probs of y_ref (with
    grad; y_ref is a sample from the reference policy: offline, the row field `ref_sample`,
    scored by the trainer as an extra row next to the pair). In the paper's online loop
    y_ref is also one member of the labelled pair: then pass that column's policy log-probs.
    h = policy - reference summed log-probs; d = h_w - h_l. Shapes: policy, reference [B, 2].
    rewards: beta * h, [B, 2]. extras: "exploration" = mean alpha log pi(y_ref).
    """
    require_pairs(batch, "xpo")
    h = batch.logratio()
    bonus = alpha * batch.feature("ref_sample_logps").to(h.dtype)
    losses = -F.logsigmoid(beta * (h[:, 0] - h[:, 1])) + bonus
    return LossOut(losses, (beta * h).detach(), {"exploration": bonus.detach().mean()})
