"""Reference-free objectives: no reference log-probs; the policy's own likelihood is the reward.

`poft` trains on SFT data (one response per prompt) against the likelihoods that other, aligned
models give the same response. `mapo` is pairwise and works on any per-sample log-likelihood,
including a diffusion model's surrogate (the negative denoising loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prefalign.losses.registry import objective
from prefalign.types import LossOut, SeqLogps


@objective("poft", kind="sft", paper="2412.12865", reference=False, features=("aligned_logps", "lengths"))
def poft(batch: SeqLogps, *, beta: float = 1.0) -> LossOut:
    """PoFT: Bradley-Terry preference of the target model over aligned LLMs on the SFT response.

    Fan et al., "Preference-Oriented Supervised Fine-Tuning: Favoring Target Model Over Aligned
    Large Language Models", arXiv:2412.12865 (AAAI 2025), the PoFT objective:
        loss = -log sigmoid(beta (logp_theta(y|x)/|y| - mean_m logp_m(y|x)/|y|_m)),
    the preference score of each model being its per-token mean log-likelihood of the SFT
    response; its gradient is SFT's, weighted per example by sigmoid(-beta (...)), so responses
    the aligned models already find unlikely (likely low quality) get smaller updates. The paper
    body could not be read here: the form (aligned scores averaged over the M models before one
    Bradley-Terry term) and beta = 1 follow the authors' release (Savannah120/alignment-handbook-
    PoFT: run_poft.py, merge_prefrence_scores.py, which also fix the margin gamma at 0).

    Shapes: batch.policy [B, K] summed log-probs; column 0 is the SFT response (K = 1; with
    pairs, the chosen one); n_tokens [B, K]. features['aligned_logps'] [B, M]: the PER-TOKEN MEAN
    log-prob of that response under each of M aligned models, each over its own tokenisation
    (precomputed, no grad). Departure from the summed convention: the models' tokenisers differ,
    so only each model can normalise its own sum; pass sum / own token count.
    rewards: beta * logp_theta / |y| per response, [B, K]. extras: "nll" (target per-token NLL),
    "aligned_logps" (mean aligned score).
    """
    mean_logps = batch.policy / batch.lengths().clamp(min=1)
    aligned = batch.feature("aligned_logps").detach().to(mean_logps.dtype).mean(dim=1)
    losses = -F.logsigmoid(beta * (mean_logps[:, 0] - aligned))
    extras = {"nll": -mean_logps[:, 0].detach().mean(), "aligned_logps": aligned.mean()}
    return LossOut(losses, (beta * mean_logps).detach(), extras)


@objective("mapo", kind="pairwise", paper="2406.06424", reference=False)
def mapo(batch: SeqLogps, *, beta: float = 0.1, snr: float = 0.5, timesteps: int = 1000,
         length_normalize: bool = False) -> LossOut:
    """MaPO: likelihood of the preferred + beta * Bradley-Terry margin of bounded likelihood scores.

    Hong et al., "Margin-aware Preference Optimization for Aligning Diffusion Models without
    Reference", arXiv:2406.06424, the MaPO objective on per-sample log-likelihoods l (policy):
        s(l) = timesteps * g(-snr * l),  g(u) = u / (e^u - 1)
        loss = -l_w - beta * log sigmoid(s(l_w) - s(l_l)).
    With p = exp(snr * l), g = p log(1/p) / (1 - p) is a bounded (0, 1] score rising with the
    likelihood (the paper's bounded link; the release calls it log_odds); timesteps (T) stretches
    its small differences to the scale of the denoising process. For a diffusion model pass the negative
    per-sample denoising loss, l = -mean ||eps - eps_theta(x_t, t)||^2 (chosen and rejected at the
    same noise and t): then -l_w is the usual diffusion loss of the preferred image. The paper body
    could not be read here: form and defaults (beta = 0.1, snr = 0.5, T = 1000) follow the
    authors' release (mapo-t2i/mapo, utils.compute_loss and args).
    For language models use per-token mean log-probs (length_normalize=True, needs n_tokens):
    summed log-probs of long responses put g deep in its flat tail. Re-tune snr and T there.

    Shapes: batch.policy [B, 2] log-likelihoods (chosen, rejected); no reference.
    rewards: s(l) per response, [B, 2] (its difference is the margin logit). extras: "nll"
    (mean -l_w), "margin" (mean margin loss).
    """
    if batch.policy.shape[1] != 2:
        raise ValueError(f"mapo needs exactly 2 responses per prompt, got {batch.policy.shape[1]}")
    ll = batch.policy / batch.lengths().clamp(min=1) if length_normalize else batch.policy
    u = -snr * ll
    # g(u) = u / expm1(u) overflows for large |u| and is 0/0 at u = 0. Use g(u) = g(|u|) + max(-u, 0)
    # with g(a) = a e^-a / (1 - e^-a) for a > 0 (no overflow), and its Taylor series near 0.
    small = u.abs() < 1e-4
    us = torch.where(small, torch.ones_like(u), u)
    a = us.abs()
    g = torch.where(small, 1 - u / 2 + u * u / 12, a * torch.exp(-a) / -torch.expm1(-a) + F.relu(-us))
    score = timesteps * g
    margin = -F.logsigmoid(score[:, 0] - score[:, 1])
    extras = {"nll": -ll[:, 0].detach().mean(), "margin": margin.detach().mean()}
    return LossOut(-ll[:, 0] + beta * margin, score.detach(), extras)
