"""`prefalign diagnose`: every diagnostic of a policy against its reference, as report sections.

Each `*_section` function computes one analysis with explicit arguments and adds one section to a
Report; `diagnose` runs them in order. Nothing here reads a config: the CLI resolves a run folder
(or --model / --reference / --data) into these arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prefalign.data.collate import pad_rows
from prefalign.data.tokenize import tokenize_examples
from prefalign.diagnostics.factors import (DEFAULT_FACTORS, explain_preferences, factor_matrix, length_bias_sentence,
                                           plot_factor_weights)
from prefalign.diagnostics.kl import sample_kl
from prefalign.diagnostics.overopt_sections import evenly_spaced, likelihood_section, reward_section, token_shift_section
from prefalign.diagnostics.overoptimization import run_models
from prefalign.diagnostics.plots import plot_training_curves
from prefalign.diagnostics.ranking import ranking_report
from prefalign.diagnostics.report import Report
from prefalign.diagnostics.winrate import judge_calibration, judge_win_rate, outcomes_from_probs, plot_reliability
from prefalign.models.generation import GenerateSettings, generate
from prefalign.logging import progress_iter
from prefalign.logps import lean_path_supported, token_logps


@dataclass
class PairLogps:
    chosen: torch.Tensor  # [N] summed response log-probs
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor  # [N] response token counts
    rejected_tokens: torch.Tensor


@torch.no_grad()
def pair_logps(model, tokenizer, examples: list, max_length: int = 512, max_prompt_length: int = 256,
               batch_size: int = 8, progress: bool = True, description: str = "scoring pairs") -> PairLogps:
    """Summed log-probs of every pair's chosen and rejected response, tokenized as training does."""
    tokenized = tokenize_examples(examples, tokenizer, max_length, max_prompt_length)
    impl = "lean" if lean_path_supported(model) else "full"
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums, counts = [], []
    for s in progress_iter(range(0, len(tokenized), batch_size), description, enabled=progress):
        rows = [(e.sequences[k], e.response_starts[k]) for e in tokenized[s:s + batch_size] for k in (0, 1)]
        b = pad_rows(rows, tokenizer.pad_token_id).to(device)
        tok = token_logps(model, b.input_ids, b.attention_mask, b.response_mask, impl, b.target_index)
        sums.append(tok.sum(1).double().cpu())
        counts.append(b.scored_mask().sum(1).cpu())
    model.train(was_training)
    sums, counts = torch.cat(sums).view(-1, 2), torch.cat(counts).view(-1, 2)
    return PairLogps(sums[:, 0], sums[:, 1], counts[:, 0], counts[:, 1])


