"""Metric sinks: metrics.jsonl, the console, TensorBoard, Weights & Biases and Trackio (report_to). Only the main
process writes."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

# report_to's trackers -> (the module a sink imports, the pip package that provides it);
# metrics.jsonl is always written: run folder tools (diagnose, quickstart's curve) read it
TRACKERS = {"jsonl": (None, None), "tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
            "trackio": ("trackio", "trackio")}


def trackers(report_to: list, tensorboard: bool = False) -> list[str]:
    """The trackers a run writes to, jsonl first; `tensorboard: true` is the older spelling of
    `report_to: [tensorboard]`. An unknown name or one whose package is missing is an error."""
    names = list(dict.fromkeys(["jsonl", *report_to, *(["tensorboard"] if tensorboard else [])]))
    for name in names:
        if name not in TRACKERS:
            raise ValueError(f"report_to: unknown tracker {name!r}; available: {', '.join(TRACKERS)}")
        module, package = TRACKERS[name]
        if module and importlib.util.find_spec(module) is None:
            raise ValueError(f"report_to: {name} needs the {package!r} package: pip install {package}")
    return names


class JsonlSink:
    def __init__(self, path: Path, append: bool = False):
        self.file = open(path, "a" if append else "w", encoding="utf-8")

    def log(self, step: int, metrics: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        self.file.write(json.dumps({"step": step, **clean}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TensorBoardSink:
    def __init__(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder))

    def log(self, step: int, metrics: dict) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


class RunSink:
    """A tracker run (wandb, Trackio): finite numbers logged at their step, the run finished on close."""

    run = None

    def log(self, step: int, metrics: dict) -> None:
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if numbers:
            self.run.log(numbers, step=step)

    def close(self) -> None:
        self.run.finish()


class WandbSink(RunSink):
    """A Weights & Biases run named after the run folder, with the resolved config. It follows wandb's
    own settings (WANDB_MODE=offline, WANDB_PROJECT, login); its local files go in folder/wandb."""

    def __init__(self, folder: Path, name: str, config: dict):
        import os

        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "prefalign"), name=name, config=config,
                              dir=str(folder))



class TrackioSink(RunSink):
    """A Trackio run named after the run folder, with the resolved config. It follows Trackio's own settings:
    local by default (a SQLite file under TRACKIO_DIR, default HF_HOME/trackio), TRACKIO_PROJECT for the
    project (default prefalign), and TRACKIO_SPACE_ID to log to a Hugging Face Space instead."""

    def __init__(self, name: str, config: dict):
        import os

        import trackio

        self.run = trackio.init(project=os.environ.get("TRACKIO_PROJECT", "prefalign"), name=name, config=config)



class Progress:
    """A rich progress bar showing loss, accuracy and tokens/s; silent when disabled."""

    def __init__(self, total: int, start: int, enabled: bool, description: str = "train"):
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
                TimeRemainingColumn

            self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=False)
            self.task = self.bar.add_task(description, total=total, completed=start, info="")
            self.bar.start()

    def update(self, advance: int = 1, **info) -> None:
        if self.bar is not None:
            text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
            kwargs = {"info": text} if info else {}
            self.bar.update(self.task, advance=advance, **kwargs)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def progress_iter(items, description: str, enabled: bool = True):
    """Iterate `items` (a sized iterable) behind a progress bar; a plain iteration when disabled."""
    items = list(items)
    bar = Progress(len(items), 0, enabled, description)
    try:
        for item in items:
            yield item
            bar.update()
    finally:
        bar.close()


def print_summary(summary: dict) -> None:
    """A training run's summary on the console: held-out metrics before and after, skipped rows, the model."""
    from rich.console import Console
    from rich.table import Table

    before, after = summary.get("eval_start", {}), summary.get("eval_end", {})
    table = Table(title=f"held-out metrics: {summary['objective']} ({summary['steps']} steps)")
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for key in sorted(set(before) | set(after)):
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        table.add_row(key.removeprefix("eval/"), fmt(before.get(key)), fmt(after.get(key)))
    console = Console()
    if before or after:
        console.print(table)
    skipped = summary["data"]["train"]["skipped"]
    if skipped:
        console.print(f"[yellow]{skipped} bad training rows skipped[/]: {summary['data']['train']['skipped_by_reason']}")
    if summary.get("stopped_early"):
        console.print(f"stopped early at step {summary['steps']}: {summary['stopped_early']}")
    best = summary.get("best")
    if best and best["step"] is not None:
        console.print(f"best model ({best['metric']} {best['value']:.4f} at step {best['step']}): {best['model']}")
    if "final_model" in summary:
        console.print(f"final model: {summary['final_model']}")
