"""The pairing, curriculum and relabeling functions of `pairs.py`, registered as data builders.

Thin wrappers: the maths lives in pairs.py; these give each one the registry's shape
(examples -> examples + report) so that `data.builders:` in a training config and
`prefalign data build` can run them by name.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefalign.data.builders.pairs import REWARD_TEMPLATE, curriculum_stages, pairs_from_lists, reward_augment
from prefalign.data.builders.registry import data_builder
from prefalign.data.records import Example


@dataclass
class StepReport:
    """Counts a step reports (what went in, what came out, what was dropped and why)."""

    counts: dict

    def as_dict(self) -> dict:
        return dict(self.counts)


def aspect_score(scores: dict, aspect, source: str) -> float:
    """One aspect's score, or a weighted sum of aspects ({name: weight})."""
    wanted = aspect if isinstance(aspect, dict) else {aspect: 1.0}
    missing = [a for a in wanted if a not in scores]
    if missing:
        raise ValueError(f"{source}: no aspect {missing[0]!r}; this example has {sorted(scores)}")
    return sum(float(w) * float(scores[a]) for a, w in wanted.items())


def rescore(example: Example, aspect) -> Example:
    """The list re-ranked by `aspect` (a name or {name: weight}) from its per-aspect ratings."""
    if example.kind != "list":
        return example
    ratings = example.extra.get("aspect_scores")
    if ratings is None:
        raise ValueError(f"{example.source}: aspect={aspect!r} needs per-aspect ratings (responses with a "
                         "'scores' mapping); this list has one score per response")
    target = [aspect_score(r, aspect, example.source) for r in ratings]
    return Example(example.prompt, example.responses, target, "list", example.source, dict(example.extra))


@data_builder("to_pairs")
def to_pairs(examples: list[Example], *, rule: str = "best_vs_worst", min_gap: float = 0.0, aspect=None):
    """Ranked lists to pairs: best_vs_worst, best_vs_each or all_pairs above min_gap; ties dropped and counted.

    `aspect` re-ranks multi-aspect ratings first: one aspect's name, or {aspect: weight} for a
    weighted sum. Pairs pass through unchanged.
    """
    if aspect is not None:
        examples = [rescore(e, aspect) for e in examples]
    pairs, report = pairs_from_lists(examples, rule, float(min_gap))
    return pairs, StepReport({"rule": rule, **report.as_dict()})


@data_builder("reward_augment", paper="2410.08067")
def reward_augment_step(examples: list[Example], *, template: str = REWARD_TEMPLATE):
    """Reward-augmented relabeling: each scored pair becomes two pairs conditioned on a target score.

    The report's `best_score` is the highest target score written into a prompt: the score to
    condition on at inference (`prefalign generate` reads it from the run's summary).
    """
    out, report = reward_augment(examples, template)
    best = max((e.extra["target_score"] for e in out), default=None)
    return out, StepReport({**report.as_dict(), "best_score": best})


@data_builder("curriculum", paper="2403.07230")
def curriculum(examples: list[Example], *, n_stages: int = 3):
    """Curry-DPO: every prompt's pairs ordered easy to hard by score gap, tagged extra["stage"] (1 = easiest).

    The output is ordered stage by stage. Lists become all their untied pairs; a prompt with more
    pairs than stages puts the rest in the last stage. `prefalign train` with
    data.curriculum_stages trains such stages one after another.
    """
    stages = curriculum_stages(examples, int(n_stages))
    out = [Example(p.prompt, p.responses, p.target, p.kind, p.source, dict(p.extra, stage=k))
           for k, stage in enumerate(stages, start=1) for p in stage]
    # every unordered pair of a list is a candidate; curriculum_stages pairs all but the tied ones
    candidates = sum(len(e.responses) * (len(e.responses) - 1) // 2 if e.kind == "list" else 1 for e in examples)
    tied = candidates - len(out)
    return out, StepReport({"pairs_per_stage": [len(s) for s in stages],
                            "dropped": {"tied scores": tied} if tied else {}})
