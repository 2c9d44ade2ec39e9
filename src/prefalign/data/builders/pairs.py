"""Turn rankings and ratings into training pairs.

Each rule maps one ranked list (scores: higher is better) to pairs (chosen, rejected) and says
how many candidate pairs it dropped because the two scores were tied or closer than the
minimum gap, so that nothing is discarded silently.

  best_vs_worst  the highest-scored response over the lowest-scored one (one pair per list)
  best_vs_each   the highest-scored response over every response scored strictly lower
  all_pairs      every ordered pair whose score difference is at least `min_gap` (> 0)

`curriculum_stages` orders each prompt's pairs easy to hard for Curry-DPO.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from prefalign.data.records import Example

PAIRING_RULES = ("best_vs_worst", "best_vs_each", "all_pairs")


@dataclass
class PairingReport:
    lists: int = 0
    pairs: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> candidate pairs not emitted

    def as_dict(self) -> dict:
        return {"lists": self.lists, "pairs": self.pairs, "dropped": dict(self.dropped)}


def make_pair(example: Example, i: int, j: int) -> Example:
    extra = dict(example.extra, score_chosen=example.target[i], score_rejected=example.target[j])
    return Example(example.prompt, [example.responses[i], example.responses[j]], [1.0, 0.0], "pair",
                   example.source, extra)


def list_to_pairs(example: Example, rule: str, min_gap: float = 0.0,
                  report: PairingReport | None = None) -> list[Example]:
    """Pairs from one ranked list under `rule` (see the module docstring). Pairs pass through."""
    if rule not in PAIRING_RULES:
        raise ValueError(f"unknown pairing rule {rule!r}; choose one of {PAIRING_RULES}")
    if example.kind == "pair":
        return [example]
    if example.kind != "list":
        raise ValueError(f"{example.source}: cannot make pairs from a {example.kind} example")
    report = report if report is not None else PairingReport()
    report.lists += 1
    s = example.target
    order = sorted(range(len(s)), key=lambda i: -s[i])  # stable: ties keep file order
    if rule == "best_vs_worst":
        candidates = [(order[0], order[-1])]
    elif rule == "best_vs_each":
        candidates = [(order[0], j) for j in order[1:]]
    else:
        candidates = [(i, j) for a, i in enumerate(order) for j in order[a + 1:]]
    pairs = []
    for i, j in candidates:
        gap = s[i] - s[j]
        if gap <= 0:
            report.dropped["tied scores"] += 1
        elif gap < min_gap:
            report.dropped[f"score gap below {min_gap}"] += 1
        else:
            pairs.append(make_pair(example, i, j))
    report.pairs += len(pairs)
    return pairs


def pairs_from_lists(examples: list[Example], rule: str, min_gap: float = 0.0) -> tuple[list[Example], PairingReport]:
    report = PairingReport()
    pairs = [p for e in examples for p in list_to_pairs(e, rule, min_gap, report)]
    return pairs, report


def curriculum_stages(examples: list[Example], n_stages: int) -> list[list[Example]]:
    """Curry-DPO (arXiv:2403.07230): each prompt's pairs ordered easy to hard, one per stage.

    A pair's difficulty is its score gap: the larger the gap, the easier the preference. Stage k
    holds the k-th easiest pair of every prompt that has one; a prompt with more pairs than
    stages puts the rest into the last stage, so no pair is lost. Ties are never paired.
    """
    if n_stages < 1:
        raise ValueError(f"a curriculum needs at least 1 stage, got {n_stages}")
    stages: list[list[Example]] = [[] for _ in range(n_stages)]
    for example in examples:
        pairs = list_to_pairs(example, "all_pairs") if example.kind == "list" else [example]
        pairs.sort(key=lambda p: -(p.extra.get("score_chosen", 1.0) - p.extra.get("score_rejected", 0.0)))
        for k, pair in enumerate(pairs):
            stages[min(k, n_stages - 1)].append(pair)
    return stages


REWARD_TEMPLATE = "{prompt}\n\n(Write a response that earns a quality score of {score:g}.)"


def condition_prompt(prompt, score: float, template: str = REWARD_TEMPLATE):
    """The prompt with a target score written in (text, or the last user message of a chat)."""
    if isinstance(prompt, str):
        return template.format(prompt=prompt, score=score)
    messages = [dict(m) for m in prompt]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[last_user]["content"] = template.format(prompt=messages[last_user]["content"], score=score)
    return messages


def reward_augment(examples: list[Example], template: str = REWARD_TEMPLATE) -> tuple[list[Example], PairingReport]:
    """Reward-augmented relabeling (arXiv:2410.08067): each scored pair (r_w > r_l) becomes two
    goal-conditioned pairs, w over l with the prompt conditioned on r_w, and l over w conditioned
    on r_l, so the model learns what each quality level looks like instead of only that w beats l.
    At inference, condition on the best score (`condition_prompt`). Pairs without both scores, or
    with equal scores (the two relabeled pairs would contradict), are dropped and counted."""
    if "{prompt}" not in template or "{score" not in template:
        raise ValueError("the reward template needs {prompt} and {score} (e.g. {score:g})")
    report, out = PairingReport(), []
    for e in examples:
        report.lists += 1
        r_w, r_l = e.extra.get("score_chosen"), e.extra.get("score_rejected")
        if e.kind != "pair" or r_w is None or r_l is None:
            report.dropped["no scores"] += 1
            continue
        if r_w <= r_l:
            report.dropped["tied scores" if r_w == r_l else "chosen scored lower"] += 1
            continue
        w, lo = e.responses
        out.append(Example(condition_prompt(e.prompt, r_w, template), [w, lo], [1.0, 0.0], "pair", e.source,
                           dict(e.extra, target_score=r_w)))
        out.append(Example(condition_prompt(e.prompt, r_l, template), [lo, w], [1.0, 0.0], "pair", e.source,
                           dict(e.extra, target_score=r_l)))
    report.pairs = len(out)
    return out, report
