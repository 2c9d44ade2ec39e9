#!/usr/bin/env python
"""Real check: a GPM captures cyclic (rock-paper-scissors) preferences that a Bradley-Terry model cannot.

The GPM paper (arXiv 2410.02197) shows that on cyclic preference data the GPM is near-perfect
while any BT reward model behaves like a random guess. Here the responses are short texts that
each play one move of rock-paper-scissors-lizard-Spock (5 moves, each beats the next two in the
cycle scissors > lizard > paper > Spock > rock > scissors ...; `--moves 3` gives plain
rock > scissors > paper > rock). They are encoded by the real pretrained all-MiniLM-L6-v2 encoder
through prefalign's RewardBackbone, frozen; a GPM head and a BT head with the same MLP trunk are
trained the same way (same pairs, optimiser, steps) on the pooled features. Held-out pairs use
sentence templates never seen in training.

For a cyclic tournament with equally many comparisons per edge the BT maximum-likelihood fit is
all-equal rewards (the log-likelihood is concave and symmetric under the cycle), so its held-out
accuracy is decided by noise; the best any total order can do is printed for reference.

    python scripts/check_gpm_cyclic.py                     # ~1 minute on 2 CPU cores
    python scripts/check_gpm_cyclic.py --moves 3 --out runs/gpm_rps3.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from prefalign.models.encoders import minilm_path
from prefalign.rewards.backbone import RewardBackbone
from prefalign.rewards.gpm import GPMHead, preference_score

# each move beats the next (n - 1) / 2 moves in this order (the RPSLS rules, rearranged)
MOVES = {
    5: ["scissors", "lizard", "paper", "spock", "rock"],
    3: ["rock", "scissors", "paper"],
}
NAMES = {
    "rock": ["rock", "a rock", "the stone", "a heavy boulder", "a fist of granite"],
    "paper": ["paper", "a sheet of paper", "flat paper", "an open palm of paper", "a page of parchment"],
    "scissors": ["scissors", "a pair of scissors", "the shears", "two snipping fingers", "sharp scissors"],
    "lizard": ["lizard", "a little lizard", "the gecko", "an iguana", "a sneaky lizard"],
    "spock": ["Spock", "Mr. Spock", "the Vulcan", "Spock's salute", "a Vulcan hand sign"],
}
TRAIN_TEMPLATES = ["I choose {}.", "My move is {}.", "Going with {} this round.", "I'll play {}, obviously.",
                   "Let me throw {}.", "This time: {}.", "I pick {} without hesitation."]
TEST_TEMPLATES = ["Here comes {}!", "Final answer: {}.", "I'm showing {} now."]
PROMPT = "We are playing rock, paper, scissors (and maybe lizard, Spock). What do you play?"


def texts(moves, templates):
    return [(m, t.format(n)) for m in moves for t in templates for n in NAMES[m]]


def pairs(items, moves, n, rng):
    """n (winner, loser) index pairs between different moves, labelled by the cycle."""
    beats = (len(moves) - 1) // 2
    rank = {m: i for i, m in enumerate(moves)}
    out = []
    while len(out) < n:
        i, j = rng.randrange(len(items)), rng.randrange(len(items))
        d = (rank[items[j][0]] - rank[items[i][0]]) % len(moves)
        if d == 0:
            continue
        out.append((i, j) if d <= beats else (j, i))
    return torch.tensor(out)


def all_pairs(items, moves):
    beats = (len(moves) - 1) // 2
    rank = {m: i for i, m in enumerate(moves)}
    out = []
    for i, j in itertools.combinations(range(len(items)), 2):
        d = (rank[items[j][0]] - rank[items[i][0]]) % len(moves)
        if d:
            out.append((i, j) if d <= beats else (j, i))
    return torch.tensor(out)


def best_total_order_accuracy(moves) -> float:
    """The share of move pairs the best total order (any scalar reward) ranks correctly."""
    beats = (len(moves) - 1) // 2
    edges = [(i, (i + d) % len(moves)) for i in range(len(moves)) for d in range(1, beats + 1)]
    best = 0
    for order in itertools.permutations(range(len(moves))):
        pos = {m: k for k, m in enumerate(order)}
        best = max(best, sum(pos[w] < pos[l] for w, l in edges))
    return best / len(edges)


@torch.no_grad()
def pool(backbone, prompts, responses, batch=64):
    out = []
    for s in range(0, len(responses), batch):
        out.append(backbone(**backbone.encode(prompts[s:s + batch], responses[s:s + batch])))
    return torch.cat(out)


class BTHead(torch.nn.Module):
    """Scalar reward on the same trunk as the GPM head: P(a > b) = sigmoid(r_a - r_b)."""

    def __init__(self, hidden, mlp_hidden):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(hidden, mlp_hidden), torch.nn.GELU(), torch.nn.Linear(mlp_hidden, 1))

    def forward(self, feats, prompt_features=None):
        return self.net(feats)[:, 0]


def pair_logit(head, feats, prompt_feats, rows):
    """logit P(winner > loser) for index pairs rows [P, 2]; the head runs once per distinct text, pairs gather."""
    if isinstance(head, GPMHead):
        v, lam = head(feats, prompt_feats.expand(len(feats), -1))
        return preference_score(v[rows[:, 0]], v[rows[:, 1]], lam[rows[:, 0]]) / head.beta
    r = head(feats)
    return r[rows[:, 0]] - r[rows[:, 1]]


def train(head, feats, prompt_feats, train_pairs, steps, lr):
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = -F.logsigmoid(pair_logit(head, feats, prompt_feats, train_pairs)).mean()  # = gpm_loss for the GPM
        loss.backward()
        opt.step()
    return loss.item()


@torch.no_grad()
def evaluate(head, feats, prompt_feats, test_pairs):
    logit = pair_logit(head, feats, prompt_feats, test_pairs)
    p = torch.sigmoid(logit)
    return {"accuracy": (p > 0.5).float().mean().item(), "mean_p_winner": p.mean().item(),
            "log_loss": -F.logsigmoid(logit).mean().item(),
            "mean_abs_p_minus_half": (p - 0.5).abs().mean().item()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moves", type=int, choices=sorted(MOVES), default=5)
    ap.add_argument("--train-pairs", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--k", type=int, default=2, help="GPM blocks (embedding dimension 2k)")
    ap.add_argument("--mlp-hidden", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/check_gpm_cyclic.json")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    # one thread: the heads are tiny, and on a shared 2-core machine two threads spend ~100x longer
    # waiting on each other than computing (measured: 100 Adam steps of a 384x64 MLP, 0.2 s vs 27 s)
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    start = time.time()

    moves = MOVES[args.moves]
    train_items, test_items = texts(moves, TRAIN_TEMPLATES), texts(moves, TEST_TEMPLATES)
    backbone = RewardBackbone(minilm_path(), max_length=64).eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    items = train_items + test_items
    feats = pool(backbone, [PROMPT] * len(items), [t for _, t in items])
    prompt_feats = pool(backbone, [PROMPT], [""])
    train_feats, test_feats = feats[:len(train_items)], feats[len(train_items):]
    train_pairs = pairs(train_items, moves, args.train_pairs, rng)
    test_pairs = all_pairs(test_items, moves)
    print(f"{len(moves)} moves: {len(train_items)} train texts, {len(test_items)} held-out texts "
          f"(unseen templates), {len(train_pairs)} train pairs, {len(test_pairs)} held-out pairs; "
          f"features in {time.time() - start:.1f}s")

    results = {"moves": moves, "args": vars(args), "n_train_pairs": len(train_pairs), "n_test_pairs": len(test_pairs),
               "best_total_order_accuracy": best_total_order_accuracy(moves)}
    for name, head in [("gpm", GPMHead(backbone.hidden_size, k=args.k, gate=True, mlp_hidden=args.mlp_hidden)),
                       ("bt", BTHead(backbone.hidden_size, args.mlp_hidden))]:
        torch.manual_seed(args.seed)
        final = train(head, train_feats, prompt_feats, train_pairs, args.steps, args.lr)
        results[name] = {"final_train_loss": final, "train": evaluate(head, train_feats, prompt_feats, train_pairs),
                         "held_out": evaluate(head, test_feats, prompt_feats, test_pairs)}
        r = results[name]
        print(f"{name.upper():4s} train loss {final:.4f}  train acc {r['train']['accuracy']:.3f}  "
              f"held-out acc {r['held_out']['accuracy']:.3f}  held-out log-loss {r['held_out']['log_loss']:.3f}  "
              f"mean |P-0.5| {r['held_out']['mean_abs_p_minus_half']:.3f}")
    results["seconds"] = round(time.time() - start, 1)
    print(f"best possible accuracy for any scalar (BT) reward on these move pairs: "
          f"{results['best_total_order_accuracy']:.3f}; chance 0.5; {results['seconds']}s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