def snippet(text, width: int = 70) -> str:
    text = text if isinstance(text, str) else " / ".join(m.get("content", "") for m in text)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def plot_margins(policy: PairLogps, reference: PairLogps, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = (reference.chosen - reference.rejected).numpy()
    y = (policy.chosen - policy.rejected).numpy()
    fig, ax = plt.subplots(figsize=(5, 4.2))
    ax.scatter(x, y, s=14, c=["C2" if v > 0 else "C3" for v in y], alpha=0.8)
    lim = max(abs(x).max(), abs(y).max(), 1e-3) * 1.05
    ax.plot([-lim, lim], [-lim, lim], ":", color="grey", label="policy = reference")
    ax.axhline(0, color="black", lw=0.8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("reference log p(chosen) - log p(rejected)")
    ax.set_ylabel("policy log p(chosen) - log p(rejected)")
    ax.set_title("Pair margins (green: policy ranks the pair correctly)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def ranking_section(report: Report, examples: list, policy: PairLogps, reference: PairLogps, beta: float,
                    true_p: float | torch.Tensor, p_source: str, hardest: int = 8) -> dict:
    r = ranking_report(policy.chosen, policy.rejected, reference.chosen, reference.rejected, beta, true_p,
                       policy.chosen_tokens, policy.rejected_tokens, hardest)
    ref_norm = ranking_report(reference.chosen, reference.rejected, reference.chosen, reference.rejected, beta,
                              true_p, reference.chosen_tokens, reference.rejected_tokens, 0)
    r["reference_ranking_accuracy_len_norm"] = ref_norm["ranking_accuracy_len_norm"]
    table = [{"model": "policy", "ranking accuracy": r["ranking_accuracy"],
              "length-normalised": r["ranking_accuracy_len_norm"]},
             {"model": "reference", "ranking accuracy": r["reference_ranking_accuracy"],
              "length-normalised": r["reference_ranking_accuracy_len_norm"]},
             {"model": f"idealized (beta={beta:g})", "ranking accuracy": r["idealized_ranking_accuracy"],
              "length-normalised": None}]
    hard = [{"pair": h["index"], "prompt": snippet(examples[h["index"]].prompt),
             "reference misranking": h["reference_misranking"], "DPO loss to flip": h["loss_to_flip"],
             "policy correct": h["policy_correct"]} for h in r["hardest"]]
    png = report.figure_path("ranking_margins.png")
    plot_margins(policy, reference, png)
    text = (f"Share of {r['pairs']} pairs where a model gives the chosen response a higher log-probability than the "
            f"rejected one (Chen et al., arXiv:2405.19534). The idealized accuracy is that of the exact optimum "
            f"of the DPO/RLHF objective at beta = {beta:g}; {p_source}.\n\n"
            f"- alignment gap (idealized - policy): **{r['alignment_gap']:+.3f}**\n"
            f"- the plot shows each pair's log-probability margin under the reference (x) and the policy (y); "
            f"points above the horizontal axis are ranked correctly by the policy.")
    report.add("Ranking accuracy", text, table, [png], r)
    report.add("Hardest pairs", "The pairs the reference misranks most (misranking = log p_ref(rejected) - "
               "log p_ref(chosen)). The policy's margin is z / beta - misranking, z = beta times the "
               "implicit-reward margin, so a pair is ranked correctly only once its DPO loss falls below "
               "`-log sigmoid(beta * misranking)`, the loss to flip: the larger the misranking, the closer to 0 "
               "DPO must drive that pair's loss.", hard,
               data={"hardest": r["hardest"]})
    return r


def kl_section(report: Report, policy, reference, tokenizer, prompts: list, settings: GenerateSettings,
               progress: bool = True) -> dict:
    r = sample_kl(policy, reference, tokenizer, prompts, settings.max_new_tokens, settings.seed, settings.batch_size,
                  settings.max_prompt_tokens, progress=progress)
    text = (f"KL(policy || reference) estimated as the mean log-ratio over {r['samples']} responses sampled from "
            f"the policy (unbiased for samples of the policy; the log-ratio on the dataset's fixed responses is "
            f"not), up to {settings.max_new_tokens} new tokens, seed {settings.seed}.")
    if r["truncated_prompts"]:  # cut as training cut them, and to leave the model room for the new tokens
        text += (f" {r['truncated_prompts']} of {len(prompts)} prompts were cut from the left to fit "
                 f"(at most {settings.max_prompt_tokens} prompt tokens, and prompt + new tokens within the model's "
                 f"positions).")
    report.add("Sample KL", text, [{"KL (nats)": r["kl"], "standard error": r["kl_stderr"],
                                    "samples": r["samples"]}], data=r)
    return r


def winrate_section(report: Report, judge, judge_name: str, prompts: list, policy_texts: list, other_texts: list,
                    other_name: str, tie_band: float, n_boot: int, seed: int) -> dict:
    r = judge_win_rate(judge, prompts, policy_texts, other_texts, None, tie_band, n_boot, seed)
    orders = ("asked in both orders and averaged, which cancels a judge's preference for the first (or second) "
              f"position; the two orders picked the same position on {r['order_inconsistent']:.0%} of prompts"
              if r["both_orders"] else "asked in one order: this judge compares per-response scores, so the "
              "position cannot matter")
    ties = "P = 0.5 exactly" if tie_band == 0 else f"|P - 0.5| <= {tie_band:g}"
    text = (f"Win rate of the policy against the {other_name} under the judge `{judge_name}` on {len(prompts)} "
            f"prompts (same prompts and seed for both). The judge was {orders}. Ties ({ties}) count as half; "
            f"prompts without a verdict are excluded ({r['missing']}). Interval: {r['level']:.0%} percentile "
            f"bootstrap over prompts, {r['bootstrap_samples']} resamples, seed {r['seed']}.")
    table = [{"win rate": r["win_rate"], "CI low": r["ci_low"], "CI high": r["ci_high"], "wins": r["wins"],
              "ties": r["ties"], "losses": r["losses"], "missing": r["missing"]}]
    report.add("Win rate", text, table, data=r)
    samples = [{"prompt": snippet(p, 60), "policy": snippet(a, 90), other_name: snippet(b, 90)}
               for p, a, b in list(zip(prompts, policy_texts, other_texts))[:4]]
    report.add("Samples", f"The first judged prompts with the policy's and the {other_name}'s responses "
               "(shortened): read them before trusting any number above.", samples)
    return r


def calibration_section(report: Report, judge, judge_name: str, examples: list, n_bins: int = 10) -> dict:
    r = judge_calibration(judge, [e.prompt for e in examples], [e.responses[0] for e in examples],
                          [e.responses[1] for e in examples], n_bins)
    png = report.figure_path("judge_reliability.png")
    plot_reliability(r["bins"], png, f"Reliability of {judge_name} on the data's pairs")
    text = (f"How well the judge's P(chosen preferred) matches how often the chosen response really is the "
            f"preferred one, on {r['pairs']} labelled pairs ({r['missing']} without a verdict). For a reward "
            f"model P is sigmoid((score_chosen - score_rejected) / T). Expected calibration error over "
            f"{n_bins} equal-width confidence bins (Guo et al., arXiv:1706.04599): **{r['ece']:.3f}**; "
            f"pairwise accuracy {r['accuracy']:.3f}.")
    report.add("Judge calibration", text, [b for b in r["bins"] if b["count"]], [png],
               {k: v for k, v in r.items() if k != "probs"})
    return r


def factor_section(report: Report, examples: list, sources: dict[str, list], factors=DEFAULT_FACTORS,
                   l2: float = 1e-3) -> dict:
    """sources: name -> per-pair preference of (chosen over rejected): 1, 0, 0.5 (tie) or None."""
    names, phi = factor_matrix([e.prompt for e in examples], [e.responses[0] for e in examples],
                               [e.responses[1] for e in examples], factors)
    results, undecided = {}, []
    for name, prefs in sources.items():
        if all(v is None or v == 0.5 for v in prefs):
            undecided.append(name)  # e.g. a policy equal to its reference: every margin is 0
        else:
            results[name] = explain_preferences(names, phi, prefs, l2)
    table = [{"factor": n, **{f"{s} weight [95% CI]": next(
        (f"{r['weight']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]{' *' if r['significant'] else ''}"
         for r in res["factors"] if r["factor"] == n), "constant") for s, res in results.items()}} for n in names]
    png = report.figure_path("preference_factors.png")
    plot_factor_weights(results, png)
    bias = "\n".join(f"- {length_bias_sentence(s, res)}" for s, res in results.items())
    text = ("Which measurable factors explain each source's preference of the chosen over the rejected response "
            "(after Li et al., arXiv:2402.11296): a logistic regression of the preference on the factor "
            "differences (chosen minus rejected), each divided by its root mean square, no intercept; weights "
            "are log-odds per typical difference, * marks a 95% interval that excludes 0. Ties and missing "
            f"verdicts are excluded (counted in the JSON). Factors: {', '.join(names)}.\n\n"
            "Length bias:\n\n" + bias + "\n\nA log-prob preference favours shorter responses by construction "
            "(every token adds a negative log-prob): compare the length-normalised ranking accuracy above.")
    if undecided:
        text += f"\n\nNot analysed (every pair a tie or without a verdict): {', '.join(undecided)}."
    report.add("Preference factors", text, table, [png], {**results, "undecided_sources": undecided})
    return results


def curves_section(report: Report, metrics_path: Path, summary: dict | None) -> None:
    png = report.figure_path("training_curves.png")
    plot_training_curves(metrics_path, png)
    rows = []
    if summary:
        before, after = summary.get("eval_start") or {}, summary.get("eval_end") or {}
        rows = [{"held-out metric": k.removeprefix("eval/"), "start": before.get(k), "end": after.get(k)}
                for k in sorted(set(before) | set(after))]
    text = f"Training and held-out metrics from `{metrics_path}`."
    if summary:
        text += f" Objective `{summary.get('objective')}`, {summary.get('steps')} steps."
    report.add("Training curves", text, rows, [png], {"summary_eval": rows})


def margin_preferences(policy: PairLogps, reference: PairLogps) -> list[float]:
    """1 where the policy's implicit reward prefers the chosen response, 0 where the rejected, 0.5 on a tie."""
    margin = (policy.chosen - reference.chosen) - (policy.rejected - reference.rejected)
    return [1.0 if m > 0 else 0.0 if m < 0 else 0.5 for m in margin.tolist()]


@dataclass
class DiagnoseInputs:
    policy: object
    reference: object
    tokenizer: object
    examples: list  # pairs (Example, kind "pair")
    beta: float
    true_p: float | torch.Tensor
    p_source: str
    settings: GenerateSettings
    judge: object = None
    judge_name: str = ""
    factors: tuple = DEFAULT_FACTORS
    n_prompts: int = 32
    max_length: int = 512
    max_prompt_length: int = 256
    tie_band: float = 0.0
    n_boot: int = 2000
    metrics_path: Path | None = None
    summary: dict | None = None
    progress: bool = True
    notes: list[str] = field(default_factory=list)
    run_dir: Path | None = None  # a run folder: its checkpoints feed the over-optimisation sections
    reference_dir: str | None = None  # the reference's folder (reward over-optimisation reloads it)
    loader: object = None  # folder -> model (merges LoRA checkpoints); None: prefalign.models.causal_lm.load_model
    token_shift: bool = True
    likelihood_overopt: bool = True
    reward_overopt: bool = True
    checkpoints: int = 0  # models probed per run, evenly spaced, start and final included; 0: all
    overopt_k: int = 10


def diagnose(x: DiagnoseInputs, report: Report) -> Report:
    """Every section, in reading order; returns the report (not yet written)."""
    if x.notes:
        report.add("Inputs", "\n".join(f"- {n}" for n in x.notes))
    score = dict(max_length=x.max_length, max_prompt_length=x.max_prompt_length, batch_size=x.settings.batch_size,
                 progress=x.progress)
    pol = pair_logps(x.policy, x.tokenizer, x.examples, description="policy log-probs", **score)
    ref = pair_logps(x.reference, x.tokenizer, x.examples, description="reference log-probs", **score)
    ranking_section(report, x.examples, pol, ref, x.beta, x.true_p, x.p_source)
    prompts = list({repr(e.prompt): e.prompt for e in x.examples}.values())[: x.n_prompts]  # distinct, in order
    kl_section(report, x.policy, x.reference, x.tokenizer, prompts, x.settings, x.progress)
    if x.token_shift:
        token_shift_section(report, x.policy, x.reference, x.tokenizer, prompts, x.settings)
    zeros = PairLogps(*(torch.zeros_like(t) for t in (pol.chosen, pol.rejected, pol.chosen_tokens,
                                                      pol.rejected_tokens)))
    sources = {"data labels": [1.0] * len(x.examples), "policy implicit reward": margin_preferences(pol, ref),
               "policy log-prob": margin_preferences(pol, zeros)}
    if x.judge is not None:
        policy_texts = [r[0] for r in generate(x.policy, x.tokenizer, prompts, x.settings, x.progress, "policy samples")]
        ref_texts = [r[0] for r in generate(x.reference, x.tokenizer, prompts, x.settings, x.progress,
                                            "reference samples")]
        winrate_section(report, x.judge, x.judge_name, prompts, policy_texts, ref_texts, "reference", x.tie_band,
                        x.n_boot, x.settings.seed)
        probs = calibration_section(report, x.judge, x.judge_name, x.examples)["probs"]
        sources[f"judge {x.judge_name}"] = outcomes_from_probs(probs, x.tie_band)
    factor_section(report, x.examples, sources, x.factors)
    overopt_sections(x, report, prompts)
    if x.metrics_path is not None and Path(x.metrics_path).is_file():
        curves_section(report, Path(x.metrics_path), x.summary)
    return report


def overopt_sections(x: DiagnoseInputs, report: Report, prompts: list) -> None:
    """Likelihood and reward over-optimisation across a run's checkpoints (run folders only)."""
    want_reward = x.reward_overopt and x.judge is not None
    if x.run_dir is None or not (x.likelihood_overopt or want_reward):
        return
    models = evenly_spaced(run_models(x.run_dir), x.checkpoints)
    if x.likelihood_overopt:
        likelihood_section(report, models, prompts, x.tokenizer, x.settings, x.overopt_k, x.loader, x.progress,
                           x.metrics_path, x.summary)
    if want_reward:
        reward_section(report, models, x.reference_dir or models[0][1], x.judge, x.judge_name, prompts, x.tokenizer,
                       x.settings, x.loader, x.progress)


def true_preference(examples: list, assumed: float) -> tuple[float | torch.Tensor, str]:
    """Per-pair soft labels when every pair has one, else the assumed probability, said out loud."""
    soft = [e.extra.get("features", {}).get("soft_label") for e in examples]
    if all(v is not None for v in soft):
        return torch.tensor(soft, dtype=torch.float64), "the true preference probability p is each pair's soft_label"
    if not 0 < assumed <= 1 or math.isnan(assumed):
        raise ValueError(f"--true-p must lie in (0, 1], got {assumed}")
    return assumed, (f"the data has no soft labels, so the true preference probability is an **assumption**: "
                     f"p = {assumed:g} for every pair (set it with --true-p)")
