"""Samplers: token ids kept as drawn, seeding per (seed, round, shard), the mixture matches its formula
(chi-square on many single-token draws), cached decoding equals uncached decoding."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import build_tiny_llama
from tests_support import scripted_llama

from prefalign.models.causal_lm import load_model
from prefalign.models.generation import GenerateSettings, generate_batch
from prefalign.online.samplers import HFSampler, MixtureSampler, sample_seed

PROMPTS = ["\n\nHuman: hi\n\nAssistant:", "\n\nHuman: what is a much longer question about cats and dogs?\n\nAssistant:",
           "\n\nHuman: why?\n\nAssistant:"]


def encode(tokenizer, texts=PROMPTS) -> list[list[int]]:
    return [tokenizer(t)["input_ids"] for t in texts]


def sharpened(model, factor: float = 30.0):
    # a random tiny model's next-token distribution is nearly uniform over 512 tokens; scaling the
    # head makes it peaked (~40 effective tokens), so two models and their mixture are distinguishable
    with torch.no_grad():
        model.lm_head.weight.mul_(factor)
    return model.eval()


@pytest.fixture(scope="module")
def two_models(tiny_model_dir, tokenizer, tmp_path_factory):
    other = build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-1"), tokenizer, seed=1)
    return sharpened(load_model(str(tiny_model_dir))), sharpened(other)


def test_sample_seed_is_stable_across_processes_and_differs_per_shard():
    code = "from prefalign.online.samplers import sample_seed; print(sample_seed(7, 2, 3))"
    # a different hash seed in the child: Python's salted hash() would give another number there
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(child.stdout.strip()) == sample_seed(7, 2, 3)
    seeds = {sample_seed(7, r, s) for r in range(4) for s in range(4)}
    assert len(seeds) == 16 and all(0 <= x < 2**63 for x in seeds)


def test_hf_sampler_keeps_generated_token_ids(tiny_model_dir, tokenizer):
    model = load_model(str(tiny_model_dir)).eval()
    prompts = encode(tokenizer)
    s = GenerateSettings(max_new_tokens=5, do_sample=True, batch_size=3, num_return_sequences=2)
    seed = sample_seed(0, 0, 0)
    samples = HFSampler(model, tokenizer).sample(prompts, s, seed)
    torch.manual_seed(seed)  # what the sampler does inside its forked RNG: the same rows come out
    batch = generate_batch(model, tokenizer, prompts, s)
    width = max(len(p) for p in prompts)
    eos = tokenizer.eos_token_id
    assert [(x.prompt_index, x.sample_index) for x in samples] == [(i, k) for i in range(3) for k in range(2)]
    for x, row in zip(samples, batch.ids.tolist()):
        prompt = prompts[x.prompt_index]
        generated = row[width:]
        if eos in generated:
            generated = generated[:generated.index(eos) + 1]
        # the row without its left padding and without generate's padding after EOS
        assert x.prompt_ids == prompt == row[width - len(prompt):width]
        assert x.prompt_ids + x.response_ids == prompt + generated
        assert x.finished == (eos in x.response_ids)
    unfinished = [x for x in samples if not x.finished]
    assert unfinished, "the random tiny model should run out of tokens at 5 new tokens"
    for x in unfinished:  # nothing appended: exactly max_new_tokens ids, no EOS
        assert len(x.response_ids) == s.max_new_tokens and eos not in x.response_ids


@pytest.mark.parametrize("kind", ["hf", "mixture"])
def test_finished_samples_end_with_their_eos(tiny_model_dir, tokenizer, tmp_path, kind):
    reply = [5, 6, 7]
    model = load_model(str(scripted_llama(tiny_model_dir, tokenizer, tmp_path / "scripted", reply)))
    sampler = HFSampler(model, tokenizer) if kind == "hf" else MixtureSampler([model, model], [0.5, 0.5], tokenizer)
    s = GenerateSettings(max_new_tokens=10, do_sample=True, batch_size=3)
    for x in sampler.sample(encode(tokenizer), s, seed=1):
        assert x.finished and x.response_ids == reply + [tokenizer.eos_token_id]


@pytest.mark.parametrize("kind", ["hf", "mixture"])
def test_same_seed_round_shard_gives_same_samples_and_shards_differ(two_models, tokenizer, kind):
    m0, m1 = two_models
    sampler = HFSampler(m0, tokenizer) if kind == "hf" else MixtureSampler([m0, m1], [0.5, 0.5], tokenizer)
    s = GenerateSettings(max_new_tokens=8, do_sample=True, batch_size=2, num_return_sequences=2)
    prompts = encode(tokenizer)
    first = sampler.sample(prompts, s, sample_seed(3, 1, 0))
    torch.manual_seed(999)  # the global RNG state must not matter, and is left as it was
    state = torch.get_rng_state()
    again = sampler.sample(prompts, s, sample_seed(3, 1, 0))
    assert torch.equal(torch.get_rng_state(), state)
    other_shard = sampler.sample(prompts, s, sample_seed(3, 1, 1))
    assert first == again
    assert [x.response_ids for x in first] != [x.response_ids for x in other_shard]


def chi_square_p(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 20.0) -> float:
    """Goodness-of-fit p-value: tokens expected >= min_expected times are buckets, the rest one tail bucket."""
    n = counts.sum()
    expected = probs.double() * n
    order = expected.argsort(descending=True)
    head = order[expected[order] >= min_expected]
    tail = order[expected[order] < min_expected]
    obs, exp = counts[head].double(), expected[head]
    if len(tail):  # no tail bucket when every token is expected often enough (a 0 / 0 term otherwise)
        obs = torch.cat([obs, counts[tail].double().sum().view(1)])
        exp = torch.cat([exp, expected[tail].sum().view(1)])
    stat = ((obs - exp) ** 2 / exp).sum()
    df = len(obs) - 1
    # chi-square survival function: the regularized upper incomplete gamma Q(df / 2, stat / 2)
    return torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2).item()


@pytest.mark.parametrize("weights,temperature", [([0.5, 0.5], 1.0), ([1.5, -0.5], 1.0), ([0.7, 0.3], 0.8),
                                                 ([1.0, 0.0], 1.0)])
def test_mixture_single_token_draws_match_the_formula(two_models, tokenizer, weights, temperature):
    m0, m1 = two_models
    prompt = encode(tokenizer)[0]
    with torch.no_grad():
        logits = [m(torch.tensor([prompt])).logits[0, -1] / temperature for m in (m0, m1)]
    # the target, written out: p(y) proportional to prod_i pi_i(y)^w_i
    log_target = sum(w * (torch.softmax(x, -1)).log() for w, x in zip(weights, logits))
    target = torch.softmax(log_target, -1)
    model0 = torch.softmax(logits[0], -1)
    n = 20_000
    s = GenerateSettings(max_new_tokens=1, do_sample=True, temperature=temperature, batch_size=n,
                         num_return_sequences=n)
    samples = MixtureSampler([m0, m1], weights, tokenizer).sample([prompt], s, sample_seed(0, 0, 0))
    counts = torch.bincount(torch.tensor([x.response_ids[0] for x in samples]), minlength=target.numel())
    assert chi_square_p(counts, target) > 1e-3
    if weights != [1.0, 0.0]:  # the test can fail: the same draws against model 0 alone are rejected
        assert chi_square_p(counts, model0) < 1e-6
    else:
        assert torch.allclose(target, model0, atol=1e-6)


@pytest.mark.parametrize("do_sample", [False, True])
@pytest.mark.parametrize("weights", [[0.5, 0.5], [1.5, -0.5]])
def test_cached_decoding_equals_uncached(two_models, tokenizer, do_sample, weights):
    m0, m1 = two_models
    prompts = encode(tokenizer)  # three lengths: the batch is left-padded
    s = GenerateSettings(max_new_tokens=12, do_sample=do_sample, temperature=0.9, batch_size=3,
                         num_return_sequences=2)
    seed = sample_seed(1, 0, 0)
    cached = MixtureSampler([m0, m1], weights, tokenizer, use_cache=True).sample(prompts, s, seed)
    uncached = MixtureSampler([m0, m1], weights, tokenizer, use_cache=False).sample(prompts, s, seed)
    assert cached == uncached
    # and the distributions themselves, step by step, on the same left-padded batch
    fitted, steps = [p for p in prompts for _ in range(2)], {}
    for use_cache in (True, False):
        steps[use_cache] = []
        MixtureSampler([m0, m1], weights, tokenizer, use_cache=use_cache).decode(
            fitted, s, torch.Generator().manual_seed(seed), steps[use_cache])
    assert len(steps[True]) == len(steps[False]) > 1
    for a, b in zip(steps[True], steps[False]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert max(len(x.response_ids) for x in cached) > 1
    if not do_sample:  # left padding must not change what a prompt decodes
        alone = [MixtureSampler([m0, m1], weights, tokenizer).sample([p], s, seed) for p in prompts]
        assert [x.response_ids for x in cached] == [x.response_ids for a in alone for x in a]


def test_weights_one_zero_decode_like_model_zero_alone(two_models, tokenizer):
    m0, m1 = two_models
    prompts = encode(tokenizer)
    s = GenerateSettings(max_new_tokens=12, do_sample=False, batch_size=3)
    mixture = MixtureSampler([m0, m1], [1.0, 0.0], tokenizer).sample(prompts, s, seed=0)
    hf = HFSampler(m0, tokenizer).sample(prompts, s, seed=0)
    assert [x.response_ids for x in mixture] == [x.response_ids for x in hf]
    assert [x.finished for x in mixture] == [x.finished for x in hf]
    other = MixtureSampler([m0, m1], [0.0, 1.0], tokenizer).sample(prompts, s, seed=0)
    assert [x.response_ids for x in other] != [x.response_ids for x in hf]


def test_bad_inputs_are_refused(two_models, tokenizer):
    m0, m1 = two_models
    with pytest.raises(ValueError, match="one weight per model"):
        MixtureSampler([m0, m1], [1.0], tokenizer)
    with pytest.raises(ValueError, match="top_p"):
        MixtureSampler([m0, m1], [0.5, 0.5], tokenizer).sample([[1, 2]], GenerateSettings(top_p=0.9), seed=0)
    with pytest.raises(ValueError, match="prompt 1"):
        HFSampler(m0, tokenizer).sample([[1, 2], "text"], GenerateSettings(), seed=0)
