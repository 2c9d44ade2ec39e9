"""Preference metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from prefalign.train.metrics import MetricAccumulator, batch_metrics, ndcg
from prefalign.types import LossOut, SeqLogps


def test_ndcg_hand_example():
    """Targets 3 > 2 > 1 give relevances 2, 1, 0 and gains 3, 1, 0. Scores order them 2nd, 1st, 3rd:
    DCG = 1/log2(2) + 3/log2(3) = 1 + 1.89279 = 2.89279; IDCG = 3 + 1/log2(3) = 3.63093; NDCG = 0.79671.
    A perfect order gives 1; an all-tied list is undefined and masked out."""
    scores = torch.tensor([[0.5, 0.9, 0.1], [3.0, 2.0, 1.0], [0.0, 1.0, 2.0]])
    target = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [1.0, 1.0, 1.0]])
    valid = torch.ones(3, 3, dtype=torch.bool)
    values, defined = ndcg(scores, target, valid)
    expected = (1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3))
    assert values[0].item() == pytest.approx(expected, abs=1e-6) and values[1].item() == pytest.approx(1.0)
    assert defined.tolist() == [True, True, False]


def test_ndcg_ignores_padding_entries():
    scores = torch.tensor([[0.1, 0.9, 100.0]])
    target = torch.tensor([[2.0, 1.0, 0.0]])
    valid = torch.tensor([[True, True, False]])
    values, _ = ndcg(scores, target, valid)
    # two real items, wrongly ordered: DCG = 0/1 + 1/log2(3), IDCG = 1
    assert values.item() == pytest.approx(1 / math.log2(3), abs=1e-6)


def test_pair_metrics_and_ties_count_half():
    seq = SeqLogps(policy=torch.tensor([[-1.0, -2.0], [-3.0, -3.0]]), reference=torch.tensor([[-1.0, -1.0], [-3.0, -3.0]]),
                   n_tokens=torch.tensor([[1.0, 4.0], [2.0, 2.0]]))
    out = LossOut(torch.tensor([0.5, 0.7]), 0.1 * (seq.policy - seq.reference))
    acc = MetricAccumulator()
    acc.add(batch_metrics(seq, out))
    m = acc.reduce()
    assert m["loss"] == pytest.approx(0.6)
    assert m["rewards/margins"] == pytest.approx((0.1 + 0.0) / 2)
    assert m["rewards/accuracy"] == pytest.approx((1 + 0.5) / 2)
    assert m["ranking/accuracy"] == pytest.approx((1 + 0.5) / 2)
    # length-normalised: -1/1 > -2/4 is false for pair 0; pair 1 tied
    assert m["ranking/accuracy_len_norm"] == pytest.approx((0 + 0.5) / 2)
    assert m["kl/logratio_mean"] == pytest.approx(-1 / 4)
