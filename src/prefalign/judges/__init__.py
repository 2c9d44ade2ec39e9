"""Judges: one interface (score / compare, batched) over reward models, preference models, LLM judges and callables."""

from prefalign.judges.base import JUDGES, CallableJudge, Judge, JudgeStats, make_judge, register_judge

__all__ = ["JUDGES", "CallableJudge", "Judge", "JudgeStats", "make_judge", "register_judge"]

# Judges defined in their own modules register on import; importing them here makes the registry
# complete for anyone who imports prefalign.judges (the modules load models only when constructed).
from prefalign.judges import (consensus, follow_up, preference_model, principle, relevance, rules,  # noqa: E402,F401
                              reward_model, rubric, vader)
