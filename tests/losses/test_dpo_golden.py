"""DPO and SFT against hand-computed values and gradients; registry-wide contracts."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

from prefalign.losses import OBJECTIVES, available, get_objective, pairwise_loss
from prefalign.types import SeqLogps


def test_golden_dpo():
    """h_w = -10 - (-11) = 1, h_l = -12 - (-11) = -1, d = 2, beta = 0.5: loss = -ln sigmoid(1) = 0.31326.
    Gradient w.r.t. policy_chosen: -beta * sigmoid(-beta d) = -0.5 * 0.26894 = -0.13447; rejected: +0.13447.
    Label smoothing 0.1: 0.9 * 0.31326 + 0.1 * (-ln sigmoid(-1) = 1.31326) = 0.41326."""
    pc = torch.tensor([-10.0], requires_grad=True)
    pr = torch.tensor([-12.0], requires_grad=True)
    rc, rr = torch.tensor([-11.0]), torch.tensor([-11.0])
    loss = pairwise_loss("dpo", pc, pr, rc, rr, beta=0.5)
    assert loss.item() == pytest.approx(0.313262, abs=1e-6)
    loss.sum().backward()
    assert pc.grad.item() == pytest.approx(-0.134470, abs=1e-6)
    assert pr.grad.item() == pytest.approx(0.134470, abs=1e-6)
    smoothed = pairwise_loss("dpo", pc, pr, rc, rr, beta=0.5, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(0.9 * 0.313262 + 0.1 * 1.313262, abs=1e-6)


def test_dpo_is_ln2_at_reference_and_rewards_are_beta_logratio():
    batch = SeqLogps(policy=torch.tensor([[-3.0, -4.0]]), reference=torch.tensor([[-3.0, -4.0]]))
    out = get_objective("dpo")(batch, beta=0.2)
    assert out.per_example.item() == pytest.approx(math.log(2))
    batch = SeqLogps(policy=torch.tensor([[-3.0, -4.0]]), reference=torch.tensor([[-4.0, -4.0]]))
    assert get_objective("dpo")(batch, beta=0.2).rewards[0].tolist() == pytest.approx([0.2, 0.0])


def test_golden_sft():
    """Chosen -6 over 3 tokens: NLL per token 2.0; the rejected column is ignored."""
    batch = SeqLogps(policy=torch.tensor([[-6.0, -1.0]]), n_tokens=torch.tensor([[3.0, 1.0]]))
    assert get_objective("sft")(batch).per_example.item() == pytest.approx(2.0)


def test_registry_lists_every_objective_with_a_summary_and_paper():
    names = available()
    assert {"dpo", "sft"} <= set(names)
    for name, obj in OBJECTIVES.items():
        assert obj.summary, f"{name} has no one-line docstring summary"
        assert obj.paper or obj.kind == "sft", f"{name} cites no arXiv id"


def test_unknown_objective_and_param_suggest_names():
    with pytest.raises(KeyError, match="Did you mean dpo"):
        get_objective("dpoo")
    with pytest.raises(TypeError, match="did you mean 'label_smoothing'"):
        get_objective("dpo")(SeqLogps(policy=torch.zeros(1, 2), reference=torch.zeros(1, 2)), label_smoothin=0.1)


def golden_tested() -> set[str]:
    names = set()
    for path in Path(__file__).parent.glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_golden_"):
                names.add(node.name.removeprefix("test_golden_"))
    return names


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_registered_objective_has_a_golden_test(name):
    assert name in golden_tested(), f"objective {name!r} has no test_golden_{name} in tests/losses/"
