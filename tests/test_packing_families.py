"""Every objective family's step on packed rows (packing.py) against the padded step: policy and
reference log-probs, every feature, the loss and the policy's gradients, with and without one
shared prompt per example."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch

from prefalign.data.formats.readers import load_examples
from prefalign.packing import PackOptions
from prefalign.data.records import split_hh_dialogue
from prefalign.features import collate, tokenize
from prefalign.losses import get_objective
from prefalign.models.causal_lm import FrozenReference, MaskHead, PolicyLogps, load_model
from prefalign.recipes.policy import objective_params, prepare_examples
from prefalign.train.step import forward_batch, run_objective
from tests_support import FIXTURES, hh_long_short, write_jsonl


def hh_pairs(n: int) -> list[dict]:
    rows = [json.loads(x) for x in (FIXTURES / "hh_harmless_64.jsonl").read_text(encoding="utf-8").splitlines()]
    return [dict(zip(("prompt", "chosen", "rejected"), split_hh_dialogue(r["chosen"], r["rejected"], "hh", i)))
            for i, r in enumerate(rows[:n])]


def hh_unpaired(n):
    return [{"prompt": p["prompt"], "completion": p["chosen"] if i % 2 == 0 else p["rejected"], "label": i % 2 == 0}
            for i, p in enumerate(hh_pairs(n))]


def hh_ref_sample(n):
    pairs = hh_pairs(n + 1)
    return [dict(p, ref_sample=pairs[i + 1]["chosen"]) for i, p in enumerate(pairs[:n])]


def oasst_triples(n):
    rows = [json.loads(x) for x in (FIXTURES / "oasst_ranked_12.jsonl").read_text(encoding="utf-8").splitlines()]
    out = [{"prompt": r["prompt"], "gold": r["responses"][0]["text"], "chosen": r["responses"][1]["text"],
            "rejected": r["responses"][-1]["text"]} for r in rows if len(r["responses"]) >= 3]
    return out[:n]


FAMILIES = {
    # case: (objective, objective args, data, what it covers)
    "dpo": ("dpo", {}, hh_pairs),                                          # pairwise
    "listwise_dpo": ("listwise_dpo", {}, "oasst_ranked_12.jsonl"),          # K > 2, ragged
    "tpo": ("tpo", {}, oasst_triples),                                      # K = 3 with gold
    "kto": ("kto", {}, hh_unpaired),                                        # K = 1, mismatched rows
    "treg": ("treg", {}, hh_pairs),                                         # token-level + contrast rows
    "selm": ("selm", {}, hh_ref_sample),                                    # reference sample
    "orpo_prompt_nll": ("orpo", {"nll_tokens": "prompt_and_response"}, hh_pairs),
    "sparsepo": ("sparsepo", {}, hh_pairs),                                 # token KL + mask head
    "sparsepo_act": ("sparsepo_act", {}, hh_pairs),                         # activation masks
    "longpo": ("longpo", {}, hh_long_short),                                # short-context side rows
}


def step(policy, reference, obj, params, batch):
    policy.zero_grad()
    seq = forward_batch(policy, batch, reference, obj)
    out, _ = run_objective(obj, seq, params)
    loss = out.per_example.sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
    return seq, loss.detach(), grads


@pytest.mark.parametrize("case", sorted(FAMILIES))
def test_packed_step_equals_padded_step(case, tiny_model_dir, tokenizer, tmp_path):
    name, args, data = FAMILIES[case]
    path = FIXTURES / data if isinstance(data, str) else write_jsonl(tmp_path / "d.jsonl", data(4))
    examples, _ = load_examples(path)
    obj = get_objective(name)
    params = objective_params(obj, None, args)
    obj = replace(obj, features=obj.features_for(params))
    examples = prepare_examples(obj, examples, "best_vs_worst", str(path))[:4]
    tok = tokenize(examples, tokenizer, 160, 64, features=obj.features)
    base = load_model(str(tiny_model_dir))
    model = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a policy that differs from its reference
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    torch.manual_seed(0)
    head = MaskHead(32, 2, dropout=0.0) if "mask_logits" in obj.features else None
    policy, reference = PolicyLogps(model, mask_head=head), FrozenReference(base)
    padded = collate(tok, tokenizer.pad_token_id, obj.features)
    want_seq, want_loss, want_grads = step(policy, reference, obj, params, padded)
    for share in (False, True):
        batch = collate(tok, tokenizer.pad_token_id, obj.features, pack=PackOptions(160, share))
        assert batch.packed.tokens <= batch.attention_mask.numel()
        if share and name != "kto":  # each example's responses (K >= 2) read one copy of its prompt
            assert batch.packed.tokens < int(batch.attention_mask.sum())
        seq, loss, grads = step(policy, reference, obj, params, batch)
        close = dict(atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(seq.policy, want_seq.policy, **close)
        if want_seq.reference is not None:
            torch.testing.assert_close(seq.reference, want_seq.reference, **close)
        assert set(seq.features) == set(want_seq.features)
        for key, value in want_seq.features.items():
            torch.testing.assert_close(seq.features[key], value, **close, msg=f"{case} share={share}: {key}")
        torch.testing.assert_close(loss, want_loss, **close)
        assert set(grads) == set(want_grads)
        for key, g in want_grads.items():
            torch.testing.assert_close(grads[key], g, atol=1e-5, rtol=1e-4, msg=f"{case} share={share}: grad {key}")


@pytest.mark.parametrize("impl", ["full", "eager"])
def test_packed_equals_padded_on_the_full_logits_path_and_eager_attention(impl, tiny_model_dir, tokenizer, tmp_path):
    examples, _ = load_examples(write_jsonl(tmp_path / "d.jsonl", hh_pairs(4)))
    tok = tokenize(examples, tokenizer, 160, 64)
    model = load_model(str(tiny_model_dir))
    if impl == "eager":  # eager attention adds a float mask; sdpa (the default) reads a boolean one
        model.set_attn_implementation("eager")
    policy = PolicyLogps(model, "full" if impl == "full" else "lean")
    padded = collate(tok, tokenizer.pad_token_id)
    want = policy(padded.input_ids, padded.attention_mask, padded.response_mask, padded.target_index)
    batch = collate(tok, tokenizer.pad_token_id, pack=PackOptions(160))
    got = policy(batch.input_ids, batch.attention_mask, batch.response_mask, batch.target_index, batch.packed)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
