"""The token-shift and over-optimisation sections of `prefalign diagnose`.

Three probes, one report section each, computed by the probe modules and only presented here:

- token distribution shift of the policy against its reference (URIAL, arXiv:2312.01552;
  diagnostics.token_shift), on the diagnose prompts;
- likelihood over-optimisation indicators per checkpoint of a run (Shi et al., arXiv:2410.11677;
  diagnostics.overoptimization), with what the trainer logged and decided during training;
- reward over-optimisation: a judge's score gain against d = sqrt(KL) over the checkpoints, and
  the fit R(d) = d (a - b log d) of Gao et al. (arXiv:2210.10760; diagnostics.reward_overopt).

A run's models are (step, folder) pairs from run_models: the start model at step 0, every
checkpoint-N, and final. `evenly_spaced` caps how many are probed, since each costs one model
load and one round of generation per probe.
"""

from __future__ import annotations

from pathlib import Path

from prefalign.diagnostics.overoptimization import INDICATORS, indicators_over_checkpoints, plot_likelihood_indicators
from prefalign.diagnostics.plots import read_metrics
from prefalign.diagnostics.report import Report
from prefalign.diagnostics.reward_overopt import plot_reward_vs_kl, reward_vs_kl
from prefalign.diagnostics.token_shift import KINDS, plot_token_shift, token_shift
from prefalign.models.generation import GenerateSettings


def evenly_spaced(models: list, n: int) -> list:
    """At most n of the (step, folder) models, evenly spaced by index, always the first and the last; n = 0: all."""
    if n <= 0 or len(models) <= n:
        return list(models)
    if n < 2:
        raise ValueError(f"--checkpoints must be 0 (all) or at least 2 (the start and the final model), got {n}")
    return [models[i] for i in sorted({round(j * (len(models) - 1) / (n - 1)) for j in range(n)})]


def can_score(judge) -> bool:
    """Whether the judge scores single responses (compare-only judges do not)."""
    return judge.can_score


def logged_indicators(metrics_path: Path | None) -> list[dict]:
    """The `overopt/*` measurements the trainer logged to metrics.jsonl, as {step, topk_entropy, topk_mass} rows."""
    if metrics_path is None or not Path(metrics_path).is_file():
        return []
    return [{"step": r["step"], **{k: r.get(f"overopt/{k}") for k in INDICATORS}}
            for r in read_metrics(metrics_path) if any(f"overopt/{k}" in r for k in INDICATORS)]


NO_CHECKPOINTS = ("Only the start and the final model were probed (the run kept no checkpoints between them, or "
                  "--checkpoints 2): two points, no trend. Train with save_steps > 0 to see one.")


def code_span(token: str) -> str:
    # a token may hold a backtick, which would end the Markdown code span early
    return "`" + repr(token).replace("`", "'") + "`"


def token_shift_section(report: Report, policy, reference, tokenizer, prompts: list,
                        settings: GenerateSettings) -> dict:
    r = token_shift(policy, reference, tokenizer, prompts, settings.max_new_tokens, settings.batch_size,
                    max_prompt_tokens=settings.max_prompt_tokens)
    png = report.figure_path("token_shift.png")
    plot_token_shift(r, png, "token distribution shift: policy's greedy answers ranked by the reference")
    ranks = {"unshifted": "1", "marginal": "2-3", "shifted": "> 3"}
    table = [{"position kind": k, "reference rank": ranks[k], "positions": r["counts"][k], "share": r[f"{k}_share"]}
             for k in KINDS]
    most = ", ".join(f"{code_span(m['token'])} ({m['shifted']} of {m['occurrences']})" for m in r["most_shifted"][:10])
    text = (f"The policy answers each of {r['prompts']} prompts greedily (up to {settings.max_new_tokens} new "
            f"tokens); at every answer position the reference reads the same context and ranks the policy's token "
            f"among its own next-token choices (URIAL, Lin et al., arXiv:2312.01552). Unshifted: the reference's "
            f"top token; marginal: its 2nd or 3rd; shifted: lower. A policy equal to its reference is 100% "
            f"unshifted; the paper finds alignment shifts few positions, mostly stylistic tokens early in the "
            f"answer. {r['positions']} positions in all (mean reference rank {r['mean_base_rank']:.3g}); shares "
            f"from a few dozen answers move by several points between prompt sets.\n\n"
            f"Most often shifted tokens (times shifted of occurrences): {most or 'none'}.")
    report.add("Token distribution shift", text, table, [png], r)
    return r


def monitor_sentence(monitor: dict) -> str:
    """The trainer's early-stop verdict (summary.json["overopt"]) in one sentence."""
    if monitor.get("stopped_early"):
        return (f"Training **stopped early**: {monitor['stop_reason']}. The best (last healthy) model is step "
                f"{monitor['best_step']}, saved at `{monitor['best_model']}`.")
    if monitor.get("threshold"):
        return (f"The early-stop monitor (stop when {monitor['indicator']} falls {monitor['threshold']:.0%} below "
                f"its step-0 value {monitor['initial']:.4g}) never fired: training ran to the end.")
    return "The trainer measured the indicators without a stop threshold (overopt_stop = 0)."


