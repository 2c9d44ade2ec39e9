"""Datasets as data sources: save_to_disk folders (Dataset and DatasetDict) and Hub dataset ids read
offline from the datasets cache, all through the same row validation as files (no mocks of datasets).

A Hub id is read by datasets.load_dataset, which reads HF_DATASETS_CACHE and the offline variables
when it is imported, so the Hub-id checks run in a fresh interpreter with those variables set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from prefalign.data.formats.hub import DatasetNotFoundError, is_dataset_source
from prefalign.data.formats.readers import load_examples
from prefalign.data.records import DataError

datasets = pytest.importorskip("datasets")  # the `data` extra; dev installs have it

ROOT = Path(__file__).resolve().parents[2]
UF = ROOT / "tests/fixtures/ultrafeedback_12.jsonl"


def fixture_rows() -> list[dict]:
    return [json.loads(line) for line in UF.read_text().splitlines() if line.strip()]


def without_source(examples):
    # Example.source says "where": it differs between the file and the folder by design
    return [replace(e, source="") for e in examples]


def test_saved_dataset_folder_gives_the_same_examples_as_the_jsonl_file(tmp_path):
    datasets.Dataset.from_list(fixture_rows()).save_to_disk(str(tmp_path / "uf"))
    from_folder, report = load_examples(str(tmp_path / "uf"))
    from_file, _ = load_examples(str(UF))
    assert report.rows == 12 and len(from_folder) == 12
    assert without_source(from_folder) == without_source(from_file)


def test_dataset_dict_folder_picks_the_split_and_lists_the_splits_when_missing(tmp_path):
    rows = fixture_rows()
    folder = tmp_path / "uf-dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:8]),
                          "test": datasets.Dataset.from_list(rows[8:])}).save_to_disk(str(folder))
    train, _ = load_examples(folder)  # default split: train
    test, _ = load_examples(folder, split="test")
    from_file, _ = load_examples(UF)
    assert without_source(train) == without_source(from_file[:8])
    assert without_source(test) == without_source(from_file[8:])
    with pytest.raises(DatasetNotFoundError, match=r"no split 'validation'.*\['test', 'train'\]"):
        load_examples(folder, split="validation")


def test_bad_row_in_a_saved_dataset_names_folder_split_row_and_field(tmp_path):
    rows = fixture_rows()
    rows[6]["chosen"] = ""
    folder = tmp_path / "bad"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(folder))
    with pytest.raises(DataError) as err:
        load_examples(folder)
    assert (err.value.source, err.value.row, err.value.field) == (f"{folder}:train", 7, "chosen")
    assert str(err.value).startswith(f"{folder}:train, row 7, field 'chosen'")
    examples, report = load_examples(folder, on_bad_row="skip")
    assert len(examples) == 11 and sum(report.skipped.values()) == 1


def test_files_are_never_taken_for_hub_ids(tmp_path):
    assert not is_dataset_source("data/train.jsonl") and not is_dataset_source("./owner/name")
    assert is_dataset_source("trl-lib/ultrafeedback_binarized") and is_dataset_source("owner/name:test")
    with pytest.raises(FileNotFoundError, match="data file not found"):
        load_examples(str(tmp_path / "missing.jsonl"))


# Builds the cache folder datasets.load_dataset leaves for a Hub dataset `owner/uf` (config "default"):
# <cache>/owner___uf/default/<version>/<hash>/ with dataset_info.json and uf-train.arrow. The arrow
# files come from the real json builder run on the fixture; only the folder and file names change.
LAY_OUT_CACHE = """
import glob, os, shutil, sys
import datasets
cache, data_file = sys.argv[1], sys.argv[2]
datasets.load_dataset("json", data_files={"train": data_file}, cache_dir=cache)
built = [p for p in glob.glob(os.path.join(cache, "json", "*", "*", "*")) if os.path.isdir(p)][0]
version, digest = built.split(os.sep)[-2:]
target = os.path.join(cache, "owner___uf", "default", version, digest)
shutil.copytree(built, target)
os.rename(os.path.join(target, "json-train.arrow"), os.path.join(target, "uf-train.arrow"))
"""

LOAD_BY_ID = """
import json, sys
from dataclasses import asdict
from prefalign.data.formats.hub import DatasetNotFoundError
from prefalign.data.formats.readers import load_examples
out = {}
for source in ("owner/uf", "owner/uf:train"):
    examples, _ = load_examples(source)
    out[source] = [asdict(e) for e in examples]
for source, split in (("owner/uf", "test"), ("owner/missing", "train")):
    try:
        load_examples(source, split=split)
    except DatasetNotFoundError as err:
        out[source + ":" + split] = str(err)
print(json.dumps(out))
"""


def offline_env(home: Path) -> dict:
    return {**os.environ, "HF_HOME": str(home), "HF_DATASETS_CACHE": str(home / "datasets"),
            "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_python(code: str, home: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env=offline_env(home))


def test_hub_id_loads_offline_from_the_datasets_cache_and_errors_name_id_split_and_offline(tmp_path):
    home = tmp_path / "hf"
    laid = run_python(LAY_OUT_CACHE, home, str(home / "datasets"), str(UF))
    assert laid.returncode == 0, laid.stderr[-3000:]
    out = run_python(LOAD_BY_ID, home)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    from_file, _ = load_examples(UF)
    expected = [{**asdict(e), "source": ""} for e in from_file]
    for source in ("owner/uf", "owner/uf:train"):
        assert [{**e, "source": ""} for e in got[source]] == expected
        assert got[source][6]["source"].startswith("owner/uf:train")
    wrong_split = got["owner/uf:test"]
    assert "'owner/uf'" in wrong_split and "'test'" in wrong_split and "['train']" in wrong_split
    missing = got["owner/missing:train"]
    assert "'owner/missing'" in missing and "split 'train'" in missing and "offline mode is on" in missing


def test_train_with_an_uncached_hub_dataset_offline_is_one_clear_error(tiny_model_dir, tmp_path):
    args = ["train", "data.train=owner/not-cached", "data.split=train_prefs", f"model={tiny_model_dir}",
            f"output_dir={tmp_path / 'run'}", "max_steps=1", "batch_size=2", "progress=false"]
    out = subprocess.run([sys.executable, "-m", "prefalign.cli", *args], capture_output=True, text=True,
                         timeout=300, env=offline_env(tmp_path / "hf"))
    assert out.returncode == 1, out.stderr[-3000:]
    assert "'owner/not-cached'" in out.stderr and "split 'train_prefs'" in out.stderr
    assert "offline mode is on" in out.stderr and "Traceback" not in out.stderr


def test_model_card_names_the_hub_dataset_not_its_split_nor_a_local_folder(tmp_path, monkeypatch):
    from prefalign.recipes.model_card import hub_id

    assert hub_id("trl-lib/ultrafeedback_binarized:train") == "trl-lib/ultrafeedback_binarized"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "uf").mkdir(parents=True)  # a save_to_disk folder given as data/uf
    assert hub_id("data/uf") is None and hub_id("data/other") == "data/other"
