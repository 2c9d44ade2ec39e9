"""The trajectory family against independent computations: closed-form CliffWalking values, plain
value iteration, finite differences, and hand-written Bradley-Terry / DPO / PEARL losses."""

from __future__ import annotations

import math

import pytest
import torch

from prefalign.families import get_family
from prefalign.families.base import FamilyTrainee
from prefalign.families.trajectory import (GaussianReward, MLPReward, NoAccelerator, RewardTrainee, TabularPolicy,
                                           TabularReward, TrajectoryFamily, fit_reward, from_gymnasium,
                                           label_segments, make_pair, optimal_q, scaled_return, true_advantages)
from prefalign.losses import get_objective
from prefalign.types import SeqLogps

GAMMA = 0.9


@pytest.fixture(scope="module")
def cliff():
    return from_gymnasium("CliffWalking-v1", gamma=GAMMA)


@pytest.fixture(scope="module")
def lake():
    return from_gymnasium("FrozenLake-v1", gamma=GAMMA)


def value_iteration(T, R, gamma, iters=400):  # gamma^400 ~ 5e-19
    v = torch.zeros(T.shape[0], dtype=torch.float64)
    for _ in range(iters):
        v = (R + gamma * T @ v).max(1).values
    return R + gamma * T @ v


def test_cliff_optimal_value_is_the_13_step_path(cliff):
    # the only shortest path: up from the start, 11 steps right along row 2, down into the goal; -1 each
    q, greedy = optimal_q(cliff, cliff.R)
    assert q.max(1).values[cliff.start].item() == pytest.approx(-(1 - GAMMA ** 13) / (1 - GAMMA), rel=1e-10)
    assert get_family("trajectory") is TrajectoryFamily
    assert len(cliff.occupiable) == 37  # 48 cells less the 10 cliff cells and the goal
    assert scaled_return(cliff, greedy) == pytest.approx(1.0)


def test_optimal_q_equals_value_iteration_on_slippery_lake(lake):
    q, _ = optimal_q(lake, lake.R)
    assert torch.allclose(q, value_iteration(lake.T, lake.R, GAMMA), atol=1e-9)
    g = torch.Generator().manual_seed(0)
    r = torch.randn(lake.R.shape, generator=g, dtype=torch.float64)
    r[-1] = 0
    assert torch.allclose(optimal_q(lake, r)[0], value_iteration(lake.T, r, GAMMA), atol=1e-8)


def test_optimal_value_gradient_is_the_discounted_visits_of_the_optimal_path(cliff):
    reward = cliff.R.clone().requires_grad_(True)
    q, greedy = optimal_q(cliff, reward)
    q.max(1).values[cliff.start].backward()
    path = [(36, 0)] + [(24 + c, 1) for c in range(11)] + [(35, 2)]  # actions: 0 up, 1 right, 2 down
    expected = torch.zeros_like(cliff.R)
    for t, (s, a) in enumerate(path):
        expected[s, a] = GAMMA ** t
    # then the absorbing state forever (its first action is the greedy one among equal zeros)
    expected[-1, 0] = GAMMA ** 13 / (1 - GAMMA)
    assert torch.allclose(reward.grad, expected, atol=1e-12)


def test_regret_score_and_its_gradient(lake):
    """sum of the learned reward's optimal advantages, checked against value iteration and by
    finite differences (the optimum is unique for a random reward)."""
    fam = TrajectoryFamily(lake, "regret")
    pair = make_pair([([0, 4, 8], [1, 1, 2]), ([0, 1, 2], [2, 2, 1], [True, True, False])])
    batch = fam.make_batch([pair], [0], "train")
    g = torch.Generator().manual_seed(1)
    model = TabularReward(lake)
    with torch.no_grad():
        model.weight.copy_(torch.randn(model.weight.shape, generator=g, dtype=torch.float64))
    q = value_iteration(lake.T, model.table().detach(), GAMMA)
    adv = q - q.max(1, keepdim=True).values
    expected = [adv[0, 1] + adv[4, 1] + adv[8, 2], adv[0, 2] + adv[1, 2]]
    assert fam.score(model, batch, 0)[0].tolist() == pytest.approx([float(e) for e in expected], abs=1e-8)

    def loss_of(weight):
        model.weight.data.copy_(weight)
        return get_objective("bradley_terry")(SeqLogps(policy=fam.score(model, batch, 0))).per_example.sum()

    base = model.weight.detach().clone()
    loss = loss_of(base)
    model.weight.grad = None
    loss.backward()
    analytic = model.weight.grad.clone()
    eps = 1e-6
    for s, a in [(0, 1), (4, 1), (8, 2), (1, 2), (5, 0), (14, 2)]:
        bump = torch.zeros_like(base)
        bump[s, a] = eps
        numeric = (loss_of(base + bump).item() - loss_of(base - bump).item()) / (2 * eps)
        assert analytic[s, a].item() == pytest.approx(numeric, abs=1e-6)


