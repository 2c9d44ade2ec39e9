"""`prefalign eval-rm`: pairwise accuracy (overall and per subset), calibration and temperature scaling.

For each pair the model gives P(chosen > rejected) = sigmoid(z) with z its logit (BT: r_c - r_r;
PEARL: its Gaussian probability, z = logit(P)). Accuracy counts P > 0.5 (ties score 0.5). ECE is
the top-label ECE of diagnostics.calibration on [0.5, 1] bins. With a validation file, one
temperature T is fitted on its logits (NLL of sigmoid(z / T)) and ECE is reported before and
after dividing the test logits by T; accuracy cannot change (T > 0 keeps every sign).
GPM (arXiv 2410.02197) has no scalar reward: z is the logit of its own skew-symmetric P(a > b).
PAL (arXiv 2406.08469) compares for a user: each pair's `user_id` (--user-field) picks the user's
weights, and accuracy is reported overall and per user (any model gets the per-user table when
a user field is given).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import torch

from prefalign.data.builders.pairs import pairs_from_lists
from prefalign.data.formats.readers import iter_rows, load_examples
from prefalign.diagnostics.calibration import expected_calibration_error, fit_temperature, reliability_bins
from prefalign.logging import progress_iter
from prefalign.rewards.data import read_users
from prefalign.rewards.model import RewardModel


def load_eval_pairs(path: str, subset_field: str | None = None, on_bad_row: str = "error",
                    user_field: str | None = None) -> tuple[list, list[str], dict]:
    """Pairs (ranked lists -> best vs worst), each pair's subset label ("all" without a field) and
    the load report (rows skipped by reason when on_bad_row="skip"). With `user_field`, each
    pair's user id is validated (rewards/data.py) and kept in example.extra["user"]."""
    examples, report = load_examples(path, on_bad_row=on_bad_row)
    if user_field:
        examples, users = read_users(path, examples, user_field, on_bad_row, report)
        for e in examples:
            e.extra["user"] = users[e.source]
    if any(e.kind == "list" for e in examples):
        examples, _ = pairs_from_lists(examples, "best_vs_worst")
    if any(e.kind != "pair" for e in examples):
        raise ValueError(f"{path}: eval-rm needs preference pairs (or ranked lists)")
    if not subset_field:
        return examples, ["all"] * len(examples), report.as_dict()
    rows = {n: r for n, r in iter_rows(path)}
    subsets = []
    for e in examples:
        row_no = int(e.source.rsplit(":", 1)[1])
        value = rows[row_no].get(subset_field) if isinstance(rows[row_no], dict) else None
        if value is None:
            raise ValueError(f"{e.source}: no {subset_field!r} field (--subset-field)")
        subsets.append(str(value))
    return examples, subsets, report.as_dict()


def pair_logits(model: RewardModel, examples: list, batch_size: int = 16, direction=None,
                progress: bool = True) -> torch.Tensor:
    """[N] logit of P(chosen > rejected) for each pair, computed in chunks behind a progress bar."""
    out = []
    per_user = "user" in getattr(getattr(model, "head", None), "inputs", ())
    chunks = [examples[s:s + batch_size] for s in range(0, len(examples), batch_size)]
    for chunk in progress_iter(chunks, "scoring pairs", progress):
        # only a per-user model (PAL) takes users; the others ignore who asked
        users = {"users": pair_users(chunk)} if per_user else {}
        p = model.probabilities([e.prompt for e in chunk], [e.responses[0] for e in chunk],
                                [e.responses[1] for e in chunk], direction, batch_size, **users)
        out.append(torch.logit(p.double().clamp(1e-12, 1 - 1e-12)))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def pair_users(examples: list) -> list[str]:
    missing = [e.source for e in examples if e.extra.get("user") is None]
    if missing:
        raise ValueError(f"{missing[0]}: no user id; a per-user (PAL) model needs one per pair (--user-field)")
    return [e.extra["user"] for e in examples]


def grouped_accuracy(logits: torch.Tensor, labels: list[str]) -> dict:
    groups = defaultdict(list)
    for i, s in enumerate(labels):
        groups[s].append(i)
    return {s: {"pairs": len(idx), "accuracy": pair_accuracy(logits[idx])} for s, idx in sorted(groups.items())}


