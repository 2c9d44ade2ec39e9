"""Win rate under scripted judges whose answer is known, ties and missing verdicts, position bias,
and judge calibration on a hand-computed case."""

from __future__ import annotations

import math

import pytest
import torch

from prefalign.diagnostics.winrate import (bootstrap_interval, judge_calibration, judge_win_rate, outcomes_from_probs,
                                           plot_reliability)
from prefalign.judges import CallableJudge


def scripted(p_model: dict):
    """A judge that knows P(model's response wins) per prompt and answers for either order."""

    def compare(prompt, a, b):
        p = p_model[prompt]
        if p is None:
            return None
        return p if a.startswith("M") else 1 - p

    return CallableJudge(compare_fn=compare)


def test_known_win_rate_with_ties_is_recovered_and_covered():
    # per 10 prompts: 7 wins, 1 tie (P = 0.5 exactly), 2 losses -> (7 + 0.5) / 10 = 0.75
    probs = {f"q{i}": (0.8 if i % 10 < 7 else 0.5 if i % 10 == 7 else 0.3) for i in range(200)}
    prompts = list(probs)
    r = judge_win_rate(scripted(probs), prompts, [f"M{i}" for i in range(200)], [f"O{i}" for i in range(200)])
    assert r["both_orders"] and r["order_inconsistent"] == 0.0
    assert r["win_rate"] == pytest.approx(0.75) and (r["wins"], r["ties"], r["losses"]) == (140, 20, 40)
    assert r["ci_low"] < 0.75 < r["ci_high"]
    # the percentile interval is close to the normal approximation mean +- 1.96 sd / sqrt(n)
    sd = math.sqrt((140 * 0.25 ** 2 + 20 * 0.25 ** 2 + 40 * 0.75 ** 2) / 200)
    assert r["ci_low"] == pytest.approx(0.75 - 1.96 * sd / math.sqrt(200), abs=0.015)
    assert r["ci_high"] == pytest.approx(0.75 + 1.96 * sd / math.sqrt(200), abs=0.015)


def test_missing_verdicts_are_excluded_and_counted_and_tie_band_widens_ties():
    probs = {"a": 0.9, "b": None, "c": 0.55, "d": 0.2}
    r = judge_win_rate(scripted(probs), list(probs), ["M"] * 4, ["O"] * 4, tie_band=0.1)
    assert r["missing"] == 1 and r["judged"] == 3
    assert r["win_rate"] == pytest.approx((1 + 0.5 + 0) / 3)  # 0.55 lies in the tie band
    assert outcomes_from_probs([0.5, 0.50001, None]) == [0.5, 1.0, None]
    with pytest.raises(ValueError, match="no verdict"):
        judge_win_rate(scripted({"b": None}), ["b"], ["M"], ["O"])


def test_both_orders_cancel_a_judge_that_always_prefers_the_first_response():
    first = CallableJudge(compare_fn=lambda p, a, b: 0.9)
    prompts = [f"q{i}" for i in range(20)]
    one = judge_win_rate(first, prompts, ["M"] * 20, ["O"] * 20, both_orders=False)
    both = judge_win_rate(first, prompts, ["M"] * 20, ["O"] * 20)
    assert one["win_rate"] == 1.0
    assert both["win_rate"] == 0.5 and both["ties"] == 20 and both["order_inconsistent"] == 1.0


def test_a_score_based_judge_is_asked_in_one_order_only():
    calls = []
    judge = CallableJudge(score_fn=lambda p, r: calls.append(r) or len(r))
    r = judge_win_rate(judge, ["p", "q"], ["MMMM", "M"], ["OO", "OO"])
    assert not r["both_orders"] and len(calls) == 4 and r["win_rate"] == 0.5


def test_bootstrap_is_seeded():
    """The seed alone fixes the interval: the global RNG moving in between changes nothing, and
    each other seed draws other resamples (continuous values: distinct seeds give distinct
    percentiles). A constant sample's interval is that constant whatever the seed."""
    v = torch.randn(30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.manual_seed(123)
    first = bootstrap_interval(v, n_boot=200, seed=3)
    torch.manual_seed(456)
    torch.rand(7)
    assert bootstrap_interval(v, n_boot=200, seed=3) == first
    seeds = [3, 4, 5, 6]
    assert len({bootstrap_interval(v, n_boot=200, seed=s) for s in seeds}) == len(seeds)
    assert bootstrap_interval(torch.full((6,), 0.25, dtype=torch.float64), n_boot=50, seed=9) == (0.25, 0.25)
    # the win-rate report uses and records the seed it was given
    probs = {f"q{i}": (0.9 if i % 3 else 0.2) for i in range(30)}
    runs = [judge_win_rate(scripted(probs), list(probs), ["M"] * 30, ["O"] * 30, n_boot=200, seed=s)
            for s in (1, 1, 2)]
    assert runs[0] == runs[1] and runs[0]["seed"] == 1 and runs[2]["seed"] == 2
    assert (runs[0]["ci_low"], runs[0]["ci_high"]) != (runs[2]["ci_low"], runs[2]["ci_high"])


def test_judge_calibration_by_hand(tmp_path):
    """P(chosen) = 0.92, 0.92, 0.23, 0.63; all chosen really preferred: confidences .92 .92 .77 .63,
    correct 1 1 0 1. Bins of width 0.05: |1 - .92| twice, |0 - .77|, |1 - .63| ->
    ECE = (0.08 + 0.08 + 0.77 + 0.37) / 4 = 0.325."""
    logit = {f"r{i}": math.log(p / (1 - p)) for i, p in enumerate((0.92, 0.92, 0.23, 0.63))}
    judge = CallableJudge(score_fn=lambda prompt, r: logit.get(r, 0.0))
    res = judge_calibration(judge, ["p"] * 4, list(logit), ["none"] * 4)
    assert res["ece"] == pytest.approx(0.325) and res["accuracy"] == 0.75 and res["missing"] == 0
    plot_reliability(res["bins"], tmp_path / "rel.png")
    assert (tmp_path / "rel.png").stat().st_size > 1000
