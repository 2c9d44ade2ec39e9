"""Pairs sampled from a model and labelled by a programmatic gold reward (a testbed without humans).

The DPO paper's controlled-sentiment task (arXiv:2305.18290, section 6.1): sample several
continuations of each prompt from the starting model, score each with a fixed reward (there a
sentiment classifier; here any scoring judge, e.g. `vader_sentiment`), and keep the pairs whose
rewards differ. The same reward later scores the aligned model's samples, so "did alignment
work" has a ground truth. Ties (|difference| < min_gap) and responses without a score are
dropped and counted; the report also says how much the reward spreads within a prompt, since a
reward that barely varies gives mostly ties and a testbed that cannot tell methods apart.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations

from prefalign.data.builders.registry import BuildContext, data_builder
from prefalign.data.records import Example

RULES = ("all_pairs", "best_vs_worst")


@dataclass
class GoldPairsReport:
    prompts: int = 0
    samples: int = 0
    pairs: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    spread: list = field(default_factory=list)  # per prompt: population std of its samples' rewards

    def as_dict(self) -> dict:
        spread = self.spread or [0.0]
        return {"prompts": self.prompts, "samples": self.samples, "pairs": self.pairs, "dropped": dict(self.dropped),
                "reward_std_mean": round(statistics.fmean(spread), 4),
                "share_prompts_std_ge_0.1": round(sum(s >= 0.1 for s in spread) / len(spread), 4)}


def pairs_of(scores: list, rule: str, min_gap: float) -> tuple[list[tuple[int, int]], int]:
    """(winner, loser) index pairs among scored samples, and how many candidate pairs were ties."""
    scored = [i for i, s in enumerate(scores) if s is not None]
    if rule == "best_vs_worst":
        if len(scored) < 2:
            return [], 0
        best = max(scored, key=lambda i: scores[i])
        worst = min(scored, key=lambda i: scores[i])
        candidates = [(best, worst)]
    else:
        candidates = list(combinations(scored, 2))
    out, ties = [], 0
    for i, j in candidates:
        if abs(scores[i] - scores[j]) < min_gap or i == j:
            ties += 1
            continue
        out.append((i, j) if scores[i] > scores[j] else (j, i))
    return out, ties


@data_builder("gold_pairs", paper="2305.18290")
def gold_pairs(examples: list[Example], *, num_samples: int = 4, max_new_tokens: int = 48, temperature: float = 1.0,
               rule: str = "all_pairs", min_gap: float = 0.05, context: BuildContext) -> tuple[list[Example], GoldPairsReport]:
    """Sample num_samples responses per prompt from the generator, score them with the judge, keep pairs that differ."""
    if rule not in RULES:
        raise ValueError(f"gold_pairs rule must be one of {RULES}, got {rule!r}")
    if num_samples < 2:
        raise ValueError(f"gold_pairs needs num_samples >= 2 to form a pair, got {num_samples}")
    if context.generator is None or context.judge is None:
        raise ValueError("gold_pairs needs a generator (data.builder_generator) and a scoring judge "
                         "(data.builder_judge, e.g. vader_sentiment)")
    from prefalign.models.generation import GenerateSettings  # only here: reading data needs no generate path

    settings = GenerateSettings(max_new_tokens=max_new_tokens, temperature=temperature, do_sample=True,
                                num_return_sequences=num_samples, seed=context.seed)
    samples = context.generator([e.prompt for e in examples], settings)
    if len(samples) != len(examples):
        raise ValueError(f"the generator returned {len(samples)} sample lists for {len(examples)} prompts")
    report, out = GoldPairsReport(prompts=len(examples)), []
    for e, responses in zip(examples, samples):
        scores = context.judge.score([e.prompt] * len(responses), responses)
        report.samples += len(responses)
        report.dropped["unscored_samples"] += sum(s is None for s in scores)
        kept = [s for s in scores if s is not None]
        report.spread.append(statistics.pstdev(kept) if len(kept) > 1 else 0.0)
        pairs, ties = pairs_of(scores, rule, min_gap)
        report.dropped["ties"] += ties
        for i, j in pairs:
            out.append(Example(e.prompt, [responses[i], responses[j]], [1.0, 0.0], "pair", e.source,
                               {"score_chosen": scores[i], "score_rejected": scores[j]}))
    report.pairs = len(out)
    report.dropped = +report.dropped  # drop zero counts
    return out, report


@dataclass
class UnpairedReport:
    pairs: int = 0
    rows: int = 0
    passed_through: int = 0

    def as_dict(self) -> dict:
        return {"pairs": self.pairs, "rows": self.rows, "passed_through": self.passed_through}


@data_builder("pairs_to_unpaired", paper="2402.01306")
def pairs_to_unpaired(examples: list[Example]) -> tuple[list[Example], UnpairedReport]:
    """Each pair -> two unpaired rows: chosen labelled desirable (1), rejected undesirable (0), for KTO-style objectives."""
    # KTO's paper (arXiv:2402.01306, section 4) trains on paired data split this way; other kinds pass unchanged
    report, out = UnpairedReport(), []
    for e in examples:
        if e.kind != "pair":
            report.passed_through += 1
            out.append(e)
            continue
        report.pairs += 1
        for response, label in zip(e.responses, (1.0, 0.0)):
            out.append(Example(e.prompt, [response], [label], "unpaired", e.source, dict(e.extra)))
    report.rows = len(out) - report.passed_through
    return out, report