def pair_accuracy(logits: torch.Tensor) -> float:
    return float(((logits > 0).double() + 0.5 * (logits == 0).double()).mean())


def calibration(logits: torch.Tensor, n_bins: int = 10) -> dict:
    """ECE of sigmoid(logits) with outcome 1 (the chosen response won) and the reliability bins."""
    p = torch.sigmoid(logits)
    y = torch.ones_like(p)
    bins = reliability_bins(p, y, n_bins)
    return {"ece": expected_calibration_error(p, y, n_bins),
            "bins": [{"low": b.low, "high": b.high, "count": b.count, "confidence": nan_none(b.confidence),
                      "accuracy": nan_none(b.accuracy)} for b in bins]}


def nan_none(x: float):
    return None if isinstance(x, float) and math.isnan(x) else x


def evaluate_pairs(model: RewardModel, examples: list, subsets: list[str], valid: list | None = None,
                   batch_size: int = 16, direction=None, n_bins: int = 10, progress: bool = True) -> dict:
    logits = pair_logits(model, examples, batch_size, direction, progress)
    result = {"pairs": len(examples), "accuracy": pair_accuracy(logits), **calibration(logits, n_bins)}
    if len(set(subsets)) > 1:
        result["subsets"] = grouped_accuracy(logits, subsets)
    if examples and all(getattr(e, "extra", {}).get("user") is not None for e in examples):
        result["users"] = grouped_accuracy(logits, [e.extra["user"] for e in examples])
    if valid:
        v = pair_logits(model, valid, batch_size, direction, progress)
        # every outcome is 1 (chosen won): -log sigmoid(z / T) is the same for either orientation of
        # a pair, so no random swapping is needed; T has an interior optimum once some z are negative
        y = torch.ones_like(v)
        temperature = fit_temperature(v, y)
        after = calibration(logits / temperature, n_bins)
        result["temperature"] = {"value": temperature, "validation_pairs": len(valid), "ece_before": result["ece"],
                                 "ece_after": after["ece"], "bins_after": after["bins"]}
    return result


def reliability_png(bins: list[dict], path: Path, title: str, bins_after: list[dict] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.plot([0.5, 1.0], [0.5, 1.0], "k:", label="perfect calibration")
    for rows, style, label in ((bins, "o-", "model"), (bins_after or [], "s--", "after temperature")):
        pts = [(b["confidence"], b["accuracy"]) for b in rows if b["count"]]
        if pts:
            ax.plot(*zip(*pts), style, label=label)
    ax.set_xlabel("confidence (predicted winner)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0.5, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown_report(result: dict, model_dir: str, data: str) -> str:
    lines = ["# Reward model evaluation\n", f"model: `{model_dir}`  \ndata: `{data}` ({result['pairs']} pairs)\n",
             "| metric | value |", "|---|---|", f"| accuracy | {result['accuracy']:.4f} |", f"| ECE | {result['ece']:.4f} |"]
    if "temperature" in result:
        t = result["temperature"]
        lines += [f"| temperature | {t['value']:.4f} |", f"| ECE after temperature | {t['ece_after']:.4f} |"]
    if "subsets" in result:
        lines += ["", "| subset | pairs | accuracy |", "|---|---|---|"]
        lines += [f"| {s} | {v['pairs']} | {v['accuracy']:.4f} |" for s, v in result["subsets"].items()]
    if "users" in result:
        lines += ["", "| user | pairs | accuracy |", "|---|---|---|"]
        lines += [f"| {u} | {v['pairs']} | {v['accuracy']:.4f} |" for u, v in result["users"].items()]
    lines += ["", "![reliability diagram](reliability.png)", ""]
    return "\n".join(lines)


def write_report(result: dict, out_dir: Path, model_dir: str, data: str) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(result, indent=1))
    (out_dir / "eval.md").write_text(markdown_report(result, model_dir, data))
    reliability_png(result["bins"], out_dir / "reliability.png", f"{Path(model_dir).name}: ECE {result['ece']:.3f}",
                    result.get("temperature", {}).get("bins_after"))
    return {"json": str(out_dir / "eval.json"), "markdown": str(out_dir / "eval.md"),
            "plot": str(out_dir / "reliability.png")}
