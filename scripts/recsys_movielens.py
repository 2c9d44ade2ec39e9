"""The recommender family on MovieLens-100k: next-item pretraining of the tiny Llama, held-out recall@10
(leave-last-out) against a ranking by popularity.

MovieLens-100k is read from an installed RecBole (its wheel ships recbole/dataset_example/ml-100k; it is
not a prefalign dependency: `pip install --no-deps recbole`) or from a path given on the command line.
The file is never copied into this repository (its licence forbids redistribution).

    python scripts/recsys_movielens.py [path/to/ml-100k.inter] [--steps 1500]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

from prefalign.families.recommender import HistoryExample, NextItemTrainee, recall_at_k, tiny_llama, train_steps
from prefalign.families.recommender_data import read_inter, recbole_ml100k
from prefalign.reproduce.recsys_onerec import recall_of_ranking


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", help="an ml-100k.inter file (default: the installed recbole's)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--keep-last", type=int, default=50, help="items of each history the model reads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = Path(args.path) if args.path else recbole_ml100k()
    if path is None:
        raise SystemExit("MovieLens-100k not found: install recbole (pip install --no-deps recbole) or give the path")
    log = read_inter(path)
    train, held = log.split()
    train = [h[-args.keep_last:] for h in train]
    from accelerate import Accelerator

    torch.manual_seed(args.seed)
    model = tiny_llama(log.n_items, max_len=args.keep_last + 2, seed=args.seed)
    with TemporaryDirectory() as tmp:
        train_steps(Accelerator(cpu=True), NextItemTrainee(model), [HistoryExample(h) for h in train], args.steps,
                    Path(tmp), 3e-3, 32, args.seed)
    hits, ndcg = recall_at_k(model.eval(), train, held)
    counts = torch.bincount(torch.tensor([i for h in train for i in h]), minlength=log.n_items).float()
    # popularity counts the truncated histories the model read, and ranks the same unseen items
    popularity = recall_of_ranking(counts.expand(len(train), -1), train, held)
    print(json.dumps({"data": log.source, "users": log.n_users, "items": log.n_items, "steps": args.steps,
                      "recall@10": round(float(hits.mean()), 4), "ndcg@10": round(float(ndcg.mean()), 4),
                      "recall@10 of popularity": round(popularity, 4)}, indent=1))


if __name__ == "__main__":
    main()
