"""`dpo-frontier`: the gold reward vs KL frontier of direct alignment objectives (DPO paper, Fig. 2 left).

Rafailov et al., "Direct Preference Optimization", arXiv:2305.18290, section 6.1: on controlled
sentiment generation DPO's reward-vs-KL frontier lies above PPO's and Preferred-FT's (SFT on the
chosen responses). Here, on the gold-reward testbed (gold_testbed.py): DPO at several beta, IPO,
SimPO, f-DPO (Jensen-Shannon) and Preferred-FT train on VADER-labelled pairs; each final policy is
scored by VADER on held-out prompts with its sampled KL; best-of-N from the reference (KL bound
log N - (N-1)/N) is the PPO-free baseline. PPO is not run (prefalign has no PPO learner).

Rules (each can fail; INCONCLUSIVE when the testbed cannot tell, never PASS):
- precondition: VADER varies within a prompt (std >= 0.1 on half the prompts), else INCONCLUSIVE;
- best-of-N: gold rises with N (each step >= -0.02) and N_max beats N = 1 (checks scorer and sampler);
- KL falls as DPO's beta grows (Spearman <= -0.8);
- DPO raises the gold score: its best cell's paired gain over the reference's samples, CI above 0;
- DPO >= Preferred-FT at matched KL: PASS when a DPO cell has at least Preferred-FT's score at no more
  KL (dominance); else DPO's curve interpolated at Preferred-FT's KL, FAIL if lower by more than 2
  standard errors of Preferred-FT's mean; INCONCLUSIVE when Preferred-FT's KL is outside DPO's range.
"""

from __future__ import annotations

from pathlib import Path

from prefalign.diagnostics.sweep_report import interpolate, plot_frontier
from prefalign.reproduce import gold_testbed as g
from prefalign.reproduce.claims import ClaimResult, Verdict, claim

QUICK = dict(train_prompts=16, eval_prompts=8, max_new_tokens=16, steps=3, bon=[1, 2, 4],
             methods=[("dpo", 0.1, {}), ("dpo", 1.0, {}), ("sft", None, {})])
FULL = dict(train_prompts=256, eval_prompts=64, max_new_tokens=32, steps=150, bon=[1, 2, 4, 8, 16],
            methods=[("dpo", 0.05, {}), ("dpo", 0.1, {}), ("dpo", 0.5, {}), ("dpo", 2.0, {}), ("dpo", 5.0, {}),
                     ("ipo", 0.1, {}),
                     ("simpo", 2.0, {}),
                     ("fdpo", 0.1, {"divergence": "js"}), ("sft", None, {})])


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
    sft = next((c for c in numbers["cells"] if c["objective"] == "sft"), None)
    if sft is not None:
        at = interpolate([(c["kl"], c["score"]) for c in dpo], sft["kl"])
        dominating = [c for c in dpo if c["kl"] <= sft["kl"] and c["score"] >= sft["score"]]
        if dominating:  # more reward at no more KL: dominance, wherever the curves' ranges end
            c = max(dominating, key=lambda c: c["score"])
            rules.append(("DPO >= Preferred-FT at matched KL", "PASS",
                          f"DPO beta {c['beta']} {c['score']:.3f} at KL {c['kl']:.3f} >= Preferred-FT "
                          f"{sft['score']:.3f} at KL {sft['kl']:.3f}"))
        elif at is None:
            rules.append(("DPO >= Preferred-FT at matched KL", "INCONCLUSIVE",
                          f"Preferred-FT's KL {sft['kl']:.3f} is outside DPO's KL range"))
        else:
            worse = at < sft["score"] - 2 * sft["se"]
            rules.append(("DPO >= Preferred-FT at matched KL", "FAIL" if worse else "PASS",
                          f"DPO {at:.3f} vs Preferred-FT {sft['score']:.3f} (SE {sft['se']:.3f}) at KL {sft['kl']:.3f}"))
    return g.combine(rules)


