"""A sweep's comparison: sample each cell's policy on held-out prompts, score the samples, and
write one report (Markdown, HTML, JSON) with the reward-vs-KL frontier.

Per cell and held-out prompt the policy samples one response (temperature 1, a fixed seed, so
cells are compared on the same random stream), and we record
- kl: log pi(y|x) - log pi_ref(y|x) summed over the sampled tokens, a Monte-Carlo estimate of
  KL(pi || pi_ref) (its mean over prompts is unbiased; see diagnostics/kl.py),
- score: the judge's (or gold reward's) score of the response, when a judge is given,
- tokens: the response's length in tokens (EOS included when emitted).
Each mean comes with a seeded percentile-bootstrap interval over prompts.

Score at matched KL: the frontier papers (DPO arXiv:2305.18290 Fig. 2; Gao et al.
arXiv:2210.10760) compare methods at equal KL, not at equal hyper-parameters. For each
objective its cells, sorted by KL, are linearly interpolated at KL* = the smallest of the
objectives' largest KLs (the largest KL every objective reaches); an objective whose smallest
KL lies above KL* has no value there and is ranked last, never extrapolated.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import torch

from prefalign.diagnostics.kl import sampled_logprobs
from prefalign.diagnostics.online import summarize
from prefalign.models.generation import GenerateSettings, response_texts

# the held-out metrics of summary.json's eval_end that the report shows
HELD_OUT = {"eval/rewards/accuracy": "held-out reward acc", "eval/rewards/margins": "held-out margin",
            "eval/ranking/accuracy": "ranking acc"}


@torch.no_grad()
def sample_and_score(policy, reference, tokenizer, judge, prompts: list, max_new_tokens: int = 48, seed: int = 0,
                     batch_size: int = 16, max_prompt_tokens: int = 256) -> dict[str, list]:
    """One sample per prompt from `policy`: per-prompt lists kl, score (None without a judge), tokens, text,
    and ref_logp (the sample's summed log-probability under the reference)."""
    if not prompts:
        raise ValueError("sample_and_score needs at least one prompt")
    was_training = policy.training
    policy.eval()
    reference.eval()
    torch.manual_seed(seed)
    settings = GenerateSettings(max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens)
    out = {"kl": [], "score": [], "tokens": [], "text": [], "ref_logp": []}
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s:s + batch_size]
        b, policy_sums, ref_sums = sampled_logprobs(policy, reference, tokenizer, chunk, settings)
        texts = response_texts(tokenizer, b)
        out["kl"] += (policy_sums - ref_sums).tolist()
        out["ref_logp"] += ref_sums.tolist()
        out["tokens"] += b.response_mask.sum(1).tolist()
        out["text"] += texts
        out["score"] += judge.score(chunk, texts) if judge is not None else [None] * len(chunk)
    policy.train(was_training)
    return out


def summarize_samples(per_prompt: dict[str, list], bootstrap: int = 2000, seed: int = 0) -> dict:
    """Mean and bootstrap interval of kl, score and tokens (score absent without a judge)."""
    out = {}
    for key in ("kl", "score", "tokens"):
        if any(v is not None for v in per_prompt[key]):
            out[key] = summarize([None if v is None else float(v) for v in per_prompt[key]], bootstrap, seed)
    return out


def against_untouched(cell: dict, base: dict, bootstrap: int = 2000, seed: int = 0) -> dict:
    """The cell's samples against the untouched model's on the same prompts and random stream, per
    prompt: win rate by the judge's score (a tie counts one half), score change and length change
    in tokens, each a mean with its bootstrap interval over prompts."""
    mine, theirs = cell["per_prompt"], base["per_prompt"]
    if len(mine["tokens"]) != len(theirs["tokens"]):
        raise ValueError(f"cell {cell['name']} and the untouched model were sampled on different prompts")
    out = {"token_change": summarize([float(a - b) for a, b in zip(mine["tokens"], theirs["tokens"])], bootstrap, seed)}
    if None not in mine["score"] and None not in theirs["score"]:
        pairs = list(zip(mine["score"], theirs["score"]))
        out["win_rate"] = summarize([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs], bootstrap, seed)
        out["score_change"] = summarize([float(a - b) for a, b in pairs], bootstrap, seed)
    return out


