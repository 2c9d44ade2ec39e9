"""The gold-reward testbed: VADER as a judge, pairs sampled and labelled by it, and the reproductions'
verdict rules (each one able to PASS, FAIL and stay INCONCLUSIVE) on numbers made up to hit them."""

from __future__ import annotations

import math

import pytest
import torch

from prefalign.data.builders.pipeline import run_builder
from prefalign.data.builders.registry import BuildContext
from prefalign.data.records import Example
from prefalign.judges import make_judge
from prefalign.reproduce import dpo_frontier, likelihood_overopt, overoptimisation
from prefalign.reproduce.gold_testbed import distinct_2, gated_gold, quality_threshold, story_prompts

vader = pytest.importorskip("vaderSentiment.vaderSentiment")


def test_vader_judge_is_the_compound_score_of_the_response_alone():
    judge = make_judge("vader_sentiment")
    texts = ["I love this wonderful day!", "This is a terrible, awful, sad mess.", "The box is on the table."]
    direct = [vader.SentimentIntensityAnalyzer().polarity_scores(t)["compound"] for t in texts]
    assert judge.score(["any prompt"] * 3, texts) == direct
    assert direct[0] > 0.5 and direct[1] < -0.5 and direct[2] == 0.0
    # compare is the Bradley-Terry link of two scores at temperature 0.1: the order cannot matter
    p = judge.compare(["x"], [texts[0]], [texts[1]])[0]
    assert p == pytest.approx(1 / (1 + math.exp(-(direct[0] - direct[1]) / 0.1)))
    assert judge.compare(["x"], [texts[1]], [texts[0]])[0] == pytest.approx(1 - p)
    with pytest.raises(ValueError, match="response 0"):
        judge.score(["x"], [[{"role": "assistant", "content": "hi"}]])


def fixed_generator(samples: list[str]):
    def generate(prompts, settings):
        assert settings.num_return_sequences == len(samples)
        return [list(samples) for _ in prompts]
    return generate


def test_gold_pairs_keep_every_pair_that_differs_and_count_the_ties():
    samples = ["I love it, wonderful!", "I hate it, awful.", "The box.", "The car."]
    context = BuildContext(judge=make_judge("vader_sentiment"), generator=fixed_generator(samples))
    prompts = [Example("Once upon a time", [], [], "prompt", "p:0")]
    pairs, report = run_builder("gold_pairs", prompts, {"num_samples": 4}, context)
    # love > neutral (x2) > hate, love > hate; box vs car is a tie (both 0): 5 of the 6 pairs
    got = {(e.responses[0], e.responses[1]) for e in pairs}
    assert got == {(samples[0], samples[1]), (samples[0], samples[2]), (samples[0], samples[3]),
                   (samples[2], samples[1]), (samples[3], samples[1])}
    assert all(e.extra["score_chosen"] > e.extra["score_rejected"] for e in pairs)
    assert report["pairs"] == 5 and report["dropped"] == {"ties": 1} and report["share_prompts_std_ge_0.1"] == 1.0
    best, _ = run_builder("gold_pairs", prompts, {"num_samples": 4, "rule": "best_vs_worst"}, context)
    assert [(e.responses[0], e.responses[1]) for e in best] == [(samples[0], samples[1])]
    flat = BuildContext(judge=make_judge("vader_sentiment"), generator=fixed_generator(["The box.", "The car."]))
    none, report = run_builder("gold_pairs", prompts, {"num_samples": 2}, flat)
    assert none == [] and report["share_prompts_std_ge_0.1"] == 0.0 and report["dropped"] == {"ties": 1}
    with pytest.raises(ValueError, match="generator"):
        run_builder("gold_pairs", prompts, {}, BuildContext())


def test_pairs_to_unpaired_labels_chosen_desirable_and_rejected_undesirable():
    pair = Example("p", ["good", "bad"], [1.0, 0.0], "pair", "f:1")
    rows, report = run_builder("pairs_to_unpaired", [pair])
    assert [(e.responses, e.target, e.kind) for e in rows] == [(["good"], [1.0], "unpaired"),
                                                                (["bad"], [0.0], "unpaired")]
    assert report["pairs"] == 1 and report["rows"] == 2


