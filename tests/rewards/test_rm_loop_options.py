"""train-rm through the loop's shared options: the run-folder refusal and the best model."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from prefalign.cli.main import main
from prefalign.rewards.model import load_reward_model
from prefalign.recipes.reward_model import load_reward_config, train_reward_model
from rm_support import tiny_bert_folder

HH = Path(__file__).resolve().parents[1] / "fixtures" / "hh_harmless_64.jsonl"


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_rm_refuses_an_earlier_run(tmp_path_factory, tmp_path, capsys):
    bert = tiny_bert_folder(tmp_path_factory)
    out = tmp_path / "rm"
    args = ["train-rm", f"backbone={bert}", f"data.train={HH}", f"output_dir={out}", "max_steps=2",
            "batch_size=4", "max_length=64", "progress=false"]
    assert main(args) == 0
    before = snapshot(out)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert str(out) in err and "resume=true" in err and "overwrite=true" in err and "prefalign train-rm" in err
    assert snapshot(out) == before
    assert main(args + ["overwrite=true", "max_steps=1"]) == 0
    assert '"steps": 1' in (out / "summary.json").read_text()


def test_train_rm_keeps_its_best_model(tmp_path_factory, tmp_path):
    out = tmp_path / "rm"
    summary = train_reward_model(load_reward_config(None, [
        f"backbone={tiny_bert_folder(tmp_path_factory)}", f"data.train={HH}", f"output_dir={out}", "max_steps=4",
        "batch_size=4", "max_length=64", "progress=false", "eval_steps=2", "save_steps=2", "keep_last=0",
        "data.eval_fraction=0.25", "metric_for_best_model=rewards/accuracy", "learning_rate=1e-3"]))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["eval/rewards/accuracy"]) for r in rows if "eval/rewards/accuracy" in r]
    best_step, best_value = max(curve, key=lambda c: c[1])
    assert summary["best_step"] == best_step and summary["best_metric"]["value"] == best_value
    assert summary["best"]["greater_is_better"] is True
    if best_step > 0:  # step 0's model has no checkpoint to compare with
        a = load_file(str(out / "best" / "head.safetensors"))
        b = load_file(str(out / f"checkpoint-{best_step}" / "head.safetensors"))
        assert all(bool((a[k] == b[k]).all()) for k in a)
    assert load_reward_model(out / "best").kind.name == "bt"
