"""Trajectory DPO (GRAPE, arXiv:2411.19309) and reward-guided best-of-N (DeformPAM, arXiv:2410.11584).

A mediocre reference policy (a softmax of CliffWalking's optimal Q at a high temperature) rolls out
episodes; pairs are ranked by their true return (GRAPE ranks by costs and success; the environment's
own return stands in for both). A copy of the reference is trained with the registered `dpo` on
trajectory log-likelihoods (sum of step log-probs, GRAPE's TPO with beta 0.1) through
FamilyTrainee and the one training loop. Then, DeformPAM's action selection: of 16 episodes
sampled from the trained policy, take the one with the highest implicit reward
beta * (log pi(tau) - log pi_ref(tau)), against one taken at random. The claim: best-of-16 returns more.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch

from prefalign.families.base import FamilyTrainee
from prefalign.families.trajectory import (TabularPolicy, TrajectoryFamily, from_gymnasium, make_pair, optimal_q,
                                           rollout, true_return)
from prefalign.losses import get_objective
from prefalign.reproduce.claims import ClaimResult, Verdict, claim

BETA = 0.1  # GRAPE's hard-coded beta
N_CANDIDATES = 16  # DeformPAM's num_of_grasp_points


def settings(quick: bool) -> dict:
    if quick:
        return {"pairs": 256, "steps": 60, "batch_size": 16, "lr": 0.05, "rounds": 100, "horizon": 40,
                "temperature": 3.0}
    # more data and rounds, not more training: at 400 steps the policy is already optimal (-12.34 against
    # -12.2) and 16 candidates have nothing to choose between (INCONCLUSIVE by the ceiling rule)
    return {"pairs": 2048, "steps": 60, "batch_size": 16, "lr": 0.05, "rounds": 1000, "horizon": 40,
            "temperature": 3.0}


def reference_logits(mdp, temperature: float) -> torch.Tensor:
    q, _ = optimal_q(mdp, mdp.R)
    return (q / temperature).detach()


def preference_pairs(mdp, logits: torch.Tensor, n: int, horizon: int, seed: int) -> tuple[list, int]:
    """n pairs of reference episodes, the higher true return first; ties are dropped and counted."""
    rng = random.Random(seed)
    pairs, ties = [], 0
    while len(pairs) < n:
        a, b = rollout(mdp, logits, horizon, rng), rollout(mdp, logits, horizon, rng)
        ra, rb = true_return(mdp, *a), true_return(mdp, *b)
        if math.isclose(ra, rb):
            ties += 1
            continue
        pairs.append(make_pair([a, b] if ra > rb else [b, a]))
    return pairs, ties


def train_dpo(fam: TrajectoryFamily, ref_logits: torch.Tensor, pairs: list, eval_pairs: list, out_dir: Path,
              cfg: dict, seed: int = 0) -> tuple[TabularPolicy, dict]:
    """GRAPE's TPO = the registered dpo on summed step log-likelihoods, run by train_loop."""
    from accelerate import Accelerator

    from prefalign.logging import JsonlSink
    from prefalign.train.loop import LoopParts, LoopSettings, train_loop

    acc = Accelerator(cpu=True)
    policy, reference = TabularPolicy(ref_logits), TabularPolicy(ref_logits).requires_grad_(False)
    trainee = FamilyTrainee(acc, fam, policy, reference, get_objective("dpo"), {"beta": BETA})
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg["lr"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    sink = JsonlSink(out_dir / "metrics.jsonl")
    settings = LoopSettings(out_dir=out_dir, max_steps=cfg["steps"], batch_size=cfg["batch_size"], accumulation=1,
                            max_grad_norm=10.0, seed=seed, save_steps=0, keep_last=1, eval_steps=0,
                            eval_batch_size=64, logging_steps=10, group_by_length=False, resume=False, progress=False)
    torch.manual_seed(seed)
    history = train_loop(LoopParts(acc, trainee, optimizer, scheduler, pairs, eval_pairs, [sink]), settings)
    sink.close()
    return policy, history


def episode_logp(table: torch.Tensor, episode) -> float:
    states, actions = episode
    return float(table[states, actions].sum()) if states else 0.0


def best_vs_random(mdp, source: torch.Tensor, policy: TabularPolicy, reference: TabularPolicy, cfg: dict,
                   seed: int) -> dict:
    """Per round: 16 episodes of the policy with logits `source`; the true return of the one with
    the highest implicit reward of the trained policy, and of a random one."""
    rng = random.Random(seed)
    lp, lr = policy.table().detach(), reference.table().detach()
    best, rand = [], []
    for _ in range(cfg["rounds"]):
        cands = [rollout(mdp, source, cfg["horizon"], rng) for _ in range(N_CANDIDATES)]
        implicit = [BETA * (episode_logp(lp, c) - episode_logp(lr, c)) for c in cands]
        returns = [true_return(mdp, *c) for c in cands]
        best.append(returns[max(range(N_CANDIDATES), key=implicit.__getitem__)])
        rand.append(returns[rng.randrange(N_CANDIDATES)])
    return {"best": best, "random": rand}


def mean_return(mdp, logits: torch.Tensor, n: int, horizon: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [true_return(mdp, *rollout(mdp, logits, horizon, rng)) for _ in range(n)]


def verdict(best: list[float], rand: list[float], optimum: float) -> tuple[Verdict, str]:
    """PASS: best-of-16 beats random-of-16 by more than two standard errors of the paired difference;
    FAIL: it does not beat it at all; INCONCLUSIVE: ahead, but within two standard errors, or a random
    pick is already within 2% of the optimal return (the candidates leave nothing to choose)."""
    diffs = [b - r for b, r in zip(best, rand)]
    n = len(diffs)
    mean = sum(diffs) / n
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / max(1, n - 1) / n)
    said = f"best - random = {mean:.2f} (standard error {se:.2f}, {n} rounds)"
    random_mean = sum(rand) / n
    if random_mean >= optimum - 0.02 * abs(optimum):
        return Verdict.INCONCLUSIVE, (f"random-of-16 already returns {random_mean:.2f}, within 2% of the optimum "
                                      f"{optimum:.2f}: nothing to select; " + said)
    if mean <= 0:
        return Verdict.FAIL, "best-of-16 by implicit reward does not beat random-of-16: " + said
    if mean <= 2 * se:
        return Verdict.INCONCLUSIVE, "ahead but within two standard errors: " + said
    return Verdict.PASS, "ahead by more than two standard errors: " + said


def plot(groups: dict[str, list[float]], optimum: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    names = list(groups)
    means = [sum(v) / len(v) for v in groups.values()]
    errs = [math.sqrt(sum((x - m) ** 2 for x in v) / max(1, len(v) - 1) / len(v)) for v, m in zip(groups.values(), means)]
    ax.bar(range(len(names)), means, yerr=errs, color=["#999", "#bbb", "#69c", "#c96", "#6a6"][:len(names)], capsize=3)
    ax.axhline(optimum, color="k", lw=0.8, ls=":", label=f"optimal return ({optimum:.2f})")
    ax.set_xticks(range(len(names)), [n.replace(" ", "\n") for n in names], fontsize=8)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_ylabel("true discounted return")
    ax.set_title("CliffWalking: trajectory DPO and best-of-16 by implicit reward", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@claim("trajectory-bon", paper="GRAPE arXiv:2411.19309 (trajectory DPO); DeformPAM arXiv:2410.11584 "
       "(reward-guided action selection)", paper_claim="selecting among N = 16 sampled candidates by the DPO "
       "policy's implicit reward beats taking one at random; trajectory DPO raises success over the base policy")
def run(out_dir: Path, quick: bool) -> ClaimResult:
    torch.set_num_threads(1)
    cfg = settings(quick)
    mdp = from_gymnasium("CliffWalking-v1", gamma=0.99)
    fam = TrajectoryFamily(mdp, "policy_logp", horizon=cfg["horizon"])
    ref_logits = reference_logits(mdp, cfg["temperature"])
    pairs, ties = preference_pairs(mdp, ref_logits, cfg["pairs"], cfg["horizon"], seed=1)
    eval_pairs, _ = preference_pairs(mdp, ref_logits, 128, cfg["horizon"], seed=2)
    policy, history = train_dpo(fam, ref_logits, pairs, eval_pairs, out_dir, cfg)
    reference = TabularPolicy(ref_logits)
    # DeformPAM's selection: candidates from the trained policy, ranked by its implicit reward
    picks = best_vs_random(mdp, policy.logits.detach(), policy, reference, cfg, seed=3)
    # the same reward reranking the reference's own samples (how well it orders a wider spread)
    reranked = best_vs_random(mdp, ref_logits, policy, reference, cfg, seed=5)
    reference_returns = mean_return(mdp, ref_logits, cfg["rounds"], cfg["horizon"], seed=4)
    policy_returns = mean_return(mdp, policy.logits, cfg["rounds"], cfg["horizon"], seed=4)
    optimum = float(optimal_q(mdp, mdp.R)[0].max(1).values[mdp.start])
    result, reason = verdict(picks["best"], picks["random"], optimum)
    groups = {"reference": reference_returns, "reference best-of-16": reranked["best"], "DPO policy": policy_returns,
              "random-of-16": picks["random"], "best-of-16": picks["best"]}
    plot(groups, optimum, out_dir / "trajectory_bon.png")
    mean = {k: sum(v) / len(v) for k, v in groups.items()}
    acc_start = history["eval_start"].get("eval/rewards/accuracy")
    acc_end = history["eval_end"].get("eval/rewards/accuracy")
    measured = (f"mean true return over {cfg['rounds']} rounds: best-of-16 {mean['best-of-16']:.2f}, random-of-16 "
                f"{mean['random-of-16']:.2f}, DPO policy {mean['DPO policy']:.2f}, reference {mean['reference']:.2f} "
                f"(its best-of-16 by the same reward {mean['reference best-of-16']:.2f}), optimum {optimum:.2f}; "
                f"held-out implicit-reward accuracy {acc_start:.2f} -> {acc_end:.2f}")
    numbers = {"settings": cfg, "mean_return": mean, "optimal_return": optimum, "ties_dropped": ties, "eval_start": history["eval_start"],
               "eval_end": history["eval_end"], "best_minus_random": mean["best-of-16"] - mean["random-of-16"]}
    table = [{"selection": k, "mean return": f"{v:.2f}"} for k, v in mean.items()]
    return ClaimResult(result, measured, reason, numbers, ["trajectory_bon.png"], table)
