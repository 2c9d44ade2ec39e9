"""RSO (arXiv:2309.06657): acceptance rates and the tilted distribution on synthetic pools; pair counts."""

import math
import random

import pytest

from prefalign.data.builders.pipeline import BuildContext, run_builder
from prefalign.data.records import Example
from prefalign.data.builders.rso import RsoReport, rejection_sample, rso
from prefalign.judges import CallableJudge


def pool(rewards, name="p"):
    return Example(f"prompt {name}", [f"{name}-cand{i}" for i in range(len(rewards))], list(rewards), "list", name)


def test_first_pass_acceptance_rate_matches_its_expectation():
    """400 prompts x 8 candidates, rewards spread on [0, 3], beta = 1, num_samples = 8 so the
    first pass scans every candidate. Accepts are independent Bernoulli(p_i), p_i =
    exp((r_i - r_max) / beta): the count's mean is sum p_i and its sd sqrt(sum p_i (1 - p_i))."""
    gen = random.Random(1)
    examples = [pool([gen.uniform(0, 3) for _ in range(8)], str(k)) for k in range(400)]
    p = [math.exp(r - max(e.target)) for e in examples for r in e.target]
    _, report = rso(examples, beta=1.0, num_samples=8, context=BuildContext(seed=3))
    d = report.as_dict()
    assert report.first_scan == 3200
    assert d["expected_first_pass_acceptance_rate"] == pytest.approx(sum(p) / 3200)
    sd = math.sqrt(sum(x * (1 - x) for x in p))
    assert abs(report.first_accepted - sum(p)) < 4 * sd
    assert report.accepted == 3200  # with num_samples = pool size the rescans take everything


def test_first_pass_samples_the_tilted_distribution():
    """Pools of 8 x reward 0, 5 x reward 1, 3 x reward 2 (r_max = 2), beta = 1: the first pass
    accepts each candidate with p = e^-2, e^-1, 1, so its accepted rewards follow the pool tilted
    by exp(r / beta): proportions 8e^-2 : 5e^-1 : 3 = 0.183 : 0.311 : 0.507 (untilted: 0.5 : 0.31
    : 0.19). Pearson chi-square on 3 bins (2 degrees of freedom) below 13.8 (p = 0.001)."""
    rewards = [0.0] * 8 + [1.0] * 5 + [2.0] * 3
    rng, counts = random.Random(7), [0, 0, 0]
    for _ in range(2000):
        report = RsoReport()
        accepted = rejection_sample(rewards, 16, 1.0, rng, report)
        for i in accepted[: report.first_accepted]:
            counts[int(rewards[i])] += 1
    weights = [8 * math.exp(-2), 5 * math.exp(-1), 3.0]
    total = sum(counts)
    expected = [total * w / sum(weights) for w in weights]
    chi2 = sum((c - x) ** 2 / x for c, x in zip(counts, expected))
    assert chi2 < 13.8, (counts, expected)
    assert counts[2] == 2000 * 3  # reward = r_max is always accepted (u < 1)


def test_stops_at_num_samples_and_empty_pool():
    rng = random.Random(0)
    assert len(rejection_sample([0.0, 1.0, 2.0, 3.0], 2, 0.5, rng)) == 2
    assert sorted(rejection_sample([0.0, 5.0], 10, 0.1, rng)) == [0, 1]  # pool runs out
    with pytest.raises(ValueError, match="beta > 0"):
        rejection_sample([0.0], 1, 0.0, rng)


@pytest.mark.parametrize("pairing,n_pairs,dropped", [("tournament", 7, {}), ("first_round", 4, {}),
                                                      ("best_vs_random", 1, {})])
def test_pair_counts_with_eight_accepted(pairing, n_pairs, dropped):
    """beta huge: every p = 1, all 8 candidates accepted; tournament 4 + 2 + 1 = 7 pairs."""
    pairs, report = rso([pool(range(8))], beta=1e9, num_samples=8, pairing=pairing, context=BuildContext())
    assert len(pairs) == n_pairs and report.pairs == n_pairs and report.accepted == 8
    assert report.as_dict()["dropped"] == dropped
    assert all(p.extra["score_chosen"] > p.extra["score_rejected"] for p in pairs)
    if pairing == "tournament":
        assert pairs[-1].responses[0] == "p-cand7"  # the final is won by the best candidate
    if pairing == "best_vs_random":
        assert pairs[0].responses[0] == "p-cand7"


def test_odd_samples_bye_and_unpaired():
    pairs, _ = rso([pool(range(5))], beta=1e9, num_samples=5, pairing="tournament", context=BuildContext())
    assert len(pairs) == 4  # single elimination always plays n - 1 matches
    pairs, report = rso([pool(range(5))], beta=1e9, num_samples=5, pairing="first_round", context=BuildContext())
    assert len(pairs) == 2 and report.dropped == {"odd sample left unpaired": 1}


def test_ties_are_dropped_and_counted():
    pairs, report = rso([pool([1.0, 1.0])], beta=1.0, num_samples=2, pairing="first_round", context=BuildContext())
    assert pairs == [] and report.dropped == {"tie": 1}


def test_seeded_and_reproducible():
    ex = [pool([0.0, 0.3, 0.9, 1.2, 0.1, 2.0, 1.5, 0.7, 0.2, 1.1])]
    a, _ = run_builder("rso", ex, {"beta": 0.5, "num_samples": 4}, BuildContext(seed=5))
    b, _ = run_builder("rso", ex, {"beta": 0.5, "num_samples": 4}, BuildContext(seed=5))
    assert [p.responses for p in a] == [p.responses for p in b] and len(a) == 3


def test_judge_rewards_and_labels():
    """Rewards from judge.score (text length); labels from judge.compare preferring the shorter
    text, so every pair's chosen is the shorter one even though its reward is lower; a None
    verdict emits no pair and is counted."""
    texts = ["a", "bbb", "cc", "dddd"]
    judge = CallableJudge(score_fn=lambda p, r: len(r),
                          compare_fn=lambda p, a, b: None if "cc" in (a, b) else float(len(a) < len(b)))
    ex = [Example("q", texts, [1.0, 0.0], "pair", "s")]  # a pair example: rewards come from the judge
    pairs, report = rso(ex, beta=1e9, num_samples=4, pairing="first_round", rewards="judge", labels="judge",
                        context=BuildContext(judge=judge))
    for p in pairs:
        assert len(p.responses[0]) < len(p.responses[1])
        assert p.extra["score_chosen"] == len(p.responses[0])
    assert len(pairs) == 1 and report.dropped == {"no judge verdict": 1}  # "cc" sits in one of the 2 pairs


def test_data_rewards_need_lists():
    with pytest.raises(ValueError, match="kind 'list'"):
        rso([Example("q", ["a", "b"], [1.0, 0.0], "pair", "f:1")], context=BuildContext())
