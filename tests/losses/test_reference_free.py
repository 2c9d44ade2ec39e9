"""Reference-free objectives of prefalign.losses.reference_free: poft and mapo.

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


def run(name: str, batch: SeqLogps, **params):
    return get_objective(name)(batch, **params)


# ---------------------------------------------------------------------------------------- poft
def poft_batch(policy, n_tokens, aligned, dtype=F64) -> SeqLogps:
    return SeqLogps(policy=t(policy, dtype), n_tokens=t(n_tokens, dtype),
                    features={"aligned_logps": t(aligned, dtype)})


def test_golden_poft():
    """Row 1: logp -6 over 3 tokens -> -2; aligned per-token means (-2.5, -3.5) -> -3; beta = 1:
    -ls(-2 + 3) = -ls(1) = 0.3132617. Row 2: -4 / 4 = -1 against one-model-average -1.5 (M = 2:
    -1, -2): -ls(0.5) = 0.4740770. beta = 2 on row 1: -ls(2) = log(1 + e^-2) = 0.1269280."""
    batch = poft_batch([[-6.0], [-4.0]], [[3.0], [4.0]], [[-2.5, -3.5], [-1.0, -2.0]])
    out = run("poft", batch)
    close(out.per_example, [-ls(1.0), -ls(0.5)])
    close(out.per_example, [0.3132617, 0.4740770], tol=1e-6)
    close(out.rewards, [[-2.0], [-1.0]])
    close(out.extras["nll"], 1.5)
    close(run("poft", batch, beta=2.0).per_example[0], 0.1269280, tol=1e-6)


def test_poft_equal_scores_is_ln2():
    """Target as likely (per token) as the aligned models' average: ln 2."""
    close(run("poft", poft_batch([[-6.0]], [[3.0]], [[-1.0, -3.0]])).per_example, [LN2])


def test_poft_single_aligned_model_and_pairs():
    """M = 1 is the same Bradley-Terry term; with pairs, column 0 (chosen) is the SFT response."""
    single = run("poft", poft_batch([[-6.0]], [[3.0]], [[-3.0]])).per_example
    close(single, run("poft", poft_batch([[-6.0]], [[3.0]], [[-2.5, -3.5]])).per_example)
    paired = SeqLogps(policy=t([[-6.0, -1.0]]), n_tokens=t([[3.0, 1.0]]),
                      features={"aligned_logps": t([[-3.0]])})
    close(run("poft", paired).per_example, single)


def test_poft_gradient_is_weighted_sft():
    """d loss / d logp = -(beta / |y|) sigmoid(-beta (r_theta - r_aligned)): SFT's per-token
    gradient, weighted per example. Row: r = -2, aligned -3, beta = 1, |y| = 3 ->
    -(1/3) sigmoid(-1) = -0.0896471."""
    policy = t([[-6.0]], grad=True)
    batch = SeqLogps(policy=policy, n_tokens=t([[3.0]]), features={"aligned_logps": t([[-3.0]])})
    run("poft", batch).per_example.sum().backward()
    close(policy.grad, [[-sig(-1.0) / 3.0]])


