"""KTO (arXiv:2402.01306): golden values, the reference point z0, gradients, stability."""

from __future__ import annotations

import math

import pytest
import torch

from prefalign.losses import get_objective
from prefalign.features import SUPPLIERS
from prefalign.types import SeqLogps


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def unpaired(policy, reference, labels, kl, dtype=torch.float64) -> SeqLogps:
    as_col = lambda v: torch.tensor(v, dtype=dtype).reshape(-1, 1)  # noqa: E731
    return SeqLogps(policy=as_col(policy), reference=as_col(reference), target=as_col(labels),
                    features={"kl_logratio": torch.tensor(kl, dtype=dtype)})


def paper_kto(r: float, desirable: bool, z0: float, beta: float, lam_d: float, lam_u: float) -> float:
    """The paper's form, literally: lambda_y - v(x, y)."""
    if desirable:
        return lam_d - lam_d * sigmoid(beta * (r - z0))
    return lam_u - lam_u * sigmoid(beta * (z0 - r))


def test_golden_kto():
    """r = policy - reference; z0 = max(0, mean(kl_logratio)); loss = lambda_y - v.

    policy (-5, -7, -6.2), reference (-6, -6.5, -6), labels (1, 0, 1), kl_logratio (0.3, 0.5, 0.4)
      r = (1.0, -0.5, -0.2); z0 = max(0, 1.2 / 3) = 0.4
    Defaults beta = 0.1, lambda_D = lambda_U = 1:
      ex 0 desirable:   1 - sig(0.1 (1.0 - 0.4))  = 1 - sig(0.06)  = 0.48500449838059
      ex 1 undesirable: 1 - sig(0.1 (0.4 + 0.5))  = 1 - sig(0.09)  = 0.47751517520819986
      ex 2 desirable:   1 - sig(0.1 (-0.2 - 0.4)) = 1 - sig(-0.06) = 0.5149955016194101
    With lambda_U = 1.5: ex 1 becomes 1.5 * 0.47751517520819986 = 0.7162727628122998.
    rewards = beta * r = (0.1, -0.05, -0.02); extras["kl"] = z0 = 0.4.
    """
    batch = unpaired([-5.0, -7.0, -6.2], [-6.0, -6.5, -6.0], [1, 0, 1], [0.3, 0.5, 0.4])
    out = get_objective("kto")(batch)
    expected = torch.tensor([0.48500449838059, 0.47751517520819986, 0.5149955016194101], dtype=torch.float64)
    torch.testing.assert_close(out.per_example, expected)
    torch.testing.assert_close(out.rewards, torch.tensor([[0.1], [-0.05], [-0.02]], dtype=torch.float64))
    torch.testing.assert_close(out.extras["kl"], torch.tensor(0.4, dtype=torch.float64))

    weighted = get_objective("kto")(batch, undesirable_weight=1.5)
    torch.testing.assert_close(weighted.per_example[1], torch.tensor(0.7162727628122998, dtype=torch.float64))
    torch.testing.assert_close(weighted.per_example[[0, 2]], expected[[0, 2]])


def test_kto_matches_paper_form_on_random_data():
    g = torch.Generator().manual_seed(0)
    policy = -torch.rand(8, generator=g, dtype=torch.float64) * 50
    reference = policy + torch.randn(8, generator=g, dtype=torch.float64) * 3
    labels = (torch.rand(8, generator=g) > 0.5).double()
    kl = torch.randn(8, generator=g, dtype=torch.float64) + 0.5
    beta, lam_d, lam_u = 0.3, 1.0, 1.33
    batch = unpaired(policy.tolist(), reference.tolist(), labels.tolist(), kl.tolist())
    out = get_objective("kto")(batch, beta=beta, desirable_weight=lam_d, undesirable_weight=lam_u)
    z0 = max(0.0, sum(kl.tolist()) / 8)
    for i in range(8):
        r = policy[i].item() - reference[i].item()
        expected = paper_kto(r, labels[i].item() == 1, z0, beta, lam_d, lam_u)
        assert out.per_example[i].item() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_kto_at_the_reference_is_half_lambda():
    """policy == reference and no KL: r = z0 = 0, so v = lambda_y / 2 and the loss is lambda_y / 2."""
    batch = unpaired([-3.0, -4.0], [-3.0, -4.0], [1, 0], [0.0, 0.0])
    out = get_objective("kto")(batch, desirable_weight=1.0, undesirable_weight=3.0)
    torch.testing.assert_close(out.per_example, torch.tensor([0.5, 1.5], dtype=torch.float64))


def test_kto_reference_point_is_clamped_at_zero():
    """A negative KL estimate is clamped: z0 = max(0, mean) (the paper's estimator)."""
    negative = get_objective("kto")(unpaired([-1.0, -2.0], [-2.0, -1.0], [1, 0], [-3.0, -1.0]))
    zero = get_objective("kto")(unpaired([-1.0, -2.0], [-2.0, -1.0], [1, 0], [0.0, 0.0]))
    torch.testing.assert_close(negative.per_example, zero.per_example)
    assert negative.extras["kl"].item() == 0.0


def test_kto_scalar_reference_point_equals_vector_mean():
    vector = get_objective("kto")(unpaired([-1.0, -2.0], [-2.0, -1.0], [1, 0], [0.2, 1.0]))
    scalar = get_objective("kto")(unpaired([-1.0, -2.0], [-2.0, -1.0], [1, 0], 0.6))
    torch.testing.assert_close(vector.per_example, scalar.per_example)


