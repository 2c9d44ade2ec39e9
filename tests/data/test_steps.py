"""The registered builders (to_pairs, reward_augment, curriculum) and the file writers' round trip."""

from __future__ import annotations

import json

import pytest

from prefalign.data.builders.pipeline import BUILDERS, load_all_builders, run_builder, run_builders
from prefalign.data.formats.readers import load_examples
from prefalign.data.records import Example
from prefalign.data.formats.writers import example_row, write_examples
from tests_support import FIXTURES, write_jsonl


def test_registry_holds_the_library_builders_with_params_and_papers():
    load_all_builders()
    assert {"to_pairs", "reward_augment", "curriculum"} <= set(BUILDERS)
    assert BUILDERS["to_pairs"].params() == {"rule": "best_vs_worst", "min_gap": 0.0, "aspect": None}
    assert BUILDERS["reward_augment"].paper == "2410.08067" and BUILDERS["curriculum"].paper == "2403.07230"
    assert BUILDERS["curriculum"].params() == {"n_stages": 3}


def test_to_pairs_counts_ties_and_gaps():
    ex = Example("p", ["a", "b", "c", "d"], [3.0, 3.0, 2.5, 1.0], "list", "f:1")
    out, report = run_builder("to_pairs", [ex], {"rule": "all_pairs", "min_gap": 1.0})
    # 6 candidates: (a,b) tied; (a,c), (b,c) gap 0.5 < 1; (a,d), (b,d), (c,d) kept
    assert sorted(tuple(p.responses) for p in out) == [("a", "d"), ("b", "d"), ("c", "d")]
    assert report == {"builder": "to_pairs", "in": 1, "out": 3, "rule": "all_pairs", "lists": 1, "pairs": 3,
                      "dropped": {"tied scores": 1, "score gap below 1.0": 2}}


def test_to_pairs_reranks_by_an_aspect_or_weighted_aspects():
    rows = [{"prompt": "p", "responses": [{"text": "x", "scores": {"a": 1, "b": 5, "overall": 2}},
                                           {"text": "y", "scores": {"a": 3, "b": 1, "overall": 1}}]}]
    examples, _ = load_examples(rows)  # ranked by overall: x first
    chosen = lambda params: run_builder("to_pairs", examples, params)[0][0].responses[0]  # noqa: E731
    assert chosen({}) == "x"
    assert chosen({"aspect": "a"}) == "y"  # 3 > 1
    assert chosen({"aspect": "b"}) == "x"  # 5 > 1
    assert chosen({"aspect": {"a": 0.5, "b": 0.5}}) == "x"  # 3.0 > 2.0
    assert chosen({"aspect": {"a": 1.0, "b": -1.0}}) == "y"  # -4 < 2
    with pytest.raises(ValueError, match="no aspect 'c'"):
        chosen({"aspect": "c"})
    plain = Example("q", ["u", "v"], [1.0, 0.0], "list", "g:3")
    with pytest.raises(ValueError, match="g:3: aspect='a' needs per-aspect ratings"):
        run_builder("to_pairs", [plain], {"aspect": "a"})


def test_to_pairs_aspect_on_real_multi_aspect_ratings(tmp_path):
    """SF-NLG: the first group's responses rate informativeness 1 vs 6 and naturalness 1 vs 4."""
    raw = [json.loads(x) for x in (FIXTURES / "sf_nlg_12.jsonl").read_text().splitlines()]
    path = write_jsonl(tmp_path / "sf.jsonl", [{"prompt": r["mr"], "responses": r["responses"]} for r in raw])
    examples, _ = load_examples(path, on_bad_row="skip")
    pairs, report = run_builder("to_pairs", examples[:1], {"aspect": "naturalness"})
    assert pairs[0].responses == [raw[0]["responses"][1]["text"], raw[0]["responses"][0]["text"]]
    assert (pairs[0].extra["score_chosen"], pairs[0].extra["score_rejected"]) == (4.0, 1.0)


def test_reward_augment_step_reports_the_best_score():
    pairs = [Example("p", ["w", "l"], [1.0, 0.0], "pair", "f:1", {"score_chosen": 8.0, "score_rejected": 3.0}),
             Example("q", ["w", "l"], [1.0, 0.0], "pair", "f:2", {"score_chosen": 5.0, "score_rejected": 5.0})]
    out, report = run_builder("reward_augment", pairs, {"template": "{prompt} [{score:g}]"})
    assert [(e.prompt, e.responses) for e in out] == [("p [8]", ["w", "l"]), ("p [3]", ["l", "w"])]
    assert report["best_score"] == 8.0 and report["dropped"] == {"tied scores": 1} and report["out"] == 2


