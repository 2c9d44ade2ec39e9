"""The precomputed reference on disk: written batch by batch, read row by row (memory flat in the data
size), never half written; and LoRA's adapter-off reference reading the policy forward's own inputs."""

from __future__ import annotations

import random

import pytest
import torch

import prefalign.models.reference_cache as rc
from prefalign.data.tokenize import TokenizedExample
from prefalign.models.reference_cache import ReferenceCache, ReferencedExamples, complete, write_reference_cache


def batches_checked(folder, n_batches: int, rows: int, seen: list):
    """Random reference batches; before yielding batch i it checks that the writer already put the
    i earlier ones on disk (so it never holds more than one)."""
    gen = torch.Generator().manual_seed(0)
    for i in range(n_batches):
        assert len(list(folder.with_name(folder.name + ".tmp").glob("shard-*"))) == i
        values = {"responses": torch.randn(rows, 2, generator=gen), "ref_sample": torch.randn(rows, generator=gen)}
        seen.append(values)
        yield values


def test_reader_copies_out_only_the_rows_asked_for(tmp_path, monkeypatch):
    folder, seen = tmp_path / "cache", []
    assert write_reference_cache(folder, batches_checked(folder, 50, 4, seen)) == 200
    full = {k: torch.cat([b[k] for b in seen]) for k in seen[0]}
    reads = []

    class SpyHandle:  # the real memory-mapped handle, recording how many rows each read copies out
        def __init__(self, path, framework):
            self.inner = real_open(path, framework=framework)

        def get_slice(self, name):
            inner = self.inner.get_slice(name)
            return _Rows(inner, reads)

        def get_tensor(self, name):
            raise AssertionError("a whole shard was loaded")

    real_open = rc.safe_open
    monkeypatch.setattr(rc, "safe_open", SpyHandle)
    examples = [TokenizedExample([[1], [2]], [0, 0], [1.0, 0.0], "pair", "x") for _ in range(200)]
    examples[7] = TokenizedExample([[1]], [0], [0.0], "sft", "x")  # fewer responses than the widest example: its entry is cut to them
    view = ReferencedExamples(examples, ReferenceCache(folder))
    order = list(range(200))
    random.Random(0).shuffle(order)
    for i in order:
        e = view[i]
        assert e.reference["responses"] == pytest.approx(full["responses"][i, : len(examples[i].sequences)].tolist())
        assert e.reference["ref_sample"] == pytest.approx(float(full["ref_sample"][i]))
    assert len(reads) == 2 * 200 and set(reads) == {1}  # one row per name per example, never more
    assert not [v for v in vars(view.cache).values() if isinstance(v, torch.Tensor)]
    assert len(view[10:14]) == 4 and len(view) == 200


class _Rows:
    def __init__(self, inner, reads):
        self.inner, self.reads = inner, reads

    def __getitem__(self, key):
        out = self.inner[key]
        self.reads.append(out.shape[0])
        return out


def test_a_failed_precompute_leaves_no_cache(tmp_path):
    def failing():
        yield {"responses": torch.zeros(2, 2)}
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        write_reference_cache(tmp_path / "cache", failing())
    assert not complete(tmp_path / "cache") and not (tmp_path / "cache").exists()
    with pytest.raises(ValueError, match="holds 2 rows"):
        write_reference_cache(tmp_path / "ok", iter([{"responses": torch.zeros(2, 2)}]))
        ReferencedExamples([None] * 3, ReferenceCache(tmp_path / "ok"))


def test_precomputed_training_reads_the_streamed_cache(tiny_model_dir, tmp_path):
    """Training with precompute_ref writes the sharded cache, and a second run reads it (cache hit)
    with the same losses as the frozen reference."""
    from test_loop import config, train_losses

    from prefalign.recipes.policy import train

    first = train(config(tiny_model_dir, tmp_path / "a", "precompute_ref=true", "max_steps=2"))
    again = train(config(tiny_model_dir, tmp_path / "b", "precompute_ref=true", "max_steps=2"))
    train(config(tiny_model_dir, tmp_path / "f", "max_steps=2"))
    assert (first["reference_cache_hit"], again["reference_cache_hit"]) == (False, True)
    assert list((tmp_path / "refcache").glob("*.shards/index.json"))
    assert train_losses(tmp_path / "b") == pytest.approx(train_losses(tmp_path / "f"), abs=1e-5)


def test_adapter_off_reference_reads_the_policy_forwards_inputs(tiny_model_dir, tokenizer):
    """With LoRA the reference is the same module with the adapter off: its forward must take the very
    tensors the policy's forward took (no second collation, no copy), so a packed or shared-prompt
    layout made for the policy serves the reference unchanged."""
    from prefalign.data.formats.readers import load_examples
    from prefalign.features import tokenize
    from prefalign.losses import get_objective
    from prefalign.models.causal_lm import AdapterOffReference, PolicyLogps, add_lora, load_model
    from prefalign.train.loop import make_batch
    from prefalign.train.step import forward_batch
    from tests_support import FIXTURES

    policy = PolicyLogps(add_lora(load_model(str(tiny_model_dir)), r=4, alpha=8))
    calls = []
    policy.register_forward_pre_hook(lambda module, args: calls.append(args))
    examples, _ = load_examples(FIXTURES / "hh_harmless_64.jsonl")
    tok = tokenize(examples[:2], tokenizer, max_length=96, max_prompt_length=48)
    forward_batch(policy, make_batch(tok, [0, 1], tokenizer.pad_token_id), AdapterOffReference(policy),
                  get_objective("dpo"))
    assert len(calls) == 2  # the policy's forward, then the reference's
    assert all(a is b for a, b in zip(calls[0], calls[1]) if a is not None)
