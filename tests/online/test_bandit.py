"""Checks of `prefalign online` that can fail, on the bandit testbed (bandit_support.py): one-token
responses, so the policy at each prompt is an exact softmax and each method's target is computable.
Every run goes through the real recipe (samplers, judge, pairing, reference, the training loop)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from bandit_support import (PROMPTS, build_bandit, distributions, kl, token_rewards, write_prompts)
from safetensors.torch import load_file

from prefalign.config import load_online_config
from prefalign.models.causal_lm import load_model, load_tokenizer
from prefalign.online.store import load_samples
from prefalign.recipes.online import extrapolate, online

JUDGE = ["online.judge=callable", "online.judge_args={compare_fn: 'bandit_support:compare'}"]


@pytest.fixture(scope="module")
def bandit(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bandit")
    build_bandit(root / "model")
    write_prompts(root / "prompts.jsonl")
    return root


def run_online(bandit: Path, out: Path, *overrides: str) -> dict:
    base = [f"model={bandit / 'model'}", f"data.train={bandit / 'prompts.jsonl'}", f"output_dir={out}",
            "max_length=8", "progress=false", "warmup_ratio=0", "lr_scheduler=linear", "online.max_new_tokens=1",
            "online.temperature=1.0", "online.top_p=1.0", "online.eval_prompts=0", "data.eval_fraction=0",
            "online.sample_batch_size=64", "online.judge_batch_size=512"]
    return online(load_online_config(None, base + JUDGE + list(overrides)))


def policy_of(folder: Path, tokenizer) -> torch.Tensor:
    return distributions(load_model(str(folder)), tokenizer)


def test_online_dpo_moves_the_policy_to_the_rlhf_optimum(bandit, tmp_path):
    """Labels drawn from Bernoulli(sigmoid(R(a) - R(b))): the optimum is pi* = mu exp(R / beta) / Z."""
    tok = load_tokenizer(str(bandit / "model"))
    mu, beta = policy_of(bandit / "model", tok), 0.5
    target = mu * torch.exp(token_rewards(tok) / beta)
    target = target / target.sum(-1, keepdim=True)
    run_online(bandit, tmp_path / "run", "online.method=online_dpo", f"beta={beta}", "online.label_draws=1",
               "online.rounds=4", "online.prompts_per_round=1024", "max_steps=60", "batch_size=64",
               "learning_rate=0.003")
    start, end = kl(target, mu), kl(target, policy_of(tmp_path / "run" / "final", tok))
    assert start > 0.5  # the optimum is far from mu: the check has room to fail
    assert end <= 0.1 * start, (start, end)


def test_one_sppo_round_moves_toward_the_multiplicative_weights_target(bandit, tmp_path):
    """pi_1 ~ pi_0 exp(eta (P_hat(y > pi_0) - 1/2)). P_hat averages the K samples' comparisons with the
    diagonal 1/2, so its mean is 1/2 + (K - 1)/K (P(y > pi_0) - 1/2): the target uses that factor."""
    tok = load_tokenizer(str(bandit / "model"))
    mu, rewards, eta, k = policy_of(bandit / "model", tok), token_rewards(tok), 3.0, 5
    p_win = (mu[:, None, :] * torch.sigmoid(rewards[:, None] - rewards[None, :])[None]).sum(-1)
    target = mu * torch.exp(eta * (k - 1) / k * (p_win - 0.5))
    target = target / target.sum(-1, keepdim=True)
    run_online(bandit, tmp_path / "run", "online.method=sppo", f"objective_args={{eta: {eta}}}",
               f"online.samples_per_prompt={k}", "online.rounds=1", "online.prompts_per_round=1024", "max_steps=60",
               "batch_size=16", "learning_rate=0.003")
    pi = policy_of(tmp_path / "run" / "final", tok)
    tv_start, tv_end = 0.5 * (target - mu).abs().sum(-1).mean(), 0.5 * (target - pi).abs().sum(-1).mean()
    assert tv_start > 0.1
    assert tv_end <= 0.25 * tv_start, (float(tv_start), float(tv_end))


def test_irepo_fits_beta_dh_to_the_logit_of_the_empirical_preference(bandit, tmp_path):
    """After training, beta * (h_w - h_l) regressed on logit(p_hat) has slope near 1. p_hat pools every
    annotator draw of a pair of distinct tokens (one pair recurs across many examples), so the regression
    is not flattened by the per-example noise of M = 16 draws."""
    tok = load_tokenizer(str(bandit / "model"))
    draws, beta = 16, 0.5
    run = tmp_path / "run"
    run_online(bandit, run, "online.method=irepo", f"online.label_draws={draws}", f"beta={beta}", "online.rounds=1",
               "online.prompts_per_round=1024", "online.shard_size=1024", "max_steps=300", "batch_size=32",
               "learning_rate=0.003")
    mu, pi = policy_of(bandit / "model", tok), policy_of(run / "final", tok)
    samples = load_samples(run / "rounds/round-0/samples/main-00000.json")
    by_slot = {(s.prompt_index, s.sample_index): s for s in samples}
    pooled = defaultdict(lambda: [0.0, 0])
    for spec in json.loads((run / "rounds/round-0/examples.json").read_text())["specs"]:
        (_, kw), (_, kl_) = spec["rows"]
        w, lose = by_slot[(spec["prompt"], kw)], by_slot[(spec["prompt"], kl_)]
        x = PROMPTS.index(tok.decode(w.prompt_ids[1:]))
        a, b, p = w.response_ids[0], lose.response_ids[0], spec["soft_label"]
        if a == b:  # the same token twice: dh is 0 by construction, the draws are pure noise
            continue
        if a > b:
            a, b, p = b, a, 1.0 - p
        pooled[(x, a, b)][0] += p * draws
        pooled[(x, a, b)][1] += draws
    xs, ys = [], []
    for (x, a, b), (wins, n) in pooled.items():
        if n >= 3 * draws:
            p_hat = min(max(wins / n, 1e-3), 1 - 1e-3)
            xs.append(torch.logit(torch.tensor(p_hat, dtype=torch.float64)))
            ys.append(beta * ((pi[x, a].log() - mu[x, a].log()) - (pi[x, b].log() - mu[x, b].log())))
    x, y = torch.stack(xs), torch.stack(ys)
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    assert len(xs) >= 50
    assert 0.85 <= slope <= 1.15, slope


def test_apo_extrapolation_equals_its_formula(bandit, tmp_path):
    """After the round, theta = theta_hat + alpha (theta_hat - theta_0), theta_hat the trained weights
    (the round's last checkpoint), theta_0 the round-start weights."""
    run, alpha = tmp_path / "run", 0.3
    run_online(bandit, run, "online.method=apo", f"online.apo_alpha={alpha}", "online.reference=previous",
               "online.rounds=1", "online.prompts_per_round=64", "max_steps=4", "save_steps=4", "batch_size=8",
               "learning_rate=0.01")
    start = load_file(str(bandit / "model" / "model.safetensors"))
    trained = load_file(str(run / "rounds/round-0/train/checkpoint-4/model.safetensors"))
    after = load_file(str(run / "rounds/round-0/policy/model.safetensors"))
    moved = False
    for name, value in after.items():
        expected = trained[name].clone()
        expected.add_(alpha * (trained[name] - start[name]))
        assert torch.equal(value, expected), name
        moved |= not torch.equal(trained[name], start[name])
    assert moved


def test_extrapolate_in_place():
    p, b = [torch.tensor([1.0, 2.0])], [torch.tensor([0.5, 3.0])]
    extrapolate(p, b, 0.5)
    assert torch.equal(p[0], torch.tensor([1.25, 1.5]))


def test_xpo_with_alpha_zero_trains_exactly_like_online_dpo(bandit, tmp_path):
    """XPO's exploration term alpha * log pi(y_ref) at alpha = 0 leaves DPO on the same pairs, bit for bit."""
    common = ["online.method=xpo", "online.rounds=2", "online.prompts_per_round=64", "max_steps=4", "batch_size=8",
              "learning_rate=0.01"]
    run_online(bandit, tmp_path / "xpo", *common, "objective_args={alpha: 0.0}")
    run_online(bandit, tmp_path / "dpo", *common, "objective=dpo")
    a = load_file(str(tmp_path / "xpo" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "dpo" / "final" / "model.safetensors"))
    start = load_file(str(bandit / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], start[k]) for k in a)