def test_kto_reference_point_is_detached():
    """z0 is not back-propagated: no gradient reaches the mismatched-pair log-ratios."""
    policy = torch.tensor([[-1.0], [-2.0]], dtype=torch.float64, requires_grad=True)
    kl = torch.tensor([0.5, 0.7], dtype=torch.float64, requires_grad=True)
    batch = SeqLogps(policy=policy, reference=torch.tensor([[-1.5], [-1.5]], dtype=torch.float64),
                     target=torch.tensor([[1.0], [0.0]], dtype=torch.float64),
                     features={"kl_logratio": kl * 1.0})
    out = get_objective("kto")(batch)
    out.per_example.sum().backward()
    assert kl.grad is None and policy.grad is not None
    assert not out.extras["kl"].requires_grad and not out.rewards.requires_grad


def test_kto_couples_batch_through_the_reference_point():
    """Another example's mismatched pair moves z0 and so this example's loss; its policy does not."""
    obj = get_objective("kto")
    assert obj.couples_batch is True
    base = obj(unpaired([-1.0, -2.0], [-2.0, -1.0], [1, 0], [0.2, 1.0])).per_example
    other_kl = obj(unpaired([-1.0, -2.0], [-2.0, -1.0], [1, 0], [0.2, 3.0])).per_example
    other_policy = obj(unpaired([-1.0, -9.0], [-2.0, -1.0], [1, 0], [0.2, 1.0])).per_example
    assert other_kl[0] != base[0]
    assert other_policy[0] == base[0]


def test_kto_flipping_the_label_mirrors_the_loss():
    """With lambda_D = lambda_U = lam: loss(desirable) + loss(undesirable) = lam, since
    sig(-beta (r - z0)) + sig(beta (r - z0)) = 1; the signed gap r - z0 changes sign in the loss."""
    policy, reference, kl = [-1.0, -5.0, -2.0], [-2.0, -4.0, -2.0], [0.1, 0.2, 0.3]
    a = get_objective("kto")(unpaired(policy, reference, [1, 1, 0], kl), beta=0.5,
                             desirable_weight=2.0, undesirable_weight=2.0)
    b = get_objective("kto")(unpaired(policy, reference, [0, 0, 1], kl), beta=0.5,
                             desirable_weight=2.0, undesirable_weight=2.0)
    torch.testing.assert_close(a.per_example + b.per_example, torch.full((3,), 2.0, dtype=torch.float64))
    torch.testing.assert_close(a.rewards, b.rewards)


def test_kto_zero_weight_silences_that_label():
    out = get_objective("kto")(unpaired([-1.0, -2.0], [-2.0, -1.0], [1, 0], [0.2, 1.0]), desirable_weight=0.0)
    assert out.per_example[0].item() == 0.0 and out.per_example[1].item() > 0.0


def test_gradcheck_kto():
    g = torch.Generator().manual_seed(1)
    policy = (-torch.rand(4, 1, generator=g, dtype=torch.float64) * 20).requires_grad_()
    reference = -torch.rand(4, 1, generator=g, dtype=torch.float64) * 20
    target = torch.tensor([[1.0], [0.0], [0.0], [1.0]], dtype=torch.float64)
    kl = torch.tensor([0.3, -0.1, 0.8, 0.2], dtype=torch.float64)

    def fn(p):
        batch = SeqLogps(policy=p, reference=reference, target=target, features={"kl_logratio": kl})
        return get_objective("kto")(batch, beta=0.5, undesirable_weight=1.3).per_example

    assert torch.autograd.gradcheck(fn, (policy,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kto_stable_at_large_log_ratios(dtype):
    policy = torch.tensor([[0.0], [-2e3], [0.0], [-2e3]], dtype=dtype, requires_grad=True)
    reference = torch.tensor([[-1e3], [-1e3], [-1e3], [-1e3]], dtype=dtype)
    target = torch.tensor([[1.0], [1.0], [0.0], [0.0]], dtype=dtype)
    batch = SeqLogps(policy=policy, reference=reference, target=target,
                     features={"kl_logratio": torch.tensor([1e3, -1e3, 1e3, 1e3], dtype=dtype)})
    out = get_objective("kto")(batch, beta=1.0)
    assert torch.isfinite(out.per_example).all()
    out.per_example.sum().backward()
    assert torch.isfinite(policy.grad).all()


def test_kto_registry_entry_and_errors():
    obj = get_objective("kto")
    assert obj.kind == "unpaired" and obj.paper == "2402.01306" and obj.needs_reference
    assert obj.params == {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0}
    assert {"unpaired", "kl_logratio"} <= set(obj.features) and "kl_logratio" in SUPPLIERS
    batch = unpaired([-1.0], [-2.0], [1], [0.0])
    with pytest.raises(ValueError, match="kl_logratio"):
        obj(SeqLogps(policy=batch.policy, reference=batch.reference, target=batch.target))
    with pytest.raises(ValueError, match="unpaired"):
        obj(SeqLogps(policy=torch.zeros(2, 2), reference=torch.zeros(2, 2), features=batch.features))
    with pytest.raises(ValueError, match="reference"):
        obj(SeqLogps(policy=batch.policy, target=batch.target, features=batch.features))
