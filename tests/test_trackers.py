"""report_to names the metric trackers: jsonl always, tensorboard on request (tensorboard: true is the
older spelling); an unknown tracker or one whose package is missing fails at config time, naming it."""

from __future__ import annotations

import importlib.util
import json
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
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbord'; available: jsonl, tensorboard"):
        load_config(None, overrides(tiny_model_dir, tmp_path / "run", "report_to=[tensorbord]"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    for spelling in ("report_to=[jsonl,tensorboard]", "tensorboard=true"):
        with pytest.raises(ConfigError, match="pip install tensorboard"):
            load_config(None, overrides(tiny_model_dir, tmp_path / "run", spelling))
    assert not (tmp_path / "run").exists()  # nothing was written before the error
