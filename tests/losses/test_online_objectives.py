"""Nash-MD (policy-gradient form) and SAMI against hand-computed values, independent gradients and
exact expectations on small enumerable policies; the online-only refusal of `prefalign train`."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from prefalign.losses import OBJECTIVES, get_objective
from prefalign.types import SeqLogps

from .oracle import F64, LN2, close, t

# ---------------------------------------------------------------- nash_md


def nash_batch(policy, reference, p, **features) -> SeqLogps:
    return SeqLogps(policy=policy, reference=reference, features={"soft_label": p, **features})


def test_golden_nash_md():
    """beta 0.5. Example 1: log pi(y) = -4, log mu(y) = -5 (h = 1), p = 0.8:
    0.5 * 1 * (-4) - 0.3 * (-4) = -2 + 1.2 = -0.8; d/d log pi(y) = beta h - (p - 1/2) = 0.5 - 0.3 = 0.2.
    Example 2: log pi(y) = -10, log mu(y) = -8 (h = -2), p = 0.2:
    0.5 * (-2) * (-10) + 0.3 * (-10) = 10 - 3 = 7; gradient -1 + 0.3 = -0.7.
    y' (column 1) only enters through p: zero gradient. rewards beta * h: (0.5, 0.25), (-1, 0)."""
    policy = t([[-4.0, -6.0], [-10.0, -3.0]], grad=True)
    reference = t([[-5.0, -6.5], [-8.0, -3.0]], grad=True)
    out = get_objective("nash_md")(nash_batch(policy, reference, t([0.8, 0.2])), beta=0.5)
    close(out.per_example, [-0.8, 7.0])
    close(out.rewards, [[0.5, 0.25], [-1.0, 0.0]])
    close(out.extras["sample_kl"], -0.5)
    close(out.extras["win_rate"], 0.5)
    out.per_example.sum().backward()
    close(policy.grad, [[0.2, 0.0], [-0.7, 0.0]])
    assert reference.grad is None  # mu is fixed: the log-ratio weight is detached, no path reaches it


def test_nash_md_default_beta_is_trls():
    assert get_objective("nash_md").params == {"beta": 0.1, "kl_estimator": "sequence"}
    out = get_objective("nash_md")(nash_batch(t([[-4.0, -6.0]]), t([[-5.0, -6.0]]), t([0.8])))
    close(out.per_example, [0.1 * 1 * -4 - 0.3 * -4])


def bandit_step(logits: torch.Tensor, mu_logits: torch.Tensor, action: int, p: float, beta: float) -> float:
    """One SGD step of nash_md on a one-token policy softmax(logits) with y = action; returns the
    change of log pi(action)."""
    theta = logits.clone().requires_grad_(True)
    logp, log_mu = torch.log_softmax(theta, 0), torch.log_softmax(mu_logits, 0)
    batch = nash_batch(torch.stack([logp[action], logp[1]]).unsqueeze(0),
                       torch.stack([log_mu[action], log_mu[1]]).unsqueeze(0), t([p]))
    get_objective("nash_md")(batch, beta=beta).per_example.sum().backward()
    with torch.no_grad():
        after = torch.log_softmax(theta - 0.1 * theta.grad, 0)[action]
    return float(after - logp[action].detach())


def test_nash_md_gradient_step_signs():
    """A judge preferring y raises log pi(y); one preferring y' lowers it; with p = 1/2 a sample the
    policy already over-weights against mu (large KL) is pushed down, one it under-weights up."""
    uniform = torch.zeros(3, dtype=F64)
    assert bandit_step(uniform, uniform, 0, p=0.9, beta=0.1) > 0
    assert bandit_step(uniform, uniform, 0, p=0.1, beta=0.1) < 0
    assert bandit_step(uniform, uniform, 0, p=0.5, beta=0.1) == pytest.approx(0.0, abs=1e-12)  # h = 0, p = 1/2
    peaked = t([4.0, 0.0, 0.0])  # pi(0) ~ 0.96 against mu(0) = 1/3: log-ratio ~ 1.06
    assert bandit_step(peaked, uniform, 0, p=0.5, beta=0.1) < 0
    assert bandit_step(peaked, uniform, 1, p=0.5, beta=0.1) > 0  # pi(1) < mu(1): negative log-ratio
    # a win rate can outweigh the KL pull: p - 1/2 = 0.4 against beta h = 0.1 * 1.06
    assert bandit_step(peaked, uniform, 0, p=0.9, beta=0.1) > 0


