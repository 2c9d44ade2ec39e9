"""Pairing rules: a round's samples and the judge's verdicts -> example specs.

A spec names its rows by where they come from, [source, k] (a sample of "policy", "reference" or
"mixture") or ["data", j] (the data's chosen j = 0 / rejected j = 1), so examples are built from
the exact sampled token ids (online/examples.py) and a spec file is small JSON. Every prompt
that yields no example is counted by reason; nothing is dropped silently.

Labels: with label_draws = 0 the judge's preferred response is chosen and P = 1/2 is a tie
(dropped); with M >= 1 draws, M Bernoulli(P) draws seeded per (seed, round, prompt) decide, the
majority is chosen (M/2 wins: a tie) and P_hat = wins / M is the soft label (iREPO's M annotators).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations

from prefalign.online.samplers import sample_seed

# the example kind each rule produces, and the features its examples carry
RULE_KINDS = {"two_samples": "pair", "best_vs_worst": "pair", "policy_vs_reference": "pair",
              "policy_vs_mixture": "pair", "candidates_plus_data": "pair", "all_k": "list", "best_of_n": "sft",
              "constitutions": "contrastive"}
RULE_FEATURES = {"pair": {"lengths", "soft_label"}, "list": {"lengths", "scores", "samples"}, "sft": {"lengths"},
                 "contrastive": {"lengths"}}
RULE_EXTRA_FEATURES = {"policy_vs_reference": {"ref_sample"}, "candidates_plus_data": {"ref_sample"}}
# the sources each rule samples: (source, samples per prompt: "n" = samples_per_prompt, or a number)
RULE_SOURCES = {"two_samples": [("main", "n")], "best_vs_worst": [("main", "n")], "all_k": [("main", "n")],
                "best_of_n": [("main", "n")], "policy_vs_reference": [("policy", 1), ("reference", 1)],
                "policy_vs_mixture": [("policy", 1), ("mixture", 1)], "candidates_plus_data": [("greedy", 1)]}


def produced_features(rule: str) -> set[str]:
    return RULE_FEATURES[RULE_KINDS[rule]] | RULE_EXTRA_FEATURES.get(rule, set())


@dataclass
class LabelCounts:
    prompts: int = 0
    examples: int = 0
    dropped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"prompts": self.prompts, "examples": self.examples, "dropped": sum(self.dropped.values()),
                "dropped_by_reason": dict(self.dropped)}


@dataclass
class Candidate:
    """One response the judge sees: where it comes from, its text, and its ids when sampled."""

    ref: list  # [source, k] or ["data", j]
    text: str
    ids: list[int] | None = None

    @property
    def judged(self):
        return (self.text, self.ids) if self.ids is not None else self.text


def decide(p: float | None, draws: int, seed: int) -> tuple[bool, float] | str:
    """(first is chosen, P(chosen preferred)) or the reason there is no label."""
    if p is None:
        return "no verdict"
    if p != p:  # NaN: a consistency judge found its two judges disagreeing (SCIR)
        return "judges disagree"
    if draws == 0:
        if p == 0.5:
            return "tie"
        return (True, p) if p > 0.5 else (False, 1.0 - p)
    rng = random.Random(seed)
    wins = sum(rng.random() < p for _ in range(draws))
    if 2 * wins == draws:
        return "tie"
    return (True, wins / draws) if 2 * wins > draws else (False, (draws - wins) / draws)


def pair_spec(i: int, a: Candidate, b: Candidate, label: tuple[bool, float], **extra) -> dict:
    chosen, rejected = (a, b) if label[0] else (b, a)
    return {"prompt": i, "kind": "pair", "rows": [chosen.ref, rejected.ref], "target": [1.0, 0.0],
            "soft_label": label[1], **extra}


def score_all(judge, prompts: list, groups: list[list[Candidate]]) -> list[list[float | None]]:
    """Every candidate's judge score (judges that score), or its mean P(win) against the others
    of its prompt (compare-only judges), aligned with `groups`."""
    if judge.can_score:
        flat = [(i, c) for i, g in enumerate(groups) for c in g]
        values = judge.score([prompts[i] for i, _ in flat], [c.judged for _, c in flat])
        out, pos = [], 0
        for g in groups:
            out.append(values[pos:pos + len(g)])
            pos += len(g)
        return out
    matrices = win_matrices(judge, prompts, groups)
    return [[None if any(v is None for v in row) else sum(row) / len(row) for row in m] for m in matrices]


def win_matrices(judge, prompts: list, groups: list[list[Candidate]]) -> list[list[list[float | None]]]:
    """P(i beats j) for every two candidates of a prompt, the diagonal 1/2 (SPPO's P with the diagonal)."""
    flat = [(g, i, j) for g, group in enumerate(groups) for i, j in combinations(range(len(group)), 2)]
    probs = judge.compare([prompts[g] for g, _, _ in flat], [groups[g][i].judged for g, i, _ in flat],
                          [groups[g][j].judged for g, _, j in flat])
    out = [[[0.5 if i == j else None for j in range(len(g))] for i in range(len(g))] for g in groups]
    for (g, i, j), p in zip(flat, probs):
        out[g][i][j], out[g][j][i] = p, (None if p is None else 1.0 - p)
    return out


def label_round(rule: str, prompts: list, candidates: dict[str, list[list[Candidate]]], judge, draws: int,
                seed: int, round: int) -> tuple[list[dict], LabelCounts]:
    """Example specs for one round. `candidates[source][i]` are prompt i's candidates from that source."""
    counts = LabelCounts(prompts=len(prompts))
    seeds = [sample_seed(seed, round, 300_000 + i) for i in range(len(prompts))]  # one label stream per prompt
    specs = RULES[rule](prompts, candidates, judge, draws, seeds, counts)
    counts.examples = len(specs)
    return specs, counts


def two_samples(prompts, candidates, judge, draws, seeds, counts):
    groups = candidates["main"]
    short = [i for i, g in enumerate(groups) if len(g) < 2]
    if short:
        raise ValueError("two_samples needs at least 2 samples per prompt (online.samples_per_prompt)")
    probs = judge.compare(prompts, [g[0].judged for g in groups], [g[1].judged for g in groups])
    return labeled_pairs(groups, [(0, 1)] * len(groups), probs, draws, seeds, counts)


def labeled_pairs(groups, which, probs, draws, seeds, counts, **extra_of) -> list[dict]:
    specs = []
    for i, ((a, b), p) in enumerate(zip(which, probs)):
        label = decide(p, draws, seeds[i])
        if isinstance(label, str):
            counts.dropped[label] += 1
            continue
        extra = {k: v[i] for k, v in extra_of.items()}
        specs.append(pair_spec(i, groups[i][a], groups[i][b], label, **extra))
    return specs


def best_vs_worst(prompts, candidates, judge, draws, seeds, counts, groups=None, **extra_of):
    groups = groups or candidates["main"]
    values = score_all(judge, prompts, groups)
    specs = []
    for i, (group, vals) in enumerate(zip(groups, values)):
        known = {k: v for k, v in enumerate(vals) if v is not None}
        if len(known) < 2:
            counts.dropped["fewer than two judged responses"] += 1
            continue
        best, worst = max(known, key=known.get), min(known, key=known.get)
        if known[best] == known[worst]:
            counts.dropped["all tied"] += 1
            continue
        label = (True, 1.0)  # a hard label: best over worst
        if draws or getattr(judge, "filters_pairs", False):
            # M annotators: draws from the judge's P(best > worst) decide, and give P_hat; a consistency
            # judge answers NaN when its second judge disagrees (dropped, counted)
            p = judge.compare([prompts[i]], [group[best].judged], [group[worst].judged])[0]
            label = decide(p, draws, seeds[i])
            if isinstance(label, str):
                counts.dropped[label] += 1
                continue
        extra = {k: v[i] for k, v in extra_of.items()}
        specs.append(pair_spec(i, group[best], group[worst], label, **extra))
    return specs


def policy_vs_reference(prompts, candidates, judge, draws, seeds, counts):
    groups = [[p[0], r[0]] for p, r in zip(candidates["policy"], candidates["reference"])]
    probs = judge.compare(prompts, [g[0].judged for g in groups], [g[1].judged for g in groups])
    # XPO's exploration term is on the reference's sample y_ref
    return labeled_pairs(groups, [(0, 1)] * len(groups), probs, draws, seeds, counts,
                         ref_sample=[g[1].ref for g in groups])


def policy_vs_mixture(prompts, candidates, judge, draws, seeds, counts):
    """Nash-MD: the pair is (y from the policy, y' from the mixture) in that order, never reordered;
    the soft label is P(y > y') (or its draws' share), which the objective centres at 1/2."""
    ys, mixed = [g[0] for g in candidates["policy"]], [g[0] for g in candidates["mixture"]]
    probs = judge.compare(prompts, [c.judged for c in ys], [c.judged for c in mixed])
    specs = []
    for i, p in enumerate(probs):
        if p is None:
            counts.dropped["no verdict"] += 1
            continue
        if draws:
            rng = random.Random(seeds[i])
            p = sum(rng.random() < p for _ in range(draws)) / draws
        specs.append({"prompt": i, "kind": "pair", "rows": [ys[i].ref, mixed[i].ref], "target": [1.0, 0.0],
                      "soft_label": p})
    return specs


def candidates_plus_data(prompts, candidates, judge, draws, seeds, counts):
    """SELM: the round-start policy's greedy sample ranked with the data's chosen and rejected; best
    vs worst; the greedy sample is also y_ref of the optimism term (the reference is that policy)."""
    groups = [g + candidates["data"][i] for i, g in enumerate(candidates["greedy"])]
    return best_vs_worst(prompts, candidates, judge, draws, seeds, counts, groups=groups,
                         ref_sample=[g[0].ref for g in candidates["greedy"]])


def all_k(prompts, candidates, judge, draws, seeds, counts):
    """SPPO: every sample's estimated win rate against the others, P_hat_k = mean_j P(k > j) with the
    diagonal 1/2, as the list's scores."""
    groups = candidates["main"]
    specs = []
    for i, matrix in enumerate(win_matrices(judge, prompts, groups)):
        if any(v is None for row in matrix for v in row):
            counts.dropped["a comparison without verdict"] += 1
            continue
        rates = [sum(row) / len(row) for row in matrix]
        specs.append({"prompt": i, "kind": "list", "rows": [c.ref for c in groups[i]], "target": rates})
    return specs


def best_of_n(prompts, candidates, judge, draws, seeds, counts):
    """Rejection sampling (DPA): the highest-scored sample is the SFT target (first on ties)."""
    groups = candidates["main"]
    specs = []
    for i, vals in enumerate(score_all(judge, prompts, groups)):
        known = {k: v for k, v in enumerate(vals) if v is not None}
        if not known:
            counts.dropped["no judged response"] += 1
            continue
        best = max(known, key=known.get)
        specs.append({"prompt": i, "kind": "sft", "rows": [groups[i][best].ref], "target": [1.0]})
    return specs


def constitutions(prompts, candidates, judge, draws, seeds, counts):
    """SAMI: no judge. Each response y_j (sampled under constitution j) is scored under every constitution
    c_i: row i * C + j is [c_j's sample, scored under c_i's prompt]."""
    c = len(candidates)
    return [{"prompt": i, "kind": "contrastive",
             "rows": [[f"c{j}", 0, f"c{a}"] for a in range(c) for j in range(c)], "target": [0.0] * (c * c)}
            for i in range(len(prompts))]


RULES = {"constitutions": constitutions, "two_samples": two_samples, "best_vs_worst": best_vs_worst, "policy_vs_reference": policy_vs_reference,
         "policy_vs_mixture": policy_vs_mixture, "candidates_plus_data": candidates_plus_data, "all_k": all_k,
         "best_of_n": best_of_n}
