"""The family interface: a toy categorical family's DPO loss and gradient through FamilyTrainee
equal the hand-written formula, and objectives a family cannot feed are refused before training."""

from __future__ import annotations

import math

import pytest
import torch

from prefalign.families.base import FamilyTrainee, check_trainable
from prefalign.losses import get_objective


class Unwrap:
    def unwrap_model(self, m):
        return m


class Categorical(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits))


class ToyFamily:
    name, kinds = "toy", ("pairwise",)

    def make_batch(self, examples, indices, split):
        ids = torch.tensor([examples[i] for i in indices])
        return {"samples": ids, "attention_mask": torch.ones_like(ids)}

    def score(self, module, batch, generator_seed):
        return torch.log_softmax(module.logits, 0)[batch["samples"]]


def test_family_trainee_dpo_matches_the_formula_with_gradient():
    policy, reference = Categorical([0.3, -0.2, 0.5, 0.0]), Categorical([0.0, 0.1, -0.4, 0.2])
    beta = 0.25
    trainee = FamilyTrainee(Unwrap(), ToyFamily(), policy, reference, get_objective("dpo"), {"beta": beta})
    examples = [(0, 1), (2, 3)]
    per_example, metrics = trainee.loss(trainee.make_batch(examples, [0, 1], "train"))
    per_example.sum().backward()

    lp = [v - math.log(sum(math.exp(x) for x in [0.3, -0.2, 0.5, 0.0])) for v in [0.3, -0.2, 0.5, 0.0]]
    lr = [v - math.log(sum(math.exp(x) for x in [0.0, 0.1, -0.4, 0.2])) for v in [0.0, 0.1, -0.4, 0.2]]
    expected, grad = [], [0.0] * 4
    p = [math.exp(v) for v in lp]
    for w, lo in examples:
        z = beta * ((lp[w] - lr[w]) - (lp[lo] - lr[lo]))
        expected.append(math.log1p(math.exp(-z)))
        dz = -1 / (1 + math.exp(z))  # d loss / d z
        for j in range(4):  # d lp[i] / d logit[j] = 1[i=j] - p[j]
            grad[j] += dz * beta * ((j == w) - (j == lo))
    assert per_example.detach().tolist() == pytest.approx(expected, rel=1e-6)
    assert policy.logits.grad.tolist() == pytest.approx(grad, abs=1e-6)
    assert sum(p) == pytest.approx(1.0)
    assert reference.logits.grad is None


def test_a_family_refuses_objectives_it_cannot_feed():
    with pytest.raises(ValueError, match="kinds"):
        check_trainable(ToyFamily(), get_objective("kto"))
    with pytest.raises(ValueError, match="features"):
        ToyFamily.kinds = ("pairwise", "token_level")
        try:
            check_trainable(ToyFamily(), get_objective("sparsepo"))
        finally:
            ToyFamily.kinds = ("pairwise",)


def test_a_family_without_config_training_is_refused_with_the_way_to_use_it():
    from prefalign.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="does not train from a config file.*prefalign reproduce"):
        load_config(None, ["family=trajectory", "model=x", "data.train=x.jsonl"])
