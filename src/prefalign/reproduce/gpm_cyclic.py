"""`gpm-cyclic`: a GPM captures cyclic preferences that a Bradley-Terry reward cannot (arXiv:2410.02197).

Zhang et al., "Beyond Bradley-Terry Models: A General Preference Model" (Table 1): on cyclic
preference data GPM reaches 100% accuracy while BT stays at 50-63%. Testbed (from
scripts/check_gpm_cyclic.py): short texts that each play one move of rock-paper-scissors (3
moves) or rock-paper-scissors-lizard-Spock (5 moves: each beats the next two in the cycle
scissors > lizard > paper > Spock > rock > scissors), encoded by the real all-MiniLM-L6-v2
through RewardBackbone, frozen; a GPM head and a BT head with the same MLP trunk train the same
way (pairs, optimiser, steps). Held-out pairs use sentence templates never seen in training.

No scalar reward ranks more than a share B of the move pairs of a cyclic tournament correctly (B =
2/3 for 3 moves, 0.7 for 5: the best total order, computed by enumeration). The held-out set holds
every cross-move pair of texts equally often, so B also bounds any per-text scalar there.

Rules: INCONCLUSIVE unless both heads reach >= 0.90 held-out on a transitive control (the same
texts, labelled by a total order of the moves): otherwise the features or the training, not the
model class, decide. PASS needs GPM >= 0.95 and BT <= B on the cyclic data (BT above B would mean
leakage or a bug); else FAIL.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from prefalign.reproduce.claims import ClaimResult, Verdict, claim

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


def wins(moves, cyclic: bool):
    """wins(a, b) -> True when move a beats move b: the cycle, or the total order of `moves` (control)."""
    beats, rank = (len(moves) - 1) // 2, {m: i for i, m in enumerate(moves)}
    if not cyclic:
        return lambda a, b: rank[a] < rank[b]
    return lambda a, b: 0 < (rank[b] - rank[a]) % len(moves) <= beats


def pairs(items, moves, n, rng, cyclic: bool = True):
    """n (winner, loser) index pairs between texts of different moves."""
    beat, out = wins(moves, cyclic), []
    while len(out) < n:
        i, j = rng.randrange(len(items)), rng.randrange(len(items))
        if items[i][0] != items[j][0]:
            out.append((i, j) if beat(items[i][0], items[j][0]) else (j, i))
    return torch.tensor(out)


def all_pairs(items, moves, cyclic: bool = True):
    beat = wins(moves, cyclic)
    return torch.tensor([(i, j) if beat(items[i][0], items[j][0]) else (j, i)
                         for i, j in itertools.combinations(range(len(items)), 2) if items[i][0] != items[j][0]])


def best_total_order_accuracy(moves) -> float:
    """The share of move pairs the best total order (any scalar reward) ranks correctly."""
    beat = wins(moves, True)
    edges = [(a, b) for a in moves for b in moves if beat(a, b)]
    best = max(sum(order.index(w) < order.index(lo) for w, lo in edges) for order in itertools.permutations(moves))
    return best / len(edges)


class BTHead(torch.nn.Module):
    """Scalar reward on the same trunk as the GPM head: P(a > b) = sigmoid(r_a - r_b)."""

    def __init__(self, hidden, mlp_hidden):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(hidden, mlp_hidden), torch.nn.GELU(),
                                       torch.nn.Linear(mlp_hidden, 1))

    def forward(self, feats, prompt_features=None):
        return self.net(feats)[:, 0]


def pair_logit(head, feats, prompt_feats, rows):
    """logit P(winner > loser) for index pairs rows [P, 2]; the head runs once per distinct text."""
    from prefalign.rewards.gpm import GPMHead, preference_score

    if isinstance(head, GPMHead):
        out = head(feats, prompt_feats.expand(len(feats), -1))
        v, lam = out["embedding"], out["scales"]
        return preference_score(v[rows[:, 0]], v[rows[:, 1]], lam[rows[:, 0]])
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
            "log_loss": -F.logsigmoid(logit).mean().item(), "mean_abs_p_minus_half": (p - 0.5).abs().mean().item()}


def compare_heads(n_moves: int = 5, train_pairs: int = 2000, steps: int = 300, lr: float = 3e-3, k: int = 2,
                  mlp_hidden: int = 64, seed: int = 0, cyclic: bool = True, features=None) -> dict:
    """Train a GPM head and a BT head on the same pairs; held-out accuracies and losses of both.
    `features` (from `encode`) lets the cyclic run and its control share one encoder pass."""
    from prefalign.rewards.gpm import GPMHead

    rng = random.Random(seed)
    moves = MOVES[n_moves]
    train_items, test_items = texts(moves, TRAIN_TEMPLATES), texts(moves, TEST_TEMPLATES)
    feats, prompt_feats, hidden = features or encode(n_moves)
    train_feats, test_feats = feats[:len(train_items)], feats[len(train_items):]
    tr, te = pairs(train_items, moves, train_pairs, rng, cyclic), all_pairs(test_items, moves, cyclic)
    out = {"moves": moves, "cyclic": cyclic, "n_train_pairs": len(tr), "n_test_pairs": len(te),
           "best_total_order_accuracy": best_total_order_accuracy(moves) if cyclic else 1.0}
    for name, make in [("gpm", lambda: GPMHead(hidden, k=k, gate=True, mlp_hidden=mlp_hidden)),
                       ("bt", lambda: BTHead(hidden, mlp_hidden))]:
        torch.manual_seed(seed)
        head = make()
        final = train(head, train_feats, prompt_feats, tr, steps, lr)
        out[name] = {"final_train_loss": final, "train": evaluate(head, train_feats, prompt_feats, tr),
                     "held_out": evaluate(head, test_feats, prompt_feats, te)}
    return out


def encode(n_moves: int):
    """Frozen MiniLM features of every train then test text, the prompt's features, the width."""
    from prefalign.models.encoders import minilm_path
    from prefalign.rewards.backbone import RewardBackbone

    moves = MOVES[n_moves]
    items = texts(moves, TRAIN_TEMPLATES) + texts(moves, TEST_TEMPLATES)
    backbone = RewardBackbone(minilm_path(), max_length=64).eval()
    feats = backbone.embed([PROMPT] * len(items), [t for _, t in items])
    return feats, backbone.embed([PROMPT], [""]), backbone.hidden_size


