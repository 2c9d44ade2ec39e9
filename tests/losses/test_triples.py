"""TPO and TPO-L (arXiv:2405.16681): golden values, reductions, gradients, stability."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prefalign.losses import get_objective, pairwise_loss
from prefalign.types import SeqLogps


def softplus_neg(x: float) -> float:
    """-log sigmoid(x) = log(1 + exp(-x)), written with math only."""
    return math.log1p(math.exp(-x)) if x > -30 else -x + math.log1p(math.exp(x))


def triples(policy, n_tokens, dtype=torch.float64, requires_grad=False) -> SeqLogps:
    p = torch.tensor(policy, dtype=dtype, requires_grad=requires_grad)
    return SeqLogps(policy=p, n_tokens=torch.tensor(n_tokens, dtype=dtype))


def test_golden_tpo():
    """Columns (gold, chosen, rejected); loss = -ls(beta (lp_w - lp_l)) + alpha * (-lp_gold / |gold|).

    Example 0, beta = 0.5, alpha = 1: policy (-4, -10, -12), lengths (2, 5, 4)
      preference = -ls(0.5 * (-10 + 12)) = log(1 + e^-1) = 0.31326168751822286
      nll = 4 / 2 = 2                                   -> 2.31326168751822286
    Example 1: policy (-6, -3, -5), lengths (3, 1, 1)
      preference = -ls(0.5 * 2) = 0.31326168751822286; nll = 6 / 3 = 2  -> 2.31326168751822286
    Defaults (beta = 0.01, alpha = 1) on example 1: -ls(0.02) = log(1 + e^-0.02) = 0.6831971797266342,
      + 2 -> 2.6831971797266342.
    rewards = beta * policy.
    """
    batch = triples([[-4.0, -10.0, -12.0], [-6.0, -3.0, -5.0]], [[2, 5, 4], [3, 1, 1]])
    out = get_objective("tpo")(batch, beta=0.5, alpha=1.0)
    torch.testing.assert_close(out.per_example, torch.tensor([2.31326168751822286] * 2, dtype=torch.float64))
    torch.testing.assert_close(out.rewards, 0.5 * batch.policy)
    torch.testing.assert_close(out.extras["nll"], torch.tensor(2.0, dtype=torch.float64))
    preference = torch.tensor(0.31326168751822286, dtype=torch.float64)
    torch.testing.assert_close(out.extras["preference"], preference)

    default = get_objective("tpo")(triples([[-6.0, -3.0, -5.0]], [[3, 1, 1]]))
    torch.testing.assert_close(default.per_example, torch.tensor([2.6831971797266342], dtype=torch.float64))


def test_golden_tpo_l():
    """Mean token log-probs m = lp / |y|; loss = -ls(beta (m_w - m_l) - gamma) + alpha * (-m_gold).

    Defaults beta = 2, gamma = 1.6, alpha = 1.
    Example 0: policy (-4, -10, -12), lengths (2, 5, 4) -> m = (-2, -2, -3)
      2 * (-2 + 3) - 1.6 = 0.4; -ls(0.4) = log(1 + e^-0.4) = 0.5130152523999526; nll = 2
      -> 2.5130152523999526
    Example 1: policy (-3, -6, -2), lengths (1, 3, 4) -> m = (-3, -2, -0.5)
      2 * (-2 + 0.5) - 1.6 = -4.6; -ls(-4.6) = 4.6 + log(1 + e^-4.6) = 4.610001652055652; nll = 3
      -> 7.610001652055652
    rewards = beta * m.
    """
    batch = triples([[-4.0, -10.0, -12.0], [-3.0, -6.0, -2.0]], [[2, 5, 4], [1, 3, 4]])
    out = get_objective("tpo_l")(batch)
    expected = torch.tensor([2.5130152523999526, 7.610001652055652], dtype=torch.float64)
    torch.testing.assert_close(out.per_example, expected)
    rewards = torch.tensor([[-4.0, -4.0, -6.0], [-6.0, -4.0, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(out.rewards, rewards)
    torch.testing.assert_close(out.extras["nll"], torch.tensor(2.5, dtype=torch.float64))


def random_triples(b=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    policy = -torch.rand(b, 3, generator=g, dtype=dtype) * 40
    n_tokens = torch.randint(1, 30, (b, 3), generator=g).to(dtype)
    return policy, n_tokens


def test_tpo_matches_independent_formula():
    """Per example, with math only: -ls(beta (w - l)) + alpha * (-g / |g|)."""
    policy, n_tokens = random_triples()
    beta, alpha = 0.3, 0.7
    out = get_objective("tpo")(SeqLogps(policy=policy, n_tokens=n_tokens), beta=beta, alpha=alpha)
    for i, (g, w, lo) in enumerate(policy.tolist()):
        expected = softplus_neg(beta * (w - lo)) + alpha * (-g / n_tokens[i, 0].item())
        assert out.per_example[i].item() == pytest.approx(expected, rel=1e-12)


def test_tpo_l_matches_independent_formula():
    policy, n_tokens = random_triples(seed=1)
    beta, gamma, alpha = 2.5, 0.3, 0.05
    batch = SeqLogps(policy=policy, n_tokens=n_tokens)
    out = get_objective("tpo_l")(batch, beta=beta, gamma=gamma, alpha=alpha)
    for i in range(policy.shape[0]):
        g, w, lo = (policy[i, k].item() / n_tokens[i, k].item() for k in range(3))
        expected = softplus_neg(beta * (w - lo) - gamma) + alpha * (-g)
        assert out.per_example[i].item() == pytest.approx(expected, rel=1e-12)


def test_tpo_alpha_zero_is_reference_free_dpo():
    """The paper's preference term is DPO with r = beta log pi, i.e. DPO against a uniform
    reference (zero reference log-probs): check via the registry and via pairwise_loss."""
    policy, n_tokens = random_triples(seed=2)
    beta = 0.2
    tpo = get_objective("tpo")(SeqLogps(policy=policy, n_tokens=n_tokens), beta=beta, alpha=0.0)
    pairs = policy[:, 1:]
    dpo = get_objective("dpo")(SeqLogps(policy=pairs, reference=torch.zeros_like(pairs)), beta=beta)
    torch.testing.assert_close(tpo.per_example, dpo.per_example)
    zeros = torch.zeros(policy.shape[0], dtype=policy.dtype)
    functional = pairwise_loss("dpo", policy[:, 1], policy[:, 2], zeros, zeros, beta=beta)
    torch.testing.assert_close(tpo.per_example, functional)


def test_tpo_alpha_scales_gold_nll_only():
    policy, n_tokens = random_triples(seed=3)
    batch = SeqLogps(policy=policy, n_tokens=n_tokens)
    for name in ("tpo", "tpo_l"):
        obj = get_objective(name)
        diff = obj(batch, alpha=2.0).per_example - obj(batch, alpha=0.0).per_example
        torch.testing.assert_close(diff, 2.0 * (-policy[:, 0] / n_tokens[:, 0]))


def test_tpo_l_gamma_zero_unit_lengths_is_tpo():
    policy, _ = random_triples(seed=4)
    batch = SeqLogps(policy=policy, n_tokens=torch.ones_like(policy))
    a = get_objective("tpo_l")(batch, beta=0.4, gamma=0.0, alpha=0.5)
    b = get_objective("tpo")(batch, beta=0.4, alpha=0.5)
    torch.testing.assert_close(a.per_example, b.per_example)


def test_tpo_l_alpha_zero_is_simpo_formula():
    """TPO-L without its NLL term is SimPO: -ls(beta/|w| lp_w - beta/|l| lp_l - gamma)."""
    policy, n_tokens = random_triples(seed=5)
    beta, gamma = 2.0, 1.6
    batch = SeqLogps(policy=policy, n_tokens=n_tokens)
    out = get_objective("tpo_l")(batch, beta=beta, gamma=gamma, alpha=0.0)
    m = policy / n_tokens
    torch.testing.assert_close(out.per_example, -F.logsigmoid(beta * (m[:, 1] - m[:, 2]) - gamma))
    pairs = SeqLogps(policy=policy[:, 1:], n_tokens=n_tokens[:, 1:])
    torch.testing.assert_close(out.per_example, get_objective("simpo")(pairs, beta=beta, gamma=gamma).per_example)
    functional = pairwise_loss("simpo", policy[:, 1], policy[:, 2], beta=beta, gamma=gamma,
                               chosen_lengths=n_tokens[:, 1], rejected_lengths=n_tokens[:, 2])
    torch.testing.assert_close(out.per_example, functional)


def test_tpo_with_gold_equal_to_chosen_is_cpo():
    """When the gold response is the chosen one, TPO is CPO with lambda = alpha (both are
    reference-free DPO plus a per-token NLL on the best response)."""
    cpo = get_objective("cpo")
    policy, n_tokens = random_triples(seed=10)
    policy[:, 0], n_tokens[:, 0] = policy[:, 1], n_tokens[:, 1]
    tpo = get_objective("tpo")(SeqLogps(policy=policy, n_tokens=n_tokens), beta=0.1, alpha=0.6)
    pairs = SeqLogps(policy=policy[:, 1:], n_tokens=n_tokens[:, 1:])
    torch.testing.assert_close(tpo.per_example, cpo(pairs, beta=0.1, lam=0.6).per_example)


@pytest.mark.parametrize("name", ["tpo", "tpo_l"])
def test_swapping_chosen_and_rejected_flips_margin(name):
    """Swapping columns 1 and 2 negates the reward margin, and the preference term obeys
    -ls(x) - (-ls(-x)) = -x (x = beta * margin, less gamma for TPO-L)."""
    policy, n_tokens = random_triples(seed=6)
    batch = SeqLogps(policy=policy, n_tokens=n_tokens)
    swapped = SeqLogps(policy=policy[:, [0, 2, 1]], n_tokens=n_tokens[:, [0, 2, 1]])
    obj = get_objective(name)
    params = {"alpha": 0.0, "beta": 0.3} | ({"gamma": 0.0} if name == "tpo_l" else {})
    a, b = obj(batch, **params), obj(swapped, **params)
    margin = a.rewards[:, 1] - a.rewards[:, 2]
    torch.testing.assert_close(b.rewards[:, 1] - b.rewards[:, 2], -margin)
    torch.testing.assert_close(a.per_example - b.per_example, -margin)


@pytest.mark.parametrize("name", ["tpo", "tpo_l"])
def test_gradcheck(name):
    policy, n_tokens = random_triples(b=3, seed=7)
    obj = get_objective(name)

    def fn(p):
        return obj(SeqLogps(policy=p, n_tokens=n_tokens), beta=0.7, alpha=0.5).per_example

    assert torch.autograd.gradcheck(fn, (policy.clone().requires_grad_(),))


@pytest.mark.parametrize("name", ["tpo", "tpo_l"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stable_at_large_log_ratios(name, dtype):
    values = [[-1e3, -1e3, 0.0], [-1.0, 0.0, -1e3], [-1e3, -2e3, -1e3]]
    policy = torch.tensor(values, dtype=dtype, requires_grad=True)
    n_tokens = torch.ones(3, 3, dtype=dtype)
    out = get_objective(name)(SeqLogps(policy=policy, n_tokens=n_tokens), beta=1.0)
    assert torch.isfinite(out.per_example).all()
    out.per_example.sum().backward()
    assert torch.isfinite(policy.grad).all()


@pytest.mark.parametrize("name", ["tpo", "tpo_l"])
def test_examples_do_not_couple(name):
    policy, n_tokens = random_triples(seed=8)
    obj = get_objective(name)
    assert obj.couples_batch is False
    changed = policy.clone()
    changed[1:] -= 7.0
    a = obj(SeqLogps(policy=policy, n_tokens=n_tokens)).per_example
    b = obj(SeqLogps(policy=changed, n_tokens=n_tokens)).per_example
    assert a[0] == b[0]


@pytest.mark.parametrize("name", ["tpo", "tpo_l"])
def test_registry_entry(name):
    obj = get_objective(name)
    assert obj.kind == "listwise" and obj.paper == "2405.16681"
    assert obj.needs_reference is False and "gold" in obj.features
    assert obj.params["alpha"] == 1.0
    assert obj.params["beta"] == (0.01 if name == "tpo" else 2.0)
    policy, n_tokens = random_triples(seed=9)
    with_ref = SeqLogps(policy=policy, reference=policy * 0.5, n_tokens=n_tokens)
    without_ref = SeqLogps(policy=policy, n_tokens=n_tokens)
    torch.testing.assert_close(obj(with_ref).per_example, obj(without_ref).per_example)


@pytest.mark.parametrize("name", ["tpo", "tpo_l"])
def test_needs_three_columns_and_lengths(name):
    with pytest.raises(ValueError, match="3 responses"):
        get_objective(name)(SeqLogps(policy=torch.zeros(2, 2), n_tokens=torch.ones(2, 2)))
    with pytest.raises(ValueError, match="lengths"):
        get_objective(name)(SeqLogps(policy=torch.zeros(2, 3)))
