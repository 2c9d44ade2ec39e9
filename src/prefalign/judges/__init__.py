"""Judges: one interface (score / compare, batched) over reward models, preference models, LLM judges and callables."""

from prefalign.judges.base import JUDGES, CallableJudge, Judge, JudgeStats, make_judge, register_judge
from prefalign.judges import consensus, follow_up, principle, relevance, rubric  # noqa: F401  (registers the judges)

__all__ = ["JUDGES", "CallableJudge", "Judge", "JudgeStats", "make_judge", "register_judge"]