def likelihood_section(report: Report, models: list, prompts: list, tokenizer, settings: GenerateSettings,
                       k: int = 10, loader=None, progress: bool = True, metrics_path: Path | None = None,
                       summary: dict | None = None) -> dict:
    r = indicators_over_checkpoints(models, prompts, k, progress=progress, loader=loader, tokenizer=tokenizer,
                                    max_new_tokens=settings.max_new_tokens, seed=settings.seed,
                                    batch_size=settings.batch_size, max_prompt_tokens=settings.max_prompt_tokens)
    logged = logged_indicators(metrics_path)
    monitor = (summary or {}).get("overopt")
    first = r["rows"][0]
    table = [{"step": row["step"], "model": Path(row["model"]).name, f"top-{k} entropy": row["topk_entropy"],
              "entropy vs start": f"{row['topk_entropy'] / first['topk_entropy'] - 1:+.1%}",
              f"top-{k} mass": row["topk_mass"], "mass vs start": f"{row['topk_mass'] / first['topk_mass'] - 1:+.1%}",
              "positions": row["positions"]}
             for row in r["rows"]]
    png = report.figure_path("likelihood_overopt.png")
    plot_likelihood_indicators(r, png, logged=logged, stop=monitor)
    text = (f"Likelihood over-optimisation indicators (Shi et al., arXiv:2410.11677) of the run's start model, "
            f"its checkpoints and final model, each along its own samples for the same {r['prompts']} prompts "
            f"(temperature 1, seed {settings.seed}, up to {settings.max_new_tokens} new tokens): the entropy of "
            f"the top-{k} next-token probabilities renormalised (at most ln {k} = {first['topk_entropy_max']:.3g}) "
            f"and the top-{k} probability mass, averaged over positions then answers. Both falling as training "
            f"goes on warns that the model is losing output diversity (entropy) or leaking probability into the "
            f"tail (mass), which the paper finds comes before a drop in quality. \"vs start\" is the relative "
            f"change; with {r['prompts']} sampled answers per model, changes of a few percent are sampling noise.")
    if len(models) == 2:
        text += "\n\n" + NO_CHECKPOINTS
    if logged:
        text += (f"\n\nThe trainer also logged the indicators {len(logged)} times (`overopt/*` in metrics.jsonl, "
                 f"on its own held-out prompts and settings, so not comparable point for point; dashed in the plot).")
    if monitor:
        text += "\n\n" + monitor_sentence(monitor)
    report.add("Likelihood over-optimisation", text, table, [png],
               {**r, "logged_in_training": logged, "training_monitor": monitor})
    return r


def reward_section(report: Report, models: list, reference_dir, judge, judge_name: str, prompts: list, tokenizer,
                   settings: GenerateSettings, loader=None, progress: bool = True) -> dict | None:
    if not can_score(judge):
        report.add("Reward over-optimisation", f"Not measured: the judge `{judge_name}` only compares pairs; the fit "
                   "needs a score for each response. Use a judge with score() (a reward model, or `--judge "
                   "callable --judge-arg score_fn=module:function`).", data={"skipped": "judge has no score()"})
        return None
    r = reward_vs_kl(models, reference_dir, judge, prompts, settings.max_new_tokens, settings.seed,
                     settings.batch_size, progress=progress, loader=loader, tokenizer=tokenizer)
    r["judge"] = judge_name  # e.g. "callable(log_words)" rather than the class's registry name
    table = [{"step": row["step"], "model": Path(row["model"]).name + (" (reference)" if row["is_reference"] else ""),
              "KL": row["kl"], "KL std err": row.get("kl_stderr"), "d = sqrt(KL)": row["d"], "score": row["score"],
              "gain": row["gain"], "scored": row["scored"], "missing": row["missing_scores"]} for row in r["rows"]]
    png = report.figure_path("reward_overopt.png")
    plot_reward_vs_kl(r, png)
    fit, peak = r["fit"], r["peak"]
    lines = [f"- fit over {fit['points']} checkpoints: a = {fit['a']:.4g}, b = {fit['b']:.4g}, "
             f"rmse {fit['rmse']:.3g}" if fit else f"- {r['note']}"]
    if peak:
        lines.append(f"- peak: d* = {peak['d']:.4g} (KL {peak['kl']:.4g} nats), gain {peak['gain']:.4g}; "
                     + ("the last checkpoint is **past the peak**" if r["rows"][-1]["d"] > peak["d"]
                        else "no checkpoint is past it yet"))
    if fit and r["note"]:
        lines.append(f"- {r['note']}")
    if len(models) == 2:
        lines.append(f"- {NO_CHECKPOINTS}")
    if r["kl_not_positive"]:
        lines.append(f"- {r['kl_not_positive']} checkpoint(s) had a sampled KL <= 0 (noise near the reference): "
                     "drawn at d = 0 and left out of the fit")
    text = (f"Reward over-optimisation (Gao et al., arXiv:2210.10760): each model answers the same "
            f"{len(prompts)} prompts (one sample each, seed {settings.seed}); the judge `{judge_name}` scores the "
            f"answers and the gain is a model's mean score minus the reference's. KL(policy || reference) is the "
            f"mean log-ratio of the same samples, d = sqrt(KL). The law R(d) = d (a - b log d) rises, peaks at "
            f"d* = exp(a/b - 1), then falls: checkpoints past d* are over-optimised as far as this judge can "
            f"tell. With one sample per prompt and a handful of checkpoints, read d* as a rough location.\n\n"
            + "\n".join(lines))
    report.add("Reward over-optimisation", text, table, [png], r)
    return r
