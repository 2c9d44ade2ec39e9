"""TEMPORARY stand-in until the online diagnostics branch lands."""
from __future__ import annotations


def summary_of(values):
    known = [v for v in values if v is not None]
    mean = sum(known) / len(known) if known else None
    return {"mean": mean, "low": mean, "high": mean, "n": len(known), "missing": len(values) - len(known)}


def round_eval(round, per_prompt, extras, bootstrap=2000, seed=0):
    return {"round": round, **{k: summary_of(v) for k, v in per_prompt.items()}, **extras, "per_prompt": per_prompt}


def paired_difference(before, after, bootstrap=2000, seed=0):
    d = [b - a for a, b in zip(before, after) if a is not None and b is not None]
    return {"mean": sum(d) / len(d) if d else None}


def metrics_line(ev):
    return {f"online/{k}": v["mean"] for k, v in ev.items() if isinstance(v, dict) and "mean" in v}
