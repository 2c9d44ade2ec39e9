"""The split and dataset config of a DatasetDict folder (and so of a Hub id, which goes through the same
open_dataset) reach every reader beyond `prefalign train`: train-rm's pairs, ratings and steps, `prefalign
data build/inspect`, and `prefalign diagnose --data` (and the held-out split a run names)."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import pytest

from prefalign.cli.main import main
from prefalign.data.formats.hub import DatasetNotFoundError
from prefalign.data.records import DataError
from prefalign.rewards.data import load_pairs, load_ratings, load_steps

datasets = pytest.importorskip("datasets")  # the `data` extra; dev installs have it

ROOT = Path(__file__).resolve().parents[2]
HH = ROOT / "tests/fixtures/hh_harmless_64.jsonl"


def hh_rows() -> list[dict]:
    return [json.loads(line) for line in HH.read_text().splitlines() if line.strip()]


@pytest.fixture
def hh_dict(tmp_path) -> Path:
    """HH pairs as a DatasetDict: 40 train rows, 24 test rows (sizes no other split has)."""
    rows, folder = hh_rows(), tmp_path / "hh-dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:40]),
                          "test": datasets.Dataset.from_list(rows[40:])}).save_to_disk(str(folder))
    return folder


def test_reward_model_pairs_read_the_named_split(hh_dict):
    train, _ = load_pairs(str(hh_dict))
    test, info = load_pairs(str(hh_dict), split="test")
    assert (len(train), len(test)) == (40, 24) and info["load"]["rows"] == 24
    # the same rows as the file, in order: the split is a slice of it, not a re-sample
    assert [e.prompt for e in test] == [e.prompt for e in load_pairs(str(HH))[0][40:]]
    assert test[0].source == f"{hh_dict}:test:1"
    with pytest.raises(DatasetNotFoundError, match=r"no split 'dev'"):
        load_pairs(str(hh_dict), split="dev")


def test_reward_model_ratings_and_steps_read_folders_by_split_and_name_them_in_errors(tmp_path):
    ratings = [{"prompt": f"p{i}", "response": f"r{i}", "scores": {"overall": float(i)}} for i in range(5)]
    steps = [{"prompt": f"q{i}", "steps": ["a", "b"], "labels": [1, i % 2]} for i in range(5)]
    for name, rows in (("ratings", ratings), ("steps", steps)):
        datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:2]),
                              "test": datasets.Dataset.from_list(rows[2:])}).save_to_disk(str(tmp_path / name))
    got, _ = load_ratings(str(tmp_path / "ratings"), ["overall"], split="test")
    assert [e.ratings for e in got] == [[2.0], [3.0], [4.0]]
    got, _ = load_steps(str(tmp_path / "steps"), split="test")
    assert [e.labels for e in got] == [[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]]
    bad = steps[:2] + [{"prompt": "q", "steps": ["a"], "labels": [1, 0]}]
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(bad)}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError) as err:
        load_steps(str(tmp_path / "bad"), split="validation")
    assert (err.value.source, err.value.row, err.value.field) == (f"{tmp_path / 'bad'}:validation", 3, "labels")


def test_train_rm_takes_data_split_and_eval_split(hh_dict, tiny_model_dir, tmp_path):
    from prefalign.recipes.reward_model import load_reward_config, train_reward_model

    cfg = load_reward_config(None, [f"backbone={tiny_model_dir}", f"data.train={hh_dict}", f"data.eval={hh_dict}",
                                    "data.eval_split=test", f"output_dir={tmp_path / 'rm'}", "max_steps=1",
                                    "batch_size=4", "max_length=64", "progress=false"])
    summary = train_reward_model(cfg)
    assert summary["data"]["train_examples"] == 40 and summary["data"]["eval_examples"] == 24
    assert summary["data"]["files"][str(hh_dict)]["load"]["rows"] == 40
    assert summary["data"]["files"]["eval"]["load"]["rows"] == 24


def test_data_inspect_and_build_take_the_split(hh_dict, tmp_path):
    assert main(["data", "inspect", str(hh_dict), "--split", "test", "--out-dir", str(tmp_path)]) == 0
    stats = json.loads((tmp_path / "hh-dict-test.inspect.json").read_text())
    assert stats["file"] == f"{hh_dict}:test" and stats["rows"] == 24
    out = tmp_path / "built.jsonl"
    assert main(["data", "build", str(hh_dict), "--split", "test", "--builder", "dedup", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 24  # HH's test rows are all distinct
    assert main(["data", "build", str(hh_dict), "--split", "dev", "--builder", "dedup",
                 "--out", str(tmp_path / "none.jsonl")]) == 1
    assert not (tmp_path / "none.jsonl").exists()


def test_diagnose_reads_the_split_of_data_and_of_the_run(hh_dict, tmp_path):
    from prefalign.cli.diagnose import load_pairs as diagnose_pairs, run_inputs
    from prefalign.config import load_config, save_config

    inputs = {"data": str(hh_dict), "format": None, "split": "test", "dataset_config": None}
    pairs, notes = diagnose_pairs(inputs, 0)
    assert len(pairs) == 24 and pairs[0].source == f"{hh_dict}:test:1"
    # a run whose held-out data is the DatasetDict's test split: diagnose reads that split by default
    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config(None, ["model=m", f"data.train={hh_dict}", f"data.eval={hh_dict}",
                                   "data.eval_split=test"]), run / "config.yaml")
    args = Namespace(run=str(run), model=None, reference=None, data=None, format=None, beta=None, output_dir=None,
                     split=None, dataset_config=None)
    inputs = run_inputs(args)
    assert (inputs["split"], inputs["train_split"]) == ("test", "train")
    assert len(diagnose_pairs(inputs, 0)[0]) == 24
    assert run_inputs(Namespace(**{**vars(args), "split": "train"}))["split"] == "train"  # --split wins
