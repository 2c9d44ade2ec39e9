"""Pairing rules, label draws, the verdict cache and the checks that run before round 0."""

from __future__ import annotations

import json
import random

import pytest

from prefalign.config import ConfigError, load_online_config
from prefalign.judges.base import CallableJudge
from prefalign.losses import get_objective
from prefalign.online.methods import METHODS, apply_method
from prefalign.online.pairing import Candidate, decide, label_round
from prefalign.online.store import CachedJudge, VerdictCache
from prefalign.recipes.online import check_objective

SCORES = {"bad": 0.0, "ok": 1.0, "good": 2.0, "best": 3.0}


def score(prompt, response):
    return SCORES.get(response)


def cands(source: str, texts: list[str]) -> list[Candidate]:
    return [Candidate([source, k], t) for k, t in enumerate(texts)]


class Counting(CallableJudge):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.questions = []

    def score(self, prompts, responses):
        self.questions += list(responses)
        return super().score(prompts, responses)


def cached(tmp_path, judge=None, name="v.jsonl"):
    judge = judge or Counting(score_fn=score)
    return CachedJudge(judge, VerdictCache(tmp_path / name), "test-judge", batch_size=2), judge


def test_decide_ties_missing_and_draws():
    assert decide(None, 0, 1) == "no verdict"
    assert decide(0.5, 0, 1) == "tie"
    assert decide(0.8, 0, 1) == (True, 0.8)
    assert decide(0.2, 0, 1) == (False, 0.8)
    # M draws: the same seed gives the same label; the share matches an independent replay of the stream
    rng = random.Random(7)
    wins = sum(rng.random() < 0.7 for _ in range(9))
    expected = (True, wins / 9) if wins > 4 else (False, (9 - wins) / 9)
    assert decide(0.7, 9, 7) == expected
    assert decide(0.7, 2, 3) in ("tie", (True, 1.0), (False, 1.0))


def test_two_samples_orders_by_the_verdict_and_drops_ties(tmp_path):
    judge, _ = cached(tmp_path)
    groups = {"main": [cands("main", ["bad", "good"]), cands("main", ["best", "ok"]), cands("main", ["ok", "ok"])]}
    specs, counts = label_round("two_samples", ["p0", "p1", "p2"], groups, judge, 0, 0, 0)
    assert [s["rows"] for s in specs] == [[["main", 1], ["main", 0]], [["main", 0], ["main", 1]]]
    assert counts.dropped == {"tie": 1} and counts.examples == 2
    assert specs[0]["soft_label"] == pytest.approx(1 / (1 + 2.718281828459045 ** -2.0))


def test_best_vs_worst_and_missing_scores(tmp_path):
    judge, _ = cached(tmp_path)
    groups = {"main": [cands("main", ["ok", "best", "bad", "good"]), cands("main", ["good", "unknown", "?"])]}
    specs, counts = label_round("best_vs_worst", ["p0", "p1"], groups, judge, 0, 0, 0)
    assert [s["rows"] for s in specs] == [[["main", 1], ["main", 2]]]
    assert counts.dropped == {"fewer than two judged responses": 1}


def test_all_k_win_rates_with_the_diagonal(tmp_path):
    judge, _ = cached(tmp_path)
    groups = {"main": [cands("main", ["bad", "ok", "good"])]}
    specs, _ = label_round("all_k", ["p"], groups, judge, 0, 0, 0)
    sig = lambda d: 1 / (1 + 2.718281828459045 ** -d)  # noqa: E731
    expected = [(0.5 + sig(-1) + sig(-2)) / 3, (sig(1) + 0.5 + sig(-1)) / 3, (sig(2) + sig(1) + 0.5) / 3]
    assert specs[0]["kind"] == "list" and specs[0]["target"] == pytest.approx(expected)


def test_best_of_n_policy_vs_reference_and_mixture(tmp_path):
    judge, _ = cached(tmp_path)
    best = label_round("best_of_n", ["p"], {"main": [cands("main", ["ok", "best", "good"])]}, judge, 0, 0, 0)[0]
    assert best == [{"prompt": 0, "kind": "sft", "rows": [["main", 1]], "target": [1.0]}]
    xpo = label_round("policy_vs_reference", ["p"], {"policy": [cands("policy", ["bad"])],
                                                      "reference": [cands("reference", ["good"])]}, judge, 0, 0, 0)[0]
    assert xpo[0]["rows"] == [["reference", 0], ["policy", 0]] and xpo[0]["ref_sample"] == ["reference", 0]
    nash = label_round("policy_vs_mixture", ["p"], {"policy": [cands("policy", ["bad"])],
                                                     "mixture": [cands("mixture", ["good"])]}, judge, 0, 0, 0)[0]
    # never reordered: y from the policy first, and the soft label is P(y > y') < 1/2 here
    assert nash[0]["rows"] == [["policy", 0], ["mixture", 0]] and nash[0]["soft_label"] < 0.5


