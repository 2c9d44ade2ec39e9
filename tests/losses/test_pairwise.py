"""Pairwise objectives of prefalign.losses.pairwise (besides dpo): golden values, reductions,
gradients and numerical stability.

Golden values are computed by hand (arithmetic in each docstring) and checked against plain
`math` expressions written here, never against the objectives' own internals.
"""

from __future__ import annotations

import math

import pytest
import torch

from prefalign.losses import get_objective, pairwise_loss
from prefalign.types import SeqLogps

LN2 = math.log(2.0)


def ls(z: float) -> float:
    """log sigmoid(z), written independently of torch."""
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


def pair(policy, reference=None, n_tokens=None, dtype=torch.float64, **features) -> SeqLogps:
    """A [B, 2] batch from nested lists; features given as lists become [B] tensors."""
    t = lambda x: None if x is None else torch.tensor(x, dtype=dtype)  # noqa: E731
    feats = {k: t(v) for k, v in features.items()}
    return SeqLogps(policy=t(policy), reference=t(reference), n_tokens=t(n_tokens), features=feats)


def run(name: str, batch: SeqLogps, **params):
    return get_objective(name)(batch, **params)


def close(a, b, tol=1e-9):
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    assert torch.allclose(a, b, atol=tol, rtol=tol), (a, b)


# Policy [-1, -3] against reference [-2, -2]: h = (1, -1), d = h_w - h_l = 2 in most goldens.
H_POLICY, H_REF = [[-1.0, -3.0]], [[-2.0, -2.0]]
REF_SAMPLE = {"ref_sample_logps": [-3.0], "ref_sample_reference_logps": [-5.0]}


# ---------------------------------------------------------------------------------- goldens
def test_golden_robust_dpo():
    """h = (1, -1), d = 2, beta = 0.5 -> z = beta d = 1, eps = 0.2.
    ls(1) = -log(1 + e^-1) = -0.3132617, ls(-1) = -1.3132617.
    loss = (-(0.8)(-0.3132617) + 0.2 (-1.3132617)) / 0.6 = (0.2506093 - 0.2626523) / 0.6
         = -0.0200717 (the unbiased loss can be negative)."""
    out = run("robust_dpo", pair(H_POLICY, H_REF), beta=0.5, epsilon=0.2)
    close(out.per_example, [(-(0.8) * ls(1.0) + 0.2 * ls(-1.0)) / 0.6])
    close(out.per_example, [-0.0200717], tol=1e-6)
    close(out.rewards, [[0.5, -0.5]])


def test_golden_ipo():
    """Summed: h = (1, -1), d = 2, beta = 0.5 -> 1/(2 beta) = 1 -> (2 - 1)^2 = 1.
    Per-token (length_normalize): |y| = (2, 4): h = (1/2, -1/4), d = 0.75 -> (0.75 - 1)^2 = 0.0625."""
    out = run("ipo", pair(H_POLICY, H_REF, n_tokens=[[2.0, 4.0]]), beta=0.5)
    close(out.per_example, [1.0])
    close(out.rewards, [[0.5, -0.5]])
    normed = run("ipo", pair(H_POLICY, H_REF, n_tokens=[[2.0, 4.0]]), beta=0.5, length_normalize=True)
    close(normed.per_example, [0.0625])
    close(normed.rewards, [[0.25, -0.125]])


def test_golden_hinge():
    """beta = 0.25. Row 1: d = 2 -> max(0, 1 - 0.5) = 0.5. Row 2: h = (4, -4), d = 8 ->
    max(0, 1 - 2) = 0 (a margin past 1/beta costs nothing)."""
    batch = pair([[-1.0, -3.0], [2.0, -6.0]], [[-2.0, -2.0], [-2.0, -2.0]])
    close(run("hinge", batch, beta=0.25).per_example, [0.5, 0.0])


