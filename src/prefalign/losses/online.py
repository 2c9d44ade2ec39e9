"""Objectives whose data only an online loop can build: samples from the current policy (Nash-MD)
or from the policy under several constitutions (SAMI).

Both are pure functions of one SeqLogps like every other objective; `prefalign online` samples,
labels and lays out the batch they read (the layouts are in each docstring).
"""

from __future__ import annotations

import math

import torch

from prefalign.losses.registry import objective
from prefalign.losses.token_level import tokens
from prefalign.types import LossOut, SeqLogps

KL_ESTIMATORS = ("sequence", "token")


@objective("nash_md", kind="pairwise", paper="2312.00886", reference=True, features=("soft_label",),
           features_when=(("kl_estimator", "token", ("token_logps",)),))
def nash_md(batch: SeqLogps, *, beta: float = 0.1, kl_estimator: str = "sequence") -> LossOut:
    """Nash-MD (policy-gradient form): REINFORCE on P(y > y') - 1/2 with a KL(pi || mu) penalty.

    Munos et al., "Nash Learning from Human Feedback", arXiv:2312.00886: the policy moves toward
    the regularised Nash equilibrium by playing against the geometric mixture pi^(1-b) mu^b.
    Per prompt, y ~ pi (column 0) and y' ~ pi^(1-b) mu^b (column 1); p = P(y preferred over y')
    from the judge. The loss on the policy sample y is
        beta * sg(log pi(y) - log mu(y)) * log pi(y) - (p - 1/2) * log pi(y),
    whose gradient, in expectation over y ~ pi, is that of -E[p] + beta KL(pi || mu) (the 1/2 is
    a control variate: it changes the variance, not the expected gradient). Column 1 only
    enters through p: it carries no gradient.

    Confirmed against TRL's NashMDTrainer (huggingface/trl, trl/experimental/nash_md/
    nash_md_trainer.py, _compute_losses): p centred at 1/2, loss = beta * kl - score, mixture
    samples used only by the judge; TRL's beta defaults to 0.1 (its OnlineDPOConfig), as here.
    Not confirmed: the paper's own equation (its body could not be read here), so the
    sequence-level KL estimator is derived, not quoted. `kl_estimator`:
      "sequence" (default) sg(sum_t log-ratio_t) * sum_t log pi(y_t): the unbiased REINFORCE
                 gradient of the sequence KL(pi || mu); reads only the summed log-probs.
      "token"    sum_t sg(log-ratio_t) * log pi(y_t), TRL's form (each token's log pi weighted by
                 its own log-ratio only, dropping the later tokens' ratios: a biased estimate of the
                 sequence KL's gradient, tested on an enumerable two-token policy). Its pull on one sample stops at a
                 per-token log-ratio of (p - 1/2)/beta, so the sequence log-ratio it allows grows
                 with |y| (the sequence form stops at (p - 1/2)/beta for the whole response).
                 Needs feature "token_logps" (per-token policy and live reference log-probs).
    These are sampled gradient estimates: the loss value is not the objective's value, and
    training on data not sampled from the current policy is not Nash-MD.

    Feature: features["soft_label"] [B] = p in [0, 1]. Shapes: policy, reference [B, 2] summed
    response log-probs (column 0 y, column 1 y'). rewards: beta * (policy - reference), [B, 2].
    extras: "sample_kl" = mean log pi(y) - log mu(y) of the policy samples (a KL(pi || mu) estimate),
    "win_rate" = mean p.
    """
    if batch.policy.shape[1] != 2:
        raise ValueError(f"nash_md needs 2 responses per prompt (y from the policy, y' from the mixture), got "
                         f"{batch.policy.shape[1]}")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"nash_md kl_estimator must be one of {KL_ESTIMATORS}, got {kl_estimator!r}")
    h = batch.logratio()
    p = batch.feature("soft_label").to(h.dtype)
    if kl_estimator == "sequence":
        logp = batch.policy[:, 0]
        kl_term = h[:, 0].detach() * logp
    else:
        # column 0's tokens only: y' carries no gradient, and its tokens are never scored here
        token_logp = tokens(batch, "policy_token_logps")[:, 0]
        token_ratio = token_logp - tokens(batch, "reference_token_logps")[:, 0]
        logp = token_logp.sum(-1)
        kl_term = (token_ratio.detach() * token_logp).sum(-1)
    losses = beta * kl_term - (p - 0.5) * logp
    extras = {"sample_kl": h[:, 0].detach().mean(), "win_rate": p.detach().mean()}
    return LossOut(losses, (beta * h).detach(), extras)