@claim("dpo-frontier", paper="Rafailov et al., Direct Preference Optimization (arXiv:2305.18290), Fig. 2 left",
       paper_claim="DPO's reward-vs-KL frontier dominates: higher reward than Preferred-FT and PPO at every KL "
                   "(e.g. ~0.9 reward at KL 2); KL falls as beta grows")
def run(out_dir: Path, quick: bool) -> ClaimResult:
    s = QUICK if quick else FULL
    g.set_threads()
    data = g.build_gold_data(out_dir / "data", s["train_prompts"], s["eval_prompts"], max_new_tokens=s["max_new_tokens"])
    ok, spread = g.spread_ok(data)
    prompts = g.story_prompts(s["eval_prompts"], held_out=True)
    reference = g.evaluate_models([(0, Path(g.tiny_base()))], prompts, s["max_new_tokens"])[0]
    cells = []
    for objective, beta, args in s["methods"]:
        name = f"{objective}-{beta}" + "".join(f"-{v}" for v in args.values())
        folder = g.train_run(out_dir / "runs" / name, out_dir / "data", objective, s["steps"], beta,
                             objective_args=args)
        row = g.evaluate_models([(s["steps"], folder / "final")], prompts, s["max_new_tokens"])[0]
        score = g.mean_ci(row["score"])
        cells.append({"name": name, "objective": objective, "beta": beta, "kl": sum(row["kl"]) / len(row["kl"]),
                      "score": score["mean"], "low": score["low"], "high": score["high"],
                      "se": (sum((v - score["mean"]) ** 2 for v in row["score"]) / max(len(row["score"]) - 1, 1)
                             / len(row["score"])) ** 0.5,
                      "gain": g.paired_gain(row["score"], reference["score"])})
    bon = g.best_of_n(prompts, s["bon"], s["max_new_tokens"])
    bon_rows = [{"n": b["n"], "kl": b["kl"], "score": sum(b["score"]) / len(b["score"])} for b in bon]
    dpo = [c for c in cells if c["objective"] == "dpo"]
    numbers = {"spread_ok": ok, "spread": spread, "data": data, "cells": cells, "best_of_n": bon_rows,
               "bon_gain": g.paired_gain(bon[-1]["score"], bon[0]["score"]),
               "dpo_best_gain": max((c["gain"] for c in dpo), key=lambda x: x["mean"]),
               "reference_score": g.mean_ci(reference["score"]), "settings": {k: v for k, v in s.items()}}
    state, reason = verdict(numbers)
    curves = {}
    for c in cells:
        label = f"b={c['beta']:g}" if c["beta"] is not None else ""
        curves.setdefault(c["objective"] if c["objective"] != "sft" else "Preferred-FT (sft)", []).append(
            {"kl": c["kl"], "score": c["score"], "low": c["low"], "high": c["high"], "label": label})
    curves["best-of-N (KL bound)"] = [{"kl": b["kl"], "score": b["score"], "label": f"N={b['n']}"} for b in bon_rows]
    plot_frontier(curves, out_dir / "frontier.png", "VADER gold score (held-out prompts)",
                  "dpo-frontier: gold reward vs KL")
    table = [{"method": c["name"], "KL": f"{c['kl']:.3f}", "gold": f"{c['score']:.3f} [{c['low']:.3f}, {c['high']:.3f}]",
              "gain vs reference": f"{c['gain']['mean']:+.3f}"} for c in cells]
    table += [{"method": f"best-of-{b['n']}", "KL": f"{b['kl']:.3f}", "gold": f"{b['score']:.3f}",
               "gain vs reference": ""} for b in bon_rows]
    best = max(dpo, key=lambda c: c["score"])
    measured = (f"reference gold {numbers['reference_score']['mean']:.3f}; best DPO (beta {best['beta']}) "
                f"{best['score']:.3f} at KL {best['kl']:.2f}; best-of-{bon_rows[-1]['n']} {bon_rows[-1]['score']:.3f}")
    return ClaimResult(Verdict(state), measured, reason, numbers, ["frontier.png"], table)