def test_partial_return_through_family_trainee_matches_bradley_terry_by_hand(cliff):
    fam = TrajectoryFamily(cliff, "partial_return")
    model = TabularReward(cliff)
    with torch.no_grad():
        model.weight[24, 1], model.weight[36, 0], model.weight[25, 3] = 0.7, -0.2, 1.1
    pair = make_pair([([36, 24], [0, 1]), ([24, 25], [1, 3])])
    trainee = FamilyTrainee(NoAccelerator(), fam, model, None, get_objective("bradley_terry"), {})
    per_example, metrics = trainee.loss(fam.make_batch([pair], [0], "train"))
    per_example.sum().backward()
    z = (-0.2 + 0.7) - (0.7 + 1.1)
    assert per_example.item() == pytest.approx(math.log1p(math.exp(-z)))
    d = -1 / (1 + math.exp(z))  # d loss / d z
    assert model.weight.grad[36, 0].item() == pytest.approx(d)
    assert model.weight.grad[24, 1].item() == pytest.approx(0.0, abs=1e-12)  # in both segments once
    assert model.weight.grad[25, 3].item() == pytest.approx(-d)
    assert metrics["rewards/accuracy"][0].item() == 0.0  # the learned reward ranks this pair the wrong way


def test_pearl_gaussian_loss_is_bt_on_a_sampled_return_plus_kl(cliff):
    fam = TrajectoryFamily(cliff, "partial_return")
    model = GaussianReward(cliff)
    with torch.no_grad():
        model.mu[36, 0], model.log_sigma[36, 0], model.mu[24, 1] = 0.4, -0.5, -0.3
    pair = make_pair([([36], [0]), ([24], [1])])
    batch = fam.make_batch([pair], [0], "train")
    kl_weight = 0.1
    torch.manual_seed(7)
    per_example, _ = RewardTrainee(NoAccelerator(), fam, model, get_objective("bradley_terry"), {}, kl_weight).loss(batch)
    torch.manual_seed(7)
    drawn = int(torch.randint(0, 2**31 - 1, (1,)).item())  # the seed FamilyTrainee draws
    eps = torch.randn((1, 2, 1), generator=torch.Generator().manual_seed(drawn), dtype=torch.float64)
    s_w = 0.4 + math.exp(-0.5) * eps[0, 0, 0].item()
    s_l = -0.3 + math.exp(-1.0) * eps[0, 1, 0].item()

    def kl(mu, sigma):  # KL(N(mu, sigma^2) || N(0, 1))
        return math.log(1 / sigma) + (sigma ** 2 + mu ** 2) / 2 - 0.5

    expected = math.log1p(math.exp(-(s_w - s_l))) + kl_weight * (kl(0.4, math.exp(-0.5)) + kl(-0.3, math.exp(-1.0)))
    assert per_example.item() == pytest.approx(expected, rel=1e-10)
    per_example.sum().backward()
    assert model.log_sigma.grad[36, 0].item() != 0.0


