"""A saved reward model as a judge: score = its reward, compare = its own P(a preferred).

BT and process reward models compare by sigmoid(r_a - r_b); PEARL compares with its Gaussian
probability; a multi-objective model scores v . r for `direction` (DPA; normalised to a unit
vector; default: equal weights over its attributes) and compares by the BT link on that score.
"""

from __future__ import annotations

from prefalign.judges.base import Judge, check_aligned, register_judge
from prefalign.rewards.model import load_reward_model


@register_judge("reward_model")
class RewardModelJudge(Judge):
    def __init__(self, path: str, direction: list[float] | None = None, batch_size: int = 16, device: str = "cpu"):
        super().__init__()
        self.model = load_reward_model(path, device)
        self.direction, self.batch_size = direction, batch_size
        if direction is not None:
            self.model.rewards(["-"], ["-"], direction)  # a bad direction fails at construction

    @property
    def can_score(self) -> bool:
        return bool(getattr(self.model.head, "scalar", True))  # a GPM head has no scalar reward

    def score(self, prompts: list, responses: list) -> list[float | None]:
        check_aligned(prompts, responses)
        values = self.model.rewards(list(prompts), list(responses), self.direction, self.batch_size).tolist()
        for v in values:
            self.stats.record(v)
        return values

    def compare(self, prompts: list, a: list, b: list) -> list[float | None]:
        check_aligned(prompts, a, b)
        values = self.model.probabilities(list(prompts), list(a), list(b), self.direction, self.batch_size).tolist()
        for v in values:
            self.stats.record(v)
        return values
