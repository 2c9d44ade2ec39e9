"""Reward-model losses against hand-computed numbers, independent formulas and gradcheck."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch

from prefalign.rewards.losses import (bt_head_gradient, bt_loss, directional_reward, gaussian_bt_loss, gaussian_kl,
                                      gaussian_preference_probability, min_norm_weights, more_weights, rating_loss,
                                      step_bce_loss)

t = lambda *x: torch.tensor(x, dtype=torch.float64)  # noqa: E731


def test_bt_loss_hand_numbers():
    # -log sigmoid(2 - 1) = log(1 + e^-1); with margin 0.5: log(1 + e^-0.5); equal rewards: ln 2
    assert bt_loss(t(2.0), t(1.0)).item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert bt_loss(t(2.0), t(1.0), t(0.5)).item() == pytest.approx(math.log(1 + math.exp(-0.5)))
    assert bt_loss(t(0.3), t(0.3)).item() == pytest.approx(math.log(2))
    assert torch.isfinite(bt_loss(t(-1e3), t(1e3))).all()


def test_bt_and_gaussian_losses_gradcheck():
    a, b, m = (torch.randn(3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda x, y, z: bt_loss(x, y, z), (a, b, m))
    s1 = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_()
    s2 = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda *x: gaussian_bt_loss(*x, kl_weight=0.1), (a, s1, b, s2))


def test_head_gradient_matches_autograd():
    torch.manual_seed(0)
    hc, hr = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    margin = torch.rand(5, dtype=torch.float64)
    bt_loss(hc @ w, hr @ w, margin).mean().backward()
    closed = bt_head_gradient(hc, hr, (hc @ w).detach(), (hr @ w).detach(), margin)
    assert torch.allclose(closed, w.grad)


def test_simplex_projection_hand_case():
    from prefalign.rewards.losses import project_to_simplex

    # (0.5, 0.5, -1): shift by 0 keeps the first two (they already sum to 1), the negative one becomes 0
    assert project_to_simplex(t(0.5, 0.5, -1.0)).tolist() == pytest.approx([0.5, 0.5, 0.0])
    # (2, 0): shift by 1 -> (1, -1) -> clipped to (1, 0)
    assert project_to_simplex(t(2.0, 0.0)).tolist() == pytest.approx([1.0, 0.0])


def test_min_norm_weights_hand_cases():
    assert min_norm_weights(t(1.0, 0.0).reshape(1, 2).repeat(1, 1)).tolist() == [1.0]
    # orthogonal unit gradients: the midpoint (0.5, 0.5) has the smallest norm
    assert min_norm_weights(torch.eye(2, dtype=torch.float64)).tolist() == pytest.approx([0.5, 0.5])
    # (1, 0) and (3, 0): the shorter one itself
    assert min_norm_weights(t(1.0, 0.0, 3.0, 0.0).reshape(2, 2)).tolist() == pytest.approx([1.0, 0.0], abs=1e-6)
    # opposite gradients (1, 0), (0, 1), (-1, 0): the hull holds the origin, reached with lambda_1 = lambda_3
    g = t(1.0, 0.0, 0.0, 1.0, -1.0, 0.0).reshape(3, 2)
    lam = min_norm_weights(g)
    assert lam.sum().item() == pytest.approx(1.0) and (lam >= 0).all()
    assert (lam @ g).norm().item() < 1e-6 and lam.tolist() == pytest.approx([0.5, 0.0, 0.5], abs=1e-6)


def test_more_weights_follow_the_min_norm_of_normalised_dataset_gradients():
    torch.manual_seed(1)
    hc, hr = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    w = torch.randn(3, dtype=torch.float64)
    ds = torch.tensor([0, 0, 1, 1, 1, 2])
    weights = more_weights(hc, hr, hc @ w, hr @ w, ds)
    # independent: autograd gradient per dataset, normalised, then the solver
    grads = []
    for d in range(3):
        wd = w.clone().requires_grad_()
        sel = ds == d
        bt_loss(hc[sel] @ wd, hr[sel] @ wd).mean().backward()
        grads.append(wd.grad / wd.grad.norm())
    lam = min_norm_weights(torch.stack(grads))
    expected = torch.stack([3 * lam[d] for d in ds.tolist()])
    assert torch.allclose(weights, expected, atol=1e-6)
    assert torch.equal(more_weights(hc, hr, hc @ w, hr @ w, torch.zeros(6, dtype=torch.long)), torch.ones(6,
                                                                                                     dtype=torch.float64))


def test_rating_loss_and_mask():
    pred, target = t(1.0, 2.0).reshape(1, 2), t(0.0, 4.0).reshape(1, 2)
    assert rating_loss(pred, target).item() == pytest.approx((1 + 4) / 2)
    assert rating_loss(pred, target, t(1.0, 0.0).reshape(1, 2)).item() == pytest.approx(1.0)


def test_directional_reward_normalises_and_rejects_bad_directions():
    r = t(1.0, 2.0, 3.0, 4.0).reshape(2, 2)
    # v = (3, 4) -> (0.6, 0.8): 0.6 + 1.6 = 2.2 and 1.8 + 3.2 = 5.0
    assert directional_reward(r, [3.0, 4.0]).tolist() == pytest.approx([2.2, 5.0])
    with pytest.raises(ValueError, match="non-zero"):
        directional_reward(r, [0.0, 0.0])
    with pytest.raises(ValueError, match="2 attributes"):
        directional_reward(r, [1.0, 0.0, 0.0])


def test_gaussian_probability_against_normal_cdf():
    # z = (1 - 0) / sqrt(0.36 + 0.64) = 1
    p = gaussian_preference_probability(t(1.0), t(0.6), t(0.0), t(0.8)).item()
    assert p == pytest.approx(NormalDist().cdf(1.0))
    mu_a, mu_b, s_a, s_b = t(0.3, -2.0), t(1.1, 0.5), t(0.2, 1.5), t(0.9, 0.4)
    ab = gaussian_preference_probability(mu_a, s_a, mu_b, s_b)
    ba = gaussian_preference_probability(mu_b, s_b, mu_a, s_a)
    assert torch.allclose(ab + ba, torch.ones(2, dtype=torch.float64))
    expected = [NormalDist(0.3 - 1.1, math.hypot(0.2, 0.9)).cdf(0.0), NormalDist(-2.5, math.hypot(1.5, 0.4)).cdf(0.0)]
    assert (1 - ab).tolist() == pytest.approx(expected)  # P(r_a - r_b <= 0) from the difference's own CDF
    loss = gaussian_bt_loss(mu_a, s_a, mu_b, s_b)
    assert loss.tolist() == pytest.approx((-torch.log(ab)).tolist())
    assert torch.isfinite(gaussian_bt_loss(t(-100.0), t(1.0), t(100.0), t(1.0))).all()


def test_gaussian_kl_hand_numbers():
    # KL(N(1, 1) || N(0, 1)) = 0.5 * 1^2 = 0.5; KL(N(0, 2^2) || N(0, 1)) = 0.5 * (4 - 1) - ln 2
    assert gaussian_kl(t(1.0), t(1.0)).item() == pytest.approx(0.5)
    assert gaussian_kl(t(0.0), t(2.0)).item() == pytest.approx(1.5 - math.log(2))


def test_step_bce_hand_numbers():
    # response 0: two steps at logit 0 -> ln 2 each; response 1: one good step at logit 2 -> log(1 + e^-2)
    per = step_bce_loss(t(0.0, 0.0, 2.0), t(1.0, 0.0, 1.0), torch.tensor([0, 0, 1]), 3)
    assert per.tolist() == pytest.approx([math.log(2), math.log(1 + math.exp(-2)), 0.0])
