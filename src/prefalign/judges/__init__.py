"""Judges: one interface (score / compare, batched) over reward models, preference models, LLM judges and callables."""

from prefalign.judges.base import JUDGES, CallableJudge, Judge, JudgeStats, make_judge, register_judge

__all__ = ["JUDGES", "CallableJudge", "Judge", "JudgeStats", "make_judge", "register_judge"]
from prefalign.judges import reward_model  # noqa: E402,F401  (registers the "reward_model" judge)
