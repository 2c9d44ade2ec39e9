"""`dpo-frontier`: the gold reward vs KL frontier of direct alignment objectives (DPO paper, Fig. 2 left).

Rafailov et al., "Direct Preference Optimization", arXiv:2305.18290, section 6.1: on controlled
sentiment generation DPO's reward-vs-KL frontier lies above PPO's and Preferred-FT's (SFT on the
chosen responses). Here, on the gold-reward testbed (gold_testbed.py): DPO at several beta, IPO,
SimPO, f-DPO (Jensen-Shannon), Preferred-FT and Unlikelihood (alpha 0.1, 1) train on VADER-labelled
pairs; each policy is scored by VADER on held-out prompts with its sampled KL (DPO's, Preferred-FT's
and Unlikelihood's at every checkpoint); best-of-N from the reference (KL bound
log N - (N-1)/N) is the PPO-free baseline. PPO is not run (prefalign has no PPO learner).

Rules (each can fail; INCONCLUSIVE when the testbed cannot tell, never PASS):
- precondition: VADER varies within a prompt (std >= 0.1 on half the prompts), else INCONCLUSIVE;
- best-of-N: gold rises with N (each step >= -0.02) and N_max beats N = 1 (checks scorer and sampler);
- KL falls as DPO's beta grows (Spearman <= -0.8, final checkpoints);
- DPO raises the gold score: its best cell's paired gain over the reference's samples, CI above 0;
- DPO's frontier >= Preferred-FT's (REPRODUCE.md section 1, rule 1): every checkpoint of every DPO
  cell, and of Preferred-FT, is evaluated (the reference at KL 0 starts both); each method's upper
  envelope joins the points no other point of that method beats at no more KL. At KL 1, 2 and 4 the
  gap DPO - Preferred-FT, with a prompt-bootstrap interval: PASS at a point when it is >= 0.05 and
  its interval lies above 0, FAIL when the interval lies below 0.05, else INCONCLUSIVE, and
  INCONCLUSIVE at a KL beyond either method's largest; the rule is the worst of its three points;
- DPO's frontier >= Unlikelihood's at the same KLs (when Unlikelihood cells ran): FAIL at a point whose
  interval lies below 0, PASS when the gap's mean is >= 0, else INCONCLUSIVE.
An earlier version compared final checkpoints only; Preferred-FT's final KL (5.97) then sat just
outside DPO's final KLs (6.02-19.3) and the rule could not be read. Evaluating checkpoints every
25 steps is the design REPRODUCE.md registered before any run.
"""

from __future__ import annotations

from pathlib import Path
from statistics import fmean as mean

import torch

from prefalign.diagnostics.overoptimization import run_models
from prefalign.diagnostics.sweep_report import interpolate, plot_frontier
from prefalign.reproduce import gold_testbed as g
from prefalign.reproduce.claims import ClaimResult, Verdict, claim

QUICK = dict(train_prompts=16, eval_prompts=8, max_new_tokens=16, steps=3, save_steps=1, bon=[1, 2, 4],
             methods=[("dpo", 0.1, {}), ("dpo", 1.0, {}), ("sft", None, {}), ("unlikelihood", None, {"alpha": 1.0})])
FULL = dict(train_prompts=256, eval_prompts=64, max_new_tokens=32, steps=150, save_steps=25, bon=[1, 2, 4, 8, 16],
            methods=[("dpo", 0.05, {}), ("dpo", 0.1, {}), ("dpo", 0.5, {}), ("dpo", 2.0, {}), ("dpo", 5.0, {}),
                     ("ipo", 0.1, {}),
                     ("simpo", 2.0, {}),
                     ("fdpo", 0.1, {"divergence": "js"}), ("sft", None, {}),
                     ("unlikelihood", None, {"alpha": 0.1}), ("unlikelihood", None, {"alpha": 1.0})])