def test_golden_fdpo():
    """h = (1, -1), beta = 0.5; loss = log(1 + exp(-beta (f'(u_w) - f'(u_l)))).
    forward_kl: f' = -1/u: -e^-1 + e^1 = 2.3504024 (= 2 sinh 1) -> z = 1.1752012
         -> log(1 + 0.3087569) = 0.2690777.
    js: f' = log 2 + ls(h): ls(1) - ls(-1) = 1 -> z = 0.5 -> log(1 + e^-0.5) = 0.4740770.
    alpha (0.5): f' = (1 - u^-0.5)/0.5: 2(1 - e^-0.5) - 2(1 - e^0.5) = 0.7869387 + 1.2974425
         = 2.0843812 -> z = 1.0421906 -> log(1 + 0.3526813) = 0.3020887.
    reverse_kl: f' = log u + 1 -> z = beta d = 1 -> log(1 + e^-1) = 0.3132617 (DPO)."""
    batch = pair(H_POLICY, H_REF)
    expect = {
        "forward_kl": -ls(0.5 * (-math.exp(-1) + math.exp(1))),
        "js": -ls(0.5),
        "alpha": -ls(0.5 * (2 * (1 - math.exp(-0.5)) - 2 * (1 - math.exp(0.5)))),
        "reverse_kl": -ls(1.0),
    }
    for divergence, value in expect.items():
        close(run("fdpo", batch, beta=0.5, divergence=divergence, alpha=0.5).per_example, [value])
    close(run("fdpo", batch, beta=0.5, divergence="forward_kl").per_example, [0.2690777], tol=1e-6)
    close(run("fdpo", batch, beta=0.5, divergence="js").per_example, [0.4740770], tol=1e-6)
    close(run("fdpo", batch, beta=0.5, divergence="alpha", alpha=0.5).per_example, [0.3020887], tol=1e-6)


def test_golden_simpo():
    """logp = (-4, -9), |y| = (2, 3): means (-2, -3); beta = 2 -> rewards (-4, -6);
    margin 2 - gamma 1 = 1 -> log(1 + e^-1) = 0.3132617. Defaults are beta 2, gamma 1."""
    batch = pair([[-4.0, -9.0]], n_tokens=[[2.0, 3.0]])
    out = run("simpo", batch)
    close(out.per_example, [-ls(1.0)])
    close(out.per_example, [0.3132617], tol=1e-6)
    close(out.rewards, [[-4.0, -6.0]])


def test_golden_cpo():
    """logp = (-4, -6), |w| = 4, beta = 0.5: preference log(1 + e^-(0.5 * 2)) = 0.3132617;
    NLL(w) = 4 / 4 = 1; lam = 1 -> 1.3132617."""
    out = run("cpo", pair([[-4.0, -6.0]], n_tokens=[[4.0, 3.0]]), beta=0.5, lam=1.0)
    close(out.per_example, [-ls(1.0) + 1.0])
    close(out.extras["nll"], 1.0)
    close(out.rewards, [[-2.0, -3.0]])


def test_golden_orpo():
    """Row 1: p_w = 0.5 (mean logp ln 0.5 over 2 tokens), p_l = 0.2 (1 token).
    odds_w = 1, odds_l = 0.25 -> log odds ratio = ln 4; ls(ln 4) = ln 0.8 = -0.2231436;
    NLL = ln 2 = 0.6931472; lam = 0.1 -> 0.6931472 + 0.0223144 = 0.7154615.
    Row 2 exercises the near-1 branch: mean logp -1e-3 and -2: log odds x - log(1 - e^x)."""
    lo = lambda x: x - math.log(1 - math.exp(x))  # noqa: E731
    batch = pair([[2 * math.log(0.5), math.log(0.2)], [-3e-3, -2.0]], n_tokens=[[2.0, 1.0], [3.0, 1.0]])
    out = run("orpo", batch, lam=0.1)
    row2 = 1e-3 - 0.1 * ls(lo(-1e-3) - lo(-2.0))
    close(out.per_example, [LN2 - 0.1 * math.log(0.8), row2])
    close(out.per_example[0], 0.7154615, tol=1e-6)
    close(out.rewards[0], [0.0, math.log(0.25)])
    close(out.extras["log_odds_ratio"], (math.log(4) + lo(-1e-3) - lo(-2.0)) / 2)


