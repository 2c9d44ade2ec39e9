"""D2O (arXiv:2403.03419): golden values, K = 1 reduction to DPO, layout, gradients, stability."""

from __future__ import annotations

import math

import pytest
import torch

from prefalign.losses import OBJECTIVES, get_objective
from prefalign.types import SeqLogps

F64 = torch.float64


def t(values, requires_grad=False) -> torch.Tensor:
    return torch.tensor(values, dtype=F64, requires_grad=requires_grad)


def neg_logsigmoid(x: float) -> float:
    return math.log1p(math.exp(-x)) if x > -30 else -x + math.log1p(math.exp(x))


def negatives(requires_grad=False, scale=1.0) -> SeqLogps:
    """Row 1: negative + 2 samples; row 2: negative + 1 sample + padding (NaN)."""
    return SeqLogps(
        policy=t([[-8.0 * scale, -7.0 * scale, -11.0 * scale], [-6.0 * scale, -1.0 * scale, float("nan")]],
                 requires_grad=requires_grad),
        reference=t([[-10.0, -10.0, -10.0], [-5.0, -5.0, 0.0]]),
        target=t([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]),
        valid=torch.tensor([[True, True, True], [True, True, False]]),
    )


def test_golden_d2o():
    """loss = -log sig( beta * mean_i h(y_i) - alpha * h(l) ), beta = 0.1, alpha = 0.2.

    Row 1: h = policy - reference = (2 | 3, -1): mean sample h = 1; 0.1 * 1 - 0.2 * 2 = -0.3
      -log sig(-0.3) = log(1 + e^0.3) = 0.8543552444685272
    Row 2: h = (-1 | 4, pad): 0.1 * 4 - 0.2 * -1 = 0.6; log(1 + e^-0.6) = 0.4374879504858856
    rewards = beta * h (0 at padding); extras: means of the sample / negative log-ratios:
      sample (1 + 4) / 2 = 2.5, negative (2 - 1) / 2 = 0.5.
    """
    out = get_objective("d2o")(negatives(), beta=0.1, alpha=0.2)
    torch.testing.assert_close(out.per_example, t([0.8543552444685272, 0.4374879504858856]))
    torch.testing.assert_close(out.rewards, t([[0.2, 0.3, -0.1], [-0.1, 0.4, 0.0]]))
    torch.testing.assert_close(out.extras["sample_logratio"], t(2.5))
    torch.testing.assert_close(out.extras["negative_logratio"], t(0.5))


def test_one_sample_and_alpha_equal_beta_is_dpo():
    """K = 1, alpha = beta: -log sig(beta (h(y_1) - h(l))) = DPO with the sample as chosen."""
    policy, reference = t([[-6.0, -1.0], [-3.0, -4.0]]), t([[-5.0, -5.0], [-3.5, -3.0]])
    layout = SeqLogps(policy=policy, reference=reference, target=t([[0.0, 1.0]] * 2))
    as_pair = SeqLogps(policy=policy.flip(1), reference=reference.flip(1))
    expected = get_objective("dpo")(as_pair, beta=0.3).per_example
    torch.testing.assert_close(get_objective("d2o")(layout, beta=0.3, alpha=0.3).per_example, expected)


def test_samples_enter_through_their_mean():
    """K identical samples give the same loss as one; the negative column may sit anywhere."""
    one = SeqLogps(policy=t([[-6.0, -1.0]]), reference=t([[-5.0, -5.0]]), target=t([[0.0, 1.0]]))
    three = SeqLogps(policy=t([[-1.0, -6.0, -1.0, -1.0]]), reference=t([[-5.0, -5.0, -5.0, -5.0]]),
                     target=t([[1.0, 0.0, 1.0, 1.0]]))
    obj = get_objective("d2o")
    torch.testing.assert_close(obj(three).per_example, obj(one).per_example)


def test_policy_at_reference_gives_ln2():
    b = SeqLogps(policy=t([[-3.0, -4.0, -2.0]]), reference=t([[-3.0, -4.0, -2.0]]), target=t([[0.0, 1.0, 1.0]]))
    torch.testing.assert_close(get_objective("d2o")(b).per_example, t([math.log(2.0)]))


def test_swapping_the_roles_flips_the_logit():
    """With K = 1 and alpha = beta, marking the other column as the negative negates the logit."""
    policy, reference = t([[-6.0, -1.0]]), t([[-5.0, -5.0]])
    obj = get_objective("d2o")
    logit = 0.1 * (4.0 - (-1.0))
    a = obj(SeqLogps(policy=policy, reference=reference, target=t([[0.0, 1.0]]))).per_example
    b = obj(SeqLogps(policy=policy, reference=reference, target=t([[1.0, 0.0]]))).per_example
    torch.testing.assert_close(a, t([neg_logsigmoid(logit)]))
    torch.testing.assert_close(b, t([neg_logsigmoid(-logit)]))


def test_layout_errors_are_clear():
    obj = get_objective("d2o")
    no_negative = SeqLogps(policy=t([[-1.0, -2.0]]), reference=t([[-1.0, -2.0]]), target=t([[1.0, 1.0]]))
    with pytest.raises(ValueError, match="one negative"):
        obj(no_negative)
    no_target = SeqLogps(policy=t([[-1.0, -2.0, -3.0]]), reference=t([[-1.0, -2.0, -3.0]]))
    with pytest.raises(ValueError, match="target"):
        obj(no_target)


def test_padding_gets_no_gradient():
    b = negatives(requires_grad=True)
    out = get_objective("d2o")(b).per_example
    (grad,) = torch.autograd.grad(out.sum(), b.policy)
    assert torch.isfinite(grad).all() and grad[1, 2] == 0


def test_gradcheck():
    b = negatives(requires_grad=True)
    policy = b.policy.detach().clone()
    policy[1, 2] = 0.0
    policy.requires_grad_(True)

    def f(p):
        return get_objective("d2o")(SeqLogps(policy=p, reference=b.reference, target=b.target, valid=b.valid),
                                    beta=0.1, alpha=0.2).per_example

    assert torch.autograd.gradcheck(f, (policy,))


@pytest.mark.parametrize("scale", [150.0, -150.0])
def test_large_log_ratios_stay_finite(scale):
    b = negatives(requires_grad=True, scale=scale)
    out = get_objective("d2o")(b).per_example
    assert torch.isfinite(out).all()
    (grad,) = torch.autograd.grad(out.sum(), b.policy)
    assert torch.isfinite(grad).all()


def test_registry_entry():
    entry = OBJECTIVES["d2o"]
    assert entry.kind == "listwise" and entry.needs_reference and not entry.couples_batch
    assert entry.params == {"beta": 0.1, "alpha": 0.1}
