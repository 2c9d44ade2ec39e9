"""report_to names the metric trackers: jsonl always, tensorboard, wandb and trackio on request (tensorboard: true
is the older spelling); an unknown tracker or one whose package is missing fails at config time, naming it.
wandb runs in its offline mode only: its values are read back from the run's local .wandb file."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import pytest

from prefalign.config import ConfigError, load_config
from prefalign.recipes.policy import train

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT / "tests/fixtures/hh_harmless_64.jsonl"


def overrides(model_dir, out, *more) -> list[str]:
    return [f"model={model_dir}", f"data.train={HH}", f"output_dir={out}", "max_steps=2", "batch_size=4",
            "max_length=96", "max_prompt_length=64", "data.eval_fraction=0.25", "progress=false",
            "warmup_ratio=0", "logging_steps=1", *more]


def test_report_to_tensorboard_writes_the_jsonl_values(tiny_model_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(load_config(None, overrides(tiny_model_dir, out, "report_to=[tensorboard]")))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    assert [step for step, _ in logged] == [1, 2]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars("loss")] == logged


def test_default_writes_only_jsonl(tiny_model_dir, tmp_path):
    cfg = load_config(None, overrides(tiny_model_dir, tmp_path / "run"))
    assert cfg.report_to == ["jsonl"]
    train(cfg)
    assert (tmp_path / "run" / "metrics.jsonl").is_file() and not (tmp_path / "run" / "tensorboard").exists()


def test_unknown_or_missing_tracker_fails_at_config_time(tiny_model_dir, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbord'; available: jsonl, tensorboard, wandb, trackio"):
        load_config(None, overrides(tiny_model_dir, tmp_path / "run", "report_to=[tensorbord]"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    for spelling in ("report_to=[jsonl,tensorboard]", "tensorboard=true"):
        with pytest.raises(ConfigError, match="pip install tensorboard"):
            load_config(None, overrides(tiny_model_dir, tmp_path / "run", spelling))
    assert not (tmp_path / "run").exists()  # nothing was written before the error


def wandb_records(path: Path):
    """The protobuf records of an offline run's .wandb file: a 7-byte ':W&B' header, then LevelDB-log
    framing (32 KiB blocks; each chunk has a 7-byte header: crc, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # a block's zero padding: the next chunk starts at the next block
            pos += left
            continue
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record
            parts = b""


def test_report_to_wandb_offline_logs_name_config_and_steps(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")  # in the dev extra
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_ERROR_REPORTING": "false",
                       "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "WANDB_CACHE_DIR": str(tmp_path / "cache")
                       }.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "my-run"
    train(load_config(None, overrides(tiny_model_dir, out, "report_to=[wandb]", "learning_rate=1e-3")))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    files = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    runs, history = [], {}
    for record in wandb_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            runs.append(record.run)
        elif kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            history[items["_step"]] = items
    assert [r.display_name for r in runs] == ["my-run"]
    config = {u.key: json.loads(u.value_json) for u in runs[0].config.update}
    assert config["objective"] == "dpo" and config["learning_rate"] == 1e-3 and config["max_steps"] == 2
    for row in rows:  # every logged row, train and eval, arrives at its step with its values
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                assert history[row["step"]][key] == pytest.approx(value, rel=1e-6), (row["step"], key)
    assert any("loss" in r for r in rows) and any("eval/loss" in r for r in rows)


def test_report_to_trackio_logs_name_config_and_steps_locally(tiny_model_dir, tmp_path, monkeypatch):
    # trackio reads TRACKIO_DIR when it is imported: set it first, so the run's SQLite file lands in tmp_path
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    monkeypatch.setenv("TRACKIO_PROJECT", "prefalign-test")
    monkeypatch.delenv("TRACKIO_SPACE_ID", raising=False)
    monkeypatch.delenv("TRACKIO_SERVER_URL", raising=False)
    pytest.importorskip("trackio", reason="trackio is not installed (optional extra: pip install 'prefalign[trackio]')")
    from trackio.sqlite_storage import SQLiteStorage

    out = tmp_path / "my-run"
    train(load_config(None, overrides(tiny_model_dir, out, "report_to=[trackio]", "learning_rate=1e-3")))
    assert (tmp_path / "trackio" / "prefalign-test.db").is_file()
    config = SQLiteStorage.get_run_config("prefalign-test", "my-run")
    assert config["objective"] == "dpo" and config["learning_rate"] == 1e-3 and config["max_steps"] == 2
    logged = {}
    for entry in SQLiteStorage.get_logs("prefalign-test", "my-run"):
        logged.setdefault(entry["step"], {}).update(entry)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows:  # every logged row, train and eval, arrives at its step with its values
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                assert logged[row["step"]][key] == pytest.approx(value, rel=1e-6), (row["step"], key)
    assert any("loss" in r for r in rows) and any("eval/loss" in r for r in rows)
