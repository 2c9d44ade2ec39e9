"""Listwise objectives (LiPO-lambda, DPO_PL, PRO, SPPO, LOGO): golden values, reductions,
ragged lists, ties, gradients and stability."""

from __future__ import annotations

import math

import pytest
import torch

from prefalign.losses import OBJECTIVES, get_objective, pairwise_loss
from prefalign.types import SeqLogps

F64 = torch.float64
LISTWISE = ("lipo_lambda", "listwise_dpo", "pro", "sppo", "logo")


def t(values, dtype=F64, requires_grad=False) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, requires_grad=requires_grad)


def neg_logsigmoid(x: float) -> float:
    """-log sigmoid(x) with math only."""
    return math.log1p(math.exp(-x)) if x > -30 else -x + math.log1p(math.exp(x))


def batch(policy, target, reference=None, n_tokens=None, valid=None, requires_grad=False) -> SeqLogps:
    return SeqLogps(
        policy=t(policy, requires_grad=requires_grad),
        reference=None if reference is None else t(reference),
        n_tokens=None if n_tokens is None else t(n_tokens),
        valid=None if valid is None else torch.tensor(valid),
        target=t(target),
    )


# Parameters that make each objective's values O(1) on the small lists below.
PARAMS = {"lipo_lambda": {"beta": 0.5}, "listwise_dpo": {"beta": 0.5}, "pro": {}, "sppo": {"eta": 2.0},
          "logo": {"beta": 2.0, "gamma": 0.5}}


def generic_list(requires_grad=False, scale=1.0) -> SeqLogps:
    """Two prompts, K = 3, distinct scores and distinct log-ratios (no rank ties)."""
    return batch(
        policy=[[-9.0 * scale, -7.0 * scale, -11.0 * scale], [-4.0 * scale, -6.5 * scale, -3.0 * scale]],
        reference=[[-10.0, -10.0, -10.0], [-5.0, -5.0, -5.0]],
        n_tokens=[[3, 2, 4], [2, 3, 1]],
        target=[[0.9, 0.2, 0.6], [0.5, 0.8, 0.1]],
        requires_grad=requires_grad,
    )


# ---------------------------------------------------------------- golden values


def test_golden_lipo_lambda():
    """beta = 1, reference 0, s = h = (2, 0, 1), psi = (2, 0, 1).

    Ranks under s: tau = (1, 3, 2); 1/D = 1/log2(1 + tau) = (1, 0.5, 1/log2 3 = 0.6309297535714575).
    Gains G = 2^psi - 1 = (3, 0, 1).
      pair (0, 1): Delta = 3 * |1 - 0.5|            = 1.5,                 log(1 + e^-2) = 0.1269280110429725
      pair (0, 2): Delta = 2 * |1 - 0.63092975|     = 0.7381404928570849,  log(1 + e^-1) = 0.31326168751822286
      pair (2, 1): Delta = 1 * |0.63092975 - 0.5|   = 0.13092975357145753, log(1 + e^-1)
      loss = 1.5 * 0.12692801 + (0.73814049 + 0.13092975) * 0.31326169 = 0.4626384285325418
    Row 2 is row 1 with columns permuted and a padded column (garbage values): same loss.
    """
    b = batch(
        policy=[[2.0, 0.0, 1.0, 0.0], [1.0, 123.0, 2.0, 0.0]],
        reference=[[0.0] * 4] * 2,
        target=[[2.0, 0.0, 1.0, 0.0], [1.0, 50.0, 2.0, 0.0]],
        valid=[[True, True, True, False], [True, False, True, True]],
    )
    out = get_objective("lipo_lambda")(b, beta=1.0)
    torch.testing.assert_close(out.per_example, t([0.4626384285325418] * 2))
    torch.testing.assert_close(out.rewards, t([[2.0, 0.0, 1.0, 0.0], [1.0, 0.0, 2.0, 0.0]]))


