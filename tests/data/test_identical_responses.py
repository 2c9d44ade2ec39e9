"""Ranked lists in which two systems wrote the same text: the copies merge into one response with
their scores averaged (per aspect too), the merges are counted, and a list that collapses to one
response is a bad row. Real SF-Hotel/Restaurant groups (fixtures/sf_nlg_identical_outputs.jsonl)."""

from __future__ import annotations

import json

import pytest

from prefalign.data.formats.readers import load_examples
from prefalign.data.records import DataError
from tests_support import FIXTURES, write_jsonl

RAW = [json.loads(x) for x in (FIXTURES / "sf_nlg_identical_outputs.jsonl").read_text(encoding="utf-8").splitlines()]
ASPECTS = ("informativeness", "naturalness", "overall")


def ranked_rows(raw: list[dict]) -> list[dict]:
    return [{"id": r["id"], "prompt": r["mr"], "responses": r["responses"]} for r in raw]


def merged_by_hand(responses: list[dict]) -> tuple[list[str], list[dict]]:
    """Distinct texts in first-seen order, each with every aspect averaged over its copies."""
    texts = list(dict.fromkeys(r["text"] for r in responses))
    ratings = []
    for t in texts:
        copies = [r["scores"] for r in responses if r["text"] == t]
        ratings.append({a: sum(c[a] for c in copies) / len(copies) for a in ASPECTS})
    return texts, ratings


def test_real_groups_with_a_repeated_output_are_merged_and_counted(tmp_path):
    """sfhot-312 (3 outputs, 2 identical) and sfhot-391 (4 outputs, 2 identical)."""
    groups = RAW[:2]
    assert [len(r["responses"]) - len({x["text"] for x in r["responses"]}) for r in groups] == [1, 1]
    examples, report = load_examples(write_jsonl(tmp_path / "sf.jsonl", ranked_rows(groups)))
    for ex, raw in zip(examples, groups):
        texts, ratings = merged_by_hand(raw["responses"])
        assert ex.responses == texts and len(texts) == len(raw["responses"]) - 1
        assert ex.extra["aspect_scores"] == ratings
        assert ex.target == [r["overall"] for r in ratings]  # ranked by "overall" when no aspect is set
    assert (report.merged_lists, report.merged_responses) == (2, 2)
    assert report.as_dict()["merged_identical_responses"] == {"lists": 2, "responses": 2}
    weights = {"informativeness": 0.5, "naturalness": 0.5}
    weighted, _ = load_examples(write_jsonl(tmp_path / "sf.jsonl", ranked_rows(groups)), score_aspect=weights)
    for ex, raw in zip(weighted, groups):
        _, ratings = merged_by_hand(raw["responses"])
        assert ex.target == [0.5 * r["informativeness"] + 0.5 * r["naturalness"] for r in ratings]


def test_strings_with_a_scores_list_and_ranks_merge_too(tmp_path):
    raw = RAW[1]["responses"]
    texts, ratings = merged_by_hand(raw)
    rows = [{"prompt": "p", "responses": [r["text"] for r in raw], "scores": [r["scores"]["overall"] for r in raw]},
            {"prompt": "p", "responses": [{"text": r["text"], "rank": i} for i, r in enumerate(raw)]}]
    (by_score, by_rank), report = load_examples(write_jsonl(tmp_path / "s.jsonl", rows))
    assert by_score.responses == by_rank.responses == texts
    assert by_score.target == [r["overall"] for r in ratings]
    copies = [[i for i, r in enumerate(raw) if r["text"] == t] for t in texts]
    assert by_rank.target == [-sum(c) / len(c) for c in copies]  # ranks negated, then averaged
    assert (report.merged_lists, report.merged_responses) == (2, 2)


def test_a_list_that_collapses_to_one_response_is_a_bad_row(tmp_path):
    """sfres-8: both systems wrote the same sentence. An error naming file, row and field; with
    on_bad_row=skip it is counted as skipped, and not as a merge."""
    path = write_jsonl(tmp_path / "sf.jsonl", ranked_rows(RAW))
    with pytest.raises(DataError) as info:
        load_examples(path)
    assert (info.value.source, info.value.row, info.value.field) == (str(path), 3, "responses")
    assert "all 2 responses are the same text" in str(info.value)
    examples, report = load_examples(path, on_bad_row="skip")
    assert len(examples) == 2 and report.as_dict()["skipped_by_reason"] == {
        "responses: all 2 responses are the same text: nothing to rank": 1}
    assert report.as_dict()["merged_identical_responses"] == {"lists": 2, "responses": 2}


def test_a_pair_whose_chosen_equals_rejected_is_still_an_error(tmp_path):
    text = RAW[2]["responses"][0]["text"]
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": RAW[2]["mr"], "chosen": text, "rejected": text}])
    with pytest.raises(DataError, match="row 1, field 'rejected': is identical to chosen"):
        load_examples(path)


def test_merges_reach_summary_json_and_data_inspect(tiny_model_dir, tmp_path):
    from prefalign.cli.main import main
    from prefalign.config import load_config
    from prefalign.recipes.policy import train

    rows = ranked_rows(RAW[:2]) + [json.loads(x) for x in (FIXTURES / "oasst_ranked_12.jsonl").read_text().splitlines()]
    path = write_jsonl(tmp_path / "ranked.jsonl", rows)
    out = tmp_path / "run"
    train(load_config(None, [f"model={tiny_model_dir}", f"data.train={path}", f"output_dir={out}",
                             "data.eval_fraction=0.25", "max_steps=1", "batch_size=2", "max_length=64",
                             "max_prompt_length=32", "progress=false"]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["train"]["merged_identical_responses"] == {"lists": 2, "responses": 2}
    assert main(["data", "inspect", str(path), "--out-dir", str(tmp_path)]) == 0
    stats = json.loads((tmp_path / "ranked.inspect.json").read_text())
    assert stats["merged_identical_responses"] == {"lists": 2, "responses": 2} and stats["kept"] == 14