def verdict(cyc: dict, control: dict) -> tuple[Verdict, str]:
    acc = lambda r, h: r[h]["held_out"]["accuracy"]  # noqa: E731
    if min(acc(control, "gpm"), acc(control, "bt")) < 0.9:
        return Verdict.INCONCLUSIVE, (f"transitive control below 0.90 (GPM {acc(control, 'gpm'):.3f}, BT "
                                      f"{acc(control, 'bt'):.3f}): the features or training cannot tell the classes apart")
    bound = cyc["best_total_order_accuracy"]
    rules = [(f"GPM {acc(cyc, 'gpm'):.3f} >= 0.95", acc(cyc, "gpm") >= 0.95),
             (f"BT {acc(cyc, 'bt'):.3f} <= the scalar bound {bound:.3f}", acc(cyc, "bt") <= bound + 1e-9)]
    failed = [t for t, ok in rules if not ok]
    control_text = f"transitive control GPM {acc(control, 'gpm'):.3f}, BT {acc(control, 'bt'):.3f} (>= 0.90)"
    if failed:
        return Verdict.FAIL, "rule(s) failed: " + "; ".join(failed) + "; " + control_text
    return Verdict.PASS, "; ".join(t for t, _ in rules) + "; " + control_text


@claim("gpm-cyclic", paper="Beyond Bradley-Terry Models: A General Preference Model (arXiv:2410.02197)",
       paper_claim="on cyclic preferences GPM reaches 100% accuracy, BT 50.0-62.9% (Table 1)")
def run(out_dir: Path, quick: bool) -> ClaimResult:
    # one thread: the heads are tiny, and on a shared 2-core machine two threads spend far longer
    # waiting on each other than computing
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        n_moves, n_pairs, steps = (3, 500, 150) if quick else (5, 2000, 300)
        features = encode(n_moves)
        cyc = compare_heads(n_moves, n_pairs, steps, features=features)
        control = compare_heads(n_moves, n_pairs, steps, cyclic=False, features=features)
    finally:
        torch.set_num_threads(threads)
    v, reason = verdict(cyc, control)
    acc = lambda r, h: r[h]["held_out"]["accuracy"]  # noqa: E731
    measured = (f"{n_moves}-move cycle, held-out templates: GPM {acc(cyc, 'gpm'):.3f}, BT {acc(cyc, 'bt'):.3f} "
                f"(scalar bound {cyc['best_total_order_accuracy']:.3f}); transitive control GPM "
                f"{acc(control, 'gpm'):.3f}, BT {acc(control, 'bt'):.3f}")
    table = [{"data": data, "head": h.upper(), "train accuracy": f"{r[h]['train']['accuracy']:.3f}",
              "held-out accuracy": f"{acc(r, h):.3f}", "held-out log-loss": f"{r[h]['held_out']['log_loss']:.3f}"}
             for data, r in (("cyclic", cyc), ("transitive control", control)) for h in ("gpm", "bt")]
    return ClaimResult(v, measured, reason, {"cyclic": cyc, "control": control}, table=table)
