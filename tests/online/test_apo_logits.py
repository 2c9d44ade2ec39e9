"""APO in logit space (online.apo_space: logits): the extrapolated policy pi_hat (pi_hat / pi_prev)^alpha is
sampled token by token as the mixture (1 + alpha, -alpha) of the trained iterate and the one before it.

Checked: the mixture formula against the extrapolation written out with probabilities, the draws against
that formula (chi-square), and that a real run samples round 1 from exactly that mixture (same draws)
without touching the weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bandit_support import PROMPTS, build_bandit, distributions, write_prompts
from safetensors.torch import load_file
from test_samplers import chi_square_p

from prefalign.config import load_online_config
from prefalign.models.causal_lm import load_model, load_tokenizer
from prefalign.models.generation import GenerateSettings
from prefalign.online.samplers import MixtureSampler, extrapolation_weights, mixture_logprobs, sample_seed
from prefalign.online.store import load_samples
from prefalign.recipes.online import online

JUDGE = ["online.judge=callable", "online.judge_args={compare_fn: 'bandit_support:compare'}"]
ALPHA = 0.5


@pytest.fixture(scope="module")
def apo_run(tmp_path_factory) -> Path:
    """Two rounds of APO in logit space on the bandit testbed (one-token responses)."""
    root = tmp_path_factory.mktemp("apo-logits")
    build_bandit(root / "model")
    write_prompts(root / "prompts.jsonl")
    overrides = [f"model={root / 'model'}", f"data.train={root / 'prompts.jsonl'}", f"output_dir={root / 'run'}",
                 "max_length=8", "progress=false", "warmup_ratio=0", "online.max_new_tokens=1",
                 "online.temperature=1.0", "online.eval_prompts=0", "data.eval_fraction=0", "online.method=apo",
                 "online.apo_space=logits", f"online.apo_alpha={ALPHA}", "online.reference=previous",
                 "online.rounds=2", "online.prompts_per_round=64", "online.sample_batch_size=64", "max_steps=6",
                 "save_steps=6", "batch_size=8", "learning_rate=0.05", *JUDGE]
    online(load_online_config(None, overrides))
    return root


def test_extrapolation_weights_give_the_formula_exactly():
    """log softmax((1 + a) log pi_hat - a log pi_prev) is log of pi_hat^(1 + a) pi_prev^(-a) / Z, the
    latter computed from probabilities in float64."""
    g = torch.Generator().manual_seed(0)
    hat, prev = torch.randn(3, 11, generator=g, dtype=torch.float64), torch.randn(3, 11, generator=g,
                                                                                  dtype=torch.float64)
    for alpha in (0.0, 0.3, 1.0):
        assert extrapolation_weights(alpha) == [1.0 + alpha, -alpha]
        p_hat, p_prev = torch.softmax(hat, -1), torch.softmax(prev, -1)
        unnormalised = p_hat ** (1 + alpha) * p_prev ** (-alpha)
        expected = unnormalised / unnormalised.sum(-1, keepdim=True)
        got = mixture_logprobs([hat, prev], extrapolation_weights(alpha), 1.0).exp()
        # mixture_logprobs works in float32
        torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=1e-5)


def test_round_one_samples_the_extrapolated_mixture(apo_run):
    """Round 1's samples are exactly MixtureSampler([pi after round 0, the starting model], (1 + a, -a))
    with the round's seed; round 0 (no earlier iterate) samples the policy alone; no weights are extrapolated."""
    run = apo_run / "run"
    tok = load_tokenizer(str(apo_run / "model"))
    start, trained = load_model(str(apo_run / "model")), load_model(str(run / "rounds/round-0/policy"))
    drawn = load_samples(run / "rounds/round-1/samples/main-00000.json")
    k = 4  # the apo preset's samples per prompt
    prompts = [s.prompt_ids for s in drawn[::k]]
    assert len(prompts) == 64 and all(s.sample_index == i % k for i, s in enumerate(drawn))
    settings = GenerateSettings(max_new_tokens=1, do_sample=True, temperature=1.0, batch_size=64,
                                num_return_sequences=k)
    seed = sample_seed(42, 1, 0)  # the run's seed (default 42), round 1, shard 0 of the main stream
    again = MixtureSampler([trained, start], extrapolation_weights(ALPHA), tok).sample(prompts, settings, seed)
    assert [s.response_ids for s in again] == [s.response_ids for s in drawn]
    # the plain policy with the same seed draws something else: the check can fail
    alone = MixtureSampler([trained, start], [1.0, 0.0], tok).sample(prompts, settings, seed)
    assert [s.response_ids for s in alone] != [s.response_ids for s in drawn]
    # logit space leaves the weights as trained: round 0's policy is its last checkpoint, not extrapolated
    last = load_file(str(run / "rounds/round-0/train/checkpoint-6/model.safetensors"))
    kept = load_file(str(run / "rounds/round-0/policy/model.safetensors"))
    assert all(torch.equal(kept[k], last[k]) for k in kept)
    assert any(not torch.equal(kept[k], v) for k, v in load_file(str(apo_run / "model/model.safetensors")).items())


def test_extrapolated_draws_match_the_formula(apo_run):
    """20k single-token draws per prompt from the run's own mixture (round 0's policy, the starting
    model) against pi_hat^(1 + a) pi_prev^(-a) / Z computed from each model's softmax."""
    tok = load_tokenizer(str(apo_run / "model"))
    start, trained = load_model(str(apo_run / "model")), load_model(str(apo_run / "run/rounds/round-0/policy"))
    p_prev, p_hat = distributions(start, tok), distributions(trained, tok)
    target = p_hat ** (1 + ALPHA) * p_prev ** (-ALPHA)
    target = target / target.sum(-1, keepdim=True)
    n = 20_000
    settings = GenerateSettings(max_new_tokens=1, do_sample=True, temperature=1.0, batch_size=n,
                                num_return_sequences=n)
    sampler = MixtureSampler([trained, start], extrapolation_weights(ALPHA), tok)
    moved = 0.0
    for x, prompt in enumerate(PROMPTS):
        drawn = sampler.sample([tok(prompt)["input_ids"]], settings, sample_seed(0, 9, x))
        counts = torch.bincount(torch.tensor([s.response_ids[0] for s in drawn]), minlength=target.shape[1])
        assert chi_square_p(counts, target[x]) > 1e-3
        moved = max(moved, float(0.5 * (target[x] - p_hat[x]).abs().sum()))
        if float(0.5 * (target[x] - p_hat[x]).abs().sum()) > 0.05:  # distinguishable: pi_hat alone is rejected
            assert chi_square_p(counts, p_hat[x]) < 1e-6
    assert moved > 0.05  # round 0 moved the policy enough that the extrapolation differs from pi_hat
