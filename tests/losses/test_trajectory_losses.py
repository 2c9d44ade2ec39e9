"""bradley_terry (Knox et al.'s partial-return and regret models share it): value and gradient by hand."""

from __future__ import annotations

import math

import pytest
import torch

from prefalign.losses import get_objective, pairwise_loss
from prefalign.types import SeqLogps


def test_golden_bradley_terry():
    scores = torch.tensor([[2.0, -1.0], [0.5, 1.5]], dtype=torch.float64, requires_grad=True)
    beta = 0.5
    out = get_objective("bradley_terry")(SeqLogps(policy=scores), beta=beta)
    out.per_example.sum().backward()
    for i, (w, lo) in enumerate([(2.0, -1.0), (0.5, 1.5)]):
        z = beta * (w - lo)
        assert out.per_example[i].item() == pytest.approx(math.log(1 + math.exp(-z)), rel=1e-12)
        # d/dw -log sigmoid(beta (w - l)) = -beta (1 - sigmoid(z)) = -beta / (1 + e^z); d/dl is its negative
        assert scores.grad[i].tolist() == pytest.approx([-beta / (1 + math.exp(z)), beta / (1 + math.exp(z))])
    assert torch.allclose(out.rewards, beta * scores.detach())


def test_bradley_terry_is_reference_free_and_pairwise_only():
    obj = get_objective("bradley_terry")
    assert not obj.needs_reference and obj.paper == "2206.02231"
    assert pairwise_loss("bradley_terry", torch.tensor([1.0]), torch.tensor([1.0])).item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="exactly 2"):
        obj(SeqLogps(policy=torch.zeros(1, 3)))