# A two-token policy over a two-letter vocabulary: every response y = (a, b) can be enumerated, so the
# expected gradient of a sampled estimator is computed exactly as sum_y pi(y) grad loss(y).
G = torch.Generator().manual_seed(11)
THETA_FIRST, THETA_SECOND = torch.randn(2, generator=G, dtype=F64), torch.randn(2, 2, generator=G, dtype=F64)
MU_FIRST, MU_SECOND = torch.randn(2, generator=G, dtype=F64), torch.randn(2, 2, generator=G, dtype=F64)
WIN = t([0.9, 0.3, 0.6, 0.2])  # P(y > y') for y = (0,0), (0,1), (1,0), (1,1), y' already averaged out
SEQUENCES = list(itertools.product(range(2), range(2)))


def token_logps(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """[4, 2] per-token log-probs of every sequence (a, b)."""
    lf, ls2 = torch.log_softmax(first, 0), torch.log_softmax(second, 1)
    return torch.stack([torch.stack([lf[a], ls2[a, b]]) for a, b in SEQUENCES])


def exact_expected_gradient(kl_estimator: str, beta: float):
    first, second = THETA_FIRST.clone().requires_grad_(True), THETA_SECOND.clone().requires_grad_(True)
    pol_tok, ref_tok = token_logps(first, second), token_logps(MU_FIRST, MU_SECOND)
    pol, ref = pol_tok.sum(1), ref_tok.sum(1)
    dummy = torch.zeros(4, dtype=F64)  # column 1 (y') never carries gradient: any value will do
    mask = torch.ones(4, 2, 2, dtype=torch.bool)
    batch = SeqLogps(policy=torch.stack([pol, dummy], 1), reference=torch.stack([ref, dummy], 1),
                     features={"soft_label": WIN, "token_mask": mask,
                               "policy_token_logps": torch.stack([pol_tok, torch.zeros_like(pol_tok)], 1),
                               "reference_token_logps": torch.stack([ref_tok, torch.zeros_like(ref_tok)], 1)})
    losses = get_objective("nash_md")(batch, beta=beta, kl_estimator=kl_estimator).per_example
    (pol.exp().detach() * losses).sum().backward()  # E_{y ~ pi}: sampling weights carry no gradient
    return torch.cat([first.grad, second.grad.flatten()])


def analytic_gradient(beta: float):
    """grad of -E_pi[p(y)] + beta KL(pi || mu) over whole sequences, by autograd on the exact sums."""
    first, second = THETA_FIRST.clone().requires_grad_(True), THETA_SECOND.clone().requires_grad_(True)
    log_pi, log_mu = token_logps(first, second).sum(1), token_logps(MU_FIRST, MU_SECOND).sum(1)
    pi = log_pi.exp()
    (-(pi * WIN).sum() + beta * (pi * (log_pi - log_mu)).sum()).backward()
    return torch.cat([first.grad, second.grad.flatten()])


def test_nash_md_sequence_estimator_is_the_exact_gradient_in_expectation():
    """The claim of the docstring: E_{y ~ pi} grad loss(y) = grad(-E[p] + beta KL(pi || mu)), the 1/2 a
    control variate. TRL's token form weights each token by its own log-ratio only: on a two-token
    policy its expectation misses the second token's ratio in the first token's gradient."""
    for beta in (0.1, 1.0):
        close(exact_expected_gradient("sequence", beta), analytic_gradient(beta), tol=1e-10)
        bias = (exact_expected_gradient("token", beta) - analytic_gradient(beta)).abs().max()
        assert bias > 1e-3
    # without the KL term both estimators are the same REINFORCE gradient
    close(exact_expected_gradient("token", 0.0), analytic_gradient(0.0), tol=1e-10)


def test_nash_md_token_estimator_matches_hand_numbers_and_ignores_padding():
    """Column 0 tokens log pi (-1, -2, pad), log mu (-1.5, -1, pad): ratios (0.5, -1).
    KL term 0.5 * -1 + (-1) * (-2) = 1.5; log pi(y) = -3; p = 0.9, beta 0.1:
    0.1 * 1.5 - 0.4 * (-3) = 1.35. d/d log pi(y_t) = beta ratio_t - (p - 1/2) = (-0.35, -0.5, 0)."""
    pol_tok = t([[[-1.0, -2.0, float("-inf")], [-7.0, -7.0, -7.0]]], grad=True)
    ref_tok = t([[[-1.5, -1.0, float("nan")], [-3.0, -3.0, -3.0]]])
    mask = torch.tensor([[[True, True, False], [True, True, True]]])
    batch = nash_batch(t([[-3.0, -21.0]]), t([[-2.5, -9.0]]), t([0.9]), policy_token_logps=pol_tok,
                       reference_token_logps=ref_tok, token_mask=mask)
    out = get_objective("nash_md")(batch, kl_estimator="token")
    close(out.per_example, [1.35])
    out.per_example.sum().backward()
    close(pol_tok.grad, [[[-0.35, -0.5, 0.0], [0.0, 0.0, 0.0]]])


def test_nash_md_token_estimator_switches_on_token_logps():
    obj = get_objective("nash_md")
    assert obj.features_for({"kl_estimator": "token"}) == ("soft_label", "token_logps")
    assert obj.features_for({}) == ("soft_label",)


def test_nash_md_refuses_bad_input():
    nash = get_objective("nash_md")
    with pytest.raises(ValueError, match="2 responses per prompt"):
        nash(nash_batch(t([[-1.0, -2.0, -3.0]]), t([[-1.0, -2.0, -3.0]]), t([0.5])))
    with pytest.raises(ValueError, match="kl_estimator must be one of"):
        nash(nash_batch(t([[-1.0, -2.0]]), t([[-1.0, -2.0]]), t([0.5])), kl_estimator="tokens")
    with pytest.raises(ValueError, match="soft_label"):
        nash(SeqLogps(policy=t([[-1.0, -2.0]]), reference=t([[-1.0, -2.0]])))


# ---------------------------------------------------------------- sami


def sami_loss(policy, n_tokens) -> torch.Tensor:
    return get_objective("sami")(SeqLogps(policy=policy, n_tokens=n_tokens)).per_example


def reference_sami(policy: list[list[float]], n_tokens: list[list[float]]) -> tuple[list[float], list[list[float]]]:
    """An independent loop with `math`: per example the loss and d loss / d policy[k].
    d/d logit[i][j] = (softmax over j of row i - [i == j]) / (2C) + (softmax over i of column j - [i == j]) / (2C);
    logit = policy / n_tokens, so d/d policy = that / n_tokens."""
    losses, grads = [], []
    for pol, n in zip(policy, n_tokens):
        c = math.isqrt(len(pol))
        logit = [[pol[i * c + j] / n[i * c + j] for j in range(c)] for i in range(c)]
        row_z = [sum(math.exp(logit[i][j]) for j in range(c)) for i in range(c)]
        col_z = [sum(math.exp(logit[i][j]) for i in range(c)) for j in range(c)]
        row = sum(math.log(row_z[i]) - logit[i][i] for i in range(c)) / c
        col = sum(math.log(col_z[j]) - logit[j][j] for j in range(c)) / c
        losses.append(0.5 * row + 0.5 * col)
        grad = []
        for i in range(c):
            for j in range(c):
                eye = 1.0 if i == j else 0.0
                d = (math.exp(logit[i][j]) / row_z[i] - eye + math.exp(logit[i][j]) / col_z[j] - eye) / (2 * c)
                grad.append(d / n[i * c + j])
        grads.append(grad)
    return losses, grads


def test_golden_sami():
    """C = 2, policy (-4, -6, -5, -3) over (2, 3, 1, 1) tokens: logits [[-2, -2], [-5, -3]].
    Rows: ln 2 = 0.693147 (target 0 in (-2, -2)); ln(1 + e^-2) = 0.126928 (target 1 in (-5, -3)).
    Columns: ln(1 + e^-3) = 0.048587 (target 0 in (-2, -5)); 1 + ln(1 + e^-1) = 1.313262 (target 1 in
    (-2, -3)). Loss = (0.693147 + 0.126928) / 4 + (0.048587 + 1.313262) / 4 = 0.545481."""
    row = LN2 + math.log1p(math.exp(-2))
    col = math.log1p(math.exp(-3)) + 1 + math.log1p(math.exp(-1))
    out = get_objective("sami")(SeqLogps(policy=t([[-4.0, -6.0, -5.0, -3.0]]), n_tokens=t([[2.0, 3.0, 1.0, 1.0]])))
    close(out.per_example, [(row + col) / 4])
    assert out.per_example.item() == pytest.approx(0.545481, abs=1e-6)
    close(out.rewards, [[-2.0, -2.0, -5.0, -3.0]])
    close(out.extras["mi_lower_bound"], LN2 - (row + col) / 4)
    close(out.extras["accuracy"], 0.75)  # row 0's argmax (a tie) is column 0; row 1, columns 0 and 1 hit


def test_sami_value_and_gradient_match_an_independent_loop():
    g = torch.Generator().manual_seed(5)
    for c in (2, 3, 4):
        policy = (-torch.rand(3, c * c, generator=g, dtype=F64) * 30).requires_grad_(True)
        n_tokens = torch.randint(1, 12, (3, c * c), generator=g).to(F64)
        losses = sami_loss(policy, n_tokens)
        losses.sum().backward()
        want_losses, want_grads = reference_sami(policy.tolist(), n_tokens.tolist())
        close(losses, want_losses)
        close(policy.grad, want_grads)


def test_gradcheck_sami():
    g = torch.Generator().manual_seed(2)
    policy = (-torch.rand(2, 9, generator=g, dtype=F64) * 10).requires_grad_(True)
    n_tokens = torch.randint(1, 6, (2, 9), generator=g).to(F64)
    assert torch.autograd.gradcheck(lambda p: sami_loss(p, n_tokens), (policy,))


def test_sami_loss_falls_as_the_diagonal_rises():
    """Raising log pi(y_i | c_i) (the matched pairs) lowers the loss; raising an off-diagonal one raises it;
    the bound log C - loss approaches log C when the diagonal dominates."""
    c = 3
    policy = -torch.full((1, c * c), 6.0, dtype=F64)
    n = torch.ones(1, c * c, dtype=F64)
    base = sami_loss(policy, n).item()
    assert base == pytest.approx(math.log(c))  # nothing distinguishes the constitutions: InfoNCE at log C
    diagonal = policy.clone()
    diagonal[0, [0, 4, 8]] += 1.0
    off = policy.clone()
    off[0, 1] += 1.0
    assert sami_loss(diagonal, n).item() < base < sami_loss(off, n).item()
    far = policy.clone()
    far[0, [0, 4, 8]] += 40.0
    out = get_objective("sami")(SeqLogps(policy=far, n_tokens=n))
    assert out.per_example.item() < 1e-15 and out.extras["mi_lower_bound"].item() == pytest.approx(math.log(c))


def test_sami_invariances_that_can_fail():
    """Relabelling constitutions and responses together (sigma on both axes) keeps the loss; relabelling
    responses alone moves matched pairs off the diagonal and changes it; each example is its own."""
    g = torch.Generator().manual_seed(8)
    c = 3
    policy = -torch.rand(2, c * c, generator=g, dtype=F64) * 20
    n = torch.randint(1, 9, (2, c * c), generator=g).to(F64)
    sigma = torch.tensor([2, 0, 1])
    both = torch.stack([sigma * c + s for s in sigma]).flatten()  # sequence (sigma_i, sigma_j) at (i, j)
    responses_only = torch.stack([i * c + sigma for i in range(c)]).flatten()
    loss = sami_loss(policy, n)
    close(sami_loss(policy[:, both], n[:, both]), loss)
    assert (sami_loss(policy[:, responses_only], n[:, responses_only]) - loss).abs().min() > 1e-3
    close(sami_loss(policy[1:], n[1:]), loss[1:])
    # the loss is symmetric in its two axes: reading the layout as j*C + i instead gives the same value
    transpose = torch.stack([torch.arange(c) * c + j for j in range(c)]).flatten()
    close(sami_loss(policy[:, transpose], n[:, transpose]), loss)


def test_sami_normalises_by_length():
    """The authors' logits are mean token log-probs: doubling a response's summed log-prob together with
    its length changes nothing; doubling the sum alone does."""
    policy = t([[-4.0, -6.0, -5.0, -3.0]])
    n = t([[2.0, 3.0, 1.0, 1.0]])
    base = sami_loss(policy, n)
    close(sami_loss(policy * t([[1.0, 2.0, 1.0, 1.0]]), n * t([[1.0, 2.0, 1.0, 1.0]])), base)
    assert (sami_loss(policy * t([[1.0, 2.0, 1.0, 1.0]]), n) - base).abs().item() > 1e-3


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_sami_refuses_a_k_that_is_not_c_squared(k):
    with pytest.raises(ValueError, match=rf"K = C \* C .* got K = {k}"):
        sami_loss(-torch.ones(1, k, dtype=F64), torch.ones(1, k, dtype=F64))


def test_sami_refuses_padding_and_missing_lengths():
    sami = get_objective("sami")
    valid = torch.tensor([[True, True, True, False]])
    with pytest.raises(ValueError, match="padding"):
        sami(SeqLogps(policy=-torch.ones(1, 4), n_tokens=torch.ones(1, 4), valid=valid))
    with pytest.raises(ValueError, match="lengths"):
        sami(SeqLogps(policy=-torch.ones(1, 4)))


def test_registry_entries():
    nash, sami = OBJECTIVES["nash_md"], OBJECTIVES["sami"]
    assert (nash.kind, nash.paper, nash.needs_reference, nash.features) == ("pairwise", "2312.00886", True,
                                                                           ("soft_label",))
    assert (sami.kind, sami.paper, sami.needs_reference, sami.features) == ("self_supervised", "2404.14313", False,
                                                                           ("lengths",))
    assert sami.params == {} and not sami.couples_batch and not nash.couples_batch


def test_prefalign_train_refuses_sami_with_the_online_message(tiny_model_dir, tmp_path):
    """Offline data cannot feed SAMI: the refusal names the online command, not an example kind."""
    from prefalign.config import load_config
    from prefalign.recipes.policy import train
    from tests_support import FIXTURES

    cfg = load_config(None, [f"model={tiny_model_dir}", f"data.train={FIXTURES / 'hh_harmless_64.jsonl'}",
                             f"output_dir={tmp_path / 'run'}", "objective=sami", "max_steps=1", "progress=false"])
    with pytest.raises(ValueError) as err:
        train(cfg)
    assert str(err.value) == ("objective 'sami' is trained online only (prefalign online): its data is built from "
                              "samples under constitutions")