def test_gradcheck_poft():
    torch.manual_seed(4)
    policy = (-5 * torch.rand(4, 1, dtype=F64)).requires_grad_()
    n_tokens = torch.tensor([[3.0], [5.0], [1.0], [8.0]], dtype=F64)
    aligned = -torch.rand(4, 3, dtype=F64)

    def f(p):
        batch = SeqLogps(policy=p, n_tokens=n_tokens, features={"aligned_logps": aligned})
        return run("poft", batch, beta=1.5).per_example

    assert torch.autograd.gradcheck(f, (policy,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_poft_stable_at_large_logps(dtype):
    for v in (1e3, -1e3):
        policy = torch.tensor([[v]], dtype=dtype, requires_grad=True)
        batch = SeqLogps(policy=policy, n_tokens=torch.ones(1, 1, dtype=dtype),
                         features={"aligned_logps": torch.tensor([[-v]], dtype=dtype)})
        out = run("poft", batch)
        assert torch.isfinite(out.per_example).all()
        out.per_example.sum().backward()
        assert torch.isfinite(policy.grad).all()


def test_poft_aligned_score_raises_loss():
    """The better the aligned models find the response, the harder it is to beat them."""
    low = run("poft", poft_batch([[-6.0]], [[3.0]], [[-4.0]])).per_example
    high = run("poft", poft_batch([[-6.0]], [[3.0]], [[-1.0]])).per_example
    assert high.item() > low.item()


# ---------------------------------------------------------------------------------------- mapo
def g(u: float) -> float:
    """MaPO's link u / (e^u - 1), the independent reference (with its limit 1 at u = 0)."""
    return 1.0 if u == 0 else u / math.expm1(u)


def mapo_ref(lw: float, ll: float, beta: float, snr: float, T: float) -> float:
    return -lw - beta * ls(T * (g(-snr * lw) - g(-snr * ll)))


def test_golden_mapo():
    """Diffusion scale: l = -MSE = (-0.2, -0.4), snr = 0.5 -> u = (0.1, 0.2):
    g(0.1) = 0.1 / 0.1051709 = 0.9508332, g(0.2) = 0.2 / 0.2214028 = 0.9033311.
    T = 10: margin logit 10 (0.0475021) = 0.4750208, -ls(0.4750208) = 0.4835811;
    beta = 0.1: loss = 0.2 + 0.0483581 = 0.2483581.
    LM scale (length_normalize): logps (-2, -6) over (2, 3) tokens -> l = (-1, -2); snr = 1, T = 1:
    g(1) - g(2) = 1/(e - 1) - 2/(e^2 - 1) = 1/(e + 1) = sigmoid(-1) = 0.2689414;
    beta = 0.5: loss = 1 - 0.5 ls(0.2689414) = 1 + 0.5 (0.5676905) = 1.2838453."""
    out = run("mapo", SeqLogps(policy=t([[-0.2, -0.4]])), beta=0.1, snr=0.5, timesteps=10)
    close(out.per_example, [mapo_ref(-0.2, -0.4, 0.1, 0.5, 10)])
    close(out.per_example, [0.2483581], tol=1e-6)
    close(out.rewards, [[9.508332, 9.033311]], tol=1e-6)
    lm = SeqLogps(policy=t([[-2.0, -6.0]]), n_tokens=t([[2.0, 3.0]]))
    out = run("mapo", lm, beta=0.5, snr=1.0, timesteps=1, length_normalize=True)
    close(out.per_example, [1.0 - 0.5 * ls(sig(-1.0))])
    close(out.per_example, [1.2838453], tol=1e-6)


def test_mapo_on_a_diffusion_surrogate():
    """The authors' loss on denoising MSEs, written out here: mean(L_w) - beta mean(ls(T (g(snr L_w)
    - g(snr L_l)))), equals mapo on policy = -MSE with the default snr = 0.5, T = 1000."""
    torch.manual_seed(5)
    target = torch.randn(3, 2, 4, 8, 8, dtype=F64)
    pred = target + 0.3 * torch.randn(3, 2, 4, 8, 8, dtype=F64)
    mse = ((pred - target) ** 2).mean(dim=(2, 3, 4))  # [B, 2] per-sample denoising losses
    expected = [mse[i, 0].item() - 0.1 * ls(1000 * (g(0.5 * mse[i, 0].item()) - g(0.5 * mse[i, 1].item())))
                for i in range(3)]
    close(run("mapo", SeqLogps(policy=-mse)).per_example, expected)


def test_mapo_special_cases():
    """beta = 0: the preferred sample's NLL alone; equal likelihoods: margin ln 2; also through
    pairwise_loss (no reference needed)."""
    batch = SeqLogps(policy=t([[-0.2, -0.4], [-0.3, -0.3]]))
    close(run("mapo", batch, beta=0.0).per_example, [0.2, 0.3])
    close(run("mapo", batch).per_example[1], 0.3 + 0.1 * LN2)
    via = pairwise_loss("mapo", t([-0.2, -0.3]), t([-0.4, -0.3]), beta=0.1)
    close(via, run("mapo", batch, beta=0.1).per_example)
    defaults = {"beta": 0.1, "snr": 0.5, "timesteps": 1000, "length_normalize": False}
    assert get_objective("mapo").params == defaults


def test_mapo_link_is_exact_across_its_branches():
    """The link is computed with a series near u = 0 and an overflow-free form elsewhere; both
    must match u / expm1(u) in float64 (log-likelihoods positive and negative)."""
    for lw in (-2e-4 - 1e-9, -2e-4 + 1e-9, -1e-7, 0.0, 1e-7, 3.0, -3.0, -60.0, 60.0):
        out = run("mapo", SeqLogps(policy=t([[lw, 0.0]])), beta=1.0, snr=0.5, timesteps=1)
        close(out.rewards[0, 0], g(-0.5 * lw), tol=1e-12)


def test_gradcheck_mapo():
    """Log-likelihoods on both sides of 0 and inside the series region."""
    policy = t([[-0.2, -0.4], [0.3, -1.5], [1e-5, -1e-5], [-2.0, 2.0]], grad=True)
    ones = torch.ones(4, 2, dtype=F64)
    assert torch.autograd.gradcheck(lambda p: run("mapo", SeqLogps(policy=p), timesteps=10).per_example,
                                    (policy,))
    assert torch.autograd.gradcheck(
        lambda p: run("mapo", SeqLogps(policy=p, n_tokens=2 * ones), snr=1.0, timesteps=3,
                      length_normalize=True).per_example, (policy,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mapo_stable_at_large_logps(dtype):
    for policy in ([[1e3, -1e3]], [[-1e3, 1e3]], [[-1e3, -1e3]], [[1e3, 1e3]]):
        p = torch.tensor(policy, dtype=dtype, requires_grad=True)
        out = run("mapo", SeqLogps(policy=p))
        assert torch.isfinite(out.per_example).all() and torch.isfinite(out.rewards).all()
        out.per_example.sum().backward()
        assert torch.isfinite(p.grad).all()


def test_mapo_swap_flips_margin():
    out = run("mapo", SeqLogps(policy=t([[-0.2, -0.4]])), timesteps=10)
    out_s = run("mapo", SeqLogps(policy=t([[-0.4, -0.2]])), timesteps=10)
    margin = out.rewards[:, 0] - out.rewards[:, 1]
    close(out_s.rewards[:, 0] - out_s.rewards[:, 1], -margin)
    assert margin.item() > 0  # the more likely sample scores higher
