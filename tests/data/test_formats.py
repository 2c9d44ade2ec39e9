"""Formats and row validation on real fixture rows."""

from __future__ import annotations

import gzip
import json

import pytest

from prefalign.data.formats.readers import load_examples, seeded_split
from prefalign.data.builders.pairs import list_to_pairs
from prefalign.data.records import DataError, split_hh_dialogue
from tests_support import FIXTURES, write_jsonl


def test_hh_dialogue_split_at_last_shared_assistant_turn():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help?\n\nAssistant: Sure, here."
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help?\n\nAssistant: No."
    prompt, c, r = split_hh_dialogue(chosen, rejected, "f", 1)
    assert prompt == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help?\n\nAssistant:"
    assert (c, r) == (" Sure, here.", " No.")


def test_hh_file_detected_and_split():
    examples, report = load_examples(FIXTURES / "hh_harmless_64.jsonl")
    assert report.rows == report.kept == 64 and len(examples) == 64
    ex = examples[0]
    assert ex.kind == "pair" and ex.target == [1.0, 0.0]
    assert ex.prompt.endswith("\n\nAssistant:")
    raw = json.loads((FIXTURES / "hh_harmless_64.jsonl").read_text().splitlines()[0])
    assert ex.prompt + ex.responses[0] == raw["chosen"] and ex.prompt + ex.responses[1] == raw["rejected"]


def test_prompt_chosen_rejected_text_and_chat(tmp_path):
    rows = [{"prompt": "2+2?", "chosen": "4", "rejected": "5"},
            {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}],
             "rejected": [{"role": "assistant", "content": "go away"}]}]
    examples, _ = load_examples(write_jsonl(tmp_path / "p.jsonl", rows))
    assert [e.kind for e in examples] == ["pair", "pair"]
    assert examples[1].prompt == [{"role": "user", "content": "hi"}]


def test_ultrafeedback_sample_keeps_scores():
    examples, _ = load_examples(FIXTURES / "ultrafeedback_12.jsonl")
    assert len(examples) == 12 and "score_chosen" in examples[0].extra


def test_ranked_oasst_and_best_vs_worst():
    examples, _ = load_examples(FIXTURES / "oasst_ranked_12.jsonl")
    raw = json.loads((FIXTURES / "oasst_ranked_12.jsonl").read_text().splitlines()[0])
    ex = examples[0]
    assert ex.kind == "list" and len(ex.responses) == len(raw["responses"])
    assert ex.target == [-float(r["rank"]) for r in raw["responses"]]  # rank 0 (best) -> highest score
    (pair,) = list_to_pairs(ex, "best_vs_worst")
    best = min(raw["responses"], key=lambda r: r["rank"])
    worst = max(raw["responses"], key=lambda r: r["rank"])
    assert pair.responses == [best["text"], worst["text"]] and pair.target == [1.0, 0.0]


def test_multi_aspect_needs_an_aspect_when_no_overall(tmp_path):
    rows = [{"prompt": "p", "responses": [{"text": "a", "scores": {"x": 1.0}}, {"text": "b", "scores": {"x": 2.0}}]}]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    with pytest.raises(DataError, match="score_aspect"):
        load_examples(path)
    examples, _ = load_examples(path, score_aspect="x")
    assert examples[0].target == [1.0, 2.0]


def test_unpaired_and_triples(tmp_path):
    un, _ = load_examples(write_jsonl(tmp_path / "u.jsonl", [{"prompt": "p", "completion": "c", "label": False}]))
    assert un[0].kind == "unpaired" and un[0].target == [0.0]
    tri, _ = load_examples(write_jsonl(tmp_path / "t.jsonl",
                                       [{"prompt": "p", "gold": "g", "chosen": "c", "rejected": "r"}]))
    assert tri[0].kind == "triple" and tri[0].responses == ["g", "c", "r"]


@pytest.mark.parametrize("row, field, message", [
    ({"prompt": "p", "chosen": "a"}, "rejected", "missing"),
    ({"prompt": "p", "chosen": 3, "rejected": "b"}, "chosen", "must be a string"),
    ({"prompt": "p", "chosen": "  ", "rejected": "b"}, "chosen", "empty"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "rejected", "identical"),
    ({"prompt": "p", "completion": "c", "label": "yes"}, "label", "true or false"),
])
def test_bad_rows_name_file_row_and_field(tmp_path, row, field, message):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"} if "chosen" in row else \
        {"prompt": "p", "completion": "c", "label": True}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, good, row])
    with pytest.raises(DataError) as info:
        load_examples(path)
    err = info.value
    assert (err.source, err.row, err.field) == (str(path), 3, field)
    assert message in str(err) and str(path) in str(err) and "row 3" in str(err)


def test_non_utf8_row_is_an_error_naming_the_row(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "caf\xe9", "chosen": "a", '
                     b'"rejected": "b"}\n')
    with pytest.raises(DataError, match=r"row 2.*UTF-8"):
        load_examples(path)


def test_skip_counts_every_bad_row(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "x", "rejected": "x"},
            {"prompt": "p", "chosen": "", "rejected": "b"}, {"prompt": "p", "chosen": "c", "rejected": "d"}]
    examples, report = load_examples(write_jsonl(tmp_path / "s.jsonl", rows), on_bad_row="skip")
    assert len(examples) == 2 and report.rows == 4 and sum(report.skipped.values()) == 2
    assert report.as_dict()["skipped"] == 2 and len(report.first_errors) == 2


def test_json_csv_parquet_gzip_and_dataset_agree(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(5)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    with open(tmp_path / "d.csv", "w") as f:
        f.write("prompt,chosen,rejected\n" + "".join(f"{r['prompt']},{r['chosen']},{r['rejected']}\n" for r in rows))
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    sources = [tmp_path / "d.json", tmp_path / "d.csv", tmp_path / "d.parquet", tmp_path / "d.jsonl.gz",
               datasets.Dataset.from_list(rows), rows]
    loaded = [[(e.prompt, e.responses) for e in load_examples(s)[0]] for s in sources]
    assert all(x == loaded[0] for x in loaded) and len(loaded[0]) == 5


def test_csv_chat_cells_are_parsed(tmp_path):
    msgs = json.dumps([{"role": "user", "content": "hi"}]).replace('"', '""')
    (tmp_path / "c.csv").write_text(f'prompt,chosen,rejected\n"{msgs}",hello,bye\n')
    examples, _ = load_examples(tmp_path / "c.csv")
    assert examples[0].prompt == [{"role": "user", "content": "hi"}]


def test_seeded_split_is_deterministic():
    examples, _ = load_examples(FIXTURES / "hh_harmless_64.jsonl")
    a = seeded_split(examples, 0.25, seed=3)
    b = seeded_split(examples, 0.25, seed=3)
    c = seeded_split(examples, 0.25, seed=4)
    assert [e.source for e in a[1]] == [e.source for e in b[1]] != [e.source for e in c[1]]
    assert len(a[1]) == 16 and len(a[0]) == 48
    assert not {e.source for e in a[0]} & {e.source for e in a[1]}


def test_unknown_format_fields_are_explained(tmp_path):
    with pytest.raises(DataError, match="cannot tell the format"):
        load_examples(write_jsonl(tmp_path / "x.jsonl", [{"question": "q", "answer": "a"}]))
