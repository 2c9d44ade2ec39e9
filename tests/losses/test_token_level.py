"""Token-level objectives of prefalign.losses.token_level: sparsepo, sparsepo_act, treg, longpo,
unlikelihood.

Golden values are computed by hand (arithmetic in each docstring) and checked against plain
`math` expressions written here, never against the objectives' own internals.
"""

from __future__ import annotations

import math

import pytest
import torch

from prefalign.losses import get_objective, pairwise_loss
from prefalign.types import SeqLogps

from .oracle import F64, LN2, close, ls, sig, t


# One prompt, T = 2: the chosen response has 2 tokens, the rejected 1 (+ 1 padding position, which
# holds junk on purpose: it must never matter).
MASK = [[[True, True], [True, False]]]
POL_TOK = [[[-1.0, -2.0], [-3.0, 99.0]]]
REF_TOK = [[[-1.5, -1.0], [-2.0, -50.0]]]  # token log-ratios: chosen (0.5, -1.0), rejected (-1.0)
KL_TOK = [[[0.2, 0.4], [0.1, 7.0]]]


def token_batch(pol=POL_TOK, ref=REF_TOK, mask=MASK, policy=None, reference=None, **features) -> SeqLogps:
    """[B, 2] batch whose sequence log-probs are the masked sums of the token log-probs."""
    m = torch.tensor(mask)
    pol_t = pol if torch.is_tensor(pol) else t(pol)
    ref_t = ref if torch.is_tensor(ref) else t(ref)
    if policy is None:
        policy = pol_t.masked_fill(~m, 0.0).sum(-1)
    if reference is None:
        reference = ref_t.masked_fill(~m, 0.0).sum(-1)
    feats = {"policy_token_logps": pol_t, "reference_token_logps": ref_t, "token_mask": m}
    feats.update({k: v if torch.is_tensor(v) else t(v) for k, v in features.items()})
    return SeqLogps(policy=policy, reference=reference, features=feats)


def run(name: str, batch: SeqLogps, **params):
    return get_objective(name)(batch, **params)


# ------------------------------------------------------------------------------------ sparsepo
def test_golden_sparsepo():
    """Common mask m = relu(logits): chosen relu(2, -1) = (2, 0), rejected relu(0.5) = 0.5.
    U_w = 2(0.5) + 0(-1) = 1, D_w = 2(0.2) + 0(0.4) = 0.4; U_l = 0.5(-1) = -0.5, D_l = 0.5(0.1) = 0.05.
    beta = 0.5: rewards = 0.5 (1.4, -0.45) = (0.7, -0.225), logit 0.925 -> -ls(0.925) = 0.3339916.
    L1: sum m = 2 + 0.5 = 2.5 on both responses; one common mask carries the mean weight, as the
    authors' release halves l1_u and l1_d: (0.1 + 0.2) / 2 (2.5) = 0.375 -> 0.7089916.
    Independent masks ([..., 2]): m_u as above, m_d = relu(-0.3, 1) = (0, 1) and relu(2) = 2:
    D_w = 0.4, D_l = 0.2 -> rewards (0.7, -0.15), logit 0.85 -> -ls(0.85) = 0.3558651;
    L1 = 0.1 (2.5) + 0.2 (1 + 2) = 0.85 -> 1.2058651 (independent masks: each weight on its own mask)."""
    common = [[[2.0, -1.0], [0.5, 3.0]]]
    out = run("sparsepo", token_batch(token_kl=KL_TOK, mask_logits=common), beta=0.5, l1_u=0.1, l1_d=0.2)
    close(out.per_example, [-ls(0.925) + 0.375])
    close(out.per_example, [0.7089916], tol=1e-6)
    close(out.extras["l1"], 0.375)
    close(out.rewards, [[0.7, -0.225]])
    close(out.extras["mask_sparsity"], 1 / 3)
    indp = [[[[2.0, -0.3], [-1.0, 1.0]], [[0.5, 2.0], [3.0, 3.0]]]]
    out = run("sparsepo", token_batch(token_kl=KL_TOK, mask_logits=indp), beta=0.5, l1_u=0.1, l1_d=0.2)
    close(out.per_example, [-ls(0.85) + 0.85])
    close(out.per_example, [1.2058651], tol=1e-6)
    close(out.rewards, [[0.7, -0.15]])


