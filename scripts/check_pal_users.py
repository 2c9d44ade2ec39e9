#!/usr/bin/env python
"""Real check: PAL learns a population whose users disagree, and adapts to unseen users from a few comparisons.

A thin wrapper over the `pal-plural` reproduction (src/prefalign/reproduce/pal_plural.py, where
the synthetic population and the encoder are described): `prefalign reproduce pal-plural` runs it
with a verdict and a report; this script exposes its knobs and writes the raw numbers as JSON.

    python scripts/check_pal_users.py               # ~1-2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from prefalign.reproduce.pal_plural import compare_models


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=40, help="training users (4 groups)")
    ap.add_argument("--unseen-users", type=int, default=16)
    ap.add_argument("--per-user", type=int, default=40, help="training comparisons per user")
    ap.add_argument("--prototypes", type=int, default=4)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--mlp-hidden", type=int, default=64)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--shots", default="0,1,2,4,8,16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/check_pal_users.json")
    args = ap.parse_args()
    torch.set_num_threads(1)  # tiny heads: thread syncs, not flops, dominate on a shared CPU
    start = time.time()
    results = compare_models(args.users, args.unseen_users, args.per_user, args.prototypes, args.dim,
                             args.mlp_hidden, args.steps, args.lr, [int(s) for s in args.shots.split(",")], args.seed)
    results["args"], results["seconds"] = vars(args), round(time.time() - start, 1)
    pal, bt = results["pal"], results["bt"]
    print(f"seen users, held-out questions: PAL per-user accuracy {pal['per_user_accuracy_mean']:.3f} "
          f"(worst user {pal['per_user_accuracy_min']:.3f}); single BT {bt['per_user_accuracy_mean']:.3f} "
          f"(worst user {bt['per_user_accuracy_min']:.3f})")
    for n, acc in results["unseen_users_accuracy_by_shots"].items():
        print(f"unseen users, {n:2d} shots: accuracy {acc:.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"{results['seconds']}s; wrote {out}")


if __name__ == "__main__":
    main()