def test_golden_orpo_prompt_and_response_nll():
    """nll_tokens="prompt_and_response" (the authors' release, xfactlab/orpo: prompt loss kept):
    the SFT term is the given mean NLL over prompt and response, 1.5, instead of the response's
    ln 2; the odds ratio stays on the response: ls(ln 4) = ln 0.8 -> 1.5 + 0.0223144 = 1.5223144."""
    batch = pair([[2 * math.log(0.5), math.log(0.2)]], n_tokens=[[2.0, 1.0]], prompt_and_response_nll=[1.5])
    out = run("orpo", batch, lam=0.1, nll_tokens="prompt_and_response")
    close(out.per_example, [1.5 - 0.1 * math.log(0.8)])
    close(out.per_example, [1.5223144], tol=1e-6)
    close(out.extras["nll"], 1.5)
    assert get_objective("orpo").params["nll_tokens"] == "response"  # TRL's choice is the default
    # the default ignores the feature: the response-only golden above
    close(run("orpo", batch, lam=0.1).per_example, [LN2 - 0.1 * math.log(0.8)])
    with pytest.raises(ValueError, match="prompt_and_response_nll"):
        run("orpo", pair([[-1.0, -2.0]], n_tokens=[[2.0, 1.0]]), nll_tokens="prompt_and_response")
    with pytest.raises(ValueError, match="nll_tokens must be"):
        run("orpo", batch, nll_tokens="prompt")


def test_orpo_prompt_nll_gradient_flows_through_the_feature():
    """d loss / d prompt_and_response_nll = 1; the response-only NLL then passes no gradient to the
    chosen log-prob except through the odds ratio."""
    nll = torch.tensor([1.5], dtype=torch.float64, requires_grad=True)
    policy = torch.tensor([[-1.4, -1.6]], dtype=torch.float64, requires_grad=True)
    batch = SeqLogps(policy=policy, n_tokens=torch.tensor([[2.0, 1.0]], dtype=torch.float64),
                     features={"prompt_and_response_nll": nll})
    run("orpo", batch, lam=0.0, nll_tokens="prompt_and_response").per_example.sum().backward()
    close(nll.grad, [1.0])
    close(policy.grad, [[0.0, 0.0]])


def test_golden_irepo():
    """h = (1, -1), beta = 0.5 -> beta d = 1; p_hat = 0.75 -> logit = ln 3 = 1.0986123;
    (1 - 1.0986123)^2 = 0.0097244."""
    out = run("irepo", pair(H_POLICY, H_REF, soft_label=[0.75]), beta=0.5)
    close(out.per_example, [(1 - math.log(3)) ** 2])
    close(out.per_example, [0.0097244], tol=1e-6)


def test_irepo_other_scaling_is_the_same_loss_over_beta_squared():
    """(d - logit(p) / beta)^2 = (beta d - logit(p))^2 / beta^2: same minimiser, gradients times
    1/beta^2. h = (1, -1), d = 2, beta = 0.5, p = 0.75: (2 - 2 ln 3)^2 = 4 (1 - ln 3)^2 = 0.0388976."""
    out = run("irepo", pair(H_POLICY, H_REF, soft_label=[0.75]), beta=0.5)
    close(out.per_example * 4, [(2 - math.log(3) / 0.5) ** 2])
    close(out.per_example * 4, [0.0388976], tol=1e-6)


def test_golden_sppo_hard():
    """eta = 4, h = (1, -1): (1 - 2)^2 + (-1 + 2)^2 = 2; rewards h / eta = (0.25, -0.25)."""
    out = run("sppo_hard", pair(H_POLICY, H_REF), eta=4.0)
    close(out.per_example, [2.0])
    close(out.rewards, [[0.25, -0.25]])