def test_golden_sparsepo_act():
    """Activation mask chosen (1, 0.25), rejected (0.5):
    U_w = 0.5 - 0.25 = 0.25, D_w = 0.2 + 0.1 = 0.3; U_l = -0.5, D_l = 0.05.
    beta = 0.5: rewards (0.275, -0.225), logit 0.5 -> -ls(0.5) = log(1 + e^-0.5) = 0.4740770."""
    act = [[[1.0, 0.25], [0.5, 9.0]]]
    out = run("sparsepo_act", token_batch(token_kl=KL_TOK, activation_mask=act), beta=0.5)
    close(out.per_example, [-ls(0.5)])
    close(out.per_example, [0.4740770], tol=1e-6)
    close(out.rewards, [[0.275, -0.225]])
    close(out.extras["mask_mean"], (1.0 + 0.25 + 0.5) / 3)


def test_sparsepo_unit_masks_no_kl_is_dpo():
    """m = 1 everywhere and token_kl = 0: U = h, D = 0, so the loss is DPO's, also through
    pairwise_loss (sequence log-probs = token sums: policy (-3, -3), reference (-2.5, -2))."""
    zero_kl = torch.zeros(1, 2, 2, dtype=F64)
    batch = token_batch(token_kl=zero_kl, mask_logits=torch.ones(1, 2, 2, dtype=F64))
    dpo = run("dpo", batch, beta=0.5)
    close(run("sparsepo", batch, beta=0.5).per_example, dpo.per_example)
    close(run("sparsepo", batch, beta=0.5).rewards, dpo.rewards)
    act = token_batch(token_kl=zero_kl, activation_mask=torch.ones(1, 2, 2, dtype=F64))
    close(run("sparsepo_act", act, beta=0.5).per_example, dpo.per_example)
    close(dpo.per_example, [-ls(0.5 * (-0.5 - (-1.0)))])
    feats = {k: batch.features[k] for k in ("policy_token_logps", "reference_token_logps", "token_mask",
                                            "token_kl", "mask_logits")}
    args = (t([-3.0]), t([-3.0]), t([-2.5]), t([-2.0]))
    via_pairwise = pairwise_loss("sparsepo", *args, beta=0.5, features=feats)
    close(via_pairwise, pairwise_loss("dpo", *args, beta=0.5))


def test_sparsepo_unit_masks_is_tdpo1():
    """m = 1: -log sigmoid(u - delta), u = beta (h_w - h_l), delta = beta (D_l - D_w) (TDPO-1):
    h = (-0.5, -1), D = (0.6, 0.1), beta = 0.5: u = 0.25, delta = -0.25 -> -ls(0.5)."""
    batch = token_batch(token_kl=KL_TOK, mask_logits=torch.ones(1, 2, 2, dtype=F64))
    close(run("sparsepo", batch, beta=0.5).per_example, [-ls(0.5 * 0.5 - 0.5 * (0.1 - 0.6))])
    act = token_batch(token_kl=KL_TOK, activation_mask=torch.ones(1, 2, 2, dtype=F64))
    close(run("sparsepo_act", act, beta=0.5).per_example, [-ls(0.5)])


def test_sparsepo_zero_masks_is_ln2():
    """All masks 0 (negative logits): no reward, no KL: ln 2, and the L1 penalty is 0."""
    batch = token_batch(token_kl=KL_TOK, mask_logits=-torch.ones(1, 2, 2, dtype=F64))
    out = run("sparsepo", batch, beta=0.5, l1_u=1.0, l1_d=1.0)
    close(out.per_example, [LN2])
    close(out.extras["mask_sparsity"], 1.0)


