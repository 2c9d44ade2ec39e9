"""Whole-process A/B of `prefalign train` with padded rows, packed rows, and packed rows with one
shared prompt per example, on the bench fixture (make_fixture.py --preset small: 30 DPO steps of 8
real HH-RLHF pairs, max_length 256, separate reference model, fp32).

    python scripts/packing_ab.py FIXTURE_DIR [--runs 3] [--steps 30] [--out results.json]

Runs are interleaved (padded, packed, shared, padded, ...) because absolute times on a shared
machine drift between runs; each run is a fresh process (wall time and its own peak RSS from
wait4). From each run's metrics.jsonl: median step time, real tokens/s over the steps, the
padding share, and the step-1 loss (the three layouts must agree on it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {"padded": ["packing=false"], "packed": ["packing=true", "share_prompt=false"],
         "shared": ["packing=true", "share_prompt=true"]}


def run(fixture: Path, work: Path, mode: str, i: int, steps: int) -> dict:
    out = work / f"{mode}-{i}"
    args = [sys.executable, "-m", "prefalign.cli", "train",
            f"model={fixture / 'model'}", f"data.train={fixture / 'train.jsonl'}", f"data.eval={work / 'eval.jsonl'}",
            "objective=dpo", "beta=0.1", f"output_dir={out}", f"max_steps={steps}", "batch_size=8",
            "learning_rate=0.0001", "max_length=256", "max_prompt_length=128", "warmup_ratio=0.0",
            "lr_scheduler=linear", "seed=42", "save_steps=1000", "logging_steps=1", "progress=false", *MODES[mode]]
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"{mode} run {i} failed: {proc.stderr.read().decode()[-2000:]}")
    steps_logged = [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in m]
    return {"mode": mode, "run": i, "wall_s": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "median_step_s": statistics.median(m["step_time_s"] for m in steps_logged),
            "tokens_per_s": sum(m["tokens"] for m in steps_logged) / sum(m["step_time_s"] for m in steps_logged),
            "padding_share": sum(m["tokens/padding_share"] * m["padded_tokens"] for m in steps_logged)
            / sum(m["padded_tokens"] for m in steps_logged),
            "computed_positions": sum(m["padded_tokens"] for m in steps_logged),
            "real_tokens": sum(m["tokens"] for m in steps_logged), "loss_step1": steps_logged[0]["loss"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("fixture")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    fixture = Path(args.fixture).resolve()
    work = Path(tempfile.mkdtemp(prefix="packing-ab-"))
    (work / "eval.jsonl").write_text("".join((fixture / "train.jsonl").read_text().splitlines(True)[:8]))
    results = []
    for i in range(args.runs):
        for mode in MODES:
            results.append(run(fixture, work, mode, i, args.steps))
            print(json.dumps(results[-1]), flush=True)
    summary = {}
    for mode in MODES:
        mine = [r for r in results if r["mode"] == mode]
        summary[mode] = {k: statistics.median(r[k] for r in mine)
                         for k in ("wall_s", "peak_rss_mib", "median_step_s", "tokens_per_s", "padding_share")}
        summary[mode]["computed_positions"] = mine[0]["computed_positions"]
        summary[mode]["real_tokens"] = mine[0]["real_tokens"]
        summary[mode]["loss_step1"] = mine[0]["loss_step1"]
    # ratios pair by pair (run i of one mode against run i of padded), then their median
    for mode in ("packed", "shared"):
        pairs = [(a["wall_s"], b["wall_s"]) for a, b in zip([r for r in results if r["mode"] == "padded"],
                                                           [r for r in results if r["mode"] == mode])]
        summary[mode]["wall_ratio_vs_padded"] = statistics.median(b / a for a, b in pairs)
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps({"runs": results, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
