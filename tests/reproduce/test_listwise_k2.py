"""listwise-k2: K = 2 listwise objectives equal their pairwise forms on real log-probs, within a derived bound."""

from __future__ import annotations

import json
import math

import torch

from prefalign.reproduce import listwise_k2
from prefalign.reproduce.claims import Verdict, run_claim


def test_lambda_weight_of_two_items_by_hand():
    # G = 2^psi - 1 gives gains 1 and 0; D(tau) = log2(1 + tau): 1/D(1) = 1, 1/D(2) = 1/log2(3) = 0.63093
    assert abs(listwise_k2.LIPO_FACTOR - (1 - 0.6309298)) < 1e-6


def test_quick_run_passes_on_a_real_batch(tmp_path):
    result = run_claim("listwise-k2", tmp_path, quick=True)
    record = json.loads((tmp_path / "result.json").read_text())
    assert result.verdict is Verdict.PASS and record["verdict"] == "PASS"
    checks = record["numbers"]["checks"]
    assert set(checks) == {"float32", "float64"}
    for dtype, per in checks.items():
        assert set(per) == {"listwise_dpo", "lipo_lambda", "pro"}
        assert all(c["holds"] and c["worst_loss_diff_over_bound"] <= 1 for c in per.values())
    # in float64 the forms agree to ~1e-15 on losses of order 1: equal as functions, not by a loose threshold
    assert max(c["max_loss_diff"] for c in checks["float64"].values()) < 1e-12
    assert record["numbers"]["dpo_margin_std"] >= 0.1  # the policy really differs from the reference


def fake_batch(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    policy = -torch.rand(n, 2, generator=g, dtype=torch.float64) * 200
    reference = policy + torch.randn(n, 2, generator=g, dtype=torch.float64) * 5
    n_tokens = torch.randint(5, 100, (n, 2), generator=g).double()
    return policy, reference, n_tokens


def test_the_check_catches_a_wrong_lambda_weight(monkeypatch):
    policy, reference, n_tokens = fake_batch()
    assert all(c["holds"] for c in listwise_k2.compare(policy, reference, n_tokens, torch.float32).values())
    # LambdaLoss without the reciprocal discount would weight the pair |D(1) - D(2)| = log2(3) - 1 instead
    monkeypatch.setattr(listwise_k2, "LIPO_FACTOR", math.log2(3) - 1)
    got = listwise_k2.compare(policy, reference, n_tokens, torch.float32)
    assert not got["lipo_lambda"]["holds"] and got["listwise_dpo"]["holds"] and got["pro"]["holds"]


def test_a_policy_equal_to_its_reference_gives_no_margins():
    # the reason the claim trains the policy a little first: with h = 0 every DPO-family loss is log 2
    policy, _, n_tokens = fake_batch()
    out = listwise_k2.pairs_and_counterparts(policy, policy.clone(), n_tokens)
    assert torch.allclose(out[0][1], torch.full((32,), math.log(2), dtype=torch.float64))
