"""`likelihood-overopt`: top-k entropy and top-k mass fall as DPO over-trains, and early stopping
on them keeps a better gold score than the last checkpoint.

Shi et al., "Understanding Likelihood Over-optimisation in Direct Alignment Algorithms",
arXiv:2410.11677 (sections 4.4 and 5): as DPO trains past its best, the top-k (k = 10) entropy of
the policy's next-token distributions falls (for DPO/IPO its turning point "often coincides" with
the win probability's) and the top-k mass can shrink; the paper proposes both as early-stopping
indicators. Here, on the gold-reward testbed (gold_testbed.py): DPO is over-trained at a high
learning rate; at every checkpoint the policy samples the held-out prompts, VADER scores the
samples and the indicators are read along them (diagnostics/overoptimization.py).

Stopping rule (fixed before the run): the indicator trips at the first checkpoint where the
top-k entropy is below 0.9 x its step-0 value or the top-k mass below its step-0 value - 0.05;
early stopping keeps the checkpoint before it (the last healthy one), or the last if none trips.

Rules (each can fail; INCONCLUSIVE when the testbed cannot tell, never PASS):
- precondition: VADER varies within a prompt;
- an indicator falls: the stopping rule trips at some checkpoint (else FAIL);
- the run over-optimised: the gold score's peak is above the last checkpoint's (paired gain, CI above
  0), else INCONCLUSIVE (nothing to stop early from);
- early stopping beats the end (judged only when the indicator tripped and the run over-optimised):
  gold(stop) - gold(last), paired over prompts, CI above 0 (FAIL when its mean is not above 0).
"""

from __future__ import annotations

from pathlib import Path

from prefalign.diagnostics.overoptimization import run_models
from prefalign.reproduce import gold_testbed as g
from prefalign.reproduce.claims import ClaimResult, Verdict, claim

QUICK = dict(train_prompts=16, eval_prompts=8, max_new_tokens=16, steps=4, save_steps=2, beta=0.1,
             learning_rate=3e-3)
FULL = dict(train_prompts=256, eval_prompts=64, max_new_tokens=32, steps=240, save_steps=30, beta=0.1, learning_rate=3e-3)
ENTROPY_DROP, MASS_DROP = 0.1, 0.05


def stop_index(rows: list[dict]) -> tuple[int | None, int]:
    """(index where the indicator trips or None, index early stopping keeps)."""
    h0, m0 = rows[0]["topk_entropy"], rows[0]["topk_mass"]
    for i, r in enumerate(rows[1:], 1):
        if r["topk_entropy"] < (1 - ENTROPY_DROP) * h0 or r["topk_mass"] < m0 - MASS_DROP:
            return i, i - 1
    return None, len(rows) - 1


def verdict(numbers: dict) -> tuple[str, str]:
    if not numbers["spread_ok"]:
        return "INCONCLUSIVE", f"precondition failed: {numbers['spread']}"
    rows = numbers["rows"]
    rules = []
    h0, m0, hl, ml = rows[0]["entropy"], rows[0]["mass"], rows[-1]["entropy"], rows[-1]["mass"]
    tripped = numbers["trip_step"] is not None
    rules.append(("an indicator trips", "PASS" if tripped else "FAIL",
                  f"top-k entropy {h0:.3f} -> {hl:.3f}, mass {m0:.3f} -> {ml:.3f}; "
                  + (f"tripped at step {numbers['trip_step']}" if tripped else "never tripped")))
    state, why = g.gain_rule(numbers["peak_minus_last"], f"gold peak (step {numbers['peak_step']}) - last")
    rules.append(("over-optimised", "INCONCLUSIVE" if state == "FAIL" else state, why))
    if tripped and state == "PASS":  # without a fall in gold there is nothing early stopping could keep
        rules.append(("early stop beats the end",
                      *g.gain_rule(numbers["stop_minus_last"], f"gold at stop (step {numbers['stop_step']}) - last")))
    return g.combine(rules)


def plot(rows: list[dict], stop_step: int, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    steps = [r["step"] for r in rows]
    for ax, key, label in zip(axes, ("gold", "entropy", "mass"), ("VADER gold score", "top-10 entropy",
                                                                  "top-10 mass")):
        ax.plot(steps, [r[key] for r in rows], "o-")
        ax.axvline(stop_step, color="C3", ls="--", label="early stop")
        ax.set_xlabel("step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


@claim("likelihood-overopt", paper="Shi et al., Understanding Likelihood Over-optimisation in Direct Alignment "
                                   "Algorithms (arXiv:2410.11677), sections 4.4-5",
       paper_claim="top-k entropy and mass fall as DPO over-trains; stopping on them keeps a better "
                   "win probability than training on")
def run(out_dir: Path, quick: bool) -> ClaimResult:
    s = QUICK if quick else FULL
    g.set_threads()
    data = g.build_gold_data(out_dir / "data", s["train_prompts"], s["eval_prompts"], max_new_tokens=s["max_new_tokens"])
    ok, spread = g.spread_ok(data)
    prompts = g.story_prompts(s["eval_prompts"], held_out=True)
    folder = g.train_run(out_dir / "runs" / "dpo", out_dir / "data", "dpo", s["steps"], s["beta"],
                         save_steps=s["save_steps"], learning_rate=s["learning_rate"])
    evals = g.evaluate_models(run_models(folder), prompts, s["max_new_tokens"], indicators=True)
    trip, stop = stop_index(evals)
    gold = [sum(r["score"]) / len(r["score"]) for r in evals]
    peak = max(range(len(evals)), key=lambda i: gold[i])
    rows = [{"step": r["step"], "gold": gl, "entropy": r["topk_entropy"], "mass": r["topk_mass"],
             "kl": sum(r["kl"]) / len(r["kl"])} for r, gl in zip(evals, gold)]
    numbers = {"spread_ok": ok, "spread": spread, "data": data, "settings": s, "rows": rows,
               "trip_step": evals[trip]["step"] if trip is not None else None, "stop_step": evals[stop]["step"],
               "peak_step": evals[peak]["step"],
               "peak_minus_last": g.paired_gain(evals[peak]["score"], evals[-1]["score"]),
               "stop_minus_last": g.paired_gain(evals[stop]["score"], evals[-1]["score"]),
               "regret_stop": gold[peak] - gold[stop], "regret_last": gold[peak] - gold[-1]}
    state, reason = verdict(numbers)
    plot(rows, evals[stop]["step"], out_dir / "likelihood_overopt.png")
    table = [{"step": r["step"], "gold": f"{r['gold']:.3f}", "top-10 entropy": f"{r['entropy']:.3f}",
              "top-10 mass": f"{r['mass']:.3f}", "KL": f"{r['kl']:.3f}"} for r in rows]
    measured = (f"entropy {rows[0]['entropy']:.3f} -> {rows[-1]['entropy']:.3f}, mass {rows[0]['mass']:.3f} -> "
                f"{rows[-1]['mass']:.3f}; gold peak {gold[peak]:.3f} at step {rows[peak]['step']}, stop "
                f"{gold[stop]:.3f} at step {rows[stop]['step']}, last {gold[-1]:.3f}")
    return ClaimResult(Verdict(state), measured, reason, numbers, ["likelihood_overopt.png"], table)
