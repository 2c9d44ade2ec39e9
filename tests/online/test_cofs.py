"""COFS-DPO (arXiv 2406.05534) over a stream of two prompt domains: each round draws only its own domain's
prompts, each domain's fast module is kept, and at the end of the second domain the policy's fast
module is exactly the weighted combination of the two; the slow module is not combined; OFS-DPO on the
same stream combines nothing; a combination weight of 0 on the new domain gives back the first
domain's module."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bandit_support import DOMAIN_A, DOMAIN_B, build_bandit, write_prompts
from safetensors.torch import load_file

from prefalign.config import ConfigError, load_online_config
from prefalign.models.causal_lm import load_tokenizer
from prefalign.online.fast_slow import combine_fast_modules
from prefalign.online.store import load_samples
from prefalign.recipes.online import online


@pytest.fixture(scope="module")
def stream(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cofs")
    build_bandit(root / "model", sharpen=30.0)
    write_prompts(root / "a.jsonl", DOMAIN_A)
    write_prompts(root / "b.jsonl", DOMAIN_B)
    return root


def overrides(root: Path, out: Path, *extra: str) -> list[str]:
    return [f"model={root / 'model'}", f"data.train={root / 'a.jsonl'}", f"online.domains=['{root / 'b.jsonl'}']",
            f"output_dir={out}", "max_length=8", "progress=false", "warmup_ratio=0", "online.max_new_tokens=1",
            "online.temperature=1.0", "online.eval_prompts=0", "data.eval_fraction=0", "online.sample_batch_size=64",
            "online.judge=callable", "online.judge_args={compare_fn: 'bandit_support:compare_domains'}", "beta=0.5",
            "online.rounds=2", "online.prompts_per_round=64", "max_steps=8", "batch_size=16", "learning_rate=0.01",
            "lora=true", "lora_r=4", "lora_alpha=8", *extra]


def adapter(folder: Path) -> dict:
    return load_file(str(folder / "adapter_model.safetensors"))


def test_cofs_combines_the_domains_fast_modules(stream, tmp_path):
    out = tmp_path / "cofs"
    online(load_online_config(None, overrides(stream, out, "online.method=cofs_dpo", "online.cofs_weights=[1, 3]")))
    tok = load_tokenizer(str(stream / "model"))
    for r, domain in ((0, DOMAIN_A), (1, DOMAIN_B)):
        prompts = {tok.decode(s.prompt_ids[1:]) for s in load_samples(out / f"rounds/round-{r}/samples/main-00000.json")}
        assert prompts == set(domain), (r, prompts)
    first = load_file(str(out / "rounds/round-0/domain_fast.safetensors"))
    second = load_file(str(out / "rounds/round-1/domain_fast.safetensors"))
    assert any(not torch.equal(first[k], second[k]) for k in first)  # domain B moved the fast module
    final = adapter(out / "final")
    assert set(final) == set(first)  # peft's saved keys carry no adapter name, as the kept modules' do
    for key, value in final.items():
        torch.testing.assert_close(value, 0.25 * first[key] + 0.75 * second[key], atol=1e-7, rtol=0)
    # round 0's policy (domain A's end) is not combined: it is the domain's own fast module
    assert all(torch.equal(v, first[k]) for k, v in adapter(out / "rounds/round-0/policy").items())
    # the slow module is never combined: it is the one training left
    slow = adapter(out / "final/slow")
    assert any(not torch.allclose(slow[k], final[k]) for k in final)


def test_ofs_on_the_same_stream_combines_nothing(stream, tmp_path):
    out = tmp_path / "ofs"
    online(load_online_config(None, overrides(stream, out, "online.method=ofs_dpo")))
    assert not list((out / "rounds").rglob("domain_fast.safetensors"))
    assert (out / "final/slow/adapter_model.safetensors").exists()


def test_combination_weights_and_stream_are_checked(stream, tmp_path):
    base = overrides(stream, tmp_path / "x", "online.method=cofs_dpo")
    with pytest.raises(ConfigError, match="split evenly"):
        load_online_config(None, base + ["online.rounds=3"])
    with pytest.raises(ConfigError, match="cofs_weights needs 2"):
        load_online_config(None, base + ["online.cofs_weights=[1]"])
    with pytest.raises(ConfigError, match="lora=true"):
        load_online_config(None, base + ["lora=false"])


def test_combine_fast_modules_formula():
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefalign.models.causal_lm import add_lora
    from prefalign.online.fast_slow import FAST, adapter_params

    model = add_lora(LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16,
                                                  num_hidden_layers=1, num_attention_heads=2,
                                                  num_key_value_heads=2)), 2, 4)
    names = list(adapter_params(model, FAST))
    g = torch.Generator().manual_seed(0)
    modules = [{k: torch.randn(adapter_params(model, FAST)[k].shape, generator=g) for k in names} for _ in range(3)]
    combine_fast_modules(model, modules, [1.0, 0.0, 3.0])
    for k, p in adapter_params(model, FAST).items():
        torch.testing.assert_close(p.detach(), 0.25 * modules[0][k] + 0.75 * modules[2][k])
    with pytest.raises(ValueError, match="one weight per module"):
        combine_fast_modules(model, modules, [1.0, 1.0])