def test_story_prompts_are_distinct_and_held_out_names_never_train():
    train, held = story_prompts(200, False), story_prompts(100, True)
    assert len(set(train)) == 200 and len(set(held)) == 100 and not set(train) & set(held)
    with pytest.raises(ValueError, match="distinct"):
        story_prompts(10_000, True)


def gain(mean, low, high):
    return {"mean": mean, "low": low, "high": high}


def gap_point(kl, mean, low, high):
    return {"kl": kl, "a": 0.5, "b": 0.5 - mean, "gap": {"mean": mean, "low": low, "high": high, "resamples": 1000}}


def frontier_numbers(**change):
    cells = [{"objective": "dpo", "beta": 0.1, "kl": 3.0, "score": 0.5}, {"objective": "dpo", "beta": 1.0, "kl": 1.0,
                                                                           "score": 0.3},
             {"objective": "sft", "beta": None, "kl": 2.0, "score": 0.35}]
    numbers = {"spread_ok": True, "spread": "s", "cells": cells,
               "best_of_n": [{"n": 1, "score": 0.1}, {"n": 2, "score": 0.2}, {"n": 4, "score": 0.3}],
               "bon_gain": gain(0.2, 0.1, 0.3), "dpo_best_gain": gain(0.3, 0.2, 0.4),
               "frontier_gaps": {"sft": [gap_point(1, 0.1, 0.02, 0.2), gap_point(2, 0.2, 0.1, 0.3),
                                         gap_point(4, 0.06, 0.01, 0.1)]}}
    numbers.update(change)
    return numbers


def test_dpo_frontier_rules_pass_fail_and_stay_open():
    assert dpo_frontier.verdict(frontier_numbers())[0] == "PASS"
    assert dpo_frontier.verdict(frontier_numbers(spread_ok=False))[0] == "INCONCLUSIVE"
    assert dpo_frontier.verdict(frontier_numbers(dpo_best_gain=gain(0.05, -0.05, 0.15)))[0] == "INCONCLUSIVE"
    assert dpo_frontier.verdict(frontier_numbers(dpo_best_gain=gain(-0.1, -0.2, 0.0)))[0] == "FAIL"
    worse_kl = frontier_numbers()
    worse_kl["cells"][0]["kl"], worse_kl["cells"][1]["kl"] = 1.0, 3.0  # KL rises with beta
    state, reason = dpo_frontier.verdict(worse_kl)
    assert state == "FAIL" and "Spearman +1.00" in reason
    bon_falls = frontier_numbers(best_of_n=[{"n": 1, "score": 0.3}, {"n": 2, "score": 0.2}, {"n": 4, "score": 0.4}])
    assert dpo_frontier.verdict(bon_falls)[0] == "FAIL"
    assert dpo_frontier.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_dpo_frontier_gap_rule_needs_the_margin_and_an_interval_above_zero():
    def with_point(point):
        numbers = frontier_numbers()
        numbers["frontier_gaps"]["sft"][1] = point
        return dpo_frontier.verdict(numbers)

    assert with_point(gap_point(2, 0.04, 0.01, 0.07))[0] == "INCONCLUSIVE"  # below the 0.05 margin, could reach it
    assert with_point(gap_point(2, 0.1, -0.01, 0.2))[0] == "INCONCLUSIVE"  # interval touches 0
    state, reason = with_point(gap_point(2, 0.01, -0.02, 0.049))  # the interval lies below the margin
    assert state == "FAIL" and "KL 2: DPO" in reason
    assert with_point(gap_point(2, -0.2, -0.3, -0.1))[0] == "FAIL"  # Preferred-FT above
    state, reason = with_point({"kl": 2, "a": 0.5, "b": None, "gap": None})
    assert state == "INCONCLUSIVE" and "KL 2: beyond Preferred-FT's largest KL" in reason
    # Unlikelihood only has to be matched: a negative mean whose interval reaches 0 stays open
    for point, want in ((gap_point(2, 0.0, -0.1, 0.1), "PASS"), (gap_point(2, -0.05, -0.15, 0.02), "INCONCLUSIVE"),
                        (gap_point(2, -0.1, -0.2, -0.01), "FAIL")):
        numbers = frontier_numbers()
        numbers["frontier_gaps"]["unlikelihood"] = [point]
        assert dpo_frontier.verdict(numbers)[0] == want