def test_sparsepo_gradient_reaches_mask_logits():
    """d loss / d logit_t = -beta sigmoid(-z) * sign * (ratio_t + kl_t) for a positive logit (+ the
    common mask's L1 weight (l1_u + l1_d) / 2 = (0.1 + 0) / 2 = 0.05), 0 for a negative one (ReLU),
    0 at padding. Chosen token 0: ratio 0.5 + kl 0.2, z = 0.925."""
    logits = t([[[2.0, -1.0], [0.5, 3.0]]], grad=True)
    out = run("sparsepo", token_batch(token_kl=KL_TOK, mask_logits=logits), beta=0.5, l1_u=0.1)
    out.per_example.sum().backward()
    s = sig(-0.925)
    expected = [[[-0.5 * s * 0.7 + 0.05, 0.0], [0.5 * s * (-1.0 + 0.1) + 0.05, 0.0]]]
    close(logits.grad, expected)


def test_sparsepo_padding_junk_is_ignored():
    """-inf / nan at masked positions change neither the loss nor make gradients non-finite."""
    pol = t([[[-1.0, -2.0], [-3.0, float("nan")]]], grad=True)
    ref = t([[[-1.5, -1.0], [-2.0, float("-inf")]]])
    kl = t([[[0.2, 0.4], [0.1, float("inf")]]], grad=True)
    logits = t([[[2.0, -1.0], [0.5, float("nan")]]], grad=True)
    batch = token_batch(pol, ref, policy=t([[-3.0, -3.0]]), reference=t([[-2.5, -2.0]]), token_kl=kl,
                        mask_logits=logits)
    out = run("sparsepo", batch, beta=0.5, l1_u=0.1, l1_d=0.2)
    close(out.per_example, [-ls(0.925) + 0.375])
    out.per_example.sum().backward()
    for g in (pol.grad, kl.grad, logits.grad):
        assert torch.isfinite(g).all() and g[0, 1, 1] == 0


@pytest.mark.parametrize("indp", [False, True])
def test_gradcheck_sparsepo(indp):
    torch.manual_seed(0)
    pol = torch.randn(3, 2, 4, dtype=F64, requires_grad=True)
    kl = torch.rand(3, 2, 4, dtype=F64, requires_grad=True)
    shape = (3, 2, 4, 2) if indp else (3, 2, 4)
    # keep logits away from ReLU's kink at 0, where finite differences are not the derivative
    raw = torch.rand(shape, dtype=F64) + 0.2
    logits = (raw * torch.where(torch.rand(shape) < 0.3, -1.0, 1.0)).requires_grad_()
    ref = torch.randn(3, 2, 4, dtype=F64)
    mask = torch.ones(3, 2, 4, dtype=torch.bool)
    mask[:, 1, 3] = False

    def f(p, k, lg):
        batch = SeqLogps(policy=p.sum(-1), reference=ref.sum(-1), features={
            "policy_token_logps": p, "reference_token_logps": ref, "token_mask": mask, "token_kl": k,
            "mask_logits": lg})
        return run("sparsepo", batch, beta=0.7, l1_u=0.05, l1_d=0.1).per_example

    assert torch.autograd.gradcheck(f, (pol, kl, logits))


def test_gradcheck_sparsepo_act():
    torch.manual_seed(1)
    pol = torch.randn(3, 2, 4, dtype=F64, requires_grad=True)
    kl = torch.rand(3, 2, 4, dtype=F64, requires_grad=True)
    ref, act = torch.randn(3, 2, 4, dtype=F64), torch.rand(3, 2, 4, dtype=F64)
    mask = torch.ones(3, 2, 4, dtype=torch.bool)

    def f(p, k):
        batch = SeqLogps(policy=p.sum(-1), reference=ref.sum(-1), features={
            "policy_token_logps": p, "reference_token_logps": ref, "token_mask": mask, "token_kl": k,
            "activation_mask": act})
        return run("sparsepo_act", batch, beta=0.7).per_example

    assert torch.autograd.gradcheck(f, (pol, kl))


def test_sparsepo_act_mask_gets_no_gradient():
    """The activation mask is a fixed function of the reference model: no gradient reaches it."""
    act = t([[[1.0, 0.25], [0.5, 0.0]]], grad=True)
    pol = t(POL_TOK, grad=True)
    run("sparsepo_act", token_batch(pol, token_kl=KL_TOK, activation_mask=act)).per_example.sum().backward()
    assert act.grad is None and pol.grad is not None