def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """Piecewise-linear value at x of points sorted by their first coordinate; None outside their range."""
    points = sorted(points)
    if not points or x < points[0][0] or x > points[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[0][1]  # a single point at exactly x


def matched_kl_ranking(cells: list[dict], value: str = "score") -> dict:
    """{kl_star, rows}: each objective's `value` interpolated at KL*, ranked best first (see module docstring)."""
    curves: dict[str, list] = {}
    for c in cells:
        kl, v = c["samples"]["kl"]["mean"], c.get("samples", {}).get(value, {}).get("mean")
        if v is not None:
            curves.setdefault(c["objective"], []).append((kl, v))
    if not curves:
        return {"kl_star": None, "value": value, "rows": []}
    kl_star = min(max(k for k, _ in pts) for pts in curves.values())
    rows = [{"objective": o, "cells": len(pts), "kl_range": [round(min(k for k, _ in pts), 4),
                                                           round(max(k for k, _ in pts), 4)],
             f"{value}_at_kl_star": interpolate(pts, kl_star)} for o, pts in curves.items()]
    key = f"{value}_at_kl_star"
    rows.sort(key=lambda r: (r[key] is None, -(r[key] or 0.0)))
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank if r[key] is not None else None
    return {"kl_star": kl_star, "value": value, "rows": rows}


def plot_frontier(curves: dict[str, list[dict]], out_png: Path, ylabel: str, title: str = "") -> Path:
    """Score against KL, one line per curve; each point {kl, score, low, high, label}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in curves.items():
        pts = sorted(pts, key=lambda p: p["kl"])
        ys = [p["score"] for p in pts]
        err = [[y - (p.get("low") if p.get("low") is not None else y) for y, p in zip(ys, pts)],
               [(p.get("high") if p.get("high") is not None else y) - y for y, p in zip(ys, pts)]]
        ax.errorbar([p["kl"] for p in pts], ys, yerr=err, marker="o", capsize=3, label=name)
        for p in pts:
            if p.get("label"):
                ax.annotate(str(p["label"]), (p["kl"], p["score"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    ax.set_xlabel("sampled KL(pi || pi_ref), nats")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def fmt(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def interval(s: dict | None) -> str:
    if not s or s.get("mean") is None:
        return "-"
    return f"{s['mean']:.3f} [{s['low']:.3f}, {s['high']:.3f}]"


def cell_rows(cells: list[dict]) -> list[dict]:
    rows = []
    for c in cells:
        held = c.get("eval_end") or {}
        row = {"cell": c["name"], "objective": c["objective"], "beta": fmt(c.get("beta"), 4)}
        row.update({label: fmt(held.get(key)) for key, label in HELD_OUT.items()})
        row.update({"sampled KL": interval(c["samples"].get("kl")), "score": interval(c["samples"].get("score")),
                    "tokens": fmt(c["samples"]["tokens"]["mean"], 1)})
        versus = c.get("vs_untouched") or {}
        if versus:
            row.update({"win rate vs untouched": interval(versus.get("win_rate")),
                        "tokens vs untouched": interval(versus.get("token_change"))})
        rows.append(row)
    return rows


def sample_pairs_markdown(cells: list[dict], per_cell: int = 2, chars: int = 300) -> list[str]:
    """A few held-out prompts with the untouched model's and each cell's response (cut to `chars`)."""
    cut = lambda t: " ".join(str(t).split())[:chars]  # noqa: E731  one line, bounded
    lines = []
    for c in cells:
        for pair in (c.get("pairs") or [])[:per_cell]:
            prompt = pair["prompt"] if isinstance(pair["prompt"], str) else pair["prompt"][-1].get("content", "")
            lines += [f"**{c['name']}**, prompt: {cut(prompt)}", "",
                      f"- untouched ({fmt(pair.get('untouched_score'))}): {cut(pair['untouched'])}",
                      f"- aligned ({fmt(pair.get('aligned_score'))}): {cut(pair['aligned'])}", ""]
    return lines


def markdown_table(rows: list[dict]) -> list[str]:
    if not rows:
        return ["(none)"]
    keys = list(rows[0])
    return (["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            + ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows])


def html_table(rows: list[dict]) -> str:
    if not rows:
        return "<p>(none)</p>"
    keys = list(rows[0])
    esc = html.escape
    return ("<table border=1><tr>" + "".join(f"<th>{esc(k)}</th>" for k in keys) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{esc(str(r[k]))}</td>" for k in keys) + "</tr>" for r in rows)
            + "</table>")


def write_sweep_report(cells: list[dict], out_dir: Path, judge: str | None, extra: dict | None = None) -> dict:
    """report.md, report.html, report.json and frontier.png in out_dir (each replaced atomically)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    has_score = any("score" in c["samples"] for c in cells)
    value, ylabel = ("score", f"{judge} score (mean over held-out prompts)") if has_score else \
        ("heldout_accuracy", "held-out reward accuracy")
    if not has_score:  # no judge: the frontier reads the held-out reward accuracy instead
        for c in cells:
            c["samples"]["heldout_accuracy"] = {"mean": (c.get("eval_end") or {}).get("eval/rewards/accuracy")}
    curves: dict[str, list] = {}
    for c in cells:
        s = c["samples"].get(value, {})
        if s.get("mean") is not None:
            curves.setdefault(c["objective"], []).append(
                {"kl": c["samples"]["kl"]["mean"], "score": s["mean"], "low": s.get("low"), "high": s.get("high"),
                 "label": f"b={c['beta']:g}" if c.get("beta") is not None else ""})
    plot_frontier(curves, out_dir / ".frontier.png.tmp.png", ylabel, "score vs KL, one curve per objective")
    (out_dir / ".frontier.png.tmp.png").replace(out_dir / "frontier.png")
    ranking = matched_kl_ranking(cells, value)
    rows = cell_rows(cells)
    ranked = [{"rank": r["rank"] or "-", "objective": r["objective"], "cells": r["cells"],
               "KL range": f"{r['kl_range'][0]:.3f}-{r['kl_range'][1]:.3f}",
               f"{value} at KL*": fmt(r[f"{value}_at_kl_star"])} for r in ranking["rows"]]
    report = {"judge": judge, "frontier_value": value, "matched_kl": ranking, "cells": cells, **(extra or {})}
    kl_line = f"KL* = {fmt(ranking['kl_star'])} nats (the largest KL every objective reaches)"
    md = ["# Sweep report", "", f"{len(cells)} cells; score: {judge or 'none (no judge: held-out reward accuracy)'}.",
          "Means over held-out prompts with 95% bootstrap intervals; KL is sampled, in nats.", "",
          "## Cells", "", *markdown_table(rows), "", "## Ranked by score at matched KL", "", kl_line, "",
          *markdown_table(ranked), "", "![frontier](frontier.png)", ""]
    pairs = sample_pairs_markdown(cells)
    if pairs:
        md += ["## Sample pairs: the untouched model and the aligned cell on the same held-out prompt", "",
               "Both sampled with the same seed; the judge's score in brackets. \"win rate vs untouched\" counts "
               "prompts where the cell's sample scores higher (a tie counts one half).", "", *pairs]
    page = (f"<html><body><h1>Sweep report</h1><p>{len(cells)} cells; score: {html.escape(str(judge))}</p>"
            f"<h2>Cells</h2>{html_table(rows)}<h2>Ranked by score at matched KL</h2><p>{html.escape(kl_line)}</p>"
            f"{html_table(ranked)}<img src=\"frontier.png\" alt=\"frontier\">"
            + (f"<h2>Sample pairs</h2><p>{'<br>'.join(html.escape(x) for x in pairs)}</p>" if pairs else "")
            + "</body></html>\n")
    for name, text in (("report.json", json.dumps(report, indent=1, default=str)), ("report.md", "\n".join(md)),
                       ("report.html", page)):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out_dir / name)
    return report