# the methods whose frontiers the rules compare: every checkpoint of theirs is evaluated
ENVELOPE_METHODS = ("dpo", "sft", "unlikelihood")
KL_POINTS = (1.0, 2.0, 4.0)
MARGIN = 0.05  # REPRODUCE.md: DPO exceeds Preferred-FT by >= 0.05 VADER


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (no ties expected: distinct betas, continuous KLs)."""
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r

    rx, ry = ranks(x), ranks(y)
    n = len(x)
    mx, my = sum(rx) / n, sum(ry) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return cov / var if var else 0.0


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (kl, score) points no other point beats at no more KL, by KL."""
    kept: list[tuple[float, float]] = []
    for kl, score in sorted(points):
        if not kept or score > kept[-1][1]:
            kept.append((kl, score))
    return kept


def envelope(points: list[tuple[float, float]], x: float) -> float | None:
    """The upper envelope at KL x: the frontier joined linearly, flat after its best point (that
    point is reachable at any larger KL), None outside the KLs observed."""
    if not points or x < min(p[0] for p in points) or x > max(p[0] for p in points):
        return None
    front = frontier(points)
    return front[-1][1] if x >= front[-1][0] else interpolate(front, x)


def mean_points(rows: list[dict], idx: torch.Tensor) -> list[list[tuple[float, float]]]:
    """Per row of prompt indices idx [R, n]: the (mean KL, mean score) of every evaluation on those prompts."""
    def means(key):
        return torch.stack([torch.tensor(r[key], dtype=torch.float64)[idx].mean(-1) for r in rows], -1).tolist()

    return [list(zip(kl, score)) for kl, score in zip(means("kl"), means("score"))]