def test_candidates_plus_data_ranks_the_sample_with_the_data(tmp_path):
    judge, _ = cached(tmp_path)
    groups = {"greedy": [cands("greedy", ["best"])], "data": [cands("data", ["good", "bad"])]}
    specs, _ = label_round("candidates_plus_data", ["p"], groups, judge, 0, 0, 0)
    assert specs[0]["rows"] == [["greedy", 0], ["data", 1]] and specs[0]["ref_sample"] == ["greedy", 0]


def test_verdict_cache_never_asks_twice_and_survives_a_cut_line(tmp_path):
    judge, inner = cached(tmp_path)
    assert judge.score(["p"] * 3, ["ok", "good", "ok"]) == [1.0, 2.0, 1.0]
    assert inner.questions == ["ok", "good"]  # the repeated question is asked once
    # a kill mid-write leaves a cut last line: it is dropped and counted, everything before is kept
    path = tmp_path / "v.jsonl"
    path.write_text(path.read_text() + '["abc", 1.')
    again, inner2 = cached(tmp_path)
    assert again.cache.discarded == 1
    assert again.score(["p"] * 3, ["ok", "good", "best"]) == [1.0, 2.0, 3.0]
    assert inner2.questions == ["best"]
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.startswith('["') and line.endswith("]")]
    assert len(rows) == 3


def test_position_sensitive_judge_is_asked_both_orders(tmp_path):
    def first_bias(prompt, a, b):
        return 0.9 if SCORES[a] > SCORES[b] else 0.6  # prefers whatever comes first a little

    inner = CallableJudge(compare_fn=first_bias)
    inner.position_sensitive = True
    judge, _ = cached(tmp_path, inner)
    assert judge.compare(["p"], ["good"], ["bad"]) == [pytest.approx((0.9 + 1 - 0.6) / 2)]


def test_objectives_whose_inputs_cannot_be_produced_fail_before_round_0():
    with pytest.raises(ValueError, match="needs \\['ref_sample'\\].*two_samples"):
        check_objective(get_objective("xpo"), "two_samples")
    with pytest.raises(ValueError, match="cannot train on the pair examples"):
        check_objective(get_objective("kto"), "two_samples")
    with pytest.raises(ValueError, match="live reference"):
        check_objective(get_objective("sparsepo"), "two_samples")
    check_objective(get_objective("xpo"), "policy_vs_reference")
    check_objective(get_objective("sppo"), "all_k")


def test_presets_fill_only_missing_keys_and_reference_is_explicit():
    tree = apply_method({"objective": "ipo", "online": {"method": "online_dpo", "temperature": 0.5}})
    assert tree["objective"] == "ipo" and tree["online"]["temperature"] == 0.5
    assert tree["online"]["pairing"] == "two_samples" and tree["online"]["reference"] == "fixed"
    base = ["model=m", "data.train=d.jsonl", "online.judge=callable"]
    with pytest.raises(ConfigError, match="online.reference must be fixed .* or previous"):
        load_online_config(None, base + ["online.method=iterative_dpo"])
    cfg = load_online_config(None, base + ["online.method=iterative_dpo", "online.reference=previous"])
    assert cfg.online.samples_per_prompt == 8 and cfg.online.pairing == "best_vs_worst"
    with pytest.raises(ConfigError, match="did you mean 'sppo'"):
        load_online_config(None, base + ["online.method=spo"])
    with pytest.raises(ConfigError, match="max_length"):
        load_online_config(None, base + ["max_length=64", "online.max_new_tokens=64"])
    assert all(m.summary for m in METHODS.values())


def test_consistency_judge_keeps_only_pairs_both_judges_order_the_same_way(tmp_path):
    from prefalign.recipes.online_setup import ConsistentJudge

    def contrarian(prompt, a, b):  # agrees with the scores except about "good" vs "ok"
        flip = {a, b} == {"good", "ok"}
        return 0.8 if (SCORES[a] > SCORES[b]) != flip else 0.2

    both = ConsistentJudge(CallableJudge(score_fn=score), CallableJudge(compare_fn=contrarian))
    judge = CachedJudge(both, VerdictCache(tmp_path / "v.jsonl"), "scir", batch_size=4)
    groups = {"main": [cands("main", ["ok", "good"]), cands("main", ["bad", "best"]), cands("main", ["ok", "best"])]}
    specs, counts = label_round("two_samples", ["p0", "p1", "p2"], groups, judge, 0, 0, 0)
    assert [s["prompt"] for s in specs] == [1, 2] and counts.dropped == {"judges disagree": 1}
    specs, counts = label_round("best_vs_worst", ["p0", "p1", "p2"], groups, judge, 0, 0, 0)
    assert [s["prompt"] for s in specs] == [1, 2] and counts.dropped == {"judges disagree": 1}


def test_help_names_every_method_and_pairing():
    from dataclasses import fields

    from prefalign.config import PAIRINGS, OnlineOptions

    helps = {f.name: f.metadata["help"] for f in fields(OnlineOptions)}
    assert all(name in helps["method"] for name in METHODS)
    assert all(name in helps["pairing"] for name in PAIRINGS)
