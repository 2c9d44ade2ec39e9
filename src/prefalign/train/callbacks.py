"""Loop callbacks: keep the best model by a held-out metric (with early stopping), and the
likelihood over-optimisation monitor.

KeepBest follows what Hugging Face Trainer users expect: `metric_for_best_model`,
`greater_is_better` (derived from the name unless set: a name containing "loss" is better
lower), `early_stopping_patience` evaluations without an improvement larger than
`early_stopping_threshold`, and `load_best_model_at_end`. It differs in one place: the
evaluation before the first step counts, so a run that only gets worse keeps its starting
model as the best one instead of its least bad later checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

from prefalign.train.checkpoint import write_atomic
from prefalign.train.loop import Callback

BEST_FILE = "best.json"


def metric_key(name: str) -> str:
    """'loss' and 'eval/loss' name the same held-out metric."""
    return name if name.startswith("eval/") else f"eval/{name}"


def lower_is_better(name: str) -> bool:
    return "loss" in name


class KeepBest(Callback):
    """Write the trainee's weights to `best_dir` whenever the tracked held-out metric improves."""

    name = "keep_best"

    def __init__(self, trainee, accelerator, best_dir: Path, metric: str, greater_is_better: bool | None = None,
                 patience: int = 0, threshold: float = 0.0, load_at_end: bool = False):
        self.trainee, self.accelerator, self.best_dir = trainee, accelerator, Path(best_dir)
        self.metric = metric_key(metric)
        self.greater = (not lower_is_better(self.metric)) if greater_is_better is None else greater_is_better
        self.patience, self.threshold, self.load_at_end = patience, threshold, load_at_end
        self.value, self.step, self.metrics, self.bad_evals = None, None, {}, 0
        self.stopped_at, self.loaded = None, False

    def better(self, value: float, margin: float = 0.0) -> bool:
        if math.isnan(value):
            return False
        if self.value is None:
            return True
        return value > self.value + margin if self.greater else value < self.value - margin

    def on_evaluate(self, step: int, metrics: dict) -> str | None:
        if self.metric not in metrics:
            raise ValueError(f"metric_for_best_model: {self.metric!r} is not a held-out metric of this run; "
                             f"it reports {sorted(metrics)}")
        value = float(metrics[self.metric])
        # patience counts evaluations that do not beat the best by more than the threshold (as HF's
        # EarlyStoppingCallback); the best model itself is replaced on any strict improvement
        self.bad_evals = 0 if self.better(value, self.threshold) else self.bad_evals + 1
        if self.better(value):
            self.value, self.step, self.metrics = value, step, dict(metrics)
            self.save(step)
        if self.patience and self.bad_evals >= self.patience:
            self.stopped_at = step
            return (f"{self.metric} has not improved on {self.value:.4g} (step {self.step}) for "
                    f"{self.bad_evals} evaluations (early_stopping_patience={self.patience})")
        return None

    def save(self, step: int) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            record = {"step": step, "metric": self.metric, "value": self.value, "greater_is_better": self.greater}

            def write(tmp: Path) -> None:
                self.trainee.save(tmp)
                (tmp / BEST_FILE).write_text(json.dumps(record, indent=1))

            write_atomic(self.best_dir, write)
        acc.wait_for_everyone()

    def on_train_end(self, step: int) -> None:
        if self.load_at_end and self.step is not None and self.step != step:
            self.accelerator.wait_for_everyone()
            self.trainee.load(self.best_dir)
            self.loaded = True

    def state_dict(self) -> dict:
        return {"value": self.value, "step": self.step, "metrics": self.metrics, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        # a run killed after its last checkpoint may have written a later best/; the resumed run
        # replays those steps identically, so it finds (and writes) that same best model again
        if state:
            self.value, self.step = state["value"], state["step"]
            self.metrics, self.bad_evals = state["metrics"], state["bad_evals"]

    def summary(self) -> dict:
        return {"metric": self.metric, "greater_is_better": self.greater, "step": self.step, "value": self.value,
                "model": str(self.best_dir) if self.step is not None else None,
                "early_stopping_patience": self.patience, "stopped_early_at": self.stopped_at,
                "final_is_best": self.loaded, "metrics": self.metrics}


class OveroptCallback(Callback):
    """Runs a diagnostics.overoptimization.OveroptMonitor: a baseline at step 0, then when due."""

    name = "overopt"

    def __init__(self, monitor, accelerator, model: Callable, log: Callable[[int, dict], None], max_steps: int):
        self.monitor, self.accelerator, self.model, self.log, self.max_steps = \
            monitor, accelerator, model, log, max_steps

    def measure(self, step: int) -> bool:
        return self.monitor.at_step(step, self.accelerator, self.model(), lambda m: self.log(step, m))

    def on_train_start(self, step: int) -> str | None:
        if step == 0:  # the baseline the over-optimisation threshold is relative to
            self.measure(0)
        return None

    def on_step_end(self, step: int) -> str | None:
        if self.monitor.due(step, self.max_steps) and self.measure(step):
            return (f"likelihood over-optimisation: {self.monitor.indicator} fell below "
                    f"{1 - self.monitor.threshold:.3g} x its step-0 value; the last healthy model was kept")
        return None
