"""LongAlign's reweighted score against the projection written by hand, gradient included."""

from __future__ import annotations

import math

import pytest
import torch

from prefalign.rewards.longalign import reward_loss, reweighted_score, shared_direction


def test_two_prompts_by_hand_with_gradient():
    """t1 = (1, 0), t2 = (0, 1): v = (1, 1)/sqrt2. t1' = t1 - 0.7 (1/sqrt2) v = (0.65, -0.35).
    With f1 = (1, 0): score 0.65; d score / d f1 = (t1' - (t1'.f1) f1) / |f1| = (0, -0.35)."""
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    image = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64, requires_grad=True)
    scores = reweighted_score(text, image, weight=0.3)
    assert shared_direction(text).tolist() == pytest.approx([1 / math.sqrt(2)] * 2)
    # t2' = (0, 1) - 0.35 (1, 1) = (-0.35, 0.65); f2 = (0.6, 0.8): -0.21 + 0.52 = 0.31
    assert scores.tolist() == pytest.approx([0.65, 0.31])
    scores[0].backward()
    assert image.grad[0].tolist() == pytest.approx([0.0, -0.35])
    assert image.grad[1].tolist() == pytest.approx([0.0, 0.0])
    assert reward_loss(scores.detach()).item() == pytest.approx(0.5 * (1 - 0.48))


def test_weight_one_is_cosine_and_weight_zero_removes_the_shared_direction():
    g = torch.Generator().manual_seed(0)
    text, image = torch.randn(5, 8, generator=g, dtype=torch.float64), torch.randn(5, 8, generator=g,
                                                                                  dtype=torch.float64)
    cosine = torch.nn.functional.cosine_similarity(text, image, dim=-1)
    assert torch.allclose(reweighted_score(text, image, weight=1.0), cosine)
    v = shared_direction(text)
    projector = torch.eye(8, dtype=torch.float64) - torch.outer(v, v)  # removes v from t
    t_hat, f_hat = text / text.norm(dim=-1, keepdim=True), image / image.norm(dim=-1, keepdim=True)
    assert torch.allclose(reweighted_score(text, image, weight=0.0), ((t_hat @ projector) * f_hat).sum(-1))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        reweighted_score(text, image, weight=1.5)
