#!/usr/bin/env python
"""Real check: a GPM captures cyclic (rock-paper-scissors) preferences that a Bradley-Terry model cannot.

A thin wrapper over the `gpm-cyclic` reproduction (src/prefalign/reproduce/gpm_cyclic.py, where
the testbed is described): `prefalign reproduce gpm-cyclic` runs it with a verdict and a report;
this script exposes its knobs and writes the raw numbers as JSON.

    python scripts/check_gpm_cyclic.py                     # ~1 minute on 2 CPU cores
    python scripts/check_gpm_cyclic.py --moves 3 --out runs/gpm_rps3.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from prefalign.reproduce.gpm_cyclic import MOVES, compare_heads


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moves", type=int, choices=sorted(MOVES), default=5)
    ap.add_argument("--train-pairs", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--k", type=int, default=2, help="GPM blocks (embedding dimension 2k)")
    ap.add_argument("--mlp-hidden", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--transitive", action="store_true", help="the control: label pairs by a total order of moves")
    ap.add_argument("--out", default="runs/check_gpm_cyclic.json")
    args = ap.parse_args()
    torch.set_num_threads(1)  # tiny heads: thread syncs, not flops, dominate on a shared CPU
    start = time.time()
    results = compare_heads(args.moves, args.train_pairs, args.steps, args.lr, args.k, args.mlp_hidden, args.seed,
                            cyclic=not args.transitive)
    results["args"], results["seconds"] = vars(args), round(time.time() - start, 1)
    for name in ("gpm", "bt"):
        r = results[name]
        print(f"{name.upper():4s} train loss {r['final_train_loss']:.4f}  train acc {r['train']['accuracy']:.3f}  "
              f"held-out acc {r['held_out']['accuracy']:.3f}  held-out log-loss {r['held_out']['log_loss']:.3f}")
    print(f"best possible accuracy for any scalar (BT) reward: {results['best_total_order_accuracy']:.3f}; "
          f"chance 0.5; {results['seconds']}s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
