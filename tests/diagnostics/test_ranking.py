"""Ranking accuracy vs its ideal, on cases whose answers are known by construction."""

from __future__ import annotations

import math

import pytest
import torch

from prefalign.diagnostics.ranking import ranking_report
from prefalign.losses import pairwise_loss


def test_reference_that_ranks_every_pair_correctly_has_idealized_accuracy_one():
    ref_w, ref_l = torch.tensor([-5.0, -3.0, -8.0]), torch.tensor([-6.0, -4.0, -9.5])
    r = ranking_report(ref_w, ref_l, ref_w, ref_l, beta=0.1, p=0.7)
    assert r["idealized_ranking_accuracy"] == 1.0
    # a model equal to its reference ranks exactly as the reference does
    assert r["ranking_accuracy"] == r["reference_ranking_accuracy"] == 1.0 and r["alignment_gap"] == 0.0


def test_idealized_accuracy_by_hand():
    """beta = 0.5, p = 0.75: logit(p) / beta = ln 3 / 0.5 = 2.197. Reference gaps w - l of
    -1, -3, +0.5 give ideal margins 1.197 (correct), -0.803 (wrong), 2.697 (correct): 2/3.
    The policy ranks only the last pair correctly: accuracy 1/3, gap 1/3."""
    ref_w, ref_l = torch.tensor([-2.0, -4.0, -1.0]), torch.tensor([-1.0, -1.0, -1.5])
    pol_w, pol_l = torch.tensor([-3.0, -5.0, 0.0]), torch.tensor([-1.0, -1.0, -1.0])
    r = ranking_report(pol_w, pol_l, ref_w, ref_l, beta=0.5, p=0.75)
    assert r["idealized_ranking_accuracy"] == pytest.approx(2 / 3)
    assert r["ranking_accuracy"] == pytest.approx(1 / 3) and r["alignment_gap"] == pytest.approx(1 / 3)
    assert [h["index"] for h in r["hardest"]] == [1, 0, 2]  # misranking 3, 1, -0.5
    assert r["hardest"][0]["loss_to_flip"] == pytest.approx(-math.log(1 / (1 + math.exp(-0.5 * 3))))


def test_hard_labels_make_every_pair_ideally_correct_and_p_is_checked():
    ref_w, ref_l = torch.tensor([-9.0]), torch.tensor([-1.0])
    assert ranking_report(ref_w, ref_l, ref_w, ref_l, beta=0.1, p=1.0)["idealized_ranking_accuracy"] == 1.0
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ranking_report(ref_w, ref_l, ref_w, ref_l, beta=0.1, p=0.0)


def test_correct_iff_dpo_loss_below_the_flip_threshold():
    """The identity behind the difficulty measure, checked on random pairs against prefalign's DPO."""
    g = torch.Generator().manual_seed(0)
    pol_w, pol_l, ref_w, ref_l = (torch.randn(200, generator=g, dtype=torch.float64) * 5 for _ in range(4))
    beta = 0.3
    r = ranking_report(pol_w, pol_l, ref_w, ref_l, beta=beta, p=0.6, hardest=0)
    loss = pairwise_loss("dpo", pol_w, pol_l, ref_w, ref_l, beta=beta)
    correct = pol_w > pol_l
    below = loss < torch.tensor(r["loss_to_flip"], dtype=torch.float64)
    assert torch.equal(correct, below)


def test_length_normalised_accuracy():
    r = ranking_report(torch.tensor([-10.0]), torch.tensor([-6.0]), torch.tensor([-1.0]), torch.tensor([-1.0]),
                       beta=0.1, p=0.9, lengths_w=torch.tensor([10.0]), lengths_l=torch.tensor([3.0]))
    assert r["ranking_accuracy"] == 0.0 and r["ranking_accuracy_len_norm"] == 1.0  # -1/token > -2/token
