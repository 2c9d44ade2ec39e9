"""Win rate of one model's responses against another's under a judge, with a bootstrap interval,
and the judge's calibration on labelled pairs.

Per prompt the judge gives P(model's response preferred). With `both_orders` it is asked twice,
(model, other) and (other, model), and the two are averaged as (P_ab + 1 - P_ba) / 2: an LLM judge
that favours whichever response comes first then cancels out. A judge whose compare() comes from
per-response scores (a reward model) has no position to favour, so one order suffices.

Outcome per prompt: win (1) when P > 0.5 + tie_band, loss (0) when P < 0.5 - tie_band, tie
(1/2) otherwise (tie_band = 0: only P = 0.5 exactly). A prompt where either order got no verdict
(None) is excluded and counted, never guessed. Win rate = mean outcome; the interval is the
seeded percentile bootstrap over prompts (Efron & Tibshirani 1993, ch. 13).
"""

from __future__ import annotations

import torch

from prefalign.diagnostics.calibration import expected_calibration_error, reliability_bins
from prefalign.judges.base import Judge


def position_free(judge: Judge) -> bool:
    """True when compare() is the Bradley-Terry link of scores (the base class's), so order cannot
    matter; a judge may also say so itself with a `position_free` attribute."""
    if hasattr(judge, "position_free"):
        return bool(judge.position_free)
    # a CallableJudge without compare_fn falls back to the base class's score-based compare
    return type(judge).compare is Judge.compare or getattr(judge, "compare_fn", "absent") is None


def outcomes_from_probs(probs: list, tie_band: float = 0.0) -> list[float | None]:
    if not 0.0 <= tie_band < 0.5:
        raise ValueError(f"tie_band must lie in [0, 0.5), got {tie_band}")
    out = []
    for p in probs:
        if p is None:
            out.append(None)
        elif p > 0.5 + tie_band:
            out.append(1.0)
        elif p < 0.5 - tie_band:
            out.append(0.0)
        else:
            out.append(0.5)
    return out


def bootstrap_interval(values: torch.Tensor, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple:
    """Percentile bootstrap interval of the mean of `values` (resampling with a seeded generator)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(values), (n_boot, len(values)), generator=g)
    means = values[idx].mean(1)
    alpha = (1 - level) / 2
    return float(torch.quantile(means, alpha)), float(torch.quantile(means, 1 - alpha))


def win_rate_from_outcomes(outcomes: list, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    kept = torch.tensor([o for o in outcomes if o is not None], dtype=torch.float64)
    missing = len(outcomes) - len(kept)
    if len(kept) == 0:
        raise ValueError(f"the judge gave no verdict on any of the {len(outcomes)} prompts")
    low, high = bootstrap_interval(kept, n_boot, level, seed)
    return {"win_rate": float(kept.mean()), "ci_low": low, "ci_high": high, "level": level,
            "wins": int((kept == 1).sum()), "ties": int((kept == 0.5).sum()), "losses": int((kept == 0).sum()),
            "judged": len(kept), "missing": missing, "bootstrap_samples": n_boot, "seed": seed}


def judge_win_rate(judge: Judge, prompts: list, model_responses: list, other_responses: list,
                   both_orders: bool | None = None, tie_band: float = 0.0, n_boot: int = 2000,
                   seed: int = 0) -> dict:
    """Win rate of `model_responses` against `other_responses` (aligned per prompt) under `judge`.

    both_orders=None: ask both orders unless the judge is position-free (see module docstring).
    """
    if not len(prompts) == len(model_responses) == len(other_responses):
        raise ValueError("prompts and both response lists must be aligned")
    if both_orders is None:
        both_orders = not position_free(judge)
    forward = judge.compare(prompts, model_responses, other_responses)
    probs = forward
    if both_orders:
        backward = judge.compare(prompts, other_responses, model_responses)
        # 0.5 + (f - b) / 2, not (f + 1 - b) / 2: equal answers in both orders must give 0.5 exactly
        probs = [None if f is None or b is None else 0.5 + (f - b) / 2 for f, b in zip(forward, backward)]
    result = win_rate_from_outcomes(outcomes_from_probs(probs, tie_band), n_boot, seed=seed)
    result.update(both_orders=both_orders, tie_band=tie_band,
                  mean_probability=sum(p for p in probs if p is not None) / max(result["judged"], 1))
    if both_orders:
        # share of prompts where the judge picks the same position in both orders (first both
        # times, or second both times): its position bias, made visible
        pairs = [(f, b) for f, b in zip(forward, backward) if f is not None and b is not None]
        result["order_inconsistent"] = sum((f - 0.5) * (b - 0.5) > 0 for f, b in pairs) / max(len(pairs), 1)
    return result


def judge_calibration(judge: Judge, prompts: list, chosen: list, rejected: list, n_bins: int = 10) -> dict:
    """Reliability bins and ECE of the judge's P(chosen preferred) on labelled pairs (outcome 1).

    Pairs without a verdict are excluded and counted; `probs` holds every verdict (None included).
    """
    probs = judge.compare(prompts, chosen, rejected)
    kept = [p for p in probs if p is not None]
    if not kept:
        raise ValueError(f"the judge gave no verdict on any of the {len(probs)} labelled pairs")
    ones = [1.0] * len(kept)
    bins = reliability_bins(kept, ones, n_bins)
    return {"pairs": len(kept), "missing": len(probs) - len(kept), "ece": expected_calibration_error(kept, ones, n_bins),
            "accuracy": sum(p > 0.5 for p in kept) / len(kept) + 0.5 * sum(p == 0.5 for p in kept) / len(kept),
            "bins": [vars(b) for b in bins], "probs": probs}


def plot_reliability(bins: list[dict], out_png, title: str = "Judge reliability") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.2, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    filled = [b for b in bins if b["count"]]
    width = bins[0]["high"] - bins[0]["low"]
    ax.bar([b["low"] for b in filled], [b["accuracy"] for b in filled], width=width, align="edge",
           edgecolor="black", alpha=0.7, label="accuracy in bin")
    ax.plot([0.5, 1], [0.5, 1], "--", color="grey", label="perfect calibration")
    ax.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], "o", color="C3",
            label="(mean confidence, accuracy)")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    fig.suptitle(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.01), ncol=2, frameon=False)  # above the bars
    ax.grid(alpha=0.3)
    hist.bar([b["low"] for b in bins], [b["count"] for b in bins], width=width, align="edge", edgecolor="black")
    hist.set_xlabel("confidence max(P, 1 - P)")
    hist.set_ylabel("pairs")
    hist.set_xlim(0.5, 1.0)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