def rows_of(points, noise=0.0, prompts=6):
    """Evaluations with these (mean KL, mean score); per-prompt noise +-noise that averages to 0."""
    return [{"kl": [kl] * prompts, "score": [score + noise * (1 if j % 2 else -1) for j in range(prompts)]}
            for kl, score in points]


def test_envelope_keeps_the_points_nothing_beats_at_no_more_kl():
    points = [(0.0, 0.2), (2.0, 0.6), (4.0, 0.5), (6.0, 0.9), (7.0, 0.8)]
    assert dpo_frontier.frontier(points) == [(0.0, 0.2), (2.0, 0.6), (6.0, 0.9)]
    assert dpo_frontier.envelope(points, 1.0) == pytest.approx(0.4)  # halfway from 0.2 to 0.6
    assert dpo_frontier.envelope(points, 4.0) == pytest.approx(0.75)  # the dominated (4, 0.5) is skipped
    assert dpo_frontier.envelope(points, 6.5) == pytest.approx(0.9)  # flat after the best point
    assert dpo_frontier.envelope(points, 7.5) is None and dpo_frontier.envelope([], 1.0) is None


def test_frontier_gap_by_hand_and_its_interval():
    a = [(0.0, 0.2), (2.0, 0.6), (4.0, 0.5), (6.0, 0.9)]
    b = [(0.0, 0.2), (3.0, 0.35), (5.0, 0.3)]
    gaps = dpo_frontier.frontier_gap(rows_of(a), rows_of(b), kls=(1.0, 2.0, 4.0, 5.5), n_boot=200)
    # by hand: a's envelope 0.4, 0.6, 0.75; b's 0.25, 0.3, 0.35 (flat after its best point at KL 3)
    assert [p["a"] for p in gaps[:3]] == pytest.approx([0.4, 0.6, 0.75])
    assert [p["b"] for p in gaps[:3]] == pytest.approx([0.25, 0.3, 0.35])
    for p, want in zip(gaps, (0.15, 0.3, 0.4)):
        # no spread across prompts: every resample gives the same gap
        assert p["gap"]["mean"] == pytest.approx(want)
        assert p["gap"]["low"] == pytest.approx(want) and p["gap"]["high"] == pytest.approx(want)
    assert gaps[3]["b"] is None and gaps[3]["gap"] is None  # beyond b's largest KL (5)
    noisy = dpo_frontier.frontier_gap(rows_of(a, noise=0.1), rows_of(b), kls=(2.0,), n_boot=300)[0]["gap"]
    assert noisy["mean"] == pytest.approx(0.3) and noisy["low"] < 0.3 < noisy["high"]
    assert noisy["high"] - noisy["low"] > 0.05


def run_rows(a: float, b: float, ds: list[float], prompts: int = 6, noise: float = 0.0):
    """One run's evaluations whose gold gain is exactly a d - b d log d (+ per-prompt noise that averages to 0)."""
    rows = [{"step": 0, "kl": [0.0] * prompts, "score": [0.0] * prompts}]
    for i, d in enumerate(ds, 1):
        y = a * d - b * d * math.log(d)
        jitter = [noise * (1 if j % 2 else -1) for j in range(prompts)]
        rows.append({"step": i, "kl": [d * d] * prompts, "score": [y + e for e in jitter]})
    return rows


def test_overoptimisation_fit_recovers_a_known_hump_and_its_peak():
    a, b = 1.0, 0.8
    f = overoptimisation.analyse([run_rows(a, b, [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0])], n_boot=50)
    assert f["a"] == pytest.approx(a, abs=1e-6) and f["b"] == pytest.approx(b, abs=1e-6)
    assert f["d_star"] == pytest.approx(math.exp(a / b - 1), rel=1e-5) and f["rmse_log"] < 1e-6 < f["rmse_quadratic"]
    state, reason = overoptimisation.verdict({"spread_ok": True, "spread": "", "fit": f})
    assert state == "PASS", reason
    # a reward that keeps rising (b < 0): no hump, a FAIL
    rising = overoptimisation.analyse([run_rows(0.2, -0.3, [0.5, 1.0, 1.5, 2.0, 2.5])], n_boot=50)
    assert overoptimisation.verdict({"spread_ok": True, "spread": "", "fit": rising})[0] == "FAIL"
    # KL barely moved: too little to fit, whatever the numbers
    still = overoptimisation.analyse([run_rows(a, b, [0.1, 0.2, 0.3, 0.4])], n_boot=50)
    assert overoptimisation.verdict({"spread_ok": True, "spread": "", "fit": still})[0] == "INCONCLUSIVE"
    one = overoptimisation.analyse([run_rows(a, b, [1.0])], n_boot=5)  # one checkpoint: nothing to fit
    assert overoptimisation.verdict({"spread_ok": True, "spread": "", "fit": one})[0] == "INCONCLUSIVE"
    x = torch.tensor([1.0, 2.0, 3.0])
    assert overoptimisation.fit(x, 2 * x - 0.5 * x * x, "quadratic")[:2] == pytest.approx((2.0, 0.5))