@pytest.mark.parametrize("name", ["sparsepo", "sparsepo_act"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparsepo_stable_at_large_ratios(name, dtype):
    """Token log-ratios of +-1e3 and token KLs of 1e3: finite loss and gradients."""
    pol = torch.tensor([[[500.0, 500.0], [-500.0, -500.0]], [[-500.0, -500.0], [500.0, 500.0]]],
                       dtype=dtype, requires_grad=True)
    ref = torch.tensor([[[-500.0, -500.0], [500.0, 500.0]]] * 2, dtype=dtype)
    kl = torch.full((2, 2, 2), 1e3, dtype=dtype, requires_grad=True)
    mask = torch.ones(2, 2, 2, dtype=torch.bool)
    ones = torch.ones(2, 2, 2, dtype=dtype)
    extra = {"mask_logits": ones.requires_grad_()} if name == "sparsepo" else {"activation_mask": ones}
    batch = SeqLogps(policy=pol.sum(-1), reference=ref.sum(-1), features={
        "policy_token_logps": pol, "reference_token_logps": ref, "token_mask": mask, "token_kl": kl, **extra})
    out = run(name, batch, beta=1.0)
    assert torch.isfinite(out.per_example).all()
    out.per_example.sum().backward()
    assert torch.isfinite(pol.grad).all() and torch.isfinite(kl.grad).all()


@pytest.mark.parametrize("name,feature", [("sparsepo", "mask_logits"), ("sparsepo_act", "activation_mask")])
def test_sparsepo_swap_flips_margin(name, feature):
    m = [[[2.0, 0.5], [0.5, 0.0]]]
    out = run(name, token_batch(token_kl=KL_TOK, **{feature: m}), beta=0.5)
    swap = lambda x: list(reversed(x[0]))  # noqa: E731
    mask = [[[True, False], [True, True]]]
    swapped = token_batch([swap(POL_TOK)], [swap(REF_TOK)], mask, token_kl=[swap(KL_TOK)],
                          **{feature: [swap(m)]})
    out_s = run(name, swapped, beta=0.5)
    margin, margin_s = out.rewards[:, 0] - out.rewards[:, 1], out_s.rewards[:, 0] - out_s.rewards[:, 1]
    close(margin_s, -margin)
    assert margin.item() != 0


# ---------------------------------------------------------------------------------------- treg
# Token log-probs chosen (-0.5, -0.5) vs ref (-1, -1): ratios (0.5, 0.5), h_w = 1;
# rejected (-3) vs (-2): ratio -1, h_l = -1. Sequence logps: policy (-1, -3), reference (-2, -2).
TREG_POL = [[[-0.5, -0.5], [-3.0, 0.0]]]
TREG_REF = [[[-1.0, -1.0], [-2.0, 0.0]]]
R_HAT = [[[0.4, -0.1], [-0.3, 0.45]]]


def test_golden_treg():
    """beta = 0.5: d = 2, z = 1: DPO = -ls(1) = 0.3132617, w = sigmoid(-1) = 0.2689414.
    sum r_hat * ratio: chosen 0.4(0.5) - 0.1(0.5) = 0.15, rejected -0.3(-1) = 0.3 -> 0.45;
    L_REG sum = -0.5 (0.45) = -0.225. alpha = 0.5: 0.3132617 + 0.5 (0.2689414)(-0.225)
    = 0.3132617 - 0.0302559 = 0.2830058."""
    out = run("treg", token_batch(TREG_POL, TREG_REF, contrast_token_rewards=R_HAT), beta=0.5, alpha=0.5)
    close(out.per_example, [-ls(1.0) + 0.5 * sig(-1.0) * (-0.5 * 0.45)])
    close(out.per_example, [0.2830058], tol=1e-6)
    close(out.rewards, [[0.5, -0.5]])
    close(out.extras["reg"], -0.225)
    close(out.extras["weight"], sig(-1.0))


def test_treg_reduces_to_dpo():
    """alpha = 0, or all contrastive rewards 0, gives DPO (registry and pairwise_loss)."""
    batch = token_batch(TREG_POL, TREG_REF, contrast_token_rewards=R_HAT)
    dpo = run("dpo", batch, beta=0.5).per_example
    close(run("treg", batch, beta=0.5, alpha=0.0).per_example, dpo)
    zero = token_batch(TREG_POL, TREG_REF, contrast_token_rewards=torch.zeros(1, 2, 2, dtype=F64))
    close(run("treg", zero, beta=0.5, alpha=0.5).per_example, dpo)
    args = (t([-1.0]), t([-3.0]), t([-2.0]), t([-2.0]))
    dpo_pairwise = pairwise_loss("dpo", *args, beta=0.5)
    close(pairwise_loss("treg", *args, beta=0.5, alpha=0.0, features=batch.features), dpo_pairwise)
    close(pairwise_loss("treg", *args, beta=0.5, features=zero.features), dpo_pairwise)


def test_treg_is_ln2_at_reference():
    """policy == reference: DPO term ln 2 and every token log-ratio 0, so the regulariser is 0."""
    batch = token_batch(TREG_REF, TREG_REF, contrast_token_rewards=R_HAT)
    close(run("treg", batch, beta=0.5, alpha=0.5).per_example, [LN2])


def test_treg_weight_is_stop_gradient():
    """The sequence weight w is detached: d loss / d policy (sequence) is DPO's alone, and the
    token gradient is -alpha w beta r_hat_t (the weighted LM-loss gradient of the paper)."""
    policy = t([[-1.0, -3.0]], grad=True)
    pol_tok = t(TREG_POL, grad=True)
    batch = token_batch(pol_tok, TREG_REF, policy=policy, contrast_token_rewards=R_HAT)
    run("treg", batch, beta=0.5, alpha=0.5).per_example.sum().backward()
    s = sig(-1.0)
    close(policy.grad, [[-0.5 * s, 0.5 * s]])
    close(pol_tok.grad, [[[-0.5 * s * 0.5 * 0.4, -0.5 * s * 0.5 * -0.1], [-0.5 * s * 0.5 * -0.3, 0.0]]])


def test_gradcheck_treg():
    """Through the token log-probs (the regulariser; w does not depend on them) and, with alpha = 0,
    through the sequence log-probs (w's stop-gradient makes the joint finite difference differ)."""
    torch.manual_seed(2)
    pol_tok = torch.randn(3, 2, 4, dtype=F64, requires_grad=True)
    ref_tok, r_hat = torch.randn(3, 2, 4, dtype=F64), torch.rand(3, 2, 4, dtype=F64) - 0.5
    mask = torch.rand(3, 2, 4) < 0.8
    policy = torch.randn(3, 2, dtype=F64, requires_grad=True)
    reference = torch.randn(3, 2, dtype=F64)

    def f(p_tok, p, alpha):
        batch = SeqLogps(policy=p, reference=reference, features={
            "policy_token_logps": p_tok, "reference_token_logps": ref_tok, "token_mask": mask,
            "contrast_token_rewards": r_hat})
        return run("treg", batch, beta=0.7, alpha=alpha).per_example

    assert torch.autograd.gradcheck(lambda p_tok: f(p_tok, policy.detach(), 0.5), (pol_tok,))
    assert torch.autograd.gradcheck(lambda p: f(pol_tok.detach(), p, 0.0), (policy,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_treg_stable_at_large_ratios(dtype):
    pol = torch.tensor([[[500.0, 500.0], [-500.0, -500.0]]], dtype=dtype, requires_grad=True)
    ref = torch.tensor([[[-500.0, -500.0], [500.0, 500.0]]], dtype=dtype)
    for sign in (1.0, -1.0):
        policy = (sign * pol.sum(-1)).detach().requires_grad_()
        batch = SeqLogps(policy=policy, reference=ref.sum(-1), features={
            "policy_token_logps": pol, "reference_token_logps": ref,
            "token_mask": torch.ones(1, 2, 2, dtype=torch.bool),
            "contrast_token_rewards": torch.full((1, 2, 2), 0.5, dtype=dtype)})
        out = run("treg", batch, beta=1.0, alpha=0.5)
        assert torch.isfinite(out.per_example).all()
        out.per_example.sum().backward()
        assert torch.isfinite(policy.grad).all() and torch.isfinite(pol.grad).all()


def test_treg_swap_flips_margin():
    batch = token_batch(TREG_POL, TREG_REF, contrast_token_rewards=R_HAT)
    swap = lambda x: [list(reversed(x[0]))]  # noqa: E731
    mask = [[[True, False], [True, True]]]
    swapped = token_batch(swap(TREG_POL), swap(TREG_REF), mask, contrast_token_rewards=swap(R_HAT))
    out, out_s = run("treg", batch, beta=0.5), run("treg", swapped, beta=0.5)
    close(out_s.rewards[:, 0] - out_s.rewards[:, 1], -(out.rewards[:, 0] - out.rewards[:, 1]))
    # the regulariser is symmetric in the pair; only DPO's weight changes with the order
    close(out.extras["reg"], out_s.extras["reg"])


# -------------------------------------------------------------------------------------- longpo
def longpo_batch(policy=((-1.0, -3.0),), reference=((-2.0, -2.0),), nll=(2.0,), dtype=F64) -> SeqLogps:
    return SeqLogps(policy=torch.tensor(policy, dtype=dtype), reference=torch.tensor(reference, dtype=dtype),
                    features={"long_chosen_nll": torch.tensor(nll, dtype=dtype)})


def test_golden_longpo():
    """Policy under the long context (-1, -3), reference under the short one (-2, -2): h = (1, -1).
    beta = 0.5: -ls(1) = 0.3132617; NLL 2 + lambda 0.1 * 0.3132617 = 2.0313262."""
    out = run("longpo", longpo_batch(), beta=0.5, lambda_=0.1)
    close(out.per_example, [2.0 - 0.1 * ls(1.0)])
    close(out.per_example, [2.0313262], tol=1e-6)
    close(out.rewards, [[0.5, -0.5]])
    close(out.extras["preference"], -ls(1.0))


def test_longpo_preference_term_is_dpo():
    """(loss - NLL) / lambda_ is DPO on (long-context policy, short-context reference); lambda_ = 0
    is the NLL alone. Also through pairwise_loss."""
    batch = longpo_batch(((-1.0, -3.0), (-4.0, -2.5)), ((-2.0, -2.0), (-3.0, -3.5)), (2.0, 1.5))
    out = run("longpo", batch, beta=0.3, lambda_=0.2)
    dpo = run("dpo", batch, beta=0.3).per_example
    close((out.per_example - batch.features["long_chosen_nll"]) / 0.2, dpo)
    close(run("longpo", batch, beta=0.3, lambda_=0.0).per_example, [2.0, 1.5])
    args = (t([-1.0]), t([-3.0]), t([-2.0]), t([-2.0]))
    via = pairwise_loss("longpo", *args, beta=0.5, lambda_=0.1, features={"long_chosen_nll": t([2.0])})
    close(via, 2.0 + 0.1 * pairwise_loss("dpo", *args, beta=0.5))


def test_longpo_defaults_follow_release():
    assert get_objective("longpo").params == {"beta": 0.01, "lambda_": 0.01}


def test_gradcheck_longpo():
    torch.manual_seed(3)
    policy = torch.randn(4, 2, dtype=F64, requires_grad=True)
    nll = torch.rand(4, dtype=F64, requires_grad=True)
    reference = torch.randn(4, 2, dtype=F64)

    def f(p, n):
        batch = SeqLogps(policy=p, reference=reference, features={"long_chosen_nll": n})
        return run("longpo", batch, beta=0.7, lambda_=0.5).per_example

    assert torch.autograd.gradcheck(f, (policy, nll))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_longpo_stable_at_large_ratios(dtype):
    for policy in ([[1e3, -1e3]], [[-1e3, 1e3]]):
        p = torch.tensor(policy, dtype=dtype, requires_grad=True)
        batch = SeqLogps(policy=p, reference=torch.zeros(1, 2, dtype=dtype),
                         features={"long_chosen_nll": torch.ones(1, dtype=dtype)})
        out = run("longpo", batch, beta=1.0, lambda_=1.0)
        assert torch.isfinite(out.per_example).all()
        out.per_example.sum().backward()
        assert torch.isfinite(p.grad).all()


def test_longpo_swap_flips_margin():
    out = run("longpo", longpo_batch(), beta=0.5)
    out_s = run("longpo", longpo_batch(((-3.0, -1.0),)), beta=0.5)
    close(out_s.rewards[:, 0] - out_s.rewards[:, 1], -(out.rewards[:, 0] - out.rewards[:, 1]))


# -------------------------------------------------------------------------------- unlikelihood
# Two prompts, T = 3. Row 0: chosen 2 tokens (+ 1 padding position holding junk), rejected 3 tokens
# (-0.1 takes log1mexp's expm1 branch, -2.0 and -0.7 its log1p branch). Row 1: one token each.
UL_MASK = [[[True, True, False], [True, True, True]],
           [[True, False, False], [True, False, False]]]
UL_TOK = [[[-0.5, -1.5, 7.0], [-0.1, -2.0, -0.7]],
          [[-0.4, 99.0, -5.0], [-0.3, 3.0, float("-inf")]]]


def ul_batch(tok=UL_TOK, mask=UL_MASK) -> SeqLogps:
    """No reference; sequence log-probs and n_tokens are the masked sums and counts of the tokens,
    as the trainer's step builds them (the sums keep the token log-probs' gradient)."""
    m = torch.tensor(mask)
    tok_t = tok if torch.is_tensor(tok) else t(tok)
    policy = tok_t.masked_fill(~m, 0.0).sum(-1)
    return SeqLogps(policy=policy, n_tokens=m.sum(-1).to(F64),
                    features={"policy_token_logps": tok_t, "token_mask": m})


def log1m_p(lp: float) -> float:
    """log(1 - p) for p = exp(lp), plain math."""
    return math.log(1.0 - math.exp(lp))


def test_golden_unlikelihood():
    """Row 0: NLL = (0.5 + 1.5) / 2 = 1.0; UL = -(log(1 - e^-0.1) + log(1 - e^-2) + log(1 - e^-0.7)) / 3
    = (2.3521685 + 0.1454135 + 0.6863410) / 3 = 1.0613076; alpha = 0.5 -> 1.5306538.
    Row 1: NLL = 0.4; UL = -log(1 - e^-0.3) = 1.3502256 -> 0.4 + 0.6751128 = 1.0751128.
    Default alpha = 1: 2.0613076 and 1.7502256. rewards: mean token log-probs ((-1, -0.9333), (-0.4, -0.3))."""
    ul0 = -(log1m_p(-0.1) + log1m_p(-2.0) + log1m_p(-0.7)) / 3
    ul1 = -log1m_p(-0.3)
    out = run("unlikelihood", ul_batch(), alpha=0.5)
    close(out.per_example, [1.0 + 0.5 * ul0, 0.4 + 0.5 * ul1])
    close(out.per_example, [1.5306538, 1.0751128], tol=1e-6)
    close(out.rewards, [[-1.0, -2.8 / 3], [-0.4, -0.3]])
    assert not out.rewards.requires_grad
    close(out.extras["nll"], (1.0 + 0.4) / 2)
    close(out.extras["unlikelihood"], (ul0 + ul1) / 2)
    close(run("unlikelihood", ul_batch()).per_example, [1.0 + ul0, 0.4 + ul1])
    close(run("unlikelihood", ul_batch()).per_example, [2.0613076, 1.7502256], tol=1e-6)


def test_unlikelihood_gradients_match_the_analytic_derivative():
    """d loss / d lp: -1/|y_w| on chosen tokens; alpha e^lp / (1 - e^lp) / |y_l| on rejected tokens
    (from -alpha log(1 - e^lp) / |y_l|); 0 on padding."""
    alpha = 0.7
    tok = t(UL_TOK, grad=True)
    run("unlikelihood", ul_batch(tok), alpha=alpha).per_example.sum().backward()

    def d_ul(lp: float, n: int) -> float:
        return alpha * math.exp(lp) / (1.0 - math.exp(lp)) / n

    expected = [[[-1 / 2, -1 / 2, 0.0], [d_ul(-0.1, 3), d_ul(-2.0, 3), d_ul(-0.7, 3)]],
                [[-1.0, 0.0, 0.0], [d_ul(-0.3, 1), 0.0, 0.0]]]
    close(tok.grad, expected)


def test_gradcheck_unlikelihood():
    torch.manual_seed(5)
    tok = (-torch.rand(3, 2, 4, dtype=F64) * 3 - 0.05).requires_grad_()
    mask = [[[True] * 4, [True, True, False, False]], [[True, False, False, False], [True] * 4],
            [[True, True, True, False], [True, False, False, False]]]
    assert torch.autograd.gradcheck(lambda x: run("unlikelihood", ul_batch(x, mask), alpha=0.3).per_example,
                                    (tok,))


def test_unlikelihood_alpha_zero_is_sft():
    batch = ul_batch()
    out, sft = run("unlikelihood", batch, alpha=0.0), run("sft", batch)
    assert torch.equal(out.per_example, sft.per_example)
    assert torch.equal(out.rewards, sft.rewards)


def test_unlikelihood_padding_does_not_contribute():
    """Junk in padding positions (0, which is p = 1, huge values, +-inf) or extra padding columns
    change nothing in the loss, and padding positions get zero (finite) gradient."""
    base = run("unlikelihood", ul_batch(), alpha=0.5).per_example
    for junk in (0.0, 1e30, float("-inf"), float("inf")):
        tok = t(UL_TOK)
        tok[~torch.tensor(UL_MASK)] = junk
        tok.requires_grad_()
        out = run("unlikelihood", ul_batch(tok), alpha=0.5).per_example
        close(out, base)
        out.sum().backward()
        assert torch.isfinite(tok.grad).all()
        assert (tok.grad[~torch.tensor(UL_MASK)] == 0).all()
    wider = [[resp + [5.0, -9.0] for resp in row] for row in UL_TOK]
    wider_mask = [[resp + [False, False] for resp in row] for row in UL_MASK]
    close(run("unlikelihood", ul_batch(wider, wider_mask), alpha=0.5).per_example, base)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unlikelihood_token_with_probability_one_is_finite(dtype):
    """A rejected token with log-prob 0 (p = 1) would give -log(1 - p) = inf; the clamp at
    1 - p >= 1e-5 gives -log(1e-5) = 11.5129 for it, with finite gradients."""
    tok = torch.tensor([[[-1.0, -1.0], [0.0, -0.5]]], dtype=dtype, requires_grad=True)
    batch = SeqLogps(policy=tok.sum(-1), n_tokens=torch.tensor([[2.0, 2.0]], dtype=dtype),
                     features={"policy_token_logps": tok, "token_mask": torch.ones(1, 2, 2, dtype=torch.bool)})
    out = run("unlikelihood", batch)
    assert torch.isfinite(out.per_example).all()
    expected = 1.0 + (-math.log(1e-5) - log1m_p(-0.5)) / 2
    assert out.per_example.item() == pytest.approx(expected, rel=1e-4)
    out.per_example.sum().backward()
    assert torch.isfinite(tok.grad).all()


def test_unlikelihood_registry_entry():
    obj = get_objective("unlikelihood")
    assert (obj.kind, obj.paper, obj.needs_reference, obj.couples_batch) == ("token_level", "1908.04319", False,
                                                                             False)
    assert obj.features == ("token_logps", "lengths") and obj.params == {"alpha": 1.0}
    with pytest.raises(ValueError, match="exactly 2 responses"):
        run("unlikelihood", SeqLogps(policy=t([[-1.0, -2.0, -3.0]]), n_tokens=t([[1.0, 1.0, 1.0]])))


def test_missing_features_are_named():
    batch = SeqLogps(policy=t([[-1.0, -3.0]]), reference=t([[-2.0, -2.0]]))
    with pytest.raises(ValueError, match="long_chosen_nll"):
        run("longpo", batch)
    with pytest.raises(ValueError, match="policy_token_logps|token_mask|contrast_token_rewards"):
        run("treg", batch)
