"""Objectives written for diffusion models, on the family's surrogate log-likelihood.

The diffusion family (families/diffusion.py) scores a sample as l(x) = -mse(x), the per-sample
mean squared error of the predicted noise at one timestep and noise draw shared by the pair and
by the reference. Then Delta = mse(x_w) - mse(x_l) = -(l_w - l_l), and every objective below is
a function of the log-ratios h = l_theta - l_ref: Delta_theta - Delta_ref = -(h_w - h_l).
MaPO (reference-free) is the registered `mapo`, which already takes l = -mse.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prefalign.losses.registry import objective
from prefalign.types import LossOut, SeqLogps


def pair_logratios(batch: SeqLogps, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if batch.policy.shape[1] != 2:
        raise ValueError(f"{name} needs exactly 2 samples per pair (chosen, rejected), got {batch.policy.shape[1]}")
    h = batch.logratio()
    return h[:, 0], h[:, 1]


@objective("diffusion_dpo", kind="pairwise", paper="2311.12908", reference=True)
def diffusion_dpo(batch: SeqLogps, *, beta: float = 5000.0) -> LossOut:
    """Diffusion-DPO: -log sigmoid(-(beta/2)(Delta_theta - Delta_ref)) on denoising errors.

    Wallace et al., "Diffusion Model Alignment Using Direct Preference Optimization",
    arXiv:2311.12908. This is the authors' form (SalesforceAIResearch/DiffusionDPO train.py:
    inside_term = -0.5 * beta_dpo * (model_diff - ref_diff)), with Delta = mse(x_w) - mse(x_l)
    at one shared timestep and noise per pair, the reference fed the same noisy input:
        loss = -log sigmoid(-(beta/2) (Delta_theta - Delta_ref)) = -log sigmoid((beta/2)(h_w - h_l)),
    h = l_theta - l_ref, l = -mse. beta = 5000 is the authors' default (it folds the timestep
    count T, the weighting and the per-pixel mean of the paper's equation). The diffusers port
    (examples/research_projects/diffusion_dpo/train_diffusion_dpo.py) drops the 1/2: its
    beta_dpo = 2500 is this beta = 5000; it is also the registered `dpo` with beta/2.

    Shapes: batch.policy, batch.reference [B, 2] surrogate log-likelihoods (chosen, rejected).
    rewards: (beta/2) h per sample, [B, 2]. extras: "implicit_acc" (share of pairs with a positive
    inside term, the authors' metric), "mse_chosen" (mean policy denoising error of the winners).
    """
    h_w, h_l = pair_logratios(batch, "diffusion_dpo")
    inside = 0.5 * beta * (h_w - h_l)
    extras = {"implicit_acc": (inside.detach() > 0).float().mean(), "mse_chosen": -batch.policy[:, 0].detach().mean()}
    return LossOut(-F.logsigmoid(inside), (0.5 * beta * batch.logratio()).detach(), extras)


@objective("deformpam_dpo", kind="pairwise", paper="2410.11584", reference=True)
def deformpam_dpo(batch: SeqLogps, *, beta: float = 100.0) -> LossOut:
    """DeformPAM's Diffusion-DPO variant: -sigmoid(-beta (Delta_theta - Delta_ref)), no log.

    Chen et al., "DeformPAM: Data-Efficient Learning for Long-horizon Deformable Object
    Manipulation via Preference-based Action Alignment", arXiv:2410.11584. Where it differs from
    `diffusion_dpo` (the release xiaoxiaoxh/DeformPAM, learning/net/primitive_diffusion.py,
    diffusion_dpo_loss): a sigmoid, not a log-sigmoid, and no 1/2:
        loss = -sigmoid(-beta (Delta_theta - Delta_ref)) = -sigmoid(beta (h_w - h_l)),
    bounded in (-1, 0), so pairs already ranked far either way stop pulling (its gradient is
    beta s (1 - s)). beta = 100 is what every finetune config of the release sets (code default 1000).
    The release's optional min-SNR timestep weights are not applied (the objective sees no timestep).

    Shapes: batch.policy, batch.reference [B, 2]. rewards: beta h per sample, [B, 2].
    extras: "implicit_acc" (share of pairs with h_w > h_l).
    """
    h_w, h_l = pair_logratios(batch, "deformpam_dpo")
    inside = beta * (h_w - h_l)
    extras = {"implicit_acc": (inside.detach() > 0).float().mean()}
    return LossOut(-torch.sigmoid(inside), (beta * batch.logratio()).detach(), extras)


@objective("seppo", kind="pairwise", paper="2410.05255", reference=True)
def seppo(batch: SeqLogps, *, beta: float = 5000.0) -> LossOut:
    """SePPO: Diffusion-DPO of a data winner against a reference sample, its sign set by an anchor.

    Zhang et al., "SePPO: Semi-Policy Preference Optimization for Diffusion Alignment",
    arXiv:2410.05255 (v1). The reference is a previous checkpoint of the policy; column 1 is a
    sample that reference generated ("reference sample", x_r), column 0 an off-policy winner x_w.
    RECONSTRUCTION: the authors released no training code, so the anchor rule is rebuilt from
    the abstract ("an anchor-based criterion decides whether a reference sample is likely a
    winner or a loser") and is not checked against their implementation:
      anchor = h_w = l_theta(x_w) - l_ref(x_w) (detached). If h_w > 0 (the policy already fits the
      winner better than the reference does), x_r is a loser: the `diffusion_dpo` term
      -log sigmoid((beta/2)(h_w - h_r)). Otherwise x_r is treated as a winner too and the sign of
      its term flips: -log sigmoid((beta/2)(h_w + h_r)).
    beta follows `diffusion_dpo`'s convention (the authors' beta_dpo, with the 1/2).

    Shapes: batch.policy, batch.reference [B, 2] (winner, reference sample). rewards: (beta/2) h,
    [B, 2]. extras: "reference_sample_loser" (share of pairs whose anchor made x_r the loser).
    """
    h_w, h_r = pair_logratios(batch, "seppo")
    loser = h_w.detach() > 0
    sign = torch.where(loser, -torch.ones_like(h_r), torch.ones_like(h_r))
    inside = 0.5 * beta * (h_w + sign * h_r)
    extras = {"reference_sample_loser": loser.float().mean()}
    return LossOut(-F.logsigmoid(inside), (0.5 * beta * batch.logratio()).detach(), extras)
