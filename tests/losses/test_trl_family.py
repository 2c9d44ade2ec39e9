"""TRL's DPO loss_types as objectives (prefalign.losses.trl_family): golden values by hand,
independent loop formulas, gradients, limiting cases and stability (the name table and the TRL
mapping: test_trl_names.py).

Every expected value comes from plain `math` written here (or the arithmetic in a docstring),
never from the objectives' internals.
"""

from __future__ import annotations

import math

import pytest
import torch

from prefalign.losses import OBJECTIVES, get_objective, pairwise_loss
from prefalign.types import SeqLogps

from .oracle import LN2, close, ls, sig

NEW = ["exo_pair", "nca_pair", "bco_pair", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop"]


def pair(policy, reference, n_tokens=None, dtype=torch.float64) -> SeqLogps:
    t = lambda x: None if x is None else torch.tensor(x, dtype=dtype)  # noqa: E731
    return SeqLogps(policy=t(policy), reference=t(reference), n_tokens=t(n_tokens))


def run(name: str, batch: SeqLogps, **params):
    return get_objective(name)(batch, **params)


def random_pairs(b=6, seed=0, dtype=torch.float64) -> SeqLogps:
    g = torch.Generator().manual_seed(seed)
    policy = -torch.rand(b, 2, generator=g, dtype=dtype) * 20 - 1
    reference = -torch.rand(b, 2, generator=g, dtype=dtype) * 20 - 1
    n_tokens = torch.randint(1, 30, (b, 2), generator=g).to(dtype)
    return SeqLogps(policy=policy, reference=reference, n_tokens=n_tokens)


def rows(batch: SeqLogps):
    """(h_w, h_l) per pair as Python floats, for the loop formulas."""
    h = (batch.policy - batch.reference).tolist()
    return [(w, lo) for w, lo in h]


# One pair with h = (1, -1), d = 2, as in tests/losses/test_pairwise.py
H_POLICY, H_REF = [[-1.0, -3.0]], [[-2.0, -2.0]]


# ---------------------------------------------------------------------------------- goldens
def test_golden_exo_pair():
    """beta = 0.5, d = 2 -> z = 1; eps = 0.1.
    q_w = sig(1) = 0.7310586, q_l = 0.2689414; log q_w = -0.3132617, log q_l = -1.3132617.
    KL = 0.7310586 (-0.3132617 - ln 0.9) + 0.2689414 (-1.3132617 - ln 0.1)
       = 0.7310586 (-0.2079012) + 0.2689414 (0.9893234) = -0.1519879 + 0.2660700 = 0.1140821."""
    out = run("exo_pair", pair(H_POLICY, H_REF), beta=0.5, epsilon=0.1)
    expect = sig(1) * (ls(1) - math.log(0.9)) + sig(-1) * (ls(-1) - math.log(0.1))
    close(out.per_example, [expect])
    close(out.per_example, [0.1140821], tol=1e-6)
    close(out.rewards, [[0.5, -0.5]])


def test_golden_nca_pair():
    """beta = 0.5, h = (1, -1): r = (0.5, -0.5).
    -ls(0.5) - 0.5 ls(-0.5) - 0.5 ls(0.5) = 0.4740770 + 0.5 * 0.9740770 + 0.5 * 0.4740770 = 1.1981540."""
    out = run("nca_pair", pair(H_POLICY, H_REF), beta=0.5)
    close(out.per_example, [-ls(0.5) - 0.5 * ls(-0.5) - 0.5 * ls(0.5)])
    close(out.per_example, [1.1981540], tol=1e-6)
    close(out.rewards, [[0.5, -0.5]])


def test_golden_bco_pair():
    """beta = 0.5. Row 1: h = (1, -1) -> r = (0.5, -0.5); row 2: h = (3, 1) -> r = (1.5, 0.5).
    batch_mean: delta = (0.5 - 0.5 + 1.5 + 0.5) / 4 = 0.5.
      row 1: -ls(0.5 - 0.5) - ls(-(-0.5 - 0.5)) = ln 2 - ls(1) = 0.6931472 + 0.3132617 = 1.0064089
      row 2: -ls(1.0) - ls(0.0) = 0.3132617 + 0.6931472 = 1.0064089
    reward_shift = 0 (TRL since 2026): row 1: -ls(0.5) - ls(0.5) = 0.9481541."""
    batch = pair([[-1.0, -3.0], [1.0, -1.0]], [[-2.0, -2.0], [-2.0, -2.0]])
    out = run("bco_pair", batch, beta=0.5)
    close(out.per_example, [LN2 - ls(1.0), -ls(1.0) + LN2])
    close(out.per_example, [1.0064089, 1.0064089], tol=1e-6)
    close(out.extras["reward_shift"], 0.5)
    fixed = run("bco_pair", batch, beta=0.5, reward_shift=0.0)
    close(fixed.per_example, [-2 * ls(0.5), -ls(1.5) - ls(-0.5)])
    close(fixed.per_example[0], 0.9481541, tol=1e-6)


def test_golden_aot():
    """beta = 1. Policy margins u = logp_w - logp_l = (1, -2), reference margins v = (0, 1).
    Sorted: u = (-2, 1), v = (0, 1) -> z = (-2, 0): losses -ls(-2) = 2.1269280, -ls(0) = ln 2.
    Paired DPO would instead see (1 - 0, -2 - 1) = (1, -3)."""
    batch = pair([[-1.0, -2.0], [-4.0, -2.0]], [[-3.0, -3.0], [-2.0, -3.0]])
    out = run("aot", batch, beta=1.0)
    close(out.per_example, [-ls(-2.0), LN2])
    close(out.per_example[0], 2.1269280, tol=1e-6)
    close(out.rewards, [[2.0, 1.0], [-2.0, 1.0]])  # beta * h per pair, unsorted
    smooth = run("aot", batch, beta=1.0, label_smoothing=0.25)
    close(smooth.per_example, [-0.75 * ls(-2.0) - 0.25 * ls(2.0), LN2])


def test_golden_aot_unpaired():
    """beta = 1. h = (2, 1) and (-2, 1): chosen h_w = (2, -2), rejected h_l = (1, 1).
    Sorted: (-2, 2) vs (1, 1) -> z = (-3, 1): -ls(-3) = 3.0485874, -ls(1) = 0.3132617."""
    batch = pair([[-1.0, -2.0], [-4.0, -2.0]], [[-3.0, -3.0], [-2.0, -3.0]])
    out = run("aot_unpaired", batch, beta=1.0)
    close(out.per_example, [-ls(-3.0), -ls(1.0)])
    close(out.per_example[0], 3.0485874, tol=1e-6)


def test_golden_apo_zero():
    """beta = 0.5, h = (1, -1): sig(-0.5) + sig(-0.5) = 2 * 0.3775407 = 0.7550813."""
    out = run("apo_zero", pair(H_POLICY, H_REF), beta=0.5)
    close(out.per_example, [2 * sig(-0.5)])
    close(out.per_example, [0.7550813], tol=1e-6)


def test_golden_apo_down():
    """beta = 0.5, h = (1, -1), d = 2: sig(0.5) + sig(-1) = 0.6224593 + 0.2689414 = 0.8914007."""
    out = run("apo_down", pair(H_POLICY, H_REF), beta=0.5)
    close(out.per_example, [sig(0.5) + sig(-1.0)])
    close(out.per_example, [0.8914007], tol=1e-6)


def test_golden_discopop():
    """beta = 0.5, d = 2 -> rho = 1; tau = 0.5 -> w = sig(2) = 0.8807971.
    (1 - w)(-ls(1)) + w e^-1 = 0.1192029 * 0.3132617 + 0.8807971 * 0.3678794 = 0.0373417 + 0.3240273
    = 0.3613690 (0.3613688 to 7 places). Row 2: h = (0, 0), rho = 0: 0.5 ln 2 + 0.5 = 0.8465736."""
    batch = pair([[-1.0, -3.0], [-2.0, -2.0]], [[-2.0, -2.0], [-2.0, -2.0]])
    out = run("discopop", batch, beta=0.5, tau=0.5)
    close(out.per_example, [sig(-2) * -ls(1) + sig(2) * math.exp(-1), 0.5 * LN2 + 0.5])
    close(out.per_example[0], 0.3613688, tol=1e-6)


def test_golden_dpo_length_normalized():
    """TRL's sigmoid_norm: h = (1, -1) over |y| = (2, 4): means (0.5, -0.25), d = 0.75; beta = 2 ->
    -ls(1.5) = 0.2014133. Without length_normalize: -ls(4)."""
    batch = pair(H_POLICY, H_REF, n_tokens=[[2.0, 4.0]])
    close(run("dpo", batch, beta=2.0, length_normalize=True).per_example, [-ls(1.5)])
    close(run("dpo", batch, beta=2.0, length_normalize=True).per_example, [0.2014133], tol=1e-6)
    close(run("dpo", batch, beta=2.0).per_example, [-ls(4.0)])
    dpo = get_objective("dpo")
    assert dpo.features_for({"length_normalize": True}) == ("lengths",) and dpo.features_for({}) == ()


# ------------------------------------------------------------------ loop formulas on random data
def test_against_loop_formulas():
    """Each objective on 6 random pairs equals its formula written as a Python loop."""
    batch = random_pairs()
    hw_hl = rows(batch)
    beta, eps = 0.3, 0.05
    d = [w - lo for w, lo in hw_hl]
    exo = [sig(beta * x) * (ls(beta * x) - math.log(1 - eps)) + sig(-beta * x) * (ls(-beta * x) - math.log(eps))
           for x in d]
    close(run("exo_pair", batch, beta=beta, epsilon=eps).per_example, exo)
    nca = [-ls(beta * w) - 0.5 * ls(-beta * w) - 0.5 * ls(-beta * lo) for w, lo in hw_hl]
    close(run("nca_pair", batch, beta=beta).per_example, nca)
    delta = sum(beta * (w + lo) for w, lo in hw_hl) / (2 * len(hw_hl))
    bco = [-ls(beta * w - delta) - ls(-(beta * lo - delta)) for w, lo in hw_hl]
    close(run("bco_pair", batch, beta=beta).per_example, bco)
    zero = [1 - sig(beta * w) + sig(beta * lo) for w, lo in hw_hl]  # TRL's written form
    close(run("apo_zero", batch, beta=beta).per_example, zero)
    down = [sig(beta * w) + 1 - sig(beta * (w - lo)) for w, lo in hw_hl]
    close(run("apo_down", batch, beta=beta).per_example, down)
    tau = 0.2
    disco = [(1 - sig(beta * x / tau)) * -ls(beta * x) + sig(beta * x / tau) * math.exp(-beta * x) for x in d]
    close(run("discopop", batch, beta=beta, tau=tau).per_example, disco)
    pol, ref = batch.policy.tolist(), batch.reference.tolist()
    u = sorted(p[0] - p[1] for p in pol)
    v = sorted(r[0] - r[1] for r in ref)
    close(run("aot", batch, beta=beta).per_example, [-ls(beta * (a - b)) for a, b in zip(u, v)])
    hw = sorted(w for w, _ in hw_hl)
    hl = sorted(lo for _, lo in hw_hl)
    close(run("aot_unpaired", batch, beta=beta).per_example, [-ls(beta * (a - b)) for a, b in zip(hw, hl)])


def test_aot_reductions_and_permutations():
    """B = 1 is DPO for both; permuting the pairs permutes nothing in the (sorted) losses; pairs whose
    margins already sort alike give DPO exactly; otherwise the sum differs from DPO's."""
    one = pair([[-1.0, -3.5]], [[-2.0, -2.5]])
    dpo = run("dpo", one, beta=0.4).per_example
    close(run("aot", one, beta=0.4).per_example, dpo)
    close(run("aot_unpaired", one, beta=0.4).per_example, dpo)
    batch = random_pairs(seed=1)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    shuffled = SeqLogps(policy=batch.policy[perm], reference=batch.reference[perm])
    for name in ("aot", "aot_unpaired"):
        close(run(name, shuffled).per_example, run(name, batch).per_example)
    # u = (1, 3), v = (0, 1): sorted alike -> DPO per pair
    alike = pair([[-1.0, -2.0], [0.0, -3.0]], [[-1.0, -1.0], [-1.0, -2.0]])
    close(run("aot", alike, beta=0.5).per_example, run("dpo", alike, beta=0.5).per_example)
    # u = (1, 3), v = (2, 0): sorted (1, 3) - (0, 2) = (1, 1) instead of DPO's (-1, 3)
    crossed = pair([[-1.0, -2.0], [0.0, -3.0]], [[0.0, -2.0], [-1.0, -1.0]])
    close(run("aot", crossed, beta=0.5).per_example, [-ls(0.5), -ls(0.5)])
    close(run("dpo", crossed, beta=0.5).per_example, [-ls(-0.5), -ls(1.5)])


def test_bco_batch_mean_is_shift_invariant():
    """With delta the batch mean, adding c to every log-ratio leaves the loss unchanged (r - delta is
    unchanged); with a fixed delta it does not."""
    batch = random_pairs(seed=2)
    moved = SeqLogps(policy=batch.policy + 7.0, reference=batch.reference)
    close(run("bco_pair", moved).per_example, run("bco_pair", batch).per_example)
    assert not torch.allclose(run("bco_pair", moved, reward_shift=0.0).per_example,
                              run("bco_pair", batch, reward_shift=0.0).per_example)


# ----------------------------------------------------------------------------- limiting cases
def test_apo_zero_and_down_at_zero_logratios():
    """h = (0, 0): both losses are 1. Gradients in (h_w, h_l): apo_zero (-beta/4, +beta/4) (chosen up,
    rejected down); apo_down (beta/4 - beta/4, beta/4) = (0, beta/4)."""
    beta = 0.8
    for name, grad in [("apo_zero", [-beta / 4, beta / 4]), ("apo_down", [0.0, beta / 4])]:
        policy = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
        out = run(name, SeqLogps(policy=policy, reference=torch.zeros(1, 2, dtype=torch.float64)), beta=beta)
        close(out.per_example, [1.0])
        out.per_example.sum().backward()
        close(policy.grad, [grad])


def test_apo_extremes():
    """apo_zero tends to 0 as h_w -> +inf and h_l -> -inf and to 2 the other way; apo_down tends to 0
    as h_w -> -inf with d -> +inf."""
    close(run("apo_zero", pair([[500.0, -500.0]], [[0.0, 0.0]])).per_example, [0.0])
    close(run("apo_zero", pair([[-500.0, 500.0]], [[0.0, 0.0]])).per_example, [2.0])
    close(run("apo_down", pair([[-500.0, -2000.0]], [[0.0, 0.0]])).per_example, [0.0])


def test_exo_minimum_is_at_the_target_margin():
    """KL(p_f || p) = 0 exactly where sig(z) = 1 - eps, z = ln((1 - eps)/eps), with zero gradient;
    as z -> +inf the loss tends to -ln(1 - eps), and with eps -> 0 that limit goes to 0 (DPO-like)."""
    eps, beta = 0.1, 0.5
    z_star = math.log((1 - eps) / eps)
    policy = torch.tensor([[z_star / beta, 0.0]], dtype=torch.float64, requires_grad=True)
    out = run("exo_pair", SeqLogps(policy=policy, reference=torch.zeros(1, 2, dtype=torch.float64)),
              beta=beta, epsilon=eps)
    close(out.per_example, [0.0], tol=1e-12)
    out.per_example.sum().backward()
    close(policy.grad, [[0.0, 0.0]], tol=1e-12)
    far = pair([[400.0, 0.0]], [[0.0, 0.0]])
    close(run("exo_pair", far, beta=0.5, epsilon=eps).per_example, [-math.log(0.9)])
    close(run("exo_pair", far, beta=0.5, epsilon=1e-12).per_example, [0.0], tol=1e-11)
    # either side of the optimum the loss is positive: mode-seeking, not DPO's monotone decrease
    for z in (z_star - 1, z_star + 1):
        assert run("exo_pair", pair([[z / beta, 0.0]], [[0.0, 0.0]]), beta=beta, epsilon=eps).per_example > 0


def test_discopop_blend_extremes():
    """tau -> 0: a hard switch, logistic for rho < 0 and exponential for rho > 0; tau -> inf: the even
    mixture 0.5 (-ls(rho) + e^-rho). Far negative rho: the logistic loss -rho (finite where exp(-rho)
    overflows); far positive: e^-rho -> 0."""
    batch = pair([[-1.0, -3.0], [-3.0, -1.0]], [[-2.0, -2.0], [-2.0, -2.0]])  # d = 2 and -2
    hard = run("discopop", batch, beta=0.5, tau=1e-6).per_example
    close(hard, [math.exp(-1.0), -ls(-1.0)])
    even = run("discopop", batch, beta=0.5, tau=1e9).per_example
    close(even, [0.5 * (-ls(1.0) + math.exp(-1.0)), 0.5 * (-ls(-1.0) + math.exp(1.0))], tol=1e-8)
    for dtype in (torch.float32, torch.float64):
        far = pair([[0.0, 2000.0], [2000.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], dtype=dtype)
        close(run("discopop", far, beta=1.0).per_example, [2000.0, 0.0], tol=1e-6)


def test_discopop_is_not_convex_at_zero_margin():
    """d loss / d rho at rho = 0: with w = 1/2, w' = 1/(4 tau), A = -ls = ln 2, A' = -1/2, E = e^-rho:
    -w' A + (1 - w) A' + w' E - w E = (1 - ln 2)/(4 tau) - 3/4: +0.7842641 at tau = 0.05 (the margin is
    pushed down from the reference), negative for tau > (1 - ln 2)/3 = 0.1022843 (-0.5965680 at 0.5)."""
    for tau in (0.05, 0.5):
        policy = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
        out = run("discopop", SeqLogps(policy=policy, reference=torch.zeros(1, 2, dtype=torch.float64)),
                  beta=1.0, tau=tau)
        out.per_example.sum().backward()
        slope = (1 - LN2) / (4 * tau) - 0.75
        close(policy.grad, [[slope, -slope]])
    close((1 - LN2) / 0.2 - 0.75, 0.7842641, tol=1e-6)
    # the local minimum below zero and the bump above it (values of the loss at beta = 1, tau = 0.05)
    at = lambda r: run("discopop", pair([[r, 0.0]], [[0.0, 0.0]]), beta=1.0).per_example.item()  # noqa: E731
    assert at(-0.119) < at(-0.2) and at(-0.119) < at(0.0) < at(0.072) and at(0.072) > at(0.3)


# --------------------------------------------------------------------------------- gradients
# bco_pair's batch-mean delta is detached on purpose, so finite differences (which see it move)
# cannot check it: test_bco_batch_mean_passes_no_gradient_through_delta checks that gradient analytically
GRAD_CASES = [("exo_pair", {"epsilon": 0.05}), ("nca_pair", {"beta": 0.2}), ("bco_pair", {"reward_shift": 0.3}), ("aot", {"label_smoothing": 0.1}), ("aot_unpaired", {}),
              ("apo_zero", {}), ("apo_down", {}), ("discopop", {}), ("discopop", {"tau": 2.0}),
              ("dpo", {"length_normalize": True})]


@pytest.mark.parametrize("name,params", GRAD_CASES)
def test_gradcheck(name, params):
    """float64 gradcheck (autograd vs finite differences) of per_example w.r.t. the policy log-probs,
    on random pairs whose sorted values have no ties (aot's sort is smooth there)."""
    base = random_pairs(b=4, seed=5)

    def f(policy):
        return run(name, SeqLogps(policy=policy, reference=base.reference, n_tokens=base.n_tokens),
                   **params).per_example

    assert torch.autograd.gradcheck(f, (base.policy.clone().requires_grad_(True),))


def test_bco_batch_mean_passes_no_gradient_through_delta():
    """delta is detached: d loss_i / d h_w,i = -beta sig(-(r_w - delta)) only, as for a fixed shift."""
    batch = random_pairs(b=3, seed=6)
    policy = batch.policy.clone().requires_grad_(True)
    out = run("bco_pair", SeqLogps(policy=policy, reference=batch.reference), beta=0.5)
    out.per_example.sum().backward()
    r = 0.5 * (batch.policy - batch.reference)
    delta = r.mean()
    close(policy.grad[:, 0], -0.5 * torch.sigmoid(-(r[:, 0] - delta)))
    close(policy.grad[:, 1], 0.5 * torch.sigmoid(r[:, 1] - delta))


# --------------------------------------------------------------------------------- stability
@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_finite_at_large_logratios(name, sign):
    """|log-ratio| = 1e3 in float32, both orientations: finite loss, gradients and rewards."""
    policy = torch.tensor([[-1.0, -2001.0], [-1500.0, -0.5]])
    reference = torch.tensor([[-1001.0, -1001.0], [-500.0, -1000.5]])
    if sign < 0:
        policy, reference = policy.flip(1), reference.flip(1)
    policy.requires_grad_(True)
    out = run(name, SeqLogps(policy=policy, reference=reference), beta=1.0)
    assert torch.isfinite(out.per_example).all(), out.per_example
    out.per_example.sum().backward()
    assert torch.isfinite(policy.grad).all()
    assert torch.isfinite(out.rewards).all()


# ----------------------------------------------------------------------- registry and contract
def test_registry_entries():
    for name in NEW:
        obj = OBJECTIVES[name]
        assert obj.kind == "pairwise" and obj.needs_reference and obj.features == ()
    assert {n for n in NEW if OBJECTIVES[n].couples_batch} == {"bco_pair", "aot", "aot_unpaired"}
    assert OBJECTIVES["exo_pair"].params == {"beta": 0.1, "epsilon": 1e-3}
    assert OBJECTIVES["discopop"].params == {"beta": 0.1, "tau": 0.05}
    assert OBJECTIVES["bco_pair"].params["reward_shift"] == "batch_mean"


def test_contract_errors():
    good = pair(H_POLICY, H_REF)
    with pytest.raises(ValueError, match="epsilon"):
        run("exo_pair", good, epsilon=0.0)
    with pytest.raises(ValueError, match="reward_shift"):
        run("bco_pair", good, reward_shift="running")
    with pytest.raises(ValueError, match="tau"):
        run("discopop", good, tau=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        run("aot", good, label_smoothing=0.5)
    triple = SeqLogps(policy=torch.zeros(1, 3), reference=torch.zeros(1, 3))
    for name in NEW:
        with pytest.raises(ValueError, match="exactly 2 responses"):
            run(name, triple)
    with pytest.raises(ValueError, match="n_tokens"):
        run("dpo", good, length_normalize=True)


def test_pairwise_loss_api():
    """The functional API reaches the new objectives with their defaults and parameters."""
    batch = random_pairs(seed=7)
    args = (batch.policy[:, 0], batch.policy[:, 1], batch.reference[:, 0], batch.reference[:, 1])
    for name in NEW:
        close(pairwise_loss(name, *args), run(name, batch).per_example)
    close(pairwise_loss("discopop", *args, beta=0.2, tau=0.3), run("discopop", batch, beta=0.2, tau=0.3).per_example)
