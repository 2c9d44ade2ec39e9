"""Diffusion objectives against their authors' forms written out on raw denoising errors (mse of
the policy and the reference), values and gradients by hand with plain math."""

from __future__ import annotations

import torch

from prefalign.losses import get_objective, pairwise_loss
from prefalign.types import SeqLogps

from .oracle import close, ls, sig, t


def mse_batch(theta, ref):
    """SeqLogps from per-sample MSEs [[w, l], ...]: the family's surrogate l = -mse."""
    policy = t([[-a for a in row] for row in theta], grad=True)
    return policy, SeqLogps(policy=policy, reference=t([[-a for a in row] for row in ref]))


def test_golden_diffusion_dpo():
    """The release's code path: model_diff = mse_w - mse_l, ref_diff likewise, inside =
    -0.5 beta (model_diff - ref_diff), loss = -logsigmoid(inside). Pair 1: theta (0.30, 0.50),
    ref (0.32, 0.47): model_diff = -0.20, ref_diff = -0.15, inside = -0.5 * 100 * -0.05 = 2.5.
    d loss / d mse_w = -sig(-inside) * (-0.5 beta) = 50 sig(-2.5); d / d mse_l the opposite."""
    theta, ref, beta = [[0.30, 0.50], [0.20, 0.21]], [[0.32, 0.47], [0.19, 0.25]], 100.0
    policy, batch = mse_batch(theta, ref)
    out = get_objective("diffusion_dpo")(batch, beta=beta)
    expected, grads = [], []
    for (w, lo), (rw, rl) in zip(theta, ref):
        inside = -0.5 * beta * ((w - lo) - (rw - rl))
        expected.append(-ls(inside))
        d_mse_w = sig(-inside) * 0.5 * beta  # d(-ls(z))/dz = -sig(-z); dz/dmse_w = -beta/2
        grads.append([-d_mse_w, d_mse_w])  # policy = -mse flips the sign
    close(out.per_example, expected)
    close(expected[0], -ls(2.5))
    out.per_example.sum().backward()
    close(policy.grad, grads)
    assert out.extras["implicit_acc"].item() == 0.5  # pair 2: inside = -0.5 * 100 * (0.05) < 0
    close(out.rewards, 0.5 * beta * (batch.policy - batch.reference).detach())


def test_diffusion_dpo_is_dpo_at_half_beta_and_the_diffusers_port_at_full_beta():
    """Official beta_dpo = 5000 equals `dpo` with beta 2500, which is the diffusers SD1.5 port's
    loss -logsigmoid(beta_dpo (ref_diff - model_diff)) with beta_dpo = 2500."""
    g = torch.Generator().manual_seed(0)
    mse = torch.rand(5, 2, generator=g, dtype=torch.float64) * 0.2
    ref = mse + torch.randn(5, 2, generator=g, dtype=torch.float64) * 1e-3
    batch = SeqLogps(policy=-mse, reference=-ref)
    official = get_objective("diffusion_dpo")(batch, beta=5000.0).per_example
    close(official, get_objective("dpo")(batch, beta=2500.0).per_example)
    port = [-ls(2500.0 * ((ref[i, 0] - ref[i, 1]) - (mse[i, 0] - mse[i, 1])).item()) for i in range(5)]
    close(official, port)
    assert get_objective("diffusion_dpo").params == {"beta": 5000.0}


def test_golden_deformpam_dpo():
    """loss = -sigmoid(-beta Delta), Delta = (mse_theta_w - mse_ref_w) - (mse_theta_l - mse_ref_l):
    pair (0.30, 0.50) vs ref (0.32, 0.47): Delta = -0.02 - 0.03 = -0.05, beta 10: -sig(0.5).
    Gradient d/d mse_w = -sig'(z) * (-beta) with z = -beta Delta, sig' = s (1 - s)."""
    theta, ref, beta = [[0.30, 0.50]], [[0.32, 0.47]], 10.0
    policy, batch = mse_batch(theta, ref)
    out = get_objective("deformpam_dpo")(batch, beta=beta)
    z = -beta * ((0.30 - 0.32) - (0.50 - 0.47))
    close(out.per_example, [-sig(z)])
    close(out.per_example, [-sig(0.5)])
    out.per_example.sum().backward()
    d_mse_w = sig(z) * (1 - sig(z)) * beta  # d(-sig(z))/d mse_w = -sig'(z) * (-beta)
    close(policy.grad, [[-d_mse_w, d_mse_w]])
    assert get_objective("deformpam_dpo").params == {"beta": 100.0}
    via = pairwise_loss("deformpam_dpo", t([-0.30]), t([-0.50]), t([-0.32]), t([-0.47]), beta=beta)
    close(via, [-sig(z)])


def test_golden_seppo():
    """Anchor h_w = mse_ref(x_w) - mse_theta(x_w). Pair 1: theta beats ref on the winner (0.30 <
    0.32), so the reference sample is a loser: -ls((beta/2)(h_w - h_r)). Pair 2: it does not
    (0.40 > 0.35), so the reference sample counts as a winner: -ls((beta/2)(h_w + h_r)).
    The anchor decides the branch only: no gradient flows through the decision."""
    theta, ref, beta = [[0.30, 0.50], [0.40, 0.20]], [[0.32, 0.47], [0.35, 0.26]], 20.0
    policy, batch = mse_batch(theta, ref)
    out = get_objective("seppo")(batch, beta=beta)
    h = [[r - m for m, r in zip(mr, rr)] for mr, rr in zip(theta, ref)]  # l_theta - l_ref = mse_ref - mse_theta
    z1 = 0.5 * beta * (h[0][0] - h[0][1])
    z2 = 0.5 * beta * (h[1][0] + h[1][1])
    close(out.per_example, [-ls(z1), -ls(z2)])
    out.per_example.sum().backward()
    # d(-ls(z))/dz = -sig(-z); dz/dl_w = beta/2; dz/dl_r = -beta/2 (loser) or +beta/2 (winner)
    close(policy.grad, [[-sig(-z1) * beta / 2, sig(-z1) * beta / 2], [-sig(-z2) * beta / 2, -sig(-z2) * beta / 2]])
    assert out.extras["reference_sample_loser"].item() == 0.5
