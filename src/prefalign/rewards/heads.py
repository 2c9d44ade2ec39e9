"""Reward heads and the one registry of reward-model kinds.

A kind is one head class (pooled [N, H] or token states -> a dict of per-response outputs), one
loss function (head outputs + batch -> per-example losses [B]) and the data it trains on:
  pairs    prompt, chosen, rejected (+ optional margin, dataset id): loss(out_c, out_r, batch, **args)
  ratings  prompt, response, attribute ratings [D] with a mask:     loss(out, batch, **args)
  steps    prompt, response steps, one good/bad label per step:      loss(out, batch, **args)
Every head says how its outputs become one scalar reward per response (`reward`; `scalar = False`
when there is none, as for GPM) and P(a > b) (`probability`); judges, evaluation and metrics use
only those two. `inputs` names what a head reads beside the pooled features: "prompt_features"
(the backbone on (prompt, ""), for GPM's gate and PAL model B) and "user" (PAL's user indices);
RewardModel supplies them. A new kind is a head class with these methods, a loss and one
`register_reward_kind` call (gpm and pal live in rewards/gpm.py and rewards/pal.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from prefalign.rewards.gpm import GPMHead, gpm_pair_loss
from prefalign.rewards.losses import (bt_loss, directional_reward, gaussian_bt_loss, gaussian_preference_probability,
                                      more_weights, rating_loss, step_bce_loss)
from prefalign.rewards.pal import PALHead, pal_pair_loss

DATA_KINDS = ("pairs", "ratings", "steps")


@dataclass(frozen=True)
class RewardKind:
    name: str
    head: type
    loss: Callable
    data: str  # one of DATA_KINDS
    paper: str
    summary: str


REWARD_KINDS: dict[str, RewardKind] = {}


def register_reward_kind(name: str, head: type, loss: Callable, data: str, paper: str, summary: str) -> RewardKind:
    if name in REWARD_KINDS:
        raise ValueError(f"reward kind {name!r} is registered twice")
    if data not in DATA_KINDS:
        raise ValueError(f"reward kind {name!r}: data must be one of {DATA_KINDS}, got {data!r}")
    REWARD_KINDS[name] = RewardKind(name, head, loss, data, paper, summary)
    return REWARD_KINDS[name]


def get_reward_kind(name: str) -> RewardKind:
    if name not in REWARD_KINDS:
        raise ValueError(f"unknown reward kind {name!r}; known: {', '.join(sorted(REWARD_KINDS))}")
    return REWARD_KINDS[name]


class ScalarHead(torch.nn.Module):
    """One scalar reward per response; P(a > b) = sigmoid(r_a - r_b) (Bradley-Terry)."""

    reads = "pooled"
    scalar = True
    inputs: tuple = ()

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)

    def forward(self, pooled: torch.Tensor) -> dict:
        return {"reward": self.linear(pooled).squeeze(-1), "features": pooled}

    def reward(self, out: dict, direction=None) -> torch.Tensor:
        return out["reward"]

    def probability(self, out_a: dict, out_b: dict) -> torch.Tensor:
        return torch.sigmoid(self.reward(out_a) - self.reward(out_b))


class VectorHead(ScalarHead):
    """D attribute scores per response, in the ratings' units: offset + scale * (W h + b), with
    offset/scale the training ratings' per-attribute mean/std (the linear layer fits unit-scale
    targets). The scalar reward is DPA's v . r for a direction v (default: equal weights)."""

    def __init__(self, hidden_size: int, attributes: list[str], offset: list[float] | None = None,
                 scale: list[float] | None = None, direction: list[float] | None = None):
        torch.nn.Module.__init__(self)
        if not attributes:
            raise ValueError("a multi-objective head needs at least one attribute name")
        self.attributes = list(attributes)
        d = len(attributes)
        self.linear = torch.nn.Linear(hidden_size, d)
        self.register_buffer("offset", torch.tensor(offset if offset is not None else [0.0] * d))
        self.register_buffer("scale", torch.tensor(scale if scale is not None else [1.0] * d))
        self.direction = list(direction) if direction is not None else [1.0] * d
        directional_reward(torch.zeros(1, d), self.direction)  # a bad default direction fails here

    def forward(self, pooled: torch.Tensor) -> dict:
        return {"attributes": self.offset + self.scale * self.linear(pooled), "scale": self.scale.expand(pooled.shape[0], -1), "features": pooled}

    def reward(self, out: dict, direction=None) -> torch.Tensor:
        return directional_reward(out["attributes"], self.direction if direction is None else direction)