def test_curriculum_tags_stages_easiest_first_and_counts_ties():
    ranked = Example("p", ["a", "b", "c"], [4.0, 2.0, 1.0], "list", "f:1")
    tied = Example("q", ["x", "y", "z"], [2.0, 2.0, 1.0], "list", "f:2")
    out, report = run_builder("curriculum", [ranked, tied], {"n_stages": 2})
    # ranked: gaps (a,c)=3, (a,b)=2, (b,c)=1 -> stage 1, 2, 2; tied: (x,z)=1, (y,z)=1 -> stage 1, 2; (x,y) tied
    got = [(e.extra["stage"], tuple(e.responses)) for e in out]
    assert got == [(1, ("a", "c")), (1, ("x", "z")), (2, ("a", "b")), (2, ("b", "c")), (2, ("y", "z"))]
    assert report["pairs_per_stage"] == [2, 3] and report["dropped"] == {"tied scores": 1}


def test_run_builders_rejects_unknown_names_and_params():
    ex = [Example("p", ["a", "b"], [2.0, 1.0], "list", "f:1")]
    with pytest.raises(ValueError, match="unknown data builder 'nope'"):
        run_builders(ex, [{"name": "nope"}])
    with pytest.raises(ValueError, match=r"has no parameter\(s\) \['rulez'\]"):
        run_builders(ex, [{"name": "to_pairs", "rulez": "x"}])
    out, reports = run_builders(ex, [{"name": "to_pairs"}, {"name": "curriculum", "n_stages": 1}])
    assert [r["builder"] for r in reports] == ["to_pairs", "curriculum"] and out[0].extra["stage"] == 1


def round_trip(examples, path):
    write_examples(examples, path)
    back, report = load_examples(path)
    assert report.kept == len(examples) and report.skipped == {}
    for a, b in zip(examples, back):
        assert (a.prompt, a.responses, a.target, a.kind) == (b.prompt, b.responses, b.target, b.kind)
        assert example_row(a) == example_row(b)
    return back


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_every_kind_round_trips_through_the_writer(tmp_path, suffix):
    hh, _ = load_examples(FIXTURES / "hh_harmless_64.jsonl", on_bad_row="skip")
    staged, _ = run_builder("curriculum", load_examples(FIXTURES / "oasst_ranked_12.jsonl")[0], {"n_stages": 2})
    back = round_trip(staged, tmp_path / f"staged{suffix}")
    assert [e.extra["stage"] for e in back] == [e.extra["stage"] for e in staged]
    assert isinstance(back[0].prompt, list)  # OASST prompts are chat messages
    round_trip(hh[:5], tmp_path / f"hh{suffix}")
    sf = [json.loads(x) for x in (FIXTURES / "sf_nlg_12.jsonl").read_text().splitlines()]
    lists, _ = load_examples([{"prompt": r["mr"], "responses": r["responses"]} for r in sf], on_bad_row="skip")
    back = round_trip(lists, tmp_path / f"lists{suffix}")
    assert back[0].extra["aspect_scores"] == lists[0].extra["aspect_scores"]
    others = {"triple": Example("p", ["g", "c", "r"], [2.0, 1.0, 0.0], "triple"),
              "unpaired": Example("p", ["c"], [0.0], "unpaired"), "sft": Example("p", ["c"], [1.0], "sft")}
    for kind, ex in others.items():
        assert round_trip([ex], tmp_path / f"{kind}{suffix}")[0].kind == kind


def test_writer_refuses_mixed_kinds_and_mixed_parquet_columns(tmp_path):
    pair = Example("p", ["a", "b"], [1.0, 0.0], "pair")
    with pytest.raises(ValueError, match="mix kinds"):
        write_examples([pair, Example("p", ["c"], [1.0], "sft")], tmp_path / "x.jsonl")
    chat = Example([{"role": "user", "content": "hi"}], ["a", "b"], [1.0, 0.0], "pair")
    with pytest.raises(ValueError, match="column 'prompt' mixes"):
        write_examples([pair, chat], tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists() and round_trip([pair, chat], tmp_path / "x.jsonl")