def indicator_rows(entropy, mass, gold_per_prompt):
    return [{"step": 10 * i, "topk_entropy": h, "topk_mass": m, "score": g, "kl": [0.0] * len(g)}
            for i, (h, m, g) in enumerate(zip(entropy, mass, gold_per_prompt))]


def test_likelihood_overopt_stops_at_the_last_healthy_checkpoint_and_judges_the_gain():
    rows = indicator_rows([2.0, 1.95, 1.7, 1.2], [0.9, 0.9, 0.88, 0.7], [[0.0] * 4, [0.5] * 4, [0.4] * 4, [0.0] * 4])
    # entropy 1.7 < 0.9 x 2.0 at index 2: the indicator trips there, early stopping keeps index 1
    assert likelihood_overopt.stop_index(rows) == (2, 1)
    assert likelihood_overopt.stop_index(indicator_rows([2.0, 1.9], [0.9, 0.87], [[0.0], [0.0]])) == (None, 1)
    assert likelihood_overopt.stop_index(indicator_rows([2.0, 1.9], [0.9, 0.84], [[0.0], [0.0]])) == (1, 0)

    def numbers(trip, stop_gain, peak_gain):
        return {"spread_ok": True, "spread": "", "trip_step": trip, "stop_step": 10, "peak_step": 10,
                "rows": [{"entropy": 2.0, "mass": 0.9}, {"entropy": 1.2, "mass": 0.7}],
                "stop_minus_last": stop_gain, "peak_minus_last": peak_gain}

    assert likelihood_overopt.verdict(numbers(20, gain(0.4, 0.3, 0.5), gain(0.4, 0.3, 0.5)))[0] == "PASS"
    assert likelihood_overopt.verdict(numbers(None, gain(0.0, 0.0, 0.0), gain(0.4, 0.3, 0.5)))[0] == "FAIL"
    assert likelihood_overopt.verdict(numbers(20, gain(-0.2, -0.3, -0.1), gain(0.4, 0.3, 0.5)))[0] == "FAIL"
    # the gold score never fell: nothing to stop early from, the testbed cannot tell
    assert likelihood_overopt.verdict(numbers(20, gain(0.0, -0.1, 0.1), gain(0.0, 0.0, 0.0)))[0] == "INCONCLUSIVE"


def test_quality_gated_gold_scores_repetition_and_unlikely_samples_minus_one():
    # 5 words, 4 bigrams, 2 distinct ("good good" and "good great" ... counted by hand)
    assert distinct_2("good good good good great") == pytest.approx(2 / 4)
    assert distinct_2("the cat sat on the mat") == 1.0 and distinct_2("hi there") == 1.0
    # the reference's own samples: per-token NLL = -ref_logp / tokens = 1, 2, ..., 100
    reference = {"ref_logp": [-float(k) for k in range(1, 101)], "tokens": [1] * 100}
    threshold = quality_threshold(reference)
    assert threshold == pytest.approx(float(torch.tensor([float(k) for k in range(1, 101)]).quantile(0.99)))
    row = {"text": ["a fine happy day out", "love love love love love", "a fine happy day out", "ok"],
           "score": [0.6, 0.9, 0.7, 0.1],
           "ref_logp": [-2.0 * 5, -1.0 * 5, -(threshold + 0.5) * 5, -3.0],
           "tokens": [5, 5, 5, 1]}
    # kept, repetition (distinct-2 = 1/4), too unlikely under the reference, kept
    assert gated_gold(row, threshold) == [0.6, -1.0, -1.0, 0.1]
