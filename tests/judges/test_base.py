import math

import pytest

from prefalign.judges import JUDGES, CallableJudge, Judge, make_judge


def length_score(prompt, response):
    return float(len(response))


def test_compare_from_score_is_bradley_terry_and_skew_symmetric():
    judge = CallableJudge(score_fn=length_score, temperature=2.0)
    p = judge.compare(["q", "q"], ["abcd", "a"], ["a", "abcd"])
    assert p[0] == pytest.approx(1 / (1 + math.exp(-3 / 2.0)))
    assert p[0] + p[1] == pytest.approx(1.0)


def test_none_verdicts_are_counted_never_guessed():
    judge = CallableJudge(score_fn=lambda p, r: None if r == "?" else 1.0)
    assert judge.score(["q", "q", "q"], ["ok", "?", "fine"]) == [1.0, None, 1.0]
    assert judge.compare(["q"], ["?"], ["ok"]) == [None]
    assert judge.stats.as_dict()["missing"] == 2 and judge.stats.verdicts == 3


def test_compare_only_judge_refuses_to_score_and_checks_probabilities():
    judge = CallableJudge(compare_fn=lambda p, a, b: 0.9)
    with pytest.raises(NotImplementedError, match="compares pairs only"):
        judge.score(["q"], ["a"])
    with pytest.raises(ValueError, match="probability"):
        CallableJudge(compare_fn=lambda p, a, b: 2.0).compare(["q"], ["a"], ["b"])
    with pytest.raises(ValueError, match="aligned"):
        judge.compare(["q"], ["a", "b"], ["c"])


def test_extreme_score_gaps_stay_finite():
    judge = CallableJudge(score_fn=lambda p, r: 1e4 if r == "good" else -1e4)
    assert judge.compare(["q", "q"], ["good", "bad"], ["bad", "good"]) == [1.0, 0.0]


def test_registry_builds_by_name():
    assert JUDGES["callable"] is CallableJudge and issubclass(CallableJudge, Judge)
    assert make_judge("callable", score_fn=length_score).score(["q"], ["ab"]) == [2.0]
    with pytest.raises(ValueError, match="unknown judge"):
        make_judge("nope")


def test_functions_given_as_text_are_imported():
    judge = CallableJudge(score_fn="tests_support:length_score")
    assert judge.score(["q"], ["abc"]) == [3.0]
    with pytest.raises(ValueError, match="package.module:function"):
        CallableJudge(score_fn="no_colon")
