"""gpm-cyclic: the scalar bound by hand, the labels, the quick run, and the control's veto."""

from __future__ import annotations

import json

from prefalign.reproduce import gpm_cyclic
from prefalign.reproduce.claims import Verdict, run_claim


def test_scalar_reward_bounds_by_hand():
    # 3 moves: a pure 3-cycle, any order gets 2 of its 3 edges right
    assert gpm_cyclic.best_total_order_accuracy(gpm_cyclic.MOVES[3]) == 2 / 3
    # 5 moves: 10 edges, each move beats 2; the best order gets 7 (a feedback arc set of 3 is minimal)
    assert gpm_cyclic.best_total_order_accuracy(gpm_cyclic.MOVES[5]) == 0.7


def test_labels_follow_the_cycle_and_the_control_follows_an_order():
    beat = gpm_cyclic.wins(gpm_cyclic.MOVES[3], cyclic=True)
    assert beat("rock", "scissors") and beat("scissors", "paper") and beat("paper", "rock")
    assert not beat("scissors", "rock")
    order = gpm_cyclic.wins(gpm_cyclic.MOVES[3], cyclic=False)
    assert order("rock", "scissors") and order("scissors", "paper") and order("rock", "paper")
    spock = gpm_cyclic.wins(gpm_cyclic.MOVES[5], cyclic=True)
    assert spock("spock", "rock") and spock("spock", "scissors") and spock("lizard", "spock")


def test_quick_run_passes(tmp_path):
    result = run_claim("gpm-cyclic", tmp_path, quick=True)
    record = json.loads((tmp_path / "result.json").read_text())
    cyc, control = record["numbers"]["cyclic"], record["numbers"]["control"]
    assert result.verdict is Verdict.PASS
    assert cyc["gpm"]["held_out"]["accuracy"] >= 0.95 and cyc["bt"]["held_out"]["accuracy"] <= 2 / 3
    assert control["bt"]["held_out"]["accuracy"] >= 0.9
    assert cyc["n_test_pairs"] == 3 * 15 * 15  # every cross-move pair of the 15 held-out texts per move


def test_a_failed_control_makes_the_verdict_inconclusive():
    def heads(gpm, bt):
        return {"gpm": {"held_out": {"accuracy": gpm}}, "bt": {"held_out": {"accuracy": bt}},
                "best_total_order_accuracy": 2 / 3}

    assert gpm_cyclic.verdict(heads(1.0, 0.5), heads(1.0, 0.95))[0] is Verdict.PASS
    assert gpm_cyclic.verdict(heads(1.0, 0.5), heads(1.0, 0.6))[0] is Verdict.INCONCLUSIVE
    assert gpm_cyclic.verdict(heads(0.9, 0.5), heads(1.0, 0.95))[0] is Verdict.FAIL
    assert gpm_cyclic.verdict(heads(1.0, 0.7), heads(1.0, 0.95))[0] is Verdict.FAIL  # above the scalar bound