def test_golden_selm():
    """beta = 0.5, d = 2 -> DPO part log(1 + e^-1) = 0.3132617; h(y_ref) = -3 - (-5) = 2;
    optimism alpha beta h = 0.1 * 0.5 * 2 = 0.1 -> 0.4132617."""
    out = run("selm", pair(H_POLICY, H_REF, **REF_SAMPLE), beta=0.5, alpha=0.1)
    close(out.per_example, [-ls(1.0) + 0.1])
    close(out.extras["optimism"], 0.1)


def test_golden_selm_defaults_are_the_authors_recipe():
    """The authors' recipes: beta = 0.01, alpha = 0.001. h = (1, -1), d = 2 -> z = 0.02,
    log(1 + e^-0.02) = 0.6831972; optimism 0.001 * 0.01 * h(y_ref) = 1e-5 * 2 = 2e-5 -> 0.6832172."""
    assert get_objective("selm").params == {"beta": 0.01, "alpha": 0.001}
    out = run("selm", pair(H_POLICY, H_REF, **REF_SAMPLE))
    close(out.per_example, [-ls(0.02) + 2e-5])
    close(out.per_example, [0.6832172], tol=1e-6)


def test_golden_xpo():
    """beta = 0.5, d = 2 -> 0.3132617; bonus alpha log pi(y_ref) = 0.01 * (-10) = -0.1 -> 0.2132617."""
    out = run("xpo", pair(H_POLICY, H_REF, ref_sample_logps=[-10.0]), beta=0.5, alpha=0.01)
    close(out.per_example, [-ls(1.0) - 0.1])
    close(out.extras["exploration"], -0.1)


