"""Programmatic judges: a rule written as code scores each response (no model).

For checks whose ground truth must be known (online alignment moves the judged quantity, or it
does not) and for demos that run anywhere; a rule is a stand-in for a real judge, never a
claim about quality.
"""

from __future__ import annotations

import re

from prefalign.judges.base import Judge, check_aligned, register_judge


@register_judge("length_target")
class LengthTargetJudge(Judge):
    """score = -|words - target| / target: 0 for a response of exactly `target` words, lower the
    further its word count is from it (words: runs of non-space characters)."""

    def __init__(self, target_words: int = 40, temperature: float = 0.1):
        super().__init__()
        if target_words < 1:
            raise ValueError(f"target_words must be at least 1, got {target_words}")
        self.target, self.temperature = int(target_words), float(temperature)

    def score(self, prompts: list, responses: list) -> list[float]:
        check_aligned(prompts, responses)
        out = [-abs(len(re.findall(r"\S+", r)) - self.target) / self.target for r in responses]
        for v in out:
            self.stats.record(v)
        return out
