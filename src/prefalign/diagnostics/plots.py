"""Training-curve plots from a run's metrics.jsonl (matplotlib, no display needed)."""

from __future__ import annotations

import json
from pathlib import Path

PANELS = (("loss", "eval/loss"), ("rewards/accuracy", "eval/rewards/accuracy"),
          ("rewards/margins", "eval/rewards/margins"), ("ranking/accuracy", "eval/ranking/accuracy"))


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_training_curves(metrics_path: Path, out_png: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.2))
    for ax, (train_key, eval_key) in zip(axes, PANELS):
        for key, style, label in ((train_key, "-", "train"), (eval_key, "o--", "held-out")):
            pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), style, label=label)
        ax.set_title(train_key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:  # a metric the run never logged leaves an empty panel, without a legend
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
