"""pal-plural: the quick run and the rules (gap over one BT, few-shot level, a curve without real drops)."""

from __future__ import annotations

import json

from prefalign.reproduce import pal_plural
from prefalign.reproduce.claims import Verdict, run_claim


def test_quick_run_passes(tmp_path):
    result = run_claim("pal-plural", tmp_path, quick=True)
    n = json.loads((tmp_path / "result.json").read_text())["numbers"]
    assert result.verdict is Verdict.PASS
    assert n["pal"]["per_user_accuracy_mean"] - n["bt"]["per_user_accuracy_mean"] >= 0.15
    curve = n["unseen_users_accuracy_by_shots"]
    assert curve["8"] >= 0.8 and curve["8"] > curve["0"] + 0.2  # the few comparisons carry the user's taste


def results(bt=0.5, curve=None, se=0.02):
    curve = curve or {0: 0.5, 1: 0.7, 2: 0.8, 4: 0.85, 8: 0.9}
    return {"pal": {"per_user_accuracy_mean": 0.9}, "bt": {"per_user_accuracy_mean": bt},
            "unseen_users_accuracy_by_shots": curve, "unseen_users_standard_error_by_shots": {k: se for k in curve}}


def test_rules():
    assert pal_plural.verdict(results())[0] is Verdict.PASS
    assert pal_plural.verdict(results(bt=0.7))[0] is Verdict.INCONCLUSIVE
    dip = {0: 0.5, 1: 0.8, 2: 0.7, 4: 0.85, 8: 0.9}
    # a drop of 0.1: beyond 2 SE of the difference when each point has SE 0.02 (2 * 0.028), within it at 0.05
    v, why = pal_plural.verdict(results(curve=dip))
    assert v is Verdict.FAIL and "1->2 shots" in why
    assert pal_plural.verdict(results(curve=dip, se=0.05))[0] is Verdict.PASS
    assert pal_plural.verdict(results(curve={0: 0.5, 1: 0.6, 2: 0.7, 4: 0.75, 8: 0.78}))[0] is Verdict.FAIL
