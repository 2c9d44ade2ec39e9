"""The online section of `prefalign diagnose`: one row per round, the final round against the
initial policy prompt by prompt, and a plot of judge score, KL and win rate by round.

Everything comes from the run's rounds/*/eval.json (see diagnostics/online.py): no model loads.
"""

from __future__ import annotations

from pathlib import Path

from prefalign.diagnostics.online import paired_difference, read_rounds, unfinished_rounds
from prefalign.diagnostics.report import Report

PLOTTED = (("judge_score", "judge score"), ("kl", "KL(policy || reference), nats"),
           ("win_vs_initial", "win rate vs initial policy"))


def round_name(r: int) -> str:
    return "initial" if r == -1 else str(r)


def with_interval(evaluation: dict, name: str) -> str | None:
    s = evaluation["metrics"].get(name)
    if s is None or s["mean"] is None:
        return None
    missing = f" ({s['missing']} missing)" if s["missing"] else ""
    return f"{s['mean']:.4g} [{s['low']:.4g}, {s['high']:.4g}]{missing}"


def mean_of(evaluation: dict, name: str) -> float | None:
    s = evaluation["metrics"].get(name)
    return None if s is None else s["mean"]


def round_rows(evals: list[dict]) -> list[dict]:
    return [{"round": round_name(e["round"]), "judge score [95% CI]": with_interval(e, "judge_score"),
             "KL [95% CI]": with_interval(e, "kl"), "win vs initial [95% CI]": with_interval(e, "win_vs_initial"),
             "response tokens": mean_of(e, "response_tokens"), "finished share": mean_of(e, "finished"),
             "top-k entropy": mean_of(e, "topk_entropy"), "sampling tokens/s": e.get("tokens_per_s")}
            for e in evals]


def final_vs_initial(evals: list[dict], bootstrap: int, seed: int) -> tuple[dict | None, str]:
    """The paired judge-score difference of the last round against the initial policy, and a sentence."""
    initial = next((e for e in evals if e["round"] == -1), None)
    rounds = [e for e in evals if e["round"] >= 0]
    if initial is None or not rounds:
        return None, ("No paired comparison: the run has " + ("no rounds/initial_eval.json" if initial is None
                                                              else "no finished round") + ".")
    final = rounds[-1]
    before = initial.get("per_prompt", {}).get("judge_score")
    after = final.get("per_prompt", {}).get("judge_score")
    if before is None or after is None:
        return None, "No paired comparison: the initial or the final evaluation has no per-prompt judge scores."
    if len(before) != len(after):
        raise ValueError(f"rounds/initial_eval.json has {len(before)} prompts but round {final['round']}'s eval.json "
                         f"has {len(after)}: the rounds were not measured on the same held-out prompts")
    d = paired_difference(before, after, bootstrap, seed)
    d["final_round"] = final["round"]
    if d["mean"] is None:
        return d, "No paired comparison: no prompt has a judge score both initially and after the final round."
    where = f"on {d['n']} prompts scored both times" + (f" ({d['missing']} without both)" if d["missing"] else "")
    change = f"{d['mean']:+.4g} [{d['low']:+.4g}, {d['high']:+.4g}]"
    if d["excludes_zero"]:
        verdict = (f"the {d['level']:.0%} interval excludes 0: the judge score **{'rose' if d['mean'] > 0 else 'fell'}"
                   f"** over the run, beyond what resampling the prompts explains")
    else:
        verdict = (f"the {d['level']:.0%} interval includes 0: **no change** in judge score can be told apart "
                   f"from resampling noise on these prompts")
    return d, (f"Judge score after round {final['round']} minus the initial policy's, prompt by prompt, {where}: "
               f"**{change}**; {verdict}.")


def plot_rounds(evals: list[dict], out_png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4.2 * len(PLOTTED), 3.3))
    every = [e["round"] for e in evals]  # every panel shows every round, measured or not
    for ax, (name, label) in zip(axes, PLOTTED):
        pts = [(e["round"], e["metrics"][name]) for e in evals
               if name in e["metrics"] and e["metrics"][name]["mean"] is not None]
        if pts:
            x = [r for r, _ in pts]
            y = [s["mean"] for _, s in pts]
            err = [[m - s["low"] for m, (_, s) in zip(y, pts)], [s["high"] - m for m, (_, s) in zip(y, pts)]]
            ax.errorbar(x, y, yerr=err, fmt="o-", capsize=3)
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="grey")
        if name == "win_vs_initial":
            ax.axhline(0.5, ls=":", color="grey")  # a policy equal to the initial one wins half the time
        ax.set_xticks(every, [round_name(r) for r in every])
        ax.set_xlim(min(every) - 0.5, max(every) + 0.5)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    fig.suptitle("Online rounds (bars: 95% bootstrap intervals over prompts)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def online_section(report: Report, run_dir: Path, bootstrap: int = 2000, seed: int = 0) -> dict:
    """Add the "Online rounds" section from run_dir/rounds; returns its data."""
    evals = read_rounds(run_dir)
    unfinished = unfinished_rounds(run_dir)
    if not evals:
        raise ValueError(f"{Path(run_dir) / 'rounds'} holds no evaluation yet (no initial_eval.json, no "
                         "round-N/eval.json)")
    diff, verdict = final_vs_initial(evals, bootstrap, seed)
    png = plot_rounds(evals, report.figure_path("online_rounds.png"))
    first = evals[0]
    text = (f"The policy measured on the same {first['prompts']} held-out prompts before training (initial) and "
            "after each round: the judge's score of its sample, KL(policy || reference) estimated from the sample "
            "(the summed log-ratio over its tokens), the judge's P(sample beats the initial policy's sample), "
            "response length, the share of samples that ended with EOS, and the top-k entropy of the "
            "next-token distribution (a falling entropy with a rising score is the over-optimisation "
            "signature, arXiv:2410.11677). Intervals: 95% percentile bootstrap over prompts; missing judge "
            "verdicts are counted, not imputed.\n\n" + verdict)
    if unfinished:
        text += f"\n\nRounds without an evaluation yet (stopped or still running): {', '.join(map(str, unfinished))}."
    rounds = [{k: v for k, v in e.items() if k != "per_prompt"} for e in evals]
    report.add("Online rounds", text, round_rows(evals), [png],
               {"rounds": rounds, "final_vs_initial": diff, "unfinished_rounds": unfinished})
    return {"rounds": rounds, "final_vs_initial": diff}