def test_golden_listwise_dpo():
    """beta = 0.5, h = policy - reference = (1, 3, -1), so s = (0.5, 1.5, -0.5).

    Row 1, target (3, 1, 2): order col0 > col2 > col1.
      stage col0: log(e^0.5 + e^-0.5 + e^1.5) - 0.5 = 1.4076059644443804
      stage col2: log(e^-0.5 + e^1.5) + 0.5           = 2.1269280110429727
      stage col1: log(e^1.5) - 1.5 = 0                 -> 3.534533975487353
    Row 2, target (1, 1, 0): col0 and col1 tie, so neither is in the other's normalising set.
      col0: log(e^0.5 + e^-0.5) - 0.5  = 0.3132616875182228
      col1: log(e^1.5 + e^-0.5) - 1.5  = 0.1269280110429727
      col2: 0                            -> 0.4401896985611955
    """
    b = batch(policy=[[-9.0, -7.0, -11.0]] * 2, reference=[[-10.0] * 3] * 2,
              target=[[3.0, 1.0, 2.0], [1.0, 1.0, 0.0]])
    out = get_objective("listwise_dpo")(b, beta=0.5)
    torch.testing.assert_close(out.per_example, t([3.534533975487353, 0.4401896985611955]))
    torch.testing.assert_close(out.rewards, t([[0.5, 1.5, -0.5]] * 2))


def test_golden_pro():
    """policy (-4, -6, -3), lengths (2, 3, 1): r = policy / |y| = (-2, -2, -3); psi = (1, 3, 0.5).

    Order col1 (3) > col0 (1) > col2 (0.5). Dynamic temperature 1/T_k^i = psi_k - psi_i:
      stage col1: 1/T to col0 = 2, to col2 = 2.5, own 1/T = max = 2.5
        log(e^{2.5 * -2} + e^{2 * -2} + e^{2.5 * -3}) - 2.5 * -2 = log(e^-5 + e^-4 + e^-7.5) + 5 = 1.3350975955161672
      stage col0: 1/T to col2 = 0.5, own 0.5: log(e^-1 + e^-1.5) + 1 = 0.4740769841801067
      SFT: sft_weight (n - 1)^2 NLL(best) = 0.05 * 4 * 6 = 1.2        -> 3.009174579696274
    Without the dynamic temperature (all T = 1):
      log(e^-2 + e^-2 + e^-3) + 2 = 0.8619948040582512, log(e^-2 + e^-3) + 2 = 0.3132616875182228
      + 1.2 -> 2.375256491576474
    """
    b = batch(policy=[[-4.0, -6.0, -3.0]], n_tokens=[[2, 3, 1]], target=[[1.0, 3.0, 0.5]])
    out = get_objective("pro")(b)
    torch.testing.assert_close(out.per_example, t([3.009174579696274]))
    torch.testing.assert_close(out.rewards, t([[-2.0, -2.0, -3.0]]))
    torch.testing.assert_close(out.extras["nll"], t(6.0))
    plain = get_objective("pro")(b, dynamic_temperature=False)
    torch.testing.assert_close(plain.per_example, t([2.375256491576474]))


def test_golden_sppo():
    """eta = 2; loss = sum_k (h_k - eta (P_k - 1/2))^2 over real samples.

    Row 1: h = (0.3, -0.2), P = (0.8, 0.3): targets 2 * 0.3 = 0.6, 2 * -0.2 = -0.4;
      residuals -0.3, 0.2 -> 0.09 + 0.04 = 0.13
    Row 2: h = (1, 0, pad), P = (0.5, 1, pad): residuals 1, -1 -> 2
    rewards = h / eta.
    """
    b = batch(policy=[[-1.7, -2.2, -1.0], [-1.0, -2.0, 99.0]], reference=[[-2.0, -2.0, -2.0], [-2.0, -2.0, 0.0]],
              target=[[0.8, 0.3, 0.0], [0.5, 1.0, 7.0]], valid=[[True, True, False], [True, True, False]])
    out = get_objective("sppo")(b, eta=2.0)
    torch.testing.assert_close(out.per_example, t([0.13, 2.0]))
    torch.testing.assert_close(out.rewards, t([[0.15, -0.1, 0.0], [0.5, 0.0, 0.0]]))


