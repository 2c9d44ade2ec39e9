"""Run the OASST-tree reader, RSO, dedup, length filters and deita selection on ../shared/data.

    PYTHONPATH=src python scripts/data_builders_report.py [--no-minilm]

Prints one JSON report per step: the tree reader against the normalized ranked view, RSO's
first-pass acceptance rate next to its analytic expectation on the OASST ranked lists (reward =
-rank) for several beta, exact/near duplicates in the HH-RLHF test files, and deita selection of
the UltraFeedback sample with the real MiniLM encoder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from prefalign.data.builders.pipeline import BuildContext, run_builder
from prefalign.data.formats.readers import load_examples

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def show(title: str, value) -> None:
    print(f"== {title}\n{json.dumps(value, indent=1, default=str)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-minilm", action="store_true", help="skip the MiniLM-based steps")
    args = ap.parse_args()

    trees, report = load_examples(DATA / "oasst_en100_trees.jsonl.gz")
    ranked, _ = load_examples(DATA / "oasst_en100_ranked.jsonl.gz")
    same = len(trees) == len(ranked) and all(
        a.prompt == b.prompt and a.responses == b.responses and a.target == b.target for a, b in zip(trees, ranked))
    show("oasst trees vs ranked view", {"from_trees": len(trees), "ranked_view": len(ranked), "identical": same,
                                        **report.as_dict()})

    for beta in (0.5, 1.0, 2.0):
        for pairing in ("tournament", "first_round", "best_vs_random"):
            _, rep = run_builder("rso", trees, {"beta": beta, "num_samples": 4, "pairing": pairing},
                                 BuildContext(seed=0))
            show(f"rso beta={beta} pairing={pairing}", rep)

    for name in ("hh_rlhf_harmless_base_test", "hh_rlhf_helpful_base_test"):
        pairs, _ = load_examples(DATA / f"{name}.jsonl.gz", on_bad_row="skip")
        for key in ("prompt", "example"):
            t = time.perf_counter()
            _, rep = run_builder("dedup", pairs, {"key": key})
            show(f"dedup {name} key={key} ({time.perf_counter() - t:.1f} s)", rep)
        _, rep = run_builder("length_filter", pairs, {"min_response": 3, "max_response": 300})
        show(f"length_filter {name} responses 3..300 words", rep)

    uf, uf_report = load_examples(DATA / "ultrafeedback_binarized_sample.jsonl.gz", on_bad_row="skip")
    show("ultrafeedback rows", uf_report.as_dict())
    _, rep = run_builder("deita_select", uf, {"budget": 300, "diversity": False})
    show("deita_select ultrafeedback heuristic, no diversity, budget 300", rep)
    if not args.no_minilm:
        from prefalign.models.encoders import SentenceEncoder

        ctx = BuildContext(encoder=SentenceEncoder())
        t = time.perf_counter()
        _, rep = run_builder("deita_select", uf, {"budget": 300}, ctx)
        show(f"deita_select ultrafeedback heuristic + MiniLM Repr Filter 0.9, budget 300 "
             f"({time.perf_counter() - t:.1f} s)", rep)
        _, rep = run_builder("dedup", uf, {"near": "embedding", "threshold": 0.95}, ctx)
        show("dedup ultrafeedback by prompt, MiniLM cosine >= 0.95", rep)


if __name__ == "__main__":
    main()