def constitution_count(batch: SeqLogps) -> int:
    """C for a batch of K = C * C sequences, C >= 2; a ValueError naming K otherwise."""
    k = batch.policy.shape[1]
    c = math.isqrt(k)
    if c * c != k or c < 2:
        raise ValueError(f"sami needs K = C * C sequences per query (C >= 2 constitutions, sequence i*C + j = "
                         f"constitution i with response j), got K = {k}")
    return c


@objective("sami", kind="self_supervised", paper="2404.14313", reference=False, features=("lengths",))
def sami(batch: SeqLogps) -> LossOut:
    """SAMI: symmetric InfoNCE between constitutions and the responses sampled under them.

    Fränken et al., "Self-Supervised Alignment with Mutual Information: Learning to Follow
    Principles without Preference Labels", arXiv:2404.14313. Per query x, C constitutions c_i
    and C responses y_j (y_j sampled under c_j). logits[i, j] = log pi(y_j | c_i, x) / |y_j|, the
    MEAN token log-prob; loss = 1/2 mean_i CE_j(logits[i, :], target i)
                              + 1/2 mean_j CE_i(logits[:, j], target j),
    a lower bound on the mutual information between constitution and response: I >= log C - loss.
    Confirmed against the authors' release (janphilippfranken/sami, src/sami/trainers/
    sami_trainer.py: sami_loss and get_batch_logprobs; experiments/tldr/helpers.py for the
    c{i}_r{j} layout): length-normalised log-probs, no temperature, row and column
    cross-entropies averaged with equal weight. Their trainer can add beta * KL(pi || pi_ref) over
    full-vocabulary logits when given a reference model; their training script passes none, and
    neither does this objective (no reference, no KL term). Small departure: their pad token is
    EOS, so a response's EOS is masked out of their mean; here |y| is every scored response token.

    Layout: one example per query with K = C * C sequences; sequence i*C + j is prompt (c_i, x)
    followed by response y_j. Shapes: policy [B, K] summed response log-probs, n_tokens [B, K]
    (feature "lengths"); every entry must be real (no padding). C >= 2.
    rewards: the mean token log-probs, [B, K]. extras: "mi_lower_bound" = log C - mean loss,
    "accuracy" = share of rows and columns whose largest logit is the diagonal one.
    """
    c = constitution_count(batch)
    if not bool(batch.valid.all()):
        raise ValueError("sami needs all C * C sequences of every query; the batch has padding entries")
    per_token = batch.policy / batch.lengths().clamp(min=1)
    logits = per_token.reshape(-1, c, c)  # [B, constitution i, response j]
    diagonal = logits.diagonal(dim1=1, dim2=2)  # [B, C]: log pi(y_i | c_i)
    row_ce = torch.logsumexp(logits, dim=2) - diagonal  # over responses j, for each constitution i
    col_ce = torch.logsumexp(logits, dim=1) - diagonal  # over constitutions i, for each response j
    losses = 0.5 * row_ce.mean(1) + 0.5 * col_ce.mean(1)
    target = torch.arange(c, device=logits.device)
    hits = torch.cat([logits.argmax(2) == target, logits.argmax(1) == target], dim=1)
    extras = {"mi_lower_bound": (math.log(c) - losses).detach().mean(),
              "accuracy": hits.to(logits.dtype).mean()}
    return LossOut(losses, per_token.detach(), extras)