def frontier_gap(a_rows: list[dict], b_rows: list[dict], kls=KL_POINTS, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Per KL x: the envelopes of two methods' evaluations (each row per-prompt `kl` and `score` on the
    same prompts) and a - b with its 95% interval from resampling prompts (every point's means
    recomputed on each resample, so the envelope can pick other points)."""
    n = len(a_rows[0]["kl"])
    idx = torch.randint(n, (n_boot, n), generator=torch.Generator().manual_seed(seed))
    every = torch.arange(n)[None]
    a_full, b_full = mean_points(a_rows, every)[0], mean_points(b_rows, every)[0]
    a_boot, b_boot = mean_points(a_rows, idx), mean_points(b_rows, idx)
    out = []
    for x in kls:
        a, b = envelope(a_full, x), envelope(b_full, x)
        row = {"kl": x, "a": a, "b": b, "gap": None}
        if a is not None and b is not None:
            pairs = [(envelope(pa, x), envelope(pb, x)) for pa, pb in zip(a_boot, b_boot)]
            gaps = torch.tensor([ea - eb for ea, eb in pairs if ea is not None and eb is not None], dtype=torch.float64)
            q = gaps.quantile(torch.tensor([0.025, 0.975], dtype=torch.float64))
            row["gap"] = {"mean": a - b, "low": float(q[0]), "high": float(q[1]), "resamples": len(gaps)}
        out.append(row)
    return out


def gap_rule(points: list[dict], other: str, margin: float | None) -> tuple[str, str]:
    """The frontier rules above: with a margin, DPO must exceed `other` by it; without, match it."""
    states, texts = [], []
    for p in points:
        g_ = p["gap"]
        if g_ is None:
            states.append("INCONCLUSIVE")
            beyond = [m for m, v in (("DPO", p["a"]), (other, p["b"])) if v is None]
            texts.append(f"KL {p['kl']:g}: beyond {' and '.join(beyond)}'s largest KL")
            continue
        if margin is not None:
            state = ("PASS" if g_["mean"] >= margin and g_["low"] > 0 else
                     "FAIL" if g_["high"] < margin else "INCONCLUSIVE")
        else:
            state = "FAIL" if g_["high"] < 0 else "PASS" if g_["mean"] >= 0 else "INCONCLUSIVE"
        states.append(state)
        texts.append(f"KL {p['kl']:g}: DPO {p['a']:.3f} - {other} {p['b']:.3f} = {g_['mean']:+.3f} "
                     f"[{g_['low']:+.3f}, {g_['high']:+.3f}]")
    state = "FAIL" if "FAIL" in states else "INCONCLUSIVE" if "INCONCLUSIVE" in states else "PASS"
    need = f"need >= {margin:g} with the interval above 0" if margin is not None else "need >= 0"
    return state, "; ".join(texts) + f" ({need})"


def verdict(numbers: dict) -> tuple[str, str]:
    """The rules above, from the measured numbers (a pure function: the tests feed it made-up numbers)."""
    if not numbers["spread_ok"]:
        return "INCONCLUSIVE", f"precondition failed: {numbers['spread']}"
    rules = []
    bon = numbers["best_of_n"]
    steps_ok = all(b["score"] >= a["score"] - 0.02 for a, b in zip(bon, bon[1:]))
    state, why = g.gain_rule(numbers["bon_gain"], f"best-of-{bon[-1]['n']} - best-of-1")
    rules.append(("best-of-N rises with N", state if steps_ok else "FAIL",
                  why + ("" if steps_ok else "; a step fell by more than 0.02")))
    dpo = sorted((c for c in numbers["cells"] if c["objective"] == "dpo"), key=lambda c: c["beta"])
    if len(dpo) >= 2:
        rho = spearman([c["beta"] for c in dpo], [c["kl"] for c in dpo])
        rules.append(("KL falls with beta", "PASS" if rho <= -0.8 else "FAIL", f"Spearman {rho:+.2f}, need <= -0.8"))
    rules.append(("DPO raises the gold score", *g.gain_rule(numbers["dpo_best_gain"], "best DPO cell - reference")))
    gaps = numbers.get("frontier_gaps", {})
    if "sft" in gaps:
        rules.append(("DPO's frontier >= Preferred-FT's", *gap_rule(gaps["sft"], "Preferred-FT", MARGIN)))
    if "unlikelihood" in gaps:
        rules.append(("DPO's frontier >= Unlikelihood's", *gap_rule(gaps["unlikelihood"], "Unlikelihood", None)))
    return g.combine(rules)


def cell_name(objective: str, beta, args: dict) -> str:
    return f"{objective}-{beta}" + "".join(f"-{v}" for v in args.values())


@claim("dpo-frontier", paper="Rafailov et al., Direct Preference Optimization (arXiv:2305.18290), Fig. 2 left",
       paper_claim="DPO's reward-vs-KL frontier dominates: higher reward than Preferred-FT and PPO at every KL "
                   "(e.g. ~0.9 reward at KL 2); KL falls as beta grows")
def run(out_dir: Path, quick: bool) -> ClaimResult:
    s = QUICK if quick else FULL
    g.set_threads()
    data = g.build_gold_data(out_dir / "data", s["train_prompts"], s["eval_prompts"], max_new_tokens=s["max_new_tokens"])
    ok, spread = g.spread_ok(data)
    prompts = g.story_prompts(s["eval_prompts"], held_out=True)
    evaluations = out_dir / "evaluations"  # one file per evaluated model: a rerun samples nothing twice
    reference = g.evaluate_models([(0, Path(g.tiny_base()))], prompts, s["max_new_tokens"], cache_dir=evaluations)[0]
    cells, per_method = [], {}
    for objective, beta, args in s["methods"]:
        name = cell_name(objective, beta, args)
        tracked = objective in ENVELOPE_METHODS
        folder = g.train_run(out_dir / "runs" / name, out_dir / "data", objective, s["steps"], beta,
                             save_steps=s["save_steps"] if tracked else 0, objective_args=args)
        models = run_models(folder) if tracked else [(s["steps"], folder / "final")]
        rows = g.evaluate_models(models, prompts, s["max_new_tokens"], cache_dir=evaluations)
        per_method.setdefault(objective, []).extend(rows)
        row = rows[-1]  # the last step's model
        score = g.mean_ci(row["score"])
        cells.append({"name": name, "objective": objective, "beta": beta, "args": args, "kl": mean(row["kl"]),
                      "score": score["mean"], "low": score["low"], "high": score["high"],
                      "gain": g.paired_gain(row["score"], reference["score"]),
                      "checkpoints": [{"step": r["step"], "kl": mean(r["kl"]), "score": mean(r["score"])} for r in rows]})
    bon = g.best_of_n(prompts, s["bon"], s["max_new_tokens"])
    bon_rows = [{"n": b["n"], "kl": b["kl"], "score": mean(b["score"])} for b in bon]
    dpo = [c for c in cells if c["objective"] == "dpo"]
    gaps = {other: frontier_gap(per_method["dpo"], per_method[other]) for other in ENVELOPE_METHODS[1:]
            if other in per_method}
    numbers = {"spread_ok": ok, "spread": spread, "data": data, "cells": cells, "best_of_n": bon_rows,
               "bon_gain": g.paired_gain(bon[-1]["score"], bon[0]["score"]),
               "dpo_best_gain": max((c["gain"] for c in dpo), key=lambda x: x["mean"]),
               "frontier_gaps": gaps,
               "frontiers": {m: [list(p) for p in frontier([(r["kl"], r["score"]) for c in cells if c["objective"] == m
                                                            for r in c["checkpoints"]])]
                             for m in ENVELOPE_METHODS if m in per_method},
               "reference_score": g.mean_ci(reference["score"]), "settings": {k: v for k, v in s.items()}}
    state, reason = verdict(numbers)
    plot(numbers, out_dir / "frontier.png")
    table = [{"method": c["name"], "KL": f"{c['kl']:.3f}", "gold": f"{c['score']:.3f} [{c['low']:.3f}, {c['high']:.3f}]",
              "gain vs reference": f"{c['gain']['mean']:+.3f}"} for c in cells]
    table += [{"method": f"best-of-{b['n']}", "KL": f"{b['kl']:.3f}", "gold": f"{b['score']:.3f}",
               "gain vs reference": ""} for b in bon_rows]
    table += [{"method": f"frontier gap DPO - {other} at KL {p['kl']:g}", "KL": f"{p['kl']:g}",
               "gold": "-" if p["gap"] is None else
               f"{p['gap']['mean']:+.3f} [{p['gap']['low']:+.3f}, {p['gap']['high']:+.3f}]",
               "gain vs reference": ""} for other, pts in gaps.items() for p in pts]
    best = max(dpo, key=lambda c: c["score"])
    measured = (f"reference gold {numbers['reference_score']['mean']:.3f}; best DPO (beta {best['beta']}) "
                f"{best['score']:.3f} at KL {best['kl']:.2f}; best-of-{bon_rows[-1]['n']} {bon_rows[-1]['score']:.3f}")
    if "sft" in gaps:
        measured += "; frontier gap DPO - Preferred-FT at KL " + ", ".join(
            f"{p['kl']:g}: " + ("-" if p["gap"] is None else f"{p['gap']['mean']:+.3f}") for p in gaps["sft"])
    return ClaimResult(Verdict(state), measured, reason, numbers, ["frontier.png"], table)


def plot(numbers: dict, out_png: Path) -> None:
    """Final cells by objective, the compared methods' envelopes over every checkpoint, best-of-N."""
    names = {"sft": "Preferred-FT (sft)", "unlikelihood": "Unlikelihood"}
    curves = {}
    for c in numbers["cells"]:
        label = (f"b={c['beta']:g}" if c["beta"] is not None else
                 "a=" + ",".join(f"{v:g}" for v in c["args"].values()) if c["args"] else "")
        curves.setdefault(f"{names.get(c['objective'], c['objective'])}, last step", []).append(
            {"kl": c["kl"], "score": c["score"], "low": c["low"], "high": c["high"], "label": label})
    for m, front in numbers["frontiers"].items():
        curves[f"{names.get(m, m.upper())} envelope (every checkpoint)"] = [{"kl": k, "score": v} for k, v in front]
    curves["best-of-N (KL bound)"] = [{"kl": b["kl"], "score": b["score"], "label": f"N={b['n']}"}
                                      for b in numbers["best_of_n"]]
    plot_frontier(curves, out_png, "VADER gold score (held-out prompts)", "dpo-frontier: gold reward vs KL")
