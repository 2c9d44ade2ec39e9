"""`overoptimisation`: gold score against sqrt(KL) across checkpoints rises then falls, and
R(d) = d (a - b log d) fits it (scaling laws for reward over-optimisation in direct alignment).

Rafailov et al., "Scaling Laws for Reward Model Overoptimization in Direct Alignment
Algorithms", arXiv:2406.02900: with d = sqrt(KL(pi || pi_ref)), the gold win rate of DPO / IPO /
SLiC checkpoints is hump-shaped in d, often peaking before one epoch, and the functional form of
Gao et al. (arXiv:2210.10760) R(d) = d (alpha - beta log d) fits it. Here, on the gold-reward
testbed (gold_testbed.py): DPO at small beta is trained past its best, every checkpoint samples
the held-out prompts, and the gold gain over the starting model (R(0) = 0) is fitted.

Fit: R(d) = a d - b d log d is linear in (a, b): least squares without intercept on every
(d, gold gain) point of every run. Its peak is at d* = exp(a / b - 1) (dR/dd = a - b log d - b = 0).
The quadratic alternative (the best-of-N form) is R(d) = a d - b d^2. b's interval: the fit
repeated on prompt-bootstrap resamples (per-checkpoint means recomputed on each resample).

Gold: plain VADER can be gamed (a policy that repeats positive words scores high), so the verdict
reads REPRODUCE.md's quality-gated gold, fixed before the full run: -1 for a sample whose distinct-2
is below 0.5 or whose per-token NLL under the frozen reference exceeds the 99th percentile of the
reference's own samples, else VADER (gold_testbed.gated_gold). Plain VADER's fit and verdict are
reported beside it.

Rules (each can fail; INCONCLUSIVE when the testbed cannot tell, never PASS):
- precondition: VADER varies within a prompt, >= 4 checkpoints past step 0, and KL moved (max d >= 0.5);
- b > 0 (a hump): FAIL when b <= 0, INCONCLUSIVE when b > 0 but its interval reaches 0;
- the peak d* lies between the 10th and 90th percentiles of the observed d (an interior peak);
- the log form fits at least as well as the quadratic one (RMSE).
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import fmean

import torch

from prefalign.diagnostics.overoptimization import run_models
from prefalign.reproduce import gold_testbed as g
from prefalign.reproduce.claims import ClaimResult, Verdict, claim

QUICK = dict(train_prompts=16, eval_prompts=8, max_new_tokens=16, steps=4, save_steps=2, betas=[0.05],
             learning_rate=1e-3)
FULL = dict(train_prompts=256, eval_prompts=64, max_new_tokens=32, steps=240, save_steps=30, betas=[0.01, 0.05], learning_rate=1e-3)


def mean(values) -> float:
    return fmean(float(v) for v in values)


def fit(d: torch.Tensor, y: torch.Tensor, form: str) -> tuple[float, float, float]:
    """(a, b, rmse) of y ~ a d - b d log d (form "log") or a d - b d^2 ("quadratic"), no intercept."""
    second = d * torch.log(d.clamp_min(1e-12)) if form == "log" else d * d
    x = torch.stack([d, -second], 1).double()
    coef = torch.linalg.lstsq(x, y.double()[:, None]).solution[:, 0]
    rmse = float(((x @ coef - y.double()) ** 2).mean().sqrt())
    return float(coef[0]), float(coef[1]), rmse


def points(rows: list[list[dict]], idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(d, gold gain over step 0) for every checkpoint after step 0 of every run; prompts `idx` (a resample)."""
    ds, ys = [], []
    for run in rows:
        base = torch.tensor(run[0]["score"])
        for r in run[1:]:
            kl, score = torch.tensor(r["kl"]), torch.tensor(r["score"])
            if idx is not None:
                kl, score, b = kl[idx], score[idx], base[idx]
            else:
                b = base
            ds.append(math.sqrt(max(float(kl.mean()), 0.0)))
            ys.append(float((score - b).mean()))
    return torch.tensor(ds), torch.tensor(ys)


def analyse(rows: list[list[dict]], n_boot: int = 500, seed: int = 0) -> dict:
    d, y = points(rows)
    if len(d) < 2:  # nothing to fit: the verdict reads this as too little movement
        nan = float("nan")
        return {"a": nan, "b": nan, "b_low": nan, "b_high": nan, "d_star": None, "rmse_log": nan,
                "rmse_quadratic": nan, "d": d.tolist(), "gain": y.tolist(), "d_p10": 0.0, "d_p90": 0.0}
    a, b, rmse_log = fit(d, y, "log")
    _, _, rmse_quad = fit(d, y, "quadratic")
    gen = torch.Generator().manual_seed(seed)
    n = len(rows[0][0]["score"])
    boot = []
    for _ in range(n_boot):
        idx = torch.randint(n, (n,), generator=gen)
        boot.append(fit(*points(rows, idx), "log")[1])
    boot_t = torch.tensor(boot)
    return {"a": a, "b": b, "b_low": float(boot_t.quantile(0.025)), "b_high": float(boot_t.quantile(0.975)),
            "d_star": math.exp(min(a / b - 1, 50.0)) if b > 0 else None, "rmse_log": rmse_log, "rmse_quadratic": rmse_quad,
            "d": d.tolist(), "gain": y.tolist(), "d_p10": float(d.quantile(0.1)) if len(d) else 0.0,
            "d_p90": float(d.quantile(0.9)) if len(d) else 0.0}