# -------------------------------------------------------------------- reductions the papers state
def random_pairs(b=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    policy = -torch.rand(b, 2, generator=g, dtype=dtype) * 20 - 1
    reference = -torch.rand(b, 2, generator=g, dtype=dtype) * 20 - 1
    n_tokens = torch.randint(1, 30, (b, 2), generator=g).to(dtype)
    soft = torch.rand(b, generator=g, dtype=dtype) * 0.8 + 0.1
    feats = {"soft_label": soft, "ref_sample_logps": -torch.rand(b, generator=g, dtype=dtype) * 30,
             "ref_sample_reference_logps": -torch.rand(b, generator=g, dtype=dtype) * 30}
    return SeqLogps(policy=policy, reference=reference, n_tokens=n_tokens, features=feats)


def test_reductions_to_dpo():
    """robust_dpo(eps=0), fdpo(reverse_kl), selm(alpha=0), xpo(alpha=0) are DPO; f-DPO's
    alpha-divergence tends to reverse KL as alpha -> 0 and is forward KL at alpha = 1."""
    batch = random_pairs()
    ref = run("dpo", batch, beta=0.3).per_example
    close(run("robust_dpo", batch, beta=0.3, epsilon=0.0).per_example, ref)
    close(run("fdpo", batch, beta=0.3, divergence="reverse_kl").per_example, ref)
    close(run("selm", batch, beta=0.3, alpha=0.0).per_example, ref)
    close(run("xpo", batch, beta=0.3, alpha=0.0).per_example, ref)
    close(run("fdpo", batch, beta=0.3, divergence="alpha", alpha=1e-7).per_example, ref, tol=1e-5)
    close(run("fdpo", batch, beta=0.3, divergence="alpha", alpha=1.0).per_example,
          run("fdpo", batch, beta=0.3, divergence="forward_kl").per_example)


def test_reductions_via_pairwise_loss():
    """The functional API gives the registry's values, and the same DPO reductions."""
    batch = random_pairs(seed=1)
    args = (batch.policy[:, 0], batch.policy[:, 1], batch.reference[:, 0], batch.reference[:, 1])
    lens = {"chosen_lengths": batch.n_tokens[:, 0], "rejected_lengths": batch.n_tokens[:, 1]}
    dpo = pairwise_loss("dpo", *args, beta=0.2)
    close(pairwise_loss("robust_dpo", *args, beta=0.2, epsilon=0.0), dpo)
    close(pairwise_loss("fdpo", *args, beta=0.2, divergence="reverse_kl"), dpo)
    close(pairwise_loss("selm", *args, beta=0.2, alpha=0.0, features=batch.features), dpo)
    close(pairwise_loss("xpo", *args, beta=0.2, alpha=0.0, features=batch.features), dpo)
    cases = {
        "robust_dpo": {"epsilon": 0.3}, "ipo": {"length_normalize": True}, "hinge": {},
        "fdpo": {"divergence": "js"}, "simpo": {"gamma": 0.7}, "cpo": {"lam": 0.5}, "orpo": {"lam": 0.2},
        "irepo": {}, "sppo_hard": {"eta": 10.0}, "selm": {"alpha": 0.3}, "xpo": {"alpha": 0.3},
    }
    for name, params in cases.items():
        beta = {"beta": 0.2} if "beta" in get_objective(name).params else {}
        registry = run(name, batch, **beta, **params)
        functional = pairwise_loss(name, *args, **beta, features=batch.features, **lens, **params)
        close(functional, registry.per_example)


def test_ln2_at_policy_equal_reference():
    """Every sigmoid-type loss is ln 2 at zero margin: rDPO ((1-2eps)/(1-2eps)) ln 2, every f-DPO
    divergence, SELM with h(y_ref) = 0, XPO with alpha = 0, SimPO with gamma = 0 and equal means,
    CPO with lam = 0 and equal log-probs. IPO is 1/(4 beta^2) there."""
    batch = pair([[-3.0, -7.0]], [[-3.0, -7.0]], n_tokens=[[3.0, 7.0]],
                 ref_sample_logps=[-2.0], ref_sample_reference_logps=[-2.0])
    for name, params in [("robust_dpo", {"epsilon": 0.3}), ("fdpo", {"divergence": "forward_kl"}),
                         ("fdpo", {"divergence": "js"}), ("fdpo", {"divergence": "alpha", "alpha": 0.3}),
                         ("selm", {}), ("xpo", {"alpha": 0.0}), ("simpo", {"gamma": 0.0})]:
        close(run(name, batch, **params).per_example, [LN2])
    close(run("cpo", pair([[-5.0, -5.0]], n_tokens=[[2.0, 2.0]]), lam=0.0).per_example, [LN2])
    close(run("ipo", batch, beta=0.25).per_example, [4.0])


def test_reference_free_reductions():
    """CPO with lam = 0 is DPO with a uniform (zero) reference; SimPO with gamma = 0 and equal
    lengths L is that DPO with beta / L; ORPO with lam = 0 is per-token SFT on the chosen."""
    batch = random_pairs(seed=2)
    uniform = SeqLogps(policy=batch.policy, reference=torch.zeros_like(batch.policy), n_tokens=batch.n_tokens)
    close(run("cpo", batch, beta=0.4, lam=0.0).per_example, run("dpo", uniform, beta=0.4).per_example)
    equal = SeqLogps(policy=batch.policy, reference=torch.zeros_like(batch.policy),
                     n_tokens=torch.full_like(batch.policy, 8.0))
    close(run("simpo", equal, beta=2.0, gamma=0.0).per_example, run("dpo", equal, beta=0.25).per_example)
    close(run("orpo", batch, lam=0.0).per_example, run("sft", batch).per_example)


def test_ipo_length_normalize_is_per_token_ipo():
    """With every |y| = L, per-token IPO equals summed IPO on log-ratios divided by L."""
    batch = random_pairs(seed=3)
    equal = SeqLogps(policy=batch.policy, reference=batch.reference,
                     n_tokens=torch.full_like(batch.policy, 4.0))
    scaled = SeqLogps(policy=batch.policy / 4, reference=batch.reference / 4)
    close(run("ipo", equal, length_normalize=True).per_example, run("ipo", scaled).per_example)
    assert "SUMMED" in get_objective("ipo").fn.__doc__ and "MEAN" in get_objective("ipo").fn.__doc__
    assert "MEAN" in get_objective("simpo").fn.__doc__


def test_optima():
    """SPPO-hard is 0 at h = (eta/2, -eta/2); iREPO is 0 at beta d = logit(p_hat); hinge is 0 once
    beta d >= 1."""
    close(run("sppo_hard", pair([[5.0, -5.0]], [[0.0, 0.0]]), eta=10.0).per_example, [0.0])
    p = 1 / (1 + math.exp(-0.6))
    close(run("irepo", pair([[1.0, -2.0]], [[0.0, 0.0]], soft_label=[p]), beta=0.2).per_example, [0.0])
    close(run("hinge", pair([[5.0, 0.0]], [[0.0, 0.0]]), beta=0.2).per_example, [0.0])


def test_irepo_clips_unanimous_labels():
    """p_hat = 1 is clipped to 1 - label_clip: target logit(0.999) = ln 999, finite loss."""
    out = run("irepo", pair([[0.0, 0.0]], [[0.0, 0.0]], soft_label=[1.0]), label_clip=1e-3)
    close(out.per_example, [math.log(999.0) ** 2])


# ------------------------------------------------------------------------------- swap symmetry
SWAP_CASES = [("robust_dpo", {}), ("ipo", {}), ("hinge", {}), ("fdpo", {"divergence": "alpha"}),
              ("simpo", {}), ("cpo", {}), ("orpo", {}), ("irepo", {}), ("sppo_hard", {}), ("selm", {}),
              ("xpo", {})]


@pytest.mark.parametrize("name,params", SWAP_CASES)
def test_swap_flips_margin(name, params):
    batch = random_pairs(seed=4)
    swapped = SeqLogps(policy=batch.policy.flip(1), reference=batch.reference.flip(1),
                       n_tokens=batch.n_tokens.flip(1),
                       features={**batch.features, "soft_label": 1 - batch.features["soft_label"]})
    r, rs = run(name, batch, **params).rewards, run(name, swapped, **params).rewards
    close(r[:, 0] - r[:, 1], -(rs[:, 0] - rs[:, 1]))


def test_swap_values():
    """Swapping chosen and rejected evaluates the same loss at -d: rDPO and f-DPO follow their
    formulas at the negated margin; iREPO with p_hat -> 1 - p_hat is unchanged."""
    batch = pair([[-1.0, -3.0]], [[-2.0, -2.0]], soft_label=[0.8])
    swapped = pair([[-3.0, -1.0]], [[-2.0, -2.0]], soft_label=[0.2])
    close(run("robust_dpo", swapped, beta=0.5, epsilon=0.2).per_example,
          [(-(0.8) * ls(-1.0) + 0.2 * ls(1.0)) / 0.6])
    close(run("fdpo", swapped, beta=0.5, divergence="js").per_example, [-ls(-0.5)])
    close(run("irepo", swapped).per_example, run("irepo", batch).per_example)


# --------------------------------------------------------------------------------- gradients
GRAD_CASES = [("robust_dpo", {"epsilon": 0.2}), ("ipo", {}), ("ipo", {"length_normalize": True}),
              ("hinge", {"beta": 0.01}), ("fdpo", {"divergence": "forward_kl"}),
              ("fdpo", {"divergence": "js"}),
              ("fdpo", {"divergence": "alpha", "alpha": 0.3}), ("simpo", {}), ("cpo", {}), ("orpo", {}),
              ("irepo", {}), ("sppo_hard", {"eta": 10.0}), ("selm", {"alpha": 0.5}), ("xpo", {"alpha": 0.5})]


@pytest.mark.parametrize("name,params", GRAD_CASES)
def test_gradcheck(name, params):
    """float64 gradcheck of per_example w.r.t. the policy log-probs (and the policy log-probs
    of y_ref for selm / xpo). Values sit away from kinks (hinge stays below margin 1/beta)."""
    base = random_pairs(b=3, seed=5)
    ref_sample = base.features["ref_sample_logps"].clone().requires_grad_(True)

    def f(policy, ref_sample_logps):
        feats = {**base.features, "ref_sample_logps": ref_sample_logps}
        batch = SeqLogps(policy=policy, reference=base.reference, n_tokens=base.n_tokens, features=feats)
        return run(name, batch, **params).per_example

    policy = base.policy.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (policy, ref_sample))


