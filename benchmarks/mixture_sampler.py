"""Mixture sampler: decoding with one KV cache per model vs re-running the whole prefix each step.

Two config-built Llamas (random weights; speed does not depend on them) are mixed with weights
(0.5, 0.5), as Nash-MD's geometric mixture does, and each decodes exactly --new-tokens tokens (no
EOS id, so no row stops early) for a left-padded batch of random prompts of different lengths.
Greedy decoding, so the two paths must return the same ids; the script checks that and prints the
seconds of each path and the speed-up (median of --repeats runs).

    python benchmarks/mixture_sampler.py                      # tiny (as in the tests) and small configs
    python benchmarks/mixture_sampler.py --configs small --new-tokens 64 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from prefalign.models.generation import GenerateSettings
from prefalign.online.samplers import MixtureSampler

CONFIGS = {
    "tiny": dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "small": dict(vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=4),
}


def build(name: str, seed: int):
    torch.manual_seed(seed)
    config = LlamaConfig(**CONFIGS[name], max_position_embeddings=1024, tie_word_embeddings=False,
                         pad_token_id=0, bos_token_id=1, eos_token_id=None)
    return LlamaForCausalLM(config).eval()


def timed(sampler: MixtureSampler, prompts, settings) -> tuple[float, list]:
    start = time.perf_counter()
    samples = sampler.sample(prompts, settings, seed=0)
    return time.perf_counter() - start, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,small")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=64, help="the longest prompt; others are shorter")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # only the ids matter to the sampler: pad for the left padding, no EOS so every row runs to the end
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=None, bos_token_id=1)
    settings = GenerateSettings(max_new_tokens=args.new_tokens, do_sample=False, batch_size=args.batch)
    for name in args.configs.split(","):
        models = [build(name, 0), build(name, 1)]
        g = torch.Generator().manual_seed(0)
        vocab = CONFIGS[name]["vocab_size"]
        lengths = torch.linspace(args.prompt_tokens // 4, args.prompt_tokens, args.batch).long().tolist()
        prompts = [[1] + torch.randint(2, vocab, (n - 1,), generator=g).tolist() for n in lengths]
        times = {}
        for use_cache in (True, False):
            sampler = MixtureSampler(models, [0.5, 0.5], tokenizer, use_cache=use_cache)
            timed(sampler, prompts[:1], GenerateSettings(max_new_tokens=2, do_sample=False))  # warm-up
            runs = [timed(sampler, prompts, settings) for _ in range(args.repeats)]
            times[use_cache] = statistics.median(t for t, _ in runs)
            ids = [x.response_ids for x in runs[0][1]]
            if use_cache:
                cached_ids = ids
            elif ids != cached_ids:
                raise SystemExit(f"{name}: cached and uncached greedy decoding differ")
        print(f"{name}: batch {args.batch}, prompts {lengths[0]}-{lengths[-1]} tokens, {args.new_tokens} new tokens, "
              f"{args.threads} thread(s): cached {times[True]:.2f} s, uncached {times[False]:.2f} s, "
              f"speed-up {times[False] / times[True]:.1f}x", flush=True)


if __name__ == "__main__":
    main()
