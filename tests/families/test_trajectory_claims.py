"""The two trajectory reproductions run in their quick setting, write their reports, and their
verdict rules can fail."""

from __future__ import annotations

import json

from prefalign.reproduce.claims import Verdict, run_claim
from prefalign.reproduce import trajectory_bon, trajectory_regret


def test_trajectory_regret_quick(tmp_path):
    result = run_claim("trajectory-regret", tmp_path, quick=True)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["verdict"] == result.verdict.value and (tmp_path / "trajectory_regret.png").stat().st_size > 1000
    mean = result.numbers["mean"]
    # the quick sweep is 30 and 1000 labels: regret gets to the goal with 1000, partial return does not
    assert mean["regret"][1000] > 0.99
    assert mean["partial_return"][1000] < 0.95
    assert result.verdict is Verdict.PASS


def test_trajectory_regret_rule_fails_when_partial_return_is_faster_or_regret_never_arrives():
    fast_pr = {"regret": {10: 0.5, 100: 0.995}, "partial_return": {10: 0.995, 100: 0.999}}
    assert trajectory_regret.verdict(fast_pr)[0] is Verdict.FAIL
    never = {"regret": {10: 0.5, 100: 0.95}, "partial_return": {10: 0.5, 100: 0.6}}
    assert trajectory_regret.verdict(never)[0] is Verdict.FAIL
    # a count that dips below the bar after reaching it does not count as reached
    assert trajectory_regret.labels_to_near_optimal({10: 0.995, 100: 0.9, 1000: 0.999}) == 1000


def test_trajectory_bon_quick(tmp_path):
    result = run_claim("trajectory-bon", tmp_path, quick=True)
    assert (tmp_path / "trajectory_bon.png").stat().st_size > 1000 and (tmp_path / "metrics.jsonl").exists()
    mean = result.numbers["mean_return"]
    assert mean["DPO policy"] > mean["reference"]  # GRAPE's direction: the trained policy does better
    assert result.numbers["eval_end"]["eval/rewards/accuracy"] > 0.9
    assert result.verdict is Verdict.PASS and mean["best-of-16"] > mean["random-of-16"]
    assert mean["reference best-of-16"] > mean["reference"]  # the implicit reward also reranks base samples


def test_trajectory_bon_rule_fails_and_hedges():
    optimum = 10.0
    assert trajectory_bon.verdict([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], optimum)[0] is Verdict.FAIL
    assert trajectory_bon.verdict([1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 0.0, 1.5], optimum)[0] is Verdict.INCONCLUSIVE
    assert trajectory_bon.verdict([2.0, 2.1, 1.9, 2.0], [1.0, 1.0, 1.1, 0.9], optimum)[0] is Verdict.PASS
    # random picks already at the optimum: no room to select, whatever the difference says
    assert trajectory_bon.verdict([10.0, 10.0, 9.9], [9.9, 9.9, 9.9], optimum)[0] is Verdict.INCONCLUSIVE
