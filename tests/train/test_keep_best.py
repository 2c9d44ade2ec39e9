"""KeepBest's decisions on hand-written evaluation sequences (no model: a trainee that records saves)."""

from __future__ import annotations

import json
import math

import pytest

from prefalign.config import ConfigError, load_config
from prefalign.train.callbacks import KeepBest


class OneProcess:
    is_main_process, num_processes = True, 1

    def wait_for_everyone(self):
        pass


class Recorder:
    """Writes which 'weights' (the step it was told about) a folder holds."""

    def __init__(self):
        self.current, self.loaded = None, None

    def save(self, folder):
        (folder / "weights.json").write_text(json.dumps({"step": self.current}))

    def load(self, folder):
        self.loaded = json.loads((folder / "weights.json").read_text())["step"]


def feed(keep: KeepBest, trainee: Recorder, curve: dict) -> int | None:
    """Evaluate at each step of `curve` in order; the step training stopped at, or None."""
    for step, value in curve.items():
        trainee.current = step
        if keep.on_evaluate(step, {"eval/loss": value, "eval/rewards/accuracy": 1 - value}):
            return step
    return None


def test_lower_loss_is_better_and_patience_counts_evaluations_without_improvement(tmp_path):
    trainee = Recorder()
    keep = KeepBest(trainee, OneProcess(), tmp_path / "best", "loss", patience=2)
    curve = {0: 0.693, 10: 0.60, 20: 0.65, 30: 0.59, 40: 0.61, 50: 0.62, 60: 0.50}
    # best so far: 0.693 (0), 0.60 (10), kept (20: 1 bad), 0.59 (30: reset), 40 and 50 bad -> stop at 50
    assert feed(keep, trainee, curve) == 50
    assert (keep.step, keep.value, keep.metric, keep.greater) == (30, 0.59, "eval/loss", False)
    assert json.loads((tmp_path / "best" / "weights.json").read_text()) == {"step": 30}
    assert json.loads((tmp_path / "best" / "best.json").read_text())["step"] == 30


def test_accuracy_is_greater_is_better_and_the_explicit_setting_wins(tmp_path):
    trainee = Recorder()
    keep = KeepBest(trainee, OneProcess(), tmp_path / "a", "rewards/accuracy")
    feed(keep, trainee, {0: 0.7, 10: 0.4, 20: 0.5})  # accuracy = 1 - value: 0.3, 0.6, 0.5
    assert keep.greater and keep.step == 10 and keep.value == pytest.approx(0.6)
    keep = KeepBest(trainee, OneProcess(), tmp_path / "b", "eval/loss", greater_is_better=True)
    feed(keep, trainee, {0: 0.7, 10: 0.4, 20: 0.5})
    assert keep.step == 0 and keep.value == 0.7


def test_threshold_nan_unknown_metric_state_and_load_at_end(tmp_path):
    trainee = Recorder()
    keep = KeepBest(trainee, OneProcess(), tmp_path / "best", "loss", patience=2, threshold=0.05, load_at_end=True)
    # 0.68 beats 0.70 (a new best model) but not by more than 0.05: it still counts against the patience
    assert feed(keep, trainee, {0: 0.70, 10: 0.68, 20: math.nan}) == 20
    assert keep.step == 10
    saved = keep.state_dict()
    again = KeepBest(trainee, OneProcess(), tmp_path / "best", "loss", patience=2, threshold=0.05)
    again.load_state_dict(json.loads(json.dumps(saved)))  # through JSON, as trainer_state.json holds it
    assert (again.step, again.value, again.bad_evals) == (10, 0.68, 2)
    keep.on_train_end(20)
    assert trainee.loaded == 10 and keep.summary()["final_is_best"]
    with pytest.raises(ValueError, match="'eval/kl' is not a held-out metric.*eval/loss"):
        KeepBest(trainee, OneProcess(), tmp_path / "x", "kl").on_evaluate(0, {"eval/loss": 0.7})


@pytest.mark.parametrize("overrides,message", [
    (["metric_for_best_model=loss"], "set eval_steps > 0"),
    (["early_stopping_patience=2"], "set eval_steps > 0"),
    (["load_best_model_at_end=true"], "set eval_steps > 0"),
    (["metric_for_best_model=loss", "eval_steps=5", "data.eval_fraction=0"], "need held-out data"),
    (["early_stopping_patience=-1"], "cannot be negative"),
    (["resume=true", "overwrite=true"], "choose one"),
])
def test_best_model_keys_need_evaluations(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model=m", "data.train=t.jsonl", *overrides])


def test_quickstart_says_where_the_held_out_curve_turned():
    from prefalign.recipes.quickstart import curve_turn

    best = {"metric": "eval/loss", "step": 100, "value": 0.65, "model": "runs/quickstart/run/best"}
    summary = {"steps": 300, "best": best, "eval_end": {"eval/loss": 0.92}}
    assert curve_turn(summary) == ("the held-out loss was best at step 100 of 300 (0.6500; 0.9200 at the end): "
                                   "that model is kept in runs/quickstart/run/best")
    assert curve_turn({**summary, "best": {**best, "step": 300}}) is None  # still improving at the end
    assert curve_turn({"steps": 300, "eval_end": {}}) is None  # no metric tracked