# --------------------------------------------------------------------------------- stability
@pytest.mark.parametrize("name,params", GRAD_CASES)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_finite_at_large_logratios(name, params, sign):
    """|log-ratio| = 1e3 (and policy log-probs of -2e3 for the reference-free objectives) in
    float32: finite loss and finite gradients, both orientations of the pair."""
    policy = torch.tensor([[-1.0, -2001.0], [-1500.0, -0.5]])
    reference = torch.tensor([[-1001.0, -1001.0], [-500.0, -1000.5]])
    if sign < 0:
        policy, reference = policy.flip(1), reference.flip(1)
    policy.requires_grad_(True)
    ref_sample = torch.tensor([-1000.0, -3.0], requires_grad=True)
    feats = {"soft_label": torch.tensor([0.9, 0.1]), "ref_sample_logps": ref_sample,
             "ref_sample_reference_logps": torch.tensor([0.0, -1003.0])}
    batch = SeqLogps(policy=policy, reference=reference, n_tokens=torch.tensor([[1.0, 1.0], [3.0, 1.0]]),
                     features=feats)
    out = run(name, batch, **params)
    assert torch.isfinite(out.per_example).all(), out.per_example
    out.per_example.sum().backward()
    assert torch.isfinite(policy.grad).all()
    if "ref_sample" in get_objective(name).features:  # selm, xpo: y_ref's log-prob is in the loss
        assert ref_sample.grad is not None and torch.isfinite(ref_sample.grad).all()
    else:
        assert ref_sample.grad is None
    assert torch.isfinite(out.rewards).all()


