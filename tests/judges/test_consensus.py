import pytest

from prefalign.judges import CallableJudge, make_judge
from prefalign.judges.consensus import ConsensusJudge


def fixed(values):
    """A compare-only judge answering the given probabilities in order, one per pair."""
    it = iter(values)
    return CallableJudge(compare_fn=lambda p, a, b: next(it))


def test_agreeing_pairs_get_the_mean_and_the_rest_a_counted_reason():
    judge = ConsensusJudge(members=[fixed([0.9, 0.8, 0.2, None, 0.5]), fixed([0.7, 0.3, 0.4, 0.9, 0.6])])
    got = judge.compare(["q"] * 5, list("abcde"), list("vwxyz"))
    assert got == [pytest.approx(0.8), None, pytest.approx(0.3), None, None]
    assert dict(judge.stats.missing) == {"disagreement": 1, "member gave no verdict": 1, "tie": 1}
    extra = judge.extra_stats()
    # agreement is measured on pairs every member judged with a side: 2 agreed of 3
    assert (extra["agreed"], extra["disagreed"]) == (2, 1) and extra["agreement_rate"] == pytest.approx(2 / 3)


def test_built_by_name_with_member_arguments():
    judge = make_judge("consensus", members="callable,callable",
                       **{"callable.score_fn": lambda p, r: float(len(r))})
    assert [m.name for m in judge.members] == ["callable", "callable"]
    assert judge.compare(["q"], ["long answer"], ["no"])[0] > 0.5
    with pytest.raises(ValueError, match="at least two"):
        ConsensusJudge(members=[fixed([0.9])])
    with pytest.raises(ValueError, match="member.key"):
        make_judge("consensus", members="callable,callable", oops=1)


def test_consensus_of_score_judges_filters_opposite_rankings():
    by_length = CallableJudge(score_fn=lambda p, r: float(len(r)))
    by_shortness = CallableJudge(score_fn=lambda p, r: -float(len(r)))
    judge = ConsensusJudge(members=[by_length, by_shortness])
    assert judge.compare(["q"], ["long"], ["s"]) == [None]
    assert judge.extra_stats()["agreement_rate"] == 0.0
