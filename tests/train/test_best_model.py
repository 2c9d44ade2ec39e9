"""Best model and early stopping through the real loop: a tiny Llama on real HH-RLHF pairs.

At learning rate 1e-2 on 16 training pairs, the loss on 64 HH pairs (48 of them unseen) falls
for a few steps and then rises: the run has a best step before its end, as issue 16 reported for
the quickstart's model. Expected values are read from the run's own metrics.jsonl and checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from prefalign.config import load_config
from prefalign.recipes.policy import train
from prefalign.train.checkpoint import checkpoints

ROOT = Path(__file__).resolve().parents[2]
HH = ROOT / "tests/fixtures/hh_harmless_64.jsonl"


def config(model_dir, out, *overrides):
    return load_config(None, [
        f"model={model_dir}", f"data.train={HH}", f"data.eval={HH}", "data.max_examples=16", f"output_dir={out}",
        "max_steps=16", "batch_size=4", "learning_rate=1e-2", "lr_scheduler=constant", "warmup_ratio=0",
        "max_length=96", "max_prompt_length=64", "logging_steps=1", "eval_batch_size=32", "progress=false",
        "eval_steps=2", "save_steps=2", "keep_last=0", "metric_for_best_model=loss", "early_stopping_patience=2",
        *overrides])


def eval_curve(out: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["eval/loss"]) for r in rows if "eval/loss" in r]


def weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(bool((wa[k] == wb[k]).all()) for k in wa)


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("best") / "full"
    return out, train(config(tiny_model_dir, out, "load_best_model_at_end=true"))


def test_best_holds_the_best_steps_weights_and_patience_stops_the_run(full_run):
    out, summary = full_run
    curve = eval_curve(out)
    best_step, best_value = min(curve, key=lambda c: c[1])  # min keeps the first of equal values
    assert 0 < best_step < curve[-1][0], curve  # the curve turned before the end: the case under test
    # two evaluations after the best, neither better: the run stopped at the second
    after = [v for s, v in curve if s > best_step]
    assert len(after) == 2 and min(after) >= best_value
    assert summary["steps"] == curve[-1][0] == best_step + 4 < 16
    assert summary["stopped_early"] and "early_stopping_patience=2" in summary["stopped_early"]
    assert summary["best_step"] == best_step and summary["best_metric"] == {"name": "eval/loss", "value": best_value}
    assert same_weights(out / "best", out / f"checkpoint-{best_step}")
    assert not same_weights(out / "best", out / f"checkpoint-{summary['steps']}")
    assert json.loads((out / "best" / "best.json").read_text())["step"] == best_step
    # load_best_model_at_end: final/ is the best model and eval_end its metrics; eval_last the last weights'
    assert same_weights(out / "final", out / "best")
    assert summary["eval_end"]["eval/loss"] == best_value and summary["eval_last"]["eval/loss"] == curve[-1][1]


def test_resume_restores_the_best_so_far_state(full_run, tiny_model_dir, tmp_path, monkeypatch):
    full, summary = full_run
    best_step = summary["best_step"]
    kill_at = best_step + 3  # after the best and one evaluation without improvement, before the stop
    import prefalign.train.loop as loop

    real, calls = loop.check_finite, {"n": 0}

    def killed(*args):  # called once per optimizer step, before the update
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise KeyboardInterrupt("killed")
        return real(*args)

    monkeypatch.setattr(loop, "check_finite", killed)
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        train(config(tiny_model_dir, part, "load_best_model_at_end=true"))
    monkeypatch.setattr(loop, "check_finite", real)
    assert checkpoints(part)[-1].name == f"checkpoint-{kill_at - 1}"
    # without the restored state, the resumed run would take its first evaluation as the best and not stop
    resumed = train(config(tiny_model_dir, part, "load_best_model_at_end=true", "resume=true"))
    assert resumed["steps"] == summary["steps"] and resumed["best_step"] == best_step
    assert resumed["best_metric"]["value"] == pytest.approx(summary["best_metric"]["value"], abs=1e-6)
    assert same_weights(part / "best", full / "best") and same_weights(part / "final", full / "final")


def test_best_and_the_overopt_monitor_keep_separate_folders(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    summary = train(config(tiny_model_dir, out, "max_steps=4", "early_stopping_patience=0", "overopt_steps=2",
                           "overopt_stop=0.99", "overopt_prompts=2", "overopt_max_new_tokens=4"))
    assert summary["overopt"]["best_model"] == str(out / "last-healthy")
    healthy = summary["overopt"]["best_step"]
    assert same_weights(out / "last-healthy", out / f"checkpoint-{healthy}")
    assert same_weights(out / "best", out / f"checkpoint-{summary['best_step']}" if summary["best_step"] else
                        Path(tiny_model_dir))


def test_cli_names_the_best_model(tiny_model_dir, tmp_path, capsys):
    from prefalign.cli.main import main

    out = tmp_path / "cli"
    args = ["train", f"model={tiny_model_dir}", f"data.train={HH}", f"output_dir={out}", "max_steps=2",
            "batch_size=4", "max_length=96", "max_prompt_length=64", "progress=false", "eval_steps=1",
            "early_stopping_patience=1", "learning_rate=1e-2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["metric"] == "eval/loss"  # early_stopping_patience alone tracks the loss
    assert f"best model (eval/loss {summary['best_metric']['value']:.4f} at step {summary['best_step']})" in printed