class GaussianHead(ScalarHead):
    """A Gaussian reward per response: mean and std (softplus, floored at min_std)."""

    def __init__(self, hidden_size: int, min_std: float = 1e-3):
        torch.nn.Module.__init__(self)
        self.linear = torch.nn.Linear(hidden_size, 2)
        self.min_std = min_std

    def forward(self, pooled: torch.Tensor) -> dict:
        raw = self.linear(pooled)
        return {"reward": raw[:, 0], "std": F.softplus(raw[:, 1]) + self.min_std, "features": pooled}

    def probability(self, out_a: dict, out_b: dict) -> torch.Tensor:
        return gaussian_preference_probability(out_a["reward"], out_a["std"], out_b["reward"], out_b["std"])


class StepHead(ScalarHead):
    """A logit per reasoning step, read at the last token of each step (see rewards/steps.py).
    A whole response's reward aggregates its step logits: min (the weakest step), mean or last."""

    reads = "tokens"
    AGGREGATES = ("min", "mean", "last")

    def __init__(self, hidden_size: int, delimiter: str = "\n\n", aggregate: str = "min"):
        super().__init__(hidden_size)
        if not delimiter:
            raise ValueError("the step delimiter must be a non-empty string")
        if aggregate not in self.AGGREGATES:
            raise ValueError(f"aggregate must be one of {self.AGGREGATES}, got {aggregate!r}")
        self.delimiter, self.aggregate = delimiter, aggregate

    def forward(self, hidden: torch.Tensor, step_row: torch.Tensor, step_pos: torch.Tensor, n_rows: int) -> dict:
        logits = self.linear(hidden[step_row, step_pos]).squeeze(-1)
        return {"step_logits": logits, "step_row": step_row, "reward": self.pool_steps(logits, step_row, n_rows)}

    def pool_steps(self, logits: torch.Tensor, row: torch.Tensor, n_rows: int) -> torch.Tensor:
        out = torch.zeros(n_rows, dtype=logits.dtype, device=logits.device)
        for i in range(n_rows):
            mine = logits[row == i]
            if mine.numel():
                out[i] = mine.min() if self.aggregate == "min" else mine.mean() if self.aggregate == "mean" else mine[-1]
        return out


def bt_pair_loss(out_c: dict, out_r: dict, batch: dict, more: bool = False) -> torch.Tensor:
    """BT with optional margin and per-dataset weights (fixed, and MORE's adaptive ones)."""
    loss = bt_loss(out_c["reward"], out_r["reward"], batch.get("margin"))
    if more and "dataset" in batch:
        loss = loss * more_weights(out_c["features"], out_r["features"], out_c["reward"], out_r["reward"],
                                   batch["dataset"], batch.get("margin"))
    if "dataset_weight" in batch:
        loss = loss * batch["dataset_weight"]
    return loss


def gaussian_pair_loss(out_c: dict, out_r: dict, batch: dict, kl_weight: float = 0.0) -> torch.Tensor:
    loss = gaussian_bt_loss(out_c["reward"], out_c["std"], out_r["reward"], out_r["std"], kl_weight)
    return loss * batch["dataset_weight"] if "dataset_weight" in batch else loss


def attribute_loss(out: dict, batch: dict) -> torch.Tensor:
    # regress in the head's unit scale so that attributes rated on different scales weigh alike
    scale = out["scale"] if "scale" in out else 1.0
    return rating_loss(out["attributes"] / scale, batch["ratings"] / scale, batch["rating_mask"])


def step_loss(out: dict, batch: dict) -> torch.Tensor:
    return step_bce_loss(out["step_logits"], batch["step_labels"], out["step_row"], batch["n_rows"])


register_reward_kind("bt", ScalarHead, bt_pair_loss, "pairs", "1706.03741",
                     "Bradley-Terry scalar reward; optional margin; several datasets with fixed or MORE weights")
register_reward_kind("multi_objective", VectorHead, attribute_loss, "ratings", "2402.18571",
                     "attribute scores regressed on multi-aspect ratings; reward = v . r for a direction v (DPA)")
register_reward_kind("pearl", GaussianHead, gaussian_pair_loss, "pairs", "2306.03615",
                     "Gaussian reward mean and std; P(a > b) = Phi((mu_a - mu_b) / sqrt(s_a^2 + s_b^2))")
register_reward_kind("prm", StepHead, step_loss, "steps", "2412.15904",
                     "process reward: a good/bad logit per reasoning step, BCE at each step's last token")
register_reward_kind("gpm", GPMHead, gpm_pair_loss, "pairs", "2410.02197",
                     "general preference model: unit embeddings, skew-symmetric P(a > b); captures cyclic preferences")
register_reward_kind("pal", PALHead, pal_pair_loss, "pairs", "2406.08469",
                     "pluralistic: ideal-point mixture of K prototypes with per-user weights (pairs need user_id)")
