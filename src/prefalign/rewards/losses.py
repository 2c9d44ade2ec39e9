"""Reward-model objectives as pure functions on tensors (torch only, testable without a model).

Every loss returns per-example values [B]; the trainer's one reduction (train/reduce.py) sums
them over the step. Shapes: B pairs (or rated responses, or responses with steps), D attributes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bt_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None) -> torch.Tensor:
    """Bradley-Terry: -log sigmoid(r_c - r_r - m) per pair [B].

    The margin m >= 0 (Llama 2's margin from rating gaps, arXiv:2307.09288 eq. 2) asks clearly
    separated pairs to be separated by more; m = 0 is the plain BT likelihood (loss ln 2 at r_c = r_r).
    """
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def bt_head_gradient(features_c: torch.Tensor, features_r: torch.Tensor, chosen: torch.Tensor,
                     rejected: torch.Tensor, margin: torch.Tensor | None = None) -> torch.Tensor:
    """[H] gradient of the mean BT loss w.r.t. the weight w of a linear head r = w . h + b,
    in closed form: -mean_i sigmoid(-(r_c - r_r - m)) (h_c - h_r)."""
    diff = chosen - rejected - (margin if margin is not None else 0.0)
    return -(torch.sigmoid(-diff)[:, None] * (features_c - features_r)).mean(0)


def min_norm_weights(grads: torch.Tensor, iters: int = 500) -> torch.Tensor:
    """[T] the point lambda of the simplex minimising ||sum_t lambda_t g_t||^2 for grads [T, H],
    MGDA's min-norm problem (arXiv:1810.04650). Solved by projected gradient descent on the T x T
    Gram matrix with step 1 / L (L = 2 lambda_max): once the active face is found it converges
    linearly, where Frank-Wolfe crawls at rate 1/k when the optimum lies inside a face."""
    t = grads.shape[0]
    gram = grads @ grads.T
    step = 1.0 / (2 * float(torch.linalg.eigvalsh(gram).max()) + 1e-12)
    lam = torch.full((t,), 1.0 / t, dtype=grads.dtype, device=grads.device)
    for _ in range(iters):
        lam = project_to_simplex(lam - step * 2 * (gram @ lam))
    return lam


def project_to_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection onto {x >= 0, sum x = 1} (sort-based, Held et al. 1974)."""
    u, _ = torch.sort(v, descending=True)
    cumulative = torch.cumsum(u, 0) - 1
    k = torch.arange(1, len(v) + 1, dtype=v.dtype, device=v.device)
    rho = int(torch.nonzero(u - cumulative / k > 0).max())
    return torch.clamp(v - cumulative[rho] / (rho + 1), min=0.0)


def more_weights(features_c: torch.Tensor, features_r: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor,
                 dataset: torch.Tensor, margin: torch.Tensor | None = None) -> torch.Tensor:
    """[B] MORE's per-pair loss weights (arXiv:2312.07401): the BT gradient of each
    preference dataset present in the batch is taken w.r.t. the reward head on detached features,
    L2-normalised, and the min-norm convex combination lambda of those gradients (MGDA) weights
    each dataset's loss. A pair of dataset t gets T * lambda_t, T the number of datasets present,
    so uniform lambda gives the plain mean.

    Departs from the authors' code: no momentum on the per-dataset gradients (the code keeps an
    exponential average across steps); dropping it keeps the loss a function of the batch alone,
    so resuming a run is exact. Datasets absent from a batch get no weight in that batch.
    """
    hc, hr = features_c.detach(), features_r.detach()
    rc, rr = chosen.detach(), rejected.detach()
    ids = torch.unique(dataset)
    if len(ids) < 2:
        return torch.ones_like(rc)
    grads = []
    for d in ids:
        sel = dataset == d
        g = bt_head_gradient(hc[sel], hr[sel], rc[sel], rr[sel], None if margin is None else margin[sel])
        grads.append(g / g.norm().clamp(min=1e-12))
    lam = min_norm_weights(torch.stack(grads).double()).to(rc.dtype)
    weight = torch.zeros_like(rc)
    for d, w in zip(ids, lam):
        weight[dataset == d] = len(ids) * w
    return weight


def rating_loss(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-objective regression (DPA arXiv:2402.18571 / ArmoRM arXiv:2406.12845): mean squared
    error over the rated attributes of each response [B], for predictions and ratings [B, D]
    (mask [B, D] marks the attributes a row rates)."""
    err = (predicted - target) ** 2
    if mask is None:
        return err.mean(1)
    mask = mask.to(err.dtype)
    return (err * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def directional_reward(rewards: torch.Tensor, direction) -> torch.Tensor:
    """DPA's directional reward v . r (arXiv:2402.18571) for attribute rewards [N, D] and
    a preference direction v (normalised here to a unit vector; a zero vector is an error)."""
    v = torch.as_tensor(direction, dtype=rewards.dtype, device=rewards.device).flatten()
    if v.numel() != rewards.shape[-1]:
        raise ValueError(f"the direction has {v.numel()} entries but the model rates {rewards.shape[-1]} attributes")
    norm = v.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError(f"the direction must be a non-zero finite vector, got {v.tolist()}")
    return rewards @ (v / norm)


def gaussian_preference_probability(mean_a: torch.Tensor, std_a: torch.Tensor, mean_b: torch.Tensor,
                                    std_b: torch.Tensor) -> torch.Tensor:
    """P(r_a > r_b) for independent r ~ N(mean, std^2): Phi((mu_a - mu_b) / sqrt(s_a^2 + s_b^2))."""
    z = (mean_a - mean_b) / torch.sqrt(std_a ** 2 + std_b ** 2)
    return 0.5 * torch.erfc(-z / math.sqrt(2.0))


def gaussian_bt_loss(mean_c: torch.Tensor, std_c: torch.Tensor, mean_r: torch.Tensor, std_r: torch.Tensor,
                     kl_weight: float = 0.0) -> torch.Tensor:
    """Robust reward learning with Gaussian rewards (PEARL's RRL, arXiv:2306.03615): per pair [B]
    -log P(r_c > r_r) with P the exact Gaussian-difference probability above, plus kl_weight
    times KL(N(mu, s^2) || N(0, 1)) summed over both responses.

    Departs from the paper: the paper samples rewards with the reparameterisation trick inside a
    Bradley-Terry likelihood; here the expectation over the two Gaussians is taken in closed form
    under the probit link (no sampling noise, exact gradients). The KL term keeps the scale of
    mean and variance identifiable (off by default; we could not confirm the paper's weight).
    """
    z = (mean_c - mean_r) / torch.sqrt(std_c ** 2 + std_r ** 2)
    # log Phi(z) computed stably for very negative z (torch.special.log_ndtr)
    loss = -torch.special.log_ndtr(z)
    if kl_weight:
        loss = loss + kl_weight * (gaussian_kl(mean_c, std_c) + gaussian_kl(mean_r, std_r))
    return loss


def gaussian_kl(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2) || N(0, 1)) elementwise."""
    return 0.5 * (mean ** 2 + std ** 2 - 1.0) - torch.log(std)


def step_bce_loss(logits: torch.Tensor, labels: torch.Tensor, owner: torch.Tensor, n_examples: int) -> torch.Tensor:
    """Process reward: binary cross-entropy of each step's logit against its good (1) / bad (0)
    label, averaged over the steps of each response [B]. logits, labels, owner: [S] for the S
    steps of the batch, owner[s] the response index of step s (a response with no step scores 0)."""
    per_step = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
    sums = torch.zeros(n_examples, dtype=logits.dtype, device=logits.device).index_add(0, owner, per_step)
    counts = torch.zeros(n_examples, dtype=logits.dtype, device=logits.device).index_add(
        0, owner, torch.ones_like(per_step))
    return sums / counts.clamp(min=1.0)