def test_grape_trajectory_dpo_is_dpo_on_summed_step_logps(cliff):
    fam = TrajectoryFamily(cliff, "policy_logp")
    g = torch.Generator().manual_seed(3)
    ref_logits = torch.randn(cliff.n_states, cliff.n_actions, generator=g, dtype=torch.float64)
    policy, reference = TabularPolicy(ref_logits + 0.3 * torch.randn(ref_logits.shape, generator=g,
                                                                      dtype=torch.float64)), TabularPolicy(ref_logits)
    pair = make_pair([([36, 24, 25], [0, 1, 1]), ([36, 36], [1, 2])])
    trainee = FamilyTrainee(NoAccelerator(), fam, policy, reference, get_objective("dpo"), {"beta": 0.1})
    per_example, _ = trainee.loss(fam.make_batch([pair], [0], "train"))

    def logp(logits, steps):
        return sum(logits[s, a].item() - math.log(sum(math.exp(x) for x in logits[s].tolist())) for s, a in steps)

    w, lo = [(36, 0), (24, 1), (25, 1)], [(36, 1), (36, 2)]
    z = 0.1 * ((logp(policy.logits, w) - logp(ref_logits, w)) - (logp(policy.logits, lo) - logp(ref_logits, lo)))
    assert per_example.item() == pytest.approx(math.log1p(math.exp(-z)), rel=1e-10)


def test_labels_follow_the_true_regret_model(cliff):
    adv = true_advantages(cliff)
    pairs = label_segments(cliff, 400, 3, seed=0)
    agree, clear = 0, 0
    for p in pairs:
        s = [(adv[p.states[k], p.actions[k]] * p.mask[k]).sum().item() for k in range(2)]
        if abs(s[0] - s[1]) > 6:  # sigmoid(6) = 0.9975: these labels are all but certain
            clear += 1
            agree += s[0] > s[1]
    assert clear > 50 and agree >= clear - 2


def test_save_load_round_trip_and_mlp_reward(cliff, tmp_path):
    fam = TrajectoryFamily(cliff, "partial_return")
    model = MLPReward(cliff, hidden=8, seed=0)
    fam.save(model, tmp_path)
    other = MLPReward(cliff, hidden=8, seed=1)
    assert not torch.allclose(other.table(), model.table())
    fam.load(other, tmp_path)
    assert torch.equal(other.table(), model.table()) and other.table()[-1].abs().sum() == 0
    with pytest.raises(ValueError, match="score must be one of"):
        TrajectoryFamily(cliff, "return")


def test_bad_segments_and_samplers_are_refused_with_the_comparison_named(cliff):
    fam = TrajectoryFamily(cliff, "partial_return")
    good, bad = make_pair([([36], [0]), ([24], [1])]), make_pair([([36], [0]), ([24], [7])])
    with pytest.raises(ValueError, match=r"train comparison 1: actions must lie in \[0, 4\)"):
        fam.make_batch([good, bad], [0, 1], "train")
    with pytest.raises(ValueError, match="only a policy samples"):
        fam.sample(TabularReward(cliff), 2, seed=0)
    episodes = fam.sample(TabularPolicy(torch.zeros(cliff.n_states, cliff.n_actions)), 3, seed=0)
    assert len(episodes) == 3 and all(states[0] == cliff.start and len(states) <= fam.horizon for states, _ in episodes)


def test_pearl_reward_learns_that_the_cliff_is_bad(cliff):
    """End to end: PEARL's Gaussian reward fitted on partial-return labels puts the steps into the
    cliff (-100) far below the ordinary steps (-1), and its uncertainty stays finite."""
    pairs = label_segments(cliff, 300, 3, seed=0, model="partial_return")
    model = GaussianReward(cliff)
    fit_reward(TrajectoryFamily(cliff, "partial_return"), model, pairs, get_objective("bradley_terry"),
               steps=150, lr=0.1, kl_weight=0.01)
    into_cliff = cliff.R[:-1] < -50
    seen = torch.zeros_like(into_cliff)
    for p in pairs:
        seen[p.states[p.mask], p.actions[p.mask]] = True
    mu = model.mu.detach()
    assert mu[into_cliff & seen].mean() < mu[~into_cliff & seen].mean() - 1.5  # measured gap: 3.1
    assert torch.isfinite(model.log_sigma).all()
