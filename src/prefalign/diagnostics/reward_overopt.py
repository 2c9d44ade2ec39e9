"""Reward over-optimisation: judge score against distance from the reference across a run's checkpoints.

Gao, Schulman, Hilton, "Scaling Laws for Reward Model Overoptimization", arXiv:2210.10760.
With d = sqrt(KL(pi || pi_ref)), the gold reward gained over the initial policy follows, for
RL, R(d) = d (a - b log d) (their eq. for R_RL with alpha, beta). R rises, peaks, then falls as
the policy drifts from the reference: past the peak the proxy is being over-optimised.

Here "gold" is any Judge's score() of the policy's own samples (a reward model, an LLM
judge, a function), and R is the mean score of a checkpoint minus the reference's mean score,
so R(0) = 0 as the law requires. KL is estimated from the same samples (diagnostics.kl: the
mean summed log-ratio of sampled responses). The reference itself is d = 0 exactly: it is
never estimated, and it enters only as the baseline score, because the law fixes R(0) = 0 and
R/d is undefined there. A checkpoint whose sampled KL estimate is <= 0 (sampling noise near
the reference) is shown at d = 0 and left out of the fit, and counted.

Fit, in closed form: R/d = a - b log d is linear in log d. Least squares on R itself,
sum_i (R_i - d_i (a - b log d_i))^2 = sum_i d_i^2 (R_i/d_i - a + b log d_i)^2, is the linear
regression of y = R/d on x = log d with weights d^2; its weighted normal equations give
b = -cov_w(x, y) / var_w(x) and a = mean_w(y) + b mean_w(x). (An unweighted fit of R/d would
divide each point's noise by its d and let the checkpoints nearest the reference dominate.)
The peak: dR/dd = a - b log d - b = 0 gives d* = exp(a/b - 1), R(d*) = b d*, KL* = d*^2;
it exists only for b > 0 (b <= 0: R still rises at every d, no over-optimisation seen).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from prefalign.diagnostics.kl import sampled_logratios
from prefalign.models.generation import GenerateSettings, generate_batch, response_texts


def fit_gao(d, r) -> dict:
    """Least-squares a, b of R = d (a - b log d) over points with d > 0 (closed form, see the module docstring)."""
    d = torch.as_tensor(d, dtype=torch.float64)
    r = torch.as_tensor(r, dtype=torch.float64)
    if d.shape != r.shape or d.dim() != 1:
        raise ValueError(f"d and R must be 1-D and aligned, got {tuple(d.shape)} and {tuple(r.shape)}")
    keep = d > 0
    d, r = d[keep], r[keep]
    if torch.unique(d).numel() < 2:
        raise ValueError(f"the fit needs points at two or more distinct d > 0; got {d.tolist()}")
    x, y, w = d.log(), r / d, d ** 2
    mx, my = (w * x).sum() / w.sum(), (w * y).sum() / w.sum()
    slope = (w * (x - mx) * (y - my)).sum() / (w * (x - mx) ** 2).sum()
    a, b = float(my - slope * mx), float(-slope)
    residual = r - d * (a - b * d.log())
    return {"a": a, "b": b, "points": int(d.numel()), "rmse": float(residual.pow(2).mean().sqrt())}


def gao_curve(d, a: float, b: float) -> torch.Tensor:
    """R(d) = d (a - b log d), with R(0) = 0 (the limit)."""
    d = torch.as_tensor(d, dtype=torch.float64)
    return torch.where(d > 0, d * (a - b * d.clamp(min=1e-300).log()), torch.zeros_like(d))


def gao_peak(a: float, b: float) -> dict | None:
    """d*, KL* and R* of the fitted curve's maximum; None when b <= 0 (no maximum)."""
    if b <= 0:
        return None
    d_star = math.exp(a / b - 1)
    return {"d": d_star, "kl": d_star ** 2, "gain": b * d_star}


def mean_score(scores: list) -> tuple[float, int, int]:
    """Mean of the scores given, how many were given and how many were missing (None)."""
    given = [s for s in scores if s is not None]
    return (sum(given) / len(given) if given else float("nan")), len(given), len(scores) - len(given)


@torch.no_grad()
def sample_and_score(policy, reference, tokenizer, prompts: list, judge, settings: GenerateSettings) -> dict:
    """The policy's samples for `prompts`: KL estimate against `reference` (None: not estimated) and judge scores."""
    torch.manual_seed(settings.seed)
    ratios, scores = [], []
    for s in range(0, len(prompts), settings.batch_size):
        chunk = prompts[s:s + settings.batch_size]
        if reference is None:
            batch = generate_batch(policy, tokenizer, chunk, settings)
        else:
            batch, r = sampled_logratios(policy, reference, tokenizer, chunk, settings)
            ratios += r.tolist()
        texts = response_texts(tokenizer, batch)
        scores += judge.score([chunk[i] for i in batch.prompt_index], texts)
    score, scored, missing = mean_score(scores)
    out = {"score": score, "scored": scored, "missing_scores": missing, "samples": len(scores)}
    if ratios:
        t = torch.tensor(ratios, dtype=torch.float64)
        out["kl"] = float(t.mean())
        out["kl_stderr"] = float(t.std() / len(ratios) ** 0.5) if len(ratios) > 1 else 0.0
    return out


