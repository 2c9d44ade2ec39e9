"""Training into a folder that holds a run is refused unless resume=true or overwrite=true;
overwrite deletes only the earlier run's outputs; quickstart removes only its own folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefalign.cli.main import main
from prefalign.config import load_config
from prefalign.recipes.policy import train
from prefalign.recipes.run_folders import RunFolderExists, claim_quickstart_dir

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT / "tests/fixtures/hh_harmless_64.jsonl"


def overrides(model_dir, out, *more) -> list[str]:
    return [f"model={model_dir}", f"data.train={HH}", f"output_dir={out}", "max_steps=2", "batch_size=4",
            "learning_rate=1e-3", "max_length=96", "max_prompt_length=64", "logging_steps=1",
            "data.eval_fraction=0.25", "progress=false", "warmup_ratio=0", *more]


def snapshot(folder: Path) -> dict:
    """Every file under folder with its bytes: 'untouched' means exactly these, unchanged."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_refuses_an_earlier_run_and_overwrite_replaces_only_its_outputs(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    train(load_config(None, overrides(tiny_model_dir, out, "save_steps=1", "keep_last=1")))
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    assert "final/model.safetensors" in before and "checkpoint-2/trainer_state.json" in before
    with pytest.raises(RunFolderExists) as err:
        train(load_config(None, overrides(tiny_model_dir, out, "learning_rate=1e-2")))
    message = str(err.value)
    assert str(out) in message and "resume=true" in message and "overwrite=true" in message
    for name in ("checkpoint-2", "config.yaml", "final", "metrics.jsonl", "summary.json"):
        assert name in message  # what overwrite would delete, named before anything is
    assert snapshot(out) == before
    # the CLI: exit 1, the same message on stderr, nothing changed
    assert main(["train", *overrides(tiny_model_dir, out)]) == 1
    assert "resume=true" in capsys.readouterr().err and snapshot(out) == before
    # overwrite=true with a setup error (kto needs unpaired rows) deletes nothing either
    with pytest.raises(ValueError, match="unpaired"):
        train(load_config(None, overrides(tiny_model_dir, out, "overwrite=true", "objective=kto")))
    assert snapshot(out) == before
    summary = train(load_config(None, overrides(tiny_model_dir, out, "overwrite=true", "max_steps=1")))
    after = snapshot(out)
    assert summary["steps"] == 1 and after["notes.txt"] == b"mine"
    assert not any(name.startswith("checkpoint-") for name in after)  # the earlier run's checkpoint is gone
    assert len([r for r in after["metrics.jsonl"].decode().splitlines() if '"loss"' in r]) == 1
    # the saved config resumes the run: overwrite was this command's action, not a setting kept for later
    assert "overwrite: false" in (out / "config.yaml").read_text()


def test_resume_true_continues_in_the_same_folder(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    train(load_config(None, overrides(tiny_model_dir, out, "save_steps=2")))
    summary = train(load_config(None, overrides(tiny_model_dir, out, "save_steps=2", "max_steps=3", "resume=true")))
    assert summary["steps"] == 3
    # a run without checkpoints cannot be continued: resume=true would silently start it again
    done = tmp_path / "done"
    train(load_config(None, overrides(tiny_model_dir, done)))
    before = snapshot(done)
    with pytest.raises(RunFolderExists, match="without a complete checkpoint.*overwrite=true"):
        train(load_config(None, overrides(tiny_model_dir, done, "resume=true")))
    assert snapshot(done) == before


def test_curriculum_folder_is_refused_too(tiny_model_dir, tmp_path):
    out = tmp_path / "curry"
    out.mkdir()
    (out / "stage-1").mkdir()
    (out / "summary.json").write_text("{}")
    ranked = ROOT / "tests/fixtures/ultrafeedback_12.jsonl"
    with pytest.raises(RunFolderExists, match="overwrite=true"):
        from prefalign.recipes.policy import train_curriculum

        train_curriculum(load_config(None, [f"model={tiny_model_dir}", f"data.train={ranked}", f"output_dir={out}",
                                            "data.curriculum_stages=2"]))
    assert (out / "summary.json").read_text() == "{}"


def test_quickstart_removes_only_an_earlier_quickstart(tmp_path):
    fresh = tmp_path / "qs"
    assert claim_quickstart_dir(fresh) == [] and (fresh / ".prefalign-quickstart").exists()
    (fresh / "run").mkdir()
    (fresh / "train.jsonl").write_text("{}\n")
    assert claim_quickstart_dir(fresh) == [".prefalign-quickstart", "run", "train.jsonl"]
    assert sorted(p.name for p in fresh.iterdir()) == [".prefalign-quickstart"]
    # a folder with anything else in it (or without the quickstart marker) is refused, untouched
    (fresh / "thesis.tex").write_text("x")
    with pytest.raises(RunFolderExists, match="not an earlier quickstart folder.*thesis.tex"):
        claim_quickstart_dir(fresh)
    other = tmp_path / "home"
    other.mkdir()
    (other / "run").mkdir()
    with pytest.raises(RunFolderExists, match="--output-dir"):
        claim_quickstart_dir(other)
    assert (fresh / "thesis.tex").exists() and (other / "run").is_dir()


def test_data_build_refuses_to_write_over_its_input(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_bytes(HH.read_bytes())
    assert main(["data", "build", str(data), "--builder", "to_pairs", "--out", str(tmp_path / "." / "pairs.jsonl")]) == 1
    assert "is the input file" in capsys.readouterr().err and data.read_bytes() == HH.read_bytes()


def test_diagnose_refuses_an_output_dir_that_is_not_a_report(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: m\n")
    before = snapshot(run)
    args = ["diagnose", "--model", "m", "--reference", "r", "--data", str(HH), "--output-dir", str(run)]
    assert main(args) == 1
    assert "not a diagnostics report (config.yaml)" in capsys.readouterr().err and snapshot(run) == before