def verdict(numbers: dict) -> tuple[str, str]:
    f = numbers["fit"]
    if not numbers["spread_ok"]:
        return "INCONCLUSIVE", f"precondition failed: {numbers['spread']}"
    if len(f["d"]) < 4 or max(f["d"], default=0.0) < 0.5:
        return "INCONCLUSIVE", (f"too little movement to fit: {len(f['d'])} checkpoints, max sqrt(KL) "
                                f"{max(f['d'], default=0.0):.2f} (need >= 4 and >= 0.5)")
    rules = []
    b_text = f"b {f['b']:+.3f} [{f['b_low']:+.3f}, {f['b_high']:+.3f}]"
    rules.append(("hump (b > 0)", "FAIL" if f["b"] <= 0 else "PASS" if f["b_low"] > 0 else "INCONCLUSIVE", b_text))
    if f["d_star"] is not None:
        inside = f["d_p10"] <= f["d_star"] <= f["d_p90"]
        rules.append(("interior peak", "PASS" if inside else "FAIL",
                      f"d* {f['d_star']:.2f}, observed d p10-p90 {f['d_p10']:.2f}-{f['d_p90']:.2f}"))
    better = f["rmse_log"] <= f["rmse_quadratic"]
    rules.append(("log form fits", "PASS" if better else "FAIL",
                  f"RMSE log {f['rmse_log']:.4f} vs quadratic {f['rmse_quadratic']:.4f}"))
    return g.combine(rules)


def plot(rows: list[list[dict]], f: dict, betas: list, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run, beta in zip(rows, betas):
        d, y = points([run])
        ax.plot([0.0] + d.tolist(), [0.0] + y.tolist(), "o-", label=f"DPO beta={beta}")
    if f["d"]:
        grid = torch.linspace(1e-3, max(f["d"]) * 1.1, 100)
        ax.plot(grid, f["a"] * grid - f["b"] * grid * torch.log(grid), "k--", label="fit d(a - b log d)")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("d = sqrt(sampled KL)")
    ax.set_ylabel("quality-gated gold gain over the starting model")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


@claim("overoptimisation", paper="Rafailov et al., Scaling Laws for Reward Model Overoptimization in Direct "
                                 "Alignment Algorithms (arXiv:2406.02900), Fig. 1",
       paper_claim="gold score vs sqrt(KL) across checkpoints is hump-shaped (rises then falls) and "
                   "R(d) = d(a - b log d) fits it")
def run(out_dir: Path, quick: bool) -> ClaimResult:
    s = QUICK if quick else FULL
    g.set_threads()
    data = g.build_gold_data(out_dir / "data", s["train_prompts"], s["eval_prompts"], max_new_tokens=s["max_new_tokens"])
    ok, spread = g.spread_ok(data)
    prompts = g.story_prompts(s["eval_prompts"], held_out=True)
    rows = []
    for beta in s["betas"]:
        folder = g.train_run(out_dir / "runs" / f"dpo-{beta}", out_dir / "data", "dpo", s["steps"], beta,
                             save_steps=s["save_steps"], learning_rate=s["learning_rate"])
        rows.append(g.evaluate_models(run_models(folder), prompts, s["max_new_tokens"]))
    # the verdict reads the quality-gated gold (REPRODUCE.md section 2, fixed before the full run):
    # plain VADER rewards a policy that repeats positive words, which is not the quality the claim is about
    threshold = g.quality_threshold(rows[0][0])  # step 0 is the reference: its own samples set the bar
    gated_rows = [[{**r, "score": g.gated_gold(r, threshold)} for r in run] for run in rows]
    f, plain = analyse(gated_rows), analyse(rows)
    numbers = {"spread_ok": ok, "spread": spread, "data": data, "fit": f, "fit_plain_vader": plain, "settings": s,
               "gate": {"nll_per_token_threshold": threshold, "min_distinct_2": 0.5},
               "runs": [[{"step": r["step"], "kl": mean(r["kl"]), "gold": mean(gr["score"]), "vader": mean(r["score"]),
                          "gated_share": mean([x == -1.0 and y != -1.0 for x, y in zip(gr["score"], r["score"])])}
                         for r, gr in zip(run, gated_run)] for run, gated_run in zip(rows, gated_rows)]}
    state, reason = verdict(numbers)
    plain_state, plain_reason = verdict({**numbers, "fit": plain})
    reason = f"quality-gated gold: {reason}. Plain VADER (reported, not the verdict): {plain_state}: {plain_reason}"
    plot(gated_rows, f, s["betas"], out_dir / "overoptimisation.png")
    table = [{"beta": beta, "step": r["step"], "KL": f"{r['kl']:.3f}", "gated gold": f"{r['gold']:.3f}",
              "VADER": f"{r['vader']:.3f}", "gated": f"{r['gated_share']:.2f}"}
             for beta, run in zip(s["betas"], numbers["runs"]) for r in run]
    peak = "none" if f["d_star"] is None else f"{f['d_star']:.2f}"
    measured = (f"quality-gated gold: fit a {f['a']:+.3f}, b {f['b']:+.3f} [{f['b_low']:+.3f}, {f['b_high']:+.3f}], "
                f"peak d* {peak}; RMSE log {f['rmse_log']:.4f} vs quadratic {f['rmse_quadratic']:.4f}; plain VADER "
                f"b {plain['b']:+.3f} [{plain['b_low']:+.3f}, {plain['b_high']:+.3f}]")
    return ClaimResult(Verdict(state), measured, reason, numbers, ["overoptimisation.png"], table)