@objective("scir", kind="pairwise", paper="2502.08922", reference=True, features=("soft_label",))
def scir(batch: SeqLogps, *, beta: float = 0.1, consistency: float = 1.0) -> LossOut:
    """Self-rewarding DPO with SCIR's consistency term: DPO plus a penalty on the gap between the
    implicit reward's preference and the LLM judge's.

    Zhou et al., "Self-Consistency of the Internal Reward Models Improves Self-Rewarding Language
    Models", arXiv:2502.08922 (self-rewarding: Yuan et al., arXiv:2401.10020). Two internal reward
    models judge each pair: the generative judge (the policy as LLM judge) gives p = P(chosen
    preferred), feature "soft_label"; the implicit DPO reward gives q = sigmoid(m) with
    m = beta * ((log pi - log pi_ref)(y_w) - (log pi - log pi_ref)(y_l)). Per pair
        loss = -log sigmoid(m) + consistency * KL(Bern(p) || Bern(q))
             = -log q + consistency * (p log(p / q) + (1 - p) log((1 - p) / (1 - q))),
    so d loss / d m = -(1 - q) + consistency * (q - p): the DPO push, pulled back toward the
    judge's confidence. The pairs reach it already filtered to those where both judges agree
    (online.consistency_judge), SCIR's other half.

    Not confirmed (only the abstract and summaries could be read): the divergence (KL of the
    judge's Bernoulli to the implicit one here), its weight (1.0 here), and whether a confidence
    term is added. Departure: in SCIR both reward models are the trained LLM and the term moves
    both; here the judge's verdict is a cached number, so only the implicit reward moves.

    Shapes: policy, reference [B, 2] (chosen, rejected); features["soft_label"] [B] in [0, 1].
    rewards: beta * (policy - reference) [B, 2]. extras: "consistency_kl" = mean KL term,
    "implicit_agrees" = share of pairs with q on the judge's side of 1/2.
    """
    h = batch.logratio()
    m = beta * (h[:, 0] - h[:, 1])
    p = batch.feature("soft_label").to(m.dtype)
    log_q, log_1q = torch.nn.functional.logsigmoid(m), torch.nn.functional.logsigmoid(-m)
    # xlogy: a hard judge label (p = 0 or 1) contributes 0 * log 0 = 0
    kl = torch.xlogy(p, p) - p * log_q + torch.xlogy(1 - p, 1 - p) - (1 - p) * log_1q
    losses = -log_q + consistency * kl
    agrees = ((m > 0) == (p > 0.5)).to(m.dtype)
    return LossOut(losses, (beta * h).detach(), {"consistency_kl": kl.detach().mean(), "implicit_agrees": agrees.mean()})


def chase_regulariser(fast: SeqLogps, slow: SeqLogps, beta: float) -> torch.Tensor:
    """OFS-DPO's regulariser between the fast and the slow module (arXiv 2406.05534), per pair [B].

    With m = beta * ((log pi - log pi_ref)(y_w) - (log pi - log pi_ref)(y_l)) for each module,
        R = -log sigmoid(m_fast - sg(m_slow)),
    which is DPO of the fast module with the slow one as its reference (pi_ref cancels): it pulls
    the fast module's preference log-odds above the slow module's, and its gradient does not fade
    as the fast module's own DPO term saturates while the slow one trails it. The slow module gets
    no gradient from it (sg: stop-gradient). Not confirmed from the paper's text (only its abstract
    and summaries could be read): the exact form of "the regulariser on the gap of the two modules'
    preference probabilities", and whether the slow module is also moved by it.

    Shapes: fast, slow SeqLogps with policy and reference [B, 2] (chosen, rejected).
    """
    m_fast = beta * (fast.logratio()[:, 0] - fast.logratio()[:, 1])
    m_slow = beta * (slow.logratio()[:, 0] - slow.logratio()[:, 1])
    return -torch.nn.functional.logsigmoid(m_fast - m_slow.detach())
