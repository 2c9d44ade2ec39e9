"""Per-round evaluation of an online run: summaries with bootstrap intervals, paired differences,
reading `rounds/*/eval.json` back, and the flat `online/*` line for metrics.jsonl.

The online loop measures the policy on the same held-out prompts after every round (and once
before round 0) and hands `round_eval` one array per metric, one value per prompt, in prompt order:

- judge_score: the judge's score of the policy's sample (None: the judge gave no verdict)
- kl: sum over the sampled response tokens of log pi - log pi_ref (a Monte-Carlo estimate of
  KL(pi || pi_ref) for that prompt)
- win_vs_initial: P(policy's sample beats the initial policy's sample) from the judge (None: missing)
- response_tokens, finished (1 when the sample ended with EOS, else 0)
- topk_entropy, topk_mass: the over-optimisation indicators (arXiv:2410.11677), where measured

Missing values are counted and left out, never imputed. Every summary's interval is the seeded
percentile bootstrap of the mean over prompts (Efron & Tibshirani 1993, ch. 13). The arrays are
kept in the result, so two rounds can be compared prompt by prompt (`paired_difference`).

File layout (written by the loop): RUN/rounds/initial_eval.json (round -1, the starting policy)
and RUN/rounds/round-N/eval.json (N = 0, 1, ..., measured after round N's training).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from prefalign.diagnostics.winrate import bootstrap_interval

LEVEL = 0.95
METRICS = ("judge_score", "kl", "win_vs_initial", "response_tokens", "finished", "topk_entropy", "topk_mass")
RESERVED = ("round", "prompts", "metrics", "per_prompt", "bootstrap")
ROUND_DIR = re.compile(r"round-(\d+)")


def clean_values(label: str, values) -> list[float | None]:
    """Floats and Nones; anything else (text, NaN, inf) is an error naming `label` and the prompt."""
    out = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        if isinstance(v, str) or not isinstance(v, (int, float)) and not hasattr(v, "item"):
            raise ValueError(f"{label}[{i}] must be a number or None, got {v!r}")
        v = float(v)
        if not math.isfinite(v):
            # a NaN score is a bug upstream, not a missing verdict: say so rather than count it away
            raise ValueError(f"{label}[{i}] is {v}: give None for a missing value")
        out.append(v)
    return out


def summarize(values: list[float | None], bootstrap: int = 2000, seed: int = 0) -> dict:
    """Mean, percentile-bootstrap interval, count and missing count of one metric's values."""
    kept = [v for v in values if v is not None]
    out = {"mean": None, "low": None, "high": None, "n": len(kept), "missing": len(values) - len(kept)}
    if kept:
        t = torch.tensor(kept, dtype=torch.float64)
        out["mean"] = float(t.mean())
        out["low"], out["high"] = bootstrap_interval(t, bootstrap, LEVEL, seed)
    return out


def round_eval(round: int, per_prompt: dict[str, list], extras: dict | None = None, bootstrap: int = 2000,
               seed: int = 0) -> dict:
    """One round's evaluation as a JSON-able dict (the content of its eval.json).

    per_prompt: metric -> one value per held-out prompt (every array the same length; see the
    module docstring for the metrics the loop measures; other names are summarised the same way).
    extras: the round's other numbers (tokens_per_s, sampling_s, label counts, train loss, ...),
    merged in at the top level.
    """
    if not isinstance(round, int) or round < -1:
        raise ValueError(f"round must be -1 (the initial policy) or a round number >= 0, got {round!r}")
    if not per_prompt:
        raise ValueError("per_prompt holds no metric")
    lengths = {name: len(values) for name, values in per_prompt.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"every per_prompt array must cover the same prompts; lengths differ: {lengths}")
    extras = dict(extras or {})
    clash = sorted(set(extras) & set(RESERVED))
    if clash:
        raise ValueError(f"extras may not use the reserved keys {clash}")
    cleaned = {name: clean_values(f"per_prompt[{name!r}]", values) for name, values in per_prompt.items()}
    return {"round": round, "prompts": next(iter(lengths.values())),
            "metrics": {name: summarize(values, bootstrap, seed) for name, values in cleaned.items()},
            "bootstrap": {"samples": bootstrap, "level": LEVEL, "seed": seed}, **extras, "per_prompt": cleaned}


def paired_difference(before: list, after: list, bootstrap: int = 2000, seed: int = 0) -> dict:
    """Mean of after - before over the prompts where both have a value, with a bootstrap interval
    and whether that interval excludes 0 (the two lists are the same prompts, in the same order)."""
    if len(before) != len(after):
        raise ValueError(f"paired values must cover the same prompts: {len(before)} before, {len(after)} after")
    before, after = clean_values("before", before), clean_values("after", after)
    diffs = [a - b for b, a in zip(before, after) if a is not None and b is not None]
    out = summarize(diffs, bootstrap, seed)
    out["missing"] = len(before) - len(diffs)
    out["excludes_zero"] = bool(diffs) and (out["low"] > 0 or out["high"] < 0)
    out["level"] = LEVEL
    return out


def read_eval(path: Path, expect_round: int) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise ValueError(f"{path}: not a round evaluation (a JSON object with a 'metrics' mapping)")
    if data.get("round") != expect_round:
        raise ValueError(f"{path}: says round {data.get('round')!r}, but its place says round {expect_round}")
    return data


def round_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(N, folder) of every rounds/round-N folder, in numeric order (round-10 after round-9)."""
    rounds = Path(run_dir) / "rounds"
    found = [(int(m.group(1)), p) for p in rounds.iterdir() if p.is_dir() and (m := ROUND_DIR.fullmatch(p.name))]
    return sorted(found)


def unfinished_rounds(run_dir: str | Path) -> list[int]:
    """Round folders without an eval.json yet (a run stopped or still running mid-round)."""
    return [n for n, p in round_dirs(run_dir) if not (p / "eval.json").is_file()]


def read_rounds(run_dir: str | Path) -> list[dict]:
    """rounds/initial_eval.json (when present) then every rounds/round-N/eval.json, in round order.
    Rounds without an eval.json are not read; `unfinished_rounds` names them."""
    rounds = Path(run_dir) / "rounds"
    if not rounds.is_dir():
        raise FileNotFoundError(f"{run_dir} is not an online run: no rounds/ folder")
    out = [read_eval(rounds / "initial_eval.json", -1)] if (rounds / "initial_eval.json").is_file() else []
    out += [read_eval(p / "eval.json", n) for n, p in round_dirs(run_dir) if (p / "eval.json").is_file()]
    return out


def metrics_line(evaluation: dict) -> dict:
    """The flat metrics.jsonl entries of one round: online/<metric> (mean), _low, _high, _missing,
    and every numeric extra (one level of nesting flattened: online/labels/ties)."""
    out = {"online/round": evaluation["round"]}
    for name, s in evaluation["metrics"].items():
        out[f"online/{name}"] = s["mean"]
        out[f"online/{name}_low"] = s["low"]
        out[f"online/{name}_high"] = s["high"]
        out[f"online/{name}_missing"] = s["missing"]
    for key, value in evaluation.items():
        if key in RESERVED:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"online/{key}"] = value
        elif isinstance(value, dict):
            out.update({f"online/{key}/{k}": v for k, v in value.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return out