def test_golden_logo():
    """beta = 2, gamma = 0.5, lam = 0.1; policy (-2, -6, -3), lengths (1, 3, 1).

    Mean token logps (-2, -2, -3), r = beta * mean = (-4, -4, -6); target (1, 0, 0):
      y_w = col0, dispreferred col1, col2: mean r_l = -5; margin = -4 + 5 - 0.5 = 0.5
      -log sig(0.5) = 0.47407698418010669; NLL(y_w) = 2, lam * 2 = 0.2 -> 0.6740769841801066
    Row 2 has only tied responses (target (1, 1, 1)): no dispreferred, SFT term only: 0.1 * 2 = 0.2.
    """
    b = batch(policy=[[-2.0, -6.0, -3.0]] * 2, n_tokens=[[1, 3, 1]] * 2, target=[[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    out = get_objective("logo")(b, beta=2.0, gamma=0.5, lam=0.1)
    torch.testing.assert_close(out.per_example, t([0.6740769841801066, 0.2]))
    torch.testing.assert_close(out.rewards, t([[-4.0, -4.0, -6.0]] * 2))
    torch.testing.assert_close(out.extras["nll"], t(2.0))


# ---------------------------------------------------------------- reductions the papers state


def pair(requires_grad=False) -> SeqLogps:
    return batch(policy=[[-3.0, -5.0], [-8.0, -6.5], [-2.0, -2.0]], reference=[[-4.0, -4.5], [-7.0, -7.0], [-2.0, -2.0]],
                 n_tokens=[[2, 5], [4, 3], [1, 1]], target=[[1.0, 0.0]] * 3, requires_grad=requires_grad)


def test_listwise_dpo_with_two_responses_is_dpo():
    b = pair()
    expected = get_objective("dpo")(b, beta=0.3).per_example
    torch.testing.assert_close(get_objective("listwise_dpo")(b, beta=0.3).per_example, expected, rtol=0, atol=1e-14)
    args = (b.policy[:, 0], b.policy[:, 1], b.reference[:, 0], b.reference[:, 1])
    via_api = pairwise_loss("listwise_dpo", *args, beta=0.3)
    torch.testing.assert_close(via_api, pairwise_loss("dpo", *args, beta=0.3), rtol=0, atol=1e-14)
    # At policy == reference every term is ln 2 (the sigmoid-type fixed point).
    torch.testing.assert_close(get_objective("listwise_dpo")(b).per_example[2], t(math.log(2.0)))


def test_lipo_lambda_with_two_responses_is_scaled_dpo():
    """K = 2, psi = (1, 0): Delta = (2 - 1) * |1/log2 2 - 1/log2 3| = 1 - 1/log2 3 = 0.36907024642854247."""
    b = pair()
    expected = 0.36907024642854247 * get_objective("dpo")(b, beta=0.3).per_example
    torch.testing.assert_close(get_objective("lipo_lambda")(b, beta=0.3).per_example, expected)


def test_pro_with_two_responses():
    """K = 2: -log sig(m (r_w - r_l)) + 0.05 * NLL(w), m = psi_w - psi_l (1 without temperature)."""
    b = batch(policy=[[-3.0, -5.0]], n_tokens=[[2, 5]], target=[[0.9, 0.4]])
    r_w, r_l = -1.5, -1.0
    with_t = get_objective("pro")(b).per_example
    torch.testing.assert_close(with_t, t([neg_logsigmoid(0.5 * (r_w - r_l)) + 0.05 * 3.0]))
    without_t = get_objective("pro")(b, dynamic_temperature=False).per_example
    torch.testing.assert_close(without_t, t([neg_logsigmoid(r_w - r_l) + 0.05 * 3.0]))
    no_sft = get_objective("pro")(b, sft_weight=0.0, dynamic_temperature=False).per_example
    torch.testing.assert_close(no_sft, t([neg_logsigmoid(r_w - r_l)]))


def test_sppo_with_hard_labels_is_sppo_hard():
    """P_hat = (1, 0): (h_w - eta/2)^2 + (h_l + eta/2)^2, the hard-label SPPO loss."""
    b = pair()
    h = (b.policy - b.reference).detach()
    expected = (h[:, 0] - 1.0) ** 2 + (h[:, 1] + 1.0) ** 2
    out = get_objective("sppo")(b, eta=2.0).per_example
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out, get_objective("sppo_hard")(b, eta=2.0).per_example)


def test_sppo_at_even_odds_regresses_to_reference():
    """P_hat = 1/2 for every sample: the loss is sum h^2, 0 exactly at policy == reference."""
    b = batch(policy=[[-3.0, -4.0]], reference=[[-3.0, -4.0]], target=[[0.5, 0.5]])
    assert get_objective("sppo")(b).per_example.item() == 0.0


def test_logo_with_one_dispreferred_and_no_sft_is_simpo():
    b = pair()
    mean = (b.policy / b.n_tokens).detach()
    expected = [neg_logsigmoid(2.0 * (w - lo) - 0.8) for w, lo in mean.tolist()]
    out = get_objective("logo")(b, beta=2.0, gamma=0.8, lam=0.0).per_example
    torch.testing.assert_close(out, t(expected))
    torch.testing.assert_close(out, get_objective("simpo")(b, beta=2.0, gamma=0.8).per_example)


def test_logo_averages_the_dispreferred_rewards():
    """M = 2: the margin subtracts the mean of the two dispreferred rewards."""
    b = batch(policy=[[-2.0, -3.0, -9.0]], n_tokens=[[1, 1, 3]], target=[[2.0, 1.0, 0.0]])
    expected = neg_logsigmoid(1.0 * (-2.0 - (-3.0 - 3.0) / 2) - 0.0)
    out = get_objective("logo")(b, beta=1.0, gamma=0.0, lam=0.0).per_example
    torch.testing.assert_close(out, t([expected]))


# ---------------------------------------------------------------- ragged lists, order, ties


@pytest.mark.parametrize("name", LISTWISE)
def test_column_order_does_not_matter(name):
    b = generic_list()
    perm = torch.tensor([2, 0, 1])
    shuffled = SeqLogps(policy=b.policy[:, perm], reference=b.reference[:, perm], n_tokens=b.n_tokens[:, perm],
                        target=b.target[:, perm])
    obj = get_objective(name)
    torch.testing.assert_close(obj(shuffled, **PARAMS[name]).per_example, obj(b, **PARAMS[name]).per_example)


@pytest.mark.parametrize("name", LISTWISE)
def test_padding_is_ignored_even_when_not_finite(name):
    """A padded column holding NaN/inf changes neither the loss nor the gradients of real entries."""
    b = generic_list(requires_grad=True)
    nan = float("nan")
    padded = SeqLogps(
        policy=torch.cat([b.policy.detach(), t([[nan], [float("-inf")]])], dim=1).requires_grad_(True),
        reference=torch.cat([b.reference, t([[nan], [0.0]])], dim=1),
        n_tokens=torch.cat([b.n_tokens, t([[0.0], [nan]])], dim=1),
        target=torch.cat([b.target, t([[nan], [float("inf")]])], dim=1),
        valid=torch.tensor([[True, True, True, False]] * 2),
    )
    obj = get_objective(name)
    ref_loss = obj(b, **PARAMS[name]).per_example
    pad_loss = obj(padded, **PARAMS[name]).per_example
    torch.testing.assert_close(pad_loss, ref_loss)
    (g_ref,) = torch.autograd.grad(ref_loss.sum(), b.policy)
    (g_pad,) = torch.autograd.grad(pad_loss.sum(), padded.policy)
    torch.testing.assert_close(g_pad[:, :3], g_ref)
    assert torch.all(g_pad[:, 3] == 0)


@pytest.mark.parametrize("name", ["lipo_lambda", "listwise_dpo"])
def test_all_tied_list_has_no_preference_signal(name):
    b = batch(policy=[[-3.0, -5.0, -1.0]], reference=[[-4.0, -4.0, -4.0]], target=[[0.7, 0.7, 0.7]],
              requires_grad=True)
    out = get_objective(name)(b).per_example
    assert out.item() == 0.0


def test_pro_with_all_ties_keeps_only_the_sft_term():
    b = batch(policy=[[-3.0, -5.0, -1.0]], n_tokens=[[1, 1, 1]], target=[[0.7, 0.7, 0.7]])
    # best = first tied column (policy -3); coefficient 0.05 * (3 - 1)^2 = 0.2
    torch.testing.assert_close(get_objective("pro")(b).per_example, t([0.2 * 3.0]))


@pytest.mark.parametrize("name", ["lipo_lambda", "listwise_dpo"])
def test_swapping_chosen_and_rejected_flips_the_margin(name):
    b = pair()
    swapped = SeqLogps(policy=b.policy, reference=b.reference, target=t([[0.0, 1.0]] * 3))
    obj = get_objective(name)
    s = 0.3 * (b.policy - b.reference)
    scale = 0.36907024642854247 if name == "lipo_lambda" else 1.0
    margin = (s[:, 0] - s[:, 1]).tolist()
    torch.testing.assert_close(obj(b, beta=0.3).per_example, t([scale * neg_logsigmoid(m) for m in margin]))
    torch.testing.assert_close(obj(swapped, beta=0.3).per_example, t([scale * neg_logsigmoid(-m) for m in margin]))


def test_missing_scores_is_a_clear_error():
    b = SeqLogps(policy=t([[-1.0, -2.0, -3.0]]), reference=t([[-1.0, -2.0, -3.0]]))
    with pytest.raises(ValueError, match="batch.target"):
        get_objective("listwise_dpo")(b)


# ---------------------------------------------------------------- gradients and stability


@pytest.mark.parametrize("name", LISTWISE)
def test_gradcheck(name):
    b = generic_list(requires_grad=True)
    obj = get_objective(name)

    def f(policy):
        return obj(SeqLogps(policy=policy, reference=b.reference, n_tokens=b.n_tokens, target=b.target),
                   **PARAMS[name]).per_example

    assert torch.autograd.gradcheck(f, (b.policy,))


@pytest.mark.parametrize("name", LISTWISE)
def test_large_log_ratios_stay_finite(name):
    """|log-ratio| ~ 1e3 (policy scaled far from the reference): finite loss and gradients."""
    obj = get_objective(name)
    for scale in (150.0, -150.0):
        b = generic_list(requires_grad=True, scale=scale)
        out = obj(b).per_example
        assert torch.isfinite(out).all(), (name, scale, out)
        (grad,) = torch.autograd.grad(out.sum(), b.policy)
        assert torch.isfinite(grad).all(), (name, scale, grad)


def test_registry_entries():
    for name in LISTWISE:
        assert OBJECTIVES[name].kind == "listwise"
        assert not OBJECTIVES[name].couples_batch
    assert OBJECTIVES["lipo_lambda"].needs_reference and OBJECTIVES["listwise_dpo"].needs_reference
    assert OBJECTIVES["sppo"].needs_reference
    assert not OBJECTIVES["pro"].needs_reference and not OBJECTIVES["logo"].needs_reference
    assert OBJECTIVES["pro"].params == {"sft_weight": 0.05, "dynamic_temperature": True}
    assert OBJECTIVES["logo"].params == {"beta": 10.0, "gamma": 3.0, "lam": 0.1}
    assert OBJECTIVES["sppo"].params == {"eta": 1000.0}
