"""`listwise-k2`: with K = 2 the listwise objectives are their pairwise counterparts (LiPO, arXiv:2402.01878).

LiPO's Props. 2.1-2.3 reduce list objectives at list size 2 to pairwise ones. On a real batch
(the shipped model's log-probs on real HH-RLHF pairs, as [B, 2] lists with scores psi = (1, 0))
this checks, per pair, losses and their gradients with respect to the log-probs:
  listwise_dpo (Plackett-Luce, DPO_PL)  ==  dpo                                   (DPO_BT)
  lipo_lambda                           ==  (1 - 1/log2 3) * dpo: with two items the lambda weight
                                            is |G_1 - G_2| |1/D(1) - 1/D(2)| = 1 * (1 - 1/log2 3)
  pro (dynamic temperature)             ==  simpo(beta=1, gamma=0) + 0.05 * NLL_sum(chosen):
                                            1/T = psi_w - psi_l = 1 and the SFT weight 0.05 (K-1)^2
The policy is the shipped model after a few SFT steps on other pairs, the reference the shipped
model: with policy = reference every log-ratio is 0 and the DPO-family equalities would hold
trivially, so a batch whose margins have no spread is INCONCLUSIVE.

Tolerance, derived rather than picked. Both sides of an equality evaluate the same function of
the same inputs with different float operations (e.g. beta (h_w - h_l) vs beta h_w - beta h_l;
softplus vs logsumexp). Each operation rounds its result with relative error at most the unit
roundoff u (2^-24 in float32, 2^-53 in float64), and no path has more than OPS = 8 of them, on
magnitudes at most M = 1 + |a| + |b| + |loss| (a, b the two scores compared; PRO adds its SFT
term). Softplus and logsigmoid are 1-Lipschitz, so |difference| <= OPS * u * M per pair; their
derivatives (sigmoids) are 1/4-Lipschitz and scaled by the score's coefficient c (beta, or
1/|y| + 0.05 for PRO), so gradients differ by at most OPS * u * M * c. The check runs in float32
(the training dtype) and again in float64, where the same bound is 2^29 times tighter: passing
both means the objectives agree as functions, not by a loose threshold.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from prefalign.losses import OBJECTIVES
from prefalign.reproduce.claims import ClaimResult, Verdict, claim
from prefalign.reproduce.text_testbed import TINY_MODEL, hh_split, pair_logps
from prefalign.types import SeqLogps

OPS = 8
BETA = 0.1
LIPO_FACTOR = 1.0 - 1.0 / math.log2(3.0)
PRO_SFT = 0.05  # pro's default sft_weight; with K = 2 the weight is 0.05 * (2 - 1)^2


def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def sft_policy(model, tokenizer, examples: list, steps: int, lr: float = 1e-3):
    """A few Adam steps of summed NLL on the chosen responses of `examples`: a policy that differs
    from the shipped reference the way a briefly trained model does."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        chunk = examples[(step * 8) % len(examples):][:8]
        logps, _ = pair_logps(model, tokenizer, chunk, 192, 128)
        opt.zero_grad()
        (-logps[:, 0].mean()).backward()
        opt.step()
    return model.eval()


def pairs_and_counterparts(policy: torch.Tensor, reference: torch.Tensor, n_tokens: torch.Tensor):
    """(name, listwise loss, pairwise counterpart, scores a and b, gradient scale c) per objective,
    computed from leaf tensors so that gradients with respect to the log-probs can be read."""
    psi = torch.tensor([1.0, 0.0], dtype=policy.dtype).expand_as(policy)
    batch = SeqLogps(policy, reference, n_tokens, target=psi)
    dpo = OBJECTIVES["dpo"].fn(batch, beta=BETA).per_example
    simpo = OBJECTIVES["simpo"].fn(batch, beta=1.0, gamma=0.0).per_example
    s = BETA * (policy - reference)
    r = policy / n_tokens
    return [
        ("listwise_dpo", OBJECTIVES["listwise_dpo"].fn(batch, beta=BETA).per_example, dpo, s, BETA),
        ("lipo_lambda", OBJECTIVES["lipo_lambda"].fn(batch, beta=BETA).per_example, LIPO_FACTOR * dpo, s, BETA),
        ("pro", OBJECTIVES["pro"].fn(batch).per_example, simpo + PRO_SFT * (-policy[:, 0]),
         torch.stack([r[:, 0], r[:, 1], PRO_SFT * policy[:, 0]], 1), 1.0 / n_tokens.min(1).values + PRO_SFT),
    ]


