"""The judge interface every source of preference signal implements.

    score(prompts, responses)  -> list[float | None]   one scalar per response (higher is better)
    compare(prompts, a, b)     -> list[float | None]   P(a preferred over b) per pair

Both are batched over aligned lists. None means "no verdict" (an unparsable LLM judgement, a
judge that abstains): it is counted in `stats`, never replaced by a guess. A judge that only
scores gets `compare` from the Bradley-Terry link sigmoid((s_a - s_b) / temperature); a judge
that only compares (e.g. a general preference model) raises a clear error from `score`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

JUDGES: dict[str, type] = {}


def register_judge(name: str):
    """Class decorator: make a judge constructible by name (CLI and configs)."""

    def add(cls):
        if name in JUDGES:
            raise ValueError(f"judge {name!r} is registered twice")
        cls.name = name
        JUDGES[name] = cls
        return cls

    return add


def make_judge(name: str, **kwargs) -> "Judge":
    if name not in JUDGES:
        raise ValueError(f"unknown judge {name!r}; known: {', '.join(sorted(JUDGES))}")
    return JUDGES[name](**kwargs)


@dataclass
class JudgeStats:
    """How many verdicts a judge gave and why it gave none for the rest."""

    verdicts: int = 0
    missing: Counter = field(default_factory=Counter)  # reason -> count

    def record(self, value, reason: str = "unparsable") -> None:
        if value is None:
            self.missing[reason] += 1
        else:
            self.verdicts += 1

    def as_dict(self) -> dict:
        return {"verdicts": self.verdicts, "missing": sum(self.missing.values()), "missing_by_reason": dict(self.missing)}


def check_aligned(*columns) -> int:
    n = len(columns[0])
    for c in columns[1:]:
        if len(c) != n:
            raise ValueError(f"judge inputs must be aligned lists; got lengths {[len(x) for x in columns]}")
    return n


class CompareOnlyError(NotImplementedError):
    """A judge that only compares pairs (e.g. a general preference model) was asked for a score.
    Not a missing feature: such judges have no scalar score by design (check `judge.can_score`)."""


class Judge:
    """Base class: implement `score` or `compare` (or both)."""

    name = "judge"
    temperature = 1.0  # Bradley-Terry temperature for compare-from-score

    def __init__(self):
        self.stats = JudgeStats()

    @property
    def can_score(self) -> bool:
        """Whether score() gives per-response scores (False for compare-only judges)."""
        return type(self).score is not Judge.score

    def score(self, prompts: list, responses: list) -> list[float | None]:
        raise CompareOnlyError(f"the {self.name!r} judge compares pairs only; it cannot score a single response")

    def compare(self, prompts: list, a: list, b: list) -> list[float | None]:
        check_aligned(prompts, a, b)
        sa, sb = self.score(prompts, a), self.score(prompts, b)
        return [None if x is None or y is None else bt_probability(x - y, self.temperature) for x, y in zip(sa, sb)]


def bt_probability(diff: float, temperature: float = 1.0) -> float:
    z = diff / temperature
    # written so that neither branch overflows at |z| ~ 1e3
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def import_function(fn):
    if not isinstance(fn, str):
        return fn
    module, _, name = fn.partition(":")
    if not module or not name:
        raise ValueError(f"a function given as text must be 'package.module:function', got {fn!r}")
    import importlib

    found = getattr(importlib.import_module(module), name, None)
    if not callable(found):
        raise ValueError(f"{fn!r} is not a callable")
    return found


@register_judge("callable")
class CallableJudge(Judge):
    """Wrap Python functions: score_fn(prompt, response) -> float | None and/or compare_fn(prompt, a, b) -> P(a)."""

    def __init__(self, score_fn: Callable | None = None, compare_fn: Callable | None = None, temperature: float = 1.0):
        super().__init__()
        if score_fn is None and compare_fn is None:
            raise ValueError("CallableJudge needs score_fn, compare_fn or both")
        # from YAML or the command line a function arrives as "package.module:function"
        score_fn, compare_fn = import_function(score_fn), import_function(compare_fn)
        self.score_fn, self.compare_fn, self.temperature = score_fn, compare_fn, temperature

    @property
    def can_score(self) -> bool:
        return self.score_fn is not None

    def score(self, prompts, responses):
        if self.score_fn is None:
            return super().score(prompts, responses)
        check_aligned(prompts, responses)
        out = []
        for p, r in zip(prompts, responses):
            v = self.score_fn(p, r)
            v = None if v is None else float(v)
            self.stats.record(v, "returned None")
            out.append(v)
        return out

    def compare(self, prompts, a, b):
        if self.compare_fn is None:
            return super().compare(prompts, a, b)
        check_aligned(prompts, a, b)
        out = []
        for p, x, y in zip(prompts, a, b):
            v = self.compare_fn(p, x, y)
            if v is not None and not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"compare_fn must return a probability in [0, 1] or None, got {v!r}")
            v = None if v is None else float(v)
            self.stats.record(v, "returned None")
            out.append(v)
        return out
