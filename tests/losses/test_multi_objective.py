"""MODPO (arXiv:2310.03708): golden values, reduction to DPO, margin sign, gradients, stability."""

from __future__ import annotations

import math

import pytest
import torch

from prefalign.losses import OBJECTIVES, get_objective, pairwise_loss
from prefalign.types import SeqLogps

F64 = torch.float64


def t(values, requires_grad=False) -> torch.Tensor:
    return torch.tensor(values, dtype=F64, requires_grad=requires_grad)


def neg_logsigmoid(x: float) -> float:
    return math.log1p(math.exp(-x)) if x > -30 else -x + math.log1p(math.exp(x))


def pairs(margins, requires_grad=False) -> SeqLogps:
    return SeqLogps(policy=t([[-1.0, -3.0], [-6.0, -5.0], [-2.0, -2.0]], requires_grad=requires_grad),
                    reference=t([[-2.0, -2.0], [-7.0, -4.0], [-2.0, -2.0]]),
                    features={"reward_margins": t(margins)})


def test_golden_modpo():
    """loss = -log sig( (beta d - w_rest . margins) / w_1 ), d = h_w - h_l.

    Row 1: h = (1, -1), d = 2, beta = 0.1 -> beta d = 0.2.
      weights (0.6, 0.4), margin -0.5: (0.2 - 0.4 * -0.5) / 0.6 = 0.4 / 0.6 = 2/3
      -log sig(2/3) = log(1 + e^{-2/3}) = 0.41437008685207205
    Row 1 with weights (0.5, 0.3, 0.2), margins (1, -2): w_rest . m = 0.3 - 0.4 = -0.1;
      (0.2 + 0.1) / 0.5 = 0.6 -> log(1 + e^-0.6) = 0.4374879504858856
    rewards = beta * h; extras margin_penalty = mean(w_rest . m / w_1).
    """
    b = SeqLogps(policy=t([[-1.0, -3.0]]), reference=t([[-2.0, -2.0]]), features={"reward_margins": t([[-0.5]])})
    out = get_objective("modpo")(b, beta=0.1, weights=(0.6, 0.4))
    torch.testing.assert_close(out.per_example, t([0.41437008685207205]))
    torch.testing.assert_close(out.rewards, t([[0.1, -0.1]]))
    torch.testing.assert_close(out.extras["margin_penalty"], t(0.4 * -0.5 / 0.6))

    b2 = SeqLogps(policy=t([[-1.0, -3.0]]), reference=t([[-2.0, -2.0]]),
                  features={"reward_margins": t([[1.0, -2.0]])})
    out2 = get_objective("modpo")(b2, beta=0.1, weights=(0.5, 0.3, 0.2))
    torch.testing.assert_close(out2.per_example, t([0.4374879504858856]))


def test_with_only_the_first_objective_it_is_dpo():
    """weights = (1, 0): the other rewards drop out and MODPO is DPO, bit for bit."""
    b = pairs([[0.7], [-3.0], [2.0]])
    expected = get_objective("dpo")(b, beta=0.2).per_example
    got = get_objective("modpo")(b, beta=0.2, weights=(1.0, 0.0)).per_example
    assert torch.equal(got, expected)
    args = (b.policy[:, 0], b.policy[:, 1], b.reference[:, 0], b.reference[:, 1])
    via_api = pairwise_loss("modpo", *args, beta=0.2, weights=(1.0, 0.0), features={"reward_margins": t([[0.7]] * 3)})
    assert torch.equal(via_api, pairwise_loss("dpo", *args, beta=0.2))
    # No other objective at all (M = 0, weights = (1,)) is DPO too.
    none = SeqLogps(policy=b.policy, reference=b.reference, features={"reward_margins": torch.zeros(3, 0, dtype=F64)})
    assert torch.equal(get_objective("modpo")(none, beta=0.2, weights=(1.0,)).per_example, expected)


def test_at_policy_equal_reference_and_zero_margins_the_loss_is_ln2():
    b = pairs([[0.0], [0.0], [0.0]])
    out = get_objective("modpo")(b).per_example
    torch.testing.assert_close(out[2], t(math.log(2.0)))


def test_swapping_chosen_and_rejected_flips_the_logit():
    """Swapping the pair (and so negating r_rest(w) - r_rest(l)) negates the logit."""
    b = pairs([[0.7], [-3.0], [2.0]])
    swapped = SeqLogps(policy=b.policy.flip(1), reference=b.reference.flip(1),
                       features={"reward_margins": -b.features["reward_margins"]})
    h = (b.policy - b.reference).detach()
    logits = [(0.1 * (hw - hl) - 0.5 * m) / 0.5 for (hw, hl), (m,) in zip(h.tolist(), [[0.7], [-3.0], [2.0]])]
    obj = get_objective("modpo")
    torch.testing.assert_close(obj(b).per_example, t([neg_logsigmoid(x) for x in logits]))
    torch.testing.assert_close(obj(swapped).per_example, t([neg_logsigmoid(-x) for x in logits]))


def test_higher_margin_of_the_other_reward_lowers_the_pressure():
    """A chosen response already favoured by the other rewards needs less policy margin (w_2 > 0)."""
    obj = get_objective("modpo")
    low = obj(pairs([[0.0]] * 3)).per_example
    high = obj(pairs([[-1.0]] * 3)).per_example
    assert torch.all(high < low)


def test_bad_weights_are_clear_errors():
    b = pairs([[0.0], [0.0], [0.0]])
    with pytest.raises(ValueError, match="reward_margins of shape"):
        get_objective("modpo")(b, weights=(0.5, 0.3, 0.2))
    with pytest.raises(ValueError, match="must be > 0"):
        get_objective("modpo")(b, weights=(0.0, 1.0))
    with pytest.raises(ValueError, match="reward_margins"):
        get_objective("modpo")(SeqLogps(policy=b.policy, reference=b.reference))


def test_gradcheck():
    b = pairs([[0.7], [-3.0], [2.0]], requires_grad=True)
    margins = b.features["reward_margins"].clone().requires_grad_(True)

    def f(policy, m):
        return get_objective("modpo")(SeqLogps(policy=policy, reference=b.reference,
                                               features={"reward_margins": m}), weights=(0.6, 0.4)).per_example

    assert torch.autograd.gradcheck(f, (b.policy, margins))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_large_log_ratios_stay_finite(sign):
    policy = t([[sign * 1e3, -sign * 1e3], [-sign * 1e3, sign * 1e3]], requires_grad=True)
    b = SeqLogps(policy=policy, reference=torch.zeros(2, 2, dtype=F64),
                 features={"reward_margins": t([[1e3], [-1e3]])})
    out = get_objective("modpo")(b, beta=1.0).per_example
    assert torch.isfinite(out).all()
    (grad,) = torch.autograd.grad(out.sum(), policy)
    assert torch.isfinite(grad).all()


def test_registry_entry():
    entry = OBJECTIVES["modpo"]
    assert entry.kind == "multi_objective" and entry.needs_reference and not entry.couples_batch
    assert entry.features == ("reward_margins",)
    assert entry.params == {"beta": 0.1, "weights": (0.5, 0.5)}