def compare(policy: torch.Tensor, reference: torch.Tensor, n_tokens: torch.Tensor, dtype: torch.dtype) -> dict:
    """Per objective: the largest loss and gradient differences and how they sit within the bound."""
    u = unit_roundoff(dtype)
    out = {}
    for k in range(3):
        pol = policy.detach().to(dtype).requires_grad_(True)
        ref = reference.detach().to(dtype)
        name, lst, pw, scores, coeff = pairs_and_counterparts(pol, ref, n_tokens.to(dtype))[k]
        g_list = torch.autograd.grad(lst.sum(), pol, retain_graph=True)[0]
        g_pair = torch.autograd.grad(pw.sum(), pol)[0]
        magnitude = 1 + scores.detach().abs().sum(1) + lst.detach().abs()
        loss_bound = OPS * u * magnitude
        grad_bound = (OPS * u * magnitude * coeff).unsqueeze(1)
        loss_gap = (lst - pw).detach().abs()
        grad_gap = (g_list - g_pair).abs()
        out[name] = {"max_loss_diff": float(loss_gap.max()), "max_grad_diff": float(grad_gap.max()),
                     "worst_loss_diff_over_bound": float((loss_gap / loss_bound).max()),
                     "worst_grad_diff_over_bound": float((grad_gap / grad_bound).max()),
                     "holds": bool((loss_gap <= loss_bound).all() and (grad_gap <= grad_bound).all())}
    return out


@claim("listwise-k2", paper="LiPO: Listwise Preference Optimization through Learning-to-Rank (arXiv:2402.01878)",
       paper_claim="at list size K = 2 listwise DPO (DPO_PL) equals DPO (DPO_BT), LiPO-lambda equals DPO up to "
                   "its lambda weight, and PRO equals its pairwise form (Props. 2.1-2.3)")
def run(out_dir: Path, quick: bool) -> ClaimResult:
    from prefalign.models.causal_lm import load_model, load_tokenizer

    torch.manual_seed(0)
    n_pairs, sft_steps = (16, 3) if quick else (128, 20)
    batch_pairs, other_pairs, data_report = hh_split(n_pairs, 8 * sft_steps, seed=1)
    tokenizer = load_tokenizer(str(TINY_MODEL))
    reference_model = load_model(str(TINY_MODEL)).eval()
    policy_model = sft_policy(load_model(str(TINY_MODEL)), tokenizer, other_pairs, sft_steps)
    with torch.no_grad():
        ref, n_tokens = pair_logps(reference_model, tokenizer, batch_pairs, 256, 160)
        pol, _ = pair_logps(policy_model, tokenizer, batch_pairs, 256, 160)
    z = BETA * ((pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1]))
    checks = {str(d).removeprefix("torch."): compare(pol, ref, n_tokens, d) for d in (torch.float32, torch.float64)}
    numbers = {"pairs": n_pairs, "sft_steps": sft_steps, "beta": BETA, "ops": OPS, "lipo_factor": LIPO_FACTOR,
               "dpo_margin_std": float(z.std()), "dpo_margin_range": [float(z.min()), float(z.max())],
               "data": data_report, "checks": checks}
    table = [{"objective": name, "dtype": dt, "max |loss diff|": f"{c['max_loss_diff']:.2e}",
              "max |grad diff|": f"{c['max_grad_diff']:.2e}", "worst diff / bound":
              f"{max(c['worst_loss_diff_over_bound'], c['worst_grad_diff_over_bound']):.3f}",
              "within bound": c["holds"]} for dt, per in checks.items() for name, c in per.items()]
    worst32 = max(max(c["worst_loss_diff_over_bound"], c["worst_grad_diff_over_bound"])
                  for c in checks["float32"].values())
    measured = (f"on {n_pairs} real HH-RLHF pairs (DPO margins {z.min():.2f}..{z.max():.2f}), all three K = 2 "
                f"listwise losses and gradients match their pairwise forms; the largest float32 difference is "
                f"{worst32:.3f} of its rounding bound")
    if float(z.std()) < 0.1:
        return ClaimResult(Verdict.INCONCLUSIVE, measured, f"the DPO margins have std {z.std():.3f} < 0.1: the "
                           "policy barely differs from the reference, so the DPO-family equalities hold trivially",
                           numbers, table=table)
    failed = [f"{name} ({dt})" for dt, per in checks.items() for name, c in per.items() if not c["holds"]]
    if failed:
        return ClaimResult(Verdict.FAIL, measured.replace("all three", "not all"), "outside the derived rounding "
                           f"bound OPS * u * M: {', '.join(failed)}", numbers, table=table)
    return ClaimResult(Verdict.PASS, measured, f"every pair's loss and gradient differences lie within "
                       f"{OPS} * u * (1 + |a| + |b| + |loss|) (times the score's coefficient for gradients) in both "
                       "float32 and float64, and the margins have spread (std "
                       f"{z.std():.2f} >= 0.1)", numbers, table=table)