def reward_vs_kl(models: list[tuple[int, Path]], reference_dir: Path, judge, prompts: list,
                 max_new_tokens: int = 48, seed: int = 0, batch_size: int = 8, dtype: str = "float32",
                 device: str | None = None, progress: bool = True, loader=None, tokenizer=None) -> dict:
    """Judge score and sampled KL for each (step, model folder) against the reference; the Gao fit and its peak.

    Every checkpoint samples with the same seed. The reference folder (if listed in `models`,
    e.g. a run's step 0) is taken as d = 0 without estimating anything. loader(folder) -> model
    replaces load_model (e.g. to merge a LoRA checkpoint); tokenizer defaults to the reference's.
    """
    from prefalign.logging import progress_iter
    from prefalign.models.causal_lm import load_model, load_tokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loader = loader or (lambda folder: load_model(str(folder), dtype))
    settings = GenerateSettings(max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)
    tokenizer = tokenizer or load_tokenizer(str(reference_dir))
    reference = loader(reference_dir).to(device).eval()
    base = sample_and_score(reference, None, tokenizer, prompts, judge, settings)
    rows = [{"step": 0, "model": str(reference_dir), "kl": 0.0, "d": 0.0, "gain": 0.0, **base, "is_reference": True}]
    same = Path(reference_dir).resolve()
    for step, folder in progress_iter(models, "reward vs KL", enabled=progress):
        if Path(folder).resolve() == same:
            continue
        policy = loader(folder).to(device).eval()
        got = sample_and_score(policy, reference, tokenizer, prompts, judge, settings)
        rows.append({"step": step, "model": str(folder), **got, "d": math.sqrt(max(got["kl"], 0.0)),
                     "gain": got["score"] - base["score"], "is_reference": False})
        del policy
    return summarise(rows, getattr(judge, "name", type(judge).__name__))


def summarise(rows: list[dict], judge_name: str = "judge") -> dict:
    """The table plus the fit over rows with d > 0 and finite gains; reasons instead of numbers where none fits."""
    usable = [r for r in rows if r["d"] > 0 and math.isfinite(r["gain"])]
    result = {"judge": judge_name, "rows": rows, "reference_score": rows[0]["score"],
              "kl_not_positive": sum(1 for r in rows if not r.get("is_reference") and r["d"] == 0),
              "fit": None, "peak": None, "note": None}
    try:
        result["fit"] = fit_gao([r["d"] for r in usable], [r["gain"] for r in usable])
    except ValueError as err:
        result["note"] = f"no fit: {err}"
        return result
    result["peak"] = gao_peak(result["fit"]["a"], result["fit"]["b"])
    if result["peak"] is None:
        result["note"] = "b <= 0: the fitted gain still rises at every d (no over-optimisation in this range)"
    elif result["peak"]["d"] > max(r["d"] for r in usable):
        result["note"] = "the peak lies beyond the largest d measured: an extrapolation"
    elif result["peak"]["d"] < min(r["d"] for r in usable):
        # only R(0) = 0 pins the curve there: the rise and the peak are assumed, not measured
        result["note"] = (f"the peak lies below the smallest d measured ({min(r['d'] for r in usable):.3g}): an "
                          f"extrapolation between the reference and the first checkpoint")
    return result


def plot_reward_vs_kl(result: dict, out_png: Path, title: str = "") -> Path:
    """Score gain against d = sqrt(KL), the fitted curve and its peak; KL on the top axis."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["d"] for r in rows], [r["gain"] for r in rows], "o", label="checkpoints")
    for r in rows:
        ax.annotate(str(r["step"]), (r["d"], r["gain"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    fit, peak = result["fit"], result["peak"]
    if fit is not None:
        right = max([r["d"] for r in rows] + ([peak["d"]] if peak else [])) * 1.15
        grid = torch.linspace(0, right, 200, dtype=torch.float64)
        ax.plot(grid, gao_curve(grid, fit["a"], fit["b"]), "-",
                label=f"R = d ({fit['a']:.3g} - {fit['b']:.3g} log d)")
    if peak is not None:
        ax.axvline(peak["d"], color="tab:red", ls="--", lw=1, label=f"peak d* = {peak['d']:.3g} (KL {peak['kl']:.3g})")
    ax.set_xlim(left=0)
    top = ax.secondary_xaxis("top", functions=(lambda d: np.square(np.clip(d, 0, None)),
                                               lambda kl: np.sqrt(np.clip(kl, 0, None))))
    top.set_xlabel("KL(policy || ref)")
    ax.set_xlabel("d = sqrt(KL)")
    ax.set_ylabel(f"{result['judge']} score - reference score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "reward over-optimisation (arXiv:2210.10760)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
