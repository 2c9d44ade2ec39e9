"""Triple objectives: a gold, a chosen and a rejected response per prompt (K = 3).

Column 0 of every [B, 3] tensor is the gold response, column 1 the chosen one, column 2 the
rejected one (gold > chosen > rejected). The column order is the contract: `target` and `valid`
are not read, so all three entries must be real responses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prefalign.losses.registry import objective
from prefalign.types import LossOut, SeqLogps


def require_triples(batch: SeqLogps, name: str) -> None:
    if batch.policy.shape[1] != 3:
        raise ValueError(
            f"{name} needs exactly 3 responses per prompt (gold, chosen, rejected), got "
            f"{batch.policy.shape[1]}"
        )


def gold_nll(batch: SeqLogps) -> torch.Tensor:
    """[B] negative log-likelihood of the gold response (column 0), averaged over its tokens."""
    return -batch.policy[:, 0] / batch.lengths()[:, 0].clamp(min=1)


@objective("tpo", kind="listwise", paper="2405.16681", reference=False, features=("gold", "lengths"))
def tpo(batch: SeqLogps, *, beta: float = 0.01, alpha: float = 1.0) -> LossOut:
    """Triple Preference Optimization: -log sigmoid(beta (logp_w - logp_l)) + alpha * NLL(gold).

    Saeidi et al., "Triple Preference Optimization: Achieving Better Alignment using a Single
    Step Optimization", arXiv:2405.16681 (v2), the final TPO objective L_TPO: a
    reference-free Bradley-Terry preference term on the implicit reward r = beta log pi(y|x)
    between chosen and rejected, plus behaviour cloning (NLL) on the gold response weighted by
    alpha. Equation numbers are not cited: the paper body could not be read here, so the form
    and defaults follow the authors' release (github.com/sahsaeedi/TPO: loss = preference +
    tpo_alpha * NLL, hyper-parameter table of the base-model runs: beta = 0.01, alpha = 1).

    Shapes: batch.policy [B, 3] summed response log-probs (gold, chosen, rejected); n_tokens
    [B, 3] (only the gold length is used here). No reference model.
    Normalisation: the preference term uses summed log-probs; the NLL is the gold response's
    per-token mean. Departure: the authors' code averages the gold cross-entropy over all gold
    tokens of the micro-batch (token-pooled); here it is averaged per example so that one
    example's loss does not depend on the others (identical when B = 1 or gold lengths agree).
    rewards: beta * logp for gold, chosen and rejected, [B, 3] (the paper's implicit reward).
    extras: "nll" (mean gold NLL per token) and "preference" (mean preference term).
    alpha = 0 gives reference-free DPO, i.e. DPO with a uniform reference.
    """
    require_triples(batch, "tpo")
    preference = -F.logsigmoid(beta * (batch.policy[:, 1] - batch.policy[:, 2]))
    nll = gold_nll(batch)
    extras = {"nll": nll.detach().mean(), "preference": preference.detach().mean()}
    return LossOut(preference + alpha * nll, (beta * batch.policy).detach(), extras)


@objective("tpo_l", kind="listwise", paper="2405.16681", reference=False, features=("gold", "lengths"))
def tpo_l(batch: SeqLogps, *, beta: float = 2.0, gamma: float = 1.6, alpha: float = 1.0) -> LossOut:
    """Length-controlled TPO: -log sigmoid(beta (logp_w/|w| - logp_l/|l|) - gamma) + alpha * NLL(gold).

    Saeidi et al., arXiv:2405.16681 (v2), the TPO-L objective: TPO whose implicit
    reward is the length-normalised beta/|y| log pi(y|x), with a target reward margin gamma
    subtracted inside the sigmoid (as in SimPO). The form follows the authors' release
    (github.com/sahsaeedi/TPO, loss_type "tpo-l": mean token log-probs, logits - gamma / beta,
    times beta); equation numbers are not cited because the paper body could not be read here.
    Defaults: the paper tunes (alpha, beta, gamma) per model and data size; these are the
    authors' Mistral-7B-Base 20K setting (alpha = 1, beta = 2, gamma = 1.6). Their Llama-3-Base
    runs used beta = 0.01 with gamma between 0.5 and 10, and their Instruct runs alpha = 0.05:
    set them for your model.

    Shapes: batch.policy [B, 3] summed log-probs (gold, chosen, rejected); n_tokens [B, 3].
    Normalisation: per-token mean log-probs in the preference term and in the gold NLL (the NLL
    per example, not token-pooled over the batch as in the authors' code; see `tpo`).
    rewards: beta * logp / |y| for gold, chosen and rejected, [B, 3].
    extras: "nll" (mean gold NLL per token) and "preference" (mean preference term).
    alpha = 0 gives SimPO; gamma = 0 with unit lengths gives TPO.
    """
    require_triples(batch, "tpo_l")
    mean_logps = batch.policy / batch.lengths().clamp(min=1)
    preference = -F.logsigmoid(beta * (mean_logps[:, 1] - mean_logps[:, 2]) - gamma)
    nll = gold_nll(batch)
    extras = {"nll": nll.detach().mean(), "preference": preference.detach().mean()}
    return LossOut(preference + alpha * nll, (beta * mean_logps).detach(), extras)