def test_orpo_finite_at_probability_one():
    """A response with mean log-prob 0 (p = 1, infinite odds) still gives a finite loss and gradient."""
    policy = torch.tensor([[0.0, -2.0]], requires_grad=True)
    out = run("orpo", SeqLogps(policy=policy, n_tokens=torch.tensor([[4.0, 2.0]])))
    out.per_example.sum().backward()
    assert torch.isfinite(out.per_example).all() and torch.isfinite(policy.grad).all()


# ---------------------------------------------------------------------------- contract errors
def test_contract_errors():
    batch = pair(H_POLICY, H_REF)
    with pytest.raises(ValueError, match="epsilon"):
        run("robust_dpo", batch, epsilon=0.5)
    with pytest.raises(ValueError, match="divergence"):
        run("fdpo", batch, divergence="hellinger")
    with pytest.raises(ValueError, match="alpha > 0"):
        run("fdpo", batch, divergence="alpha", alpha=0.0)
    with pytest.raises(ValueError, match="soft_label"):
        run("irepo", batch)
    with pytest.raises(ValueError, match="ref_sample_logps"):
        run("xpo", batch)
    with pytest.raises(ValueError, match="exactly 2"):
        run("simpo", SeqLogps(policy=torch.zeros(1, 3), n_tokens=torch.ones(1, 3)))
    with pytest.raises(ValueError, match="lengths"):
        run("simpo", pair([[-1.0, -2.0]]))


def test_registry_metadata():
    """Reference-free objectives say so; features name what the trainer must supply."""
    for name in ("simpo", "cpo", "orpo"):
        assert not get_objective(name).needs_reference
    for name in ("robust_dpo", "ipo", "hinge", "fdpo", "irepo", "sppo_hard", "selm", "xpo"):
        obj = get_objective(name)
        assert obj.needs_reference and obj.kind == "pairwise" and not obj.couples_batch
    assert get_objective("irepo").features == ("soft_label",)
    assert get_objective("selm").features == get_objective("xpo").features == ("ref_sample",)
    assert get_objective("simpo").params == {"beta": 2.0, "gamma": 1.0}
