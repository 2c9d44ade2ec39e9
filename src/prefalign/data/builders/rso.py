"""RSO: statistical rejection sampling of candidates toward pi*, then labelled pairs.

Liu et al. 2023, "Statistical Rejection Sampling Improves Preference Optimization",
arXiv:2309.06657. The optimal policy of the KL-constrained reward objective is
    pi*(y|x) = pi_sft(y|x) exp(r(x, y) / beta) / Z(x),
so candidates drawn from pi_sft become draws from pi* by rejection sampling: accept a candidate
with probability exp((r - M) / beta), M >= every reward. The paper's Algorithm 1 takes M as the
largest reward among the candidates still in the pool, scans the pool drawing u ~ U(0, 1) per
candidate, accepts when u < exp((r - M) / beta), removes what it accepted and rescans (with M
recomputed) until `num_samples` are accepted. Within one scan each candidate is accepted
independently, so the first scan's accepted set is the pool tilted by exp(r / beta); its expected
acceptance rate is mean(exp((r - r_max) / beta)), which the report gives next to the measured one.

The accepted samples are then paired and labelled (the paper labels with its pairwise
reward-ranking model; here by the rewards, or by `context.judge.compare`):
  first_round     the samples in random order split into disjoint pairs (the paper's
                  "first-round" ranking): n // 2 pairs
  tournament      single elimination: first-round winners meet again until one is left
                  (the paper's tournament ranking): n - 1 pairs
  best_vs_random  the highest-reward sample against one other chosen uniformly: 1 pair
                  (not from the paper; a common cheap variant)

Departures, and why: candidates are shuffled (seeded) before sampling, because Algorithm 1's
scan order matters once it stops early and data files often store candidates sorted by score;
the pool is finite and M is its maximum, so later scans (and any scan cut short at num_samples)
approximate pi* rather than sample it exactly, as in the paper. A tie or a missing verdict
emits no pair (counted); in a tournament the earlier of the two then advances.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field

from prefalign.data.builders.registry import BuildContext, data_builder
from prefalign.data.records import Example

PAIRINGS = ("tournament", "first_round", "best_vs_random")


@dataclass
class RsoReport:
    prompts: int = 0
    candidates: int = 0
    accepted: int = 0
    first_scan: int = 0  # candidates scanned in each pool's first pass
    first_accepted: int = 0  # ... and accepted there
    first_expected: float = 0.0  # sum of exp((r - r_max) / beta) over those candidates
    pairs: int = 0
    dropped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        rate = self.first_accepted / self.first_scan if self.first_scan else None
        expected = self.first_expected / self.first_scan if self.first_scan else None
        return {"prompts": self.prompts, "candidates": self.candidates, "accepted": self.accepted,
                "first_pass_acceptance_rate": rate, "expected_first_pass_acceptance_rate": expected,
                "pairs": self.pairs, "dropped": dict(self.dropped)}


def rejection_sample(rewards: list[float], num_samples: int, beta: float, rng: random.Random,
                     report: RsoReport | None = None) -> list[int]:
    """Algorithm 1 of arXiv:2309.06657 over the candidates in the given order: indices accepted,
    first pass first. Stops at num_samples or when the pool is empty."""
    if beta <= 0:
        raise ValueError(f"RSO needs beta > 0, got {beta}")
    remaining, accepted, first = list(range(len(rewards))), [], True
    while remaining and len(accepted) < num_samples:
        r_max = max(rewards[i] for i in remaining)
        taken = []
        for i in remaining:
            p = math.exp((rewards[i] - r_max) / beta)
            if first and report is not None:
                report.first_scan += 1
                report.first_expected += p
            if rng.random() < p:
                taken.append(i)
                if len(accepted) + len(taken) == num_samples:
                    break
        if first and report is not None:
            report.first_accepted += len(taken)
        accepted += taken
        done = set(taken)
        remaining = [i for i in remaining if i not in done]
        first = False
    return accepted


def label(prompt, a: int, b: int, texts: list, rewards: list[float], judge, report: RsoReport) -> tuple | None:
    """(winner, loser) of one comparison, or None for a tie / no verdict (counted)."""
    if judge is None:
        diff = rewards[a] - rewards[b]
    else:
        verdict = judge.compare([prompt], [texts[a]], [texts[b]])[0]
        if verdict is None:
            report.dropped["no judge verdict"] += 1
            return None
        diff = verdict - 0.5
    if diff == 0:
        report.dropped["tie"] += 1
        return None
    return (a, b) if diff > 0 else (b, a)


def pair_samples(prompt, samples: list[int], texts: list, rewards: list[float], pairing: str, judge,
                 rng: random.Random, report: RsoReport) -> list[tuple[int, int]]:
    if pairing == "best_vs_random":
        if len(samples) < 2:
            return []
        best = max(samples, key=lambda i: rewards[i])  # first of equal rewards: deterministic
        other = rng.choice([i for i in samples if i != best])
        won = label(prompt, best, other, texts, rewards, judge, report)
        return [won] if won else []
    pairs, players = [], list(samples)
    while len(players) > 1:
        winners = []
        for k in range(0, len(players) - 1, 2):
            won = label(prompt, players[k], players[k + 1], texts, rewards, judge, report)
            pairs += [won] if won else []
            winners.append(won[0] if won else players[k])
        if len(players) % 2:
            if pairing == "first_round":
                report.dropped["odd sample left unpaired"] += 1
            winners.append(players[-1])  # a bye into the next round
        if pairing == "first_round":
            break
        players = winners
    return pairs


def candidate_rewards(example: Example, source: str, context: BuildContext) -> list[float | None]:
    if source == "data":
        if example.kind != "list":
            raise ValueError(f"{example.source}: rso with rewards='data' needs ranked lists with scores "
                             f"(kind 'list'), got a {example.kind!r} example; use rewards='judge'")
        return list(example.target)
    if context.judge is None:
        raise ValueError("rso with rewards='judge' needs a judge in the build context")
    return context.judge.score([example.prompt] * len(example.responses), list(example.responses))


@data_builder("rso", paper="2309.06657")
def rso(examples: list[Example], *, beta: float = 0.5, num_samples: int = 8, pairing: str = "tournament",
        rewards: str = "data", labels: str = "rewards", context: BuildContext) -> tuple[list[Example], RsoReport]:
    """Statistical rejection sampling of each prompt's candidates toward pi_sft exp(r / beta), then pairs.

    rewards: "data" (a ranked list's scores) or "judge" (context.judge.score); labels: "rewards"
    or "judge" (context.judge.compare, as the paper's pairwise ranking model). beta = 0.5 and
    num_samples = 8 are our defaults, not values confirmed from the paper.
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"unknown RSO pairing {pairing!r}; choose one of {PAIRINGS}")
    if rewards not in ("data", "judge") or labels not in ("rewards", "judge"):
        raise ValueError(f"rso takes rewards in ('data', 'judge') and labels in ('rewards', 'judge'), "
                         f"got {rewards!r}, {labels!r}")
    if labels == "judge" and context.judge is None:
        raise ValueError("rso with labels='judge' needs a judge in the build context")
    rng, report, out = random.Random(context.seed), RsoReport(), []
    for e in examples:
        report.prompts += 1
        scores = candidate_rewards(e, rewards, context)
        pool = [i for i, s in enumerate(scores) if s is not None]
        report.candidates += len(scores)
        report.dropped["candidate without a reward"] += len(scores) - len(pool)
        rng.shuffle(pool)
        chosen = rejection_sample([scores[i] for i in pool], num_samples, beta, rng, report)
        samples = [pool[k] for k in chosen]
        report.accepted += len(samples)
        judge = context.judge if labels == "judge" else None
        for w, lo in pair_samples(e.prompt, samples, e.responses, scores, pairing, judge, rng, report):
            extra = dict(e.extra, score_chosen=scores[w], score_rejected=scores[lo])
            out.append(Example(e.prompt, [e.responses[w], e.responses[lo]], [1.0, 0.0], "pair", e.source, extra))
    report.pairs = len(out)
    report.dropped = Counter({k: v for k, v in report.dropped.items() if v})
    return out, report
