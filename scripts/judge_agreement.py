#!/usr/bin/env python
"""How often each judge agrees with human labels on real HH-RLHF helpful-base test pairs.

Reads single-turn pairs from ../shared/data/hh_rlhf_helpful_base_test.jsonl.gz (offline), asks each
judge for P(chosen preferred over rejected), and reports per judge: coverage (share of pairs with
a verdict), accuracy on covered pairs (P > 1/2), ties (P = 1/2), and the missing-verdict reasons.
LM judges use SmolLM2-135M-Instruct (prefalign.recipes.quickstart.smollm2_folder), the relevance judge
the real MiniLM encoder. A 135M judge is weak: these numbers measure the plumbing on real data and
a floor for each method, not the methods' published quality.

    python scripts/judge_agreement.py --pairs 200 --lm-pairs 64 --rubric-pairs 16 --out runs/judge_agreement.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

from prefalign.judges import make_judge

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_rlhf_helpful_base_test.jsonl.gz"


def single_turn_pairs(limit: int) -> list[tuple[str, str, str]]:
    pairs = []
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            chosen, rejected = row["chosen"], row["rejected"]
            if chosen.count("\n\nHuman:") != 1 or chosen.count("\n\nAssistant:") != 1:
                continue
            head, _, c = chosen.partition("\n\nAssistant:")
            head_r, _, r = rejected.partition("\n\nAssistant:")
            if head != head_r or not c.strip() or not r.strip() or c.strip() == r.strip():
                continue
            pairs.append((head.replace("\n\nHuman:", "", 1).strip(), c.strip(), r.strip()))
            if len(pairs) == limit:
                break
    return pairs


def evaluate(judge, pairs) -> dict:
    start = time.time()
    probs = judge.compare([p for p, _, _ in pairs], [c for _, c, _ in pairs], [r for _, _, r in pairs])
    covered = [p for p in probs if p is not None]
    decided = [p for p in covered if p != 0.5]
    out = {"pairs": len(pairs), "coverage": len(covered) / len(pairs),
           "accuracy_on_decided": sum(p > 0.5 for p in decided) / len(decided) if decided else None,
           "ties": len(covered) - len(decided), "stats": judge.stats.as_dict(), "seconds": round(time.time() - start, 1)}
    if hasattr(judge, "extra_stats"):
        out["extra"] = {k: v for k, v in judge.extra_stats().items() if k != "members"}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--lm-pairs", type=int, default=64, help="pairs for the LM judges (follow_up, principle, consensus)")
    ap.add_argument("--rubric-pairs", type=int, default=16, help="the rubric judge generates text: fewer pairs")
    ap.add_argument("--judges", default="relevance,follow_up,principle,rubric,consensus")
    ap.add_argument("--out", default="runs/judge_agreement.json")
    args = ap.parse_args()
    from prefalign.recipes.quickstart import smollm2_folder

    lm = str(smollm2_folder())
    pairs = single_turn_pairs(args.pairs)
    specs = {"relevance": {}, "follow_up": {"path": lm}, "principle": {"path": lm},
             "rubric": {"path": lm, "max_new_tokens": 96, "batch_size": 8},
             "consensus": {"members": "relevance,follow_up", "follow_up.path": lm}}
    results = {}
    for name in args.judges.split(","):
        limit = {"relevance": args.pairs, "rubric": args.rubric_pairs}.get(name, args.lm_pairs)
        subset = pairs[:limit]
        results[name] = evaluate(make_judge(name, **specs[name]), subset)
        print(name, json.dumps(results[name]), flush=True)
        # rewritten after every judge: the LM judges take long on a CPU, and a cut run keeps what it measured
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"data": str(DATA), "judge_lm": "SmolLM2-135M-Instruct",
                                              "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
