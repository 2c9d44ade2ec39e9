"""Extra rows in the step: T-REG's contrast token rewards and SELM/XPO's reference samples, each
against a naive computation on the tiny model (one unpadded sequence at a time, full log_softmax)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from prefalign.features import collate, tokenize
from prefalign.data.contrast import CONTRAST_BETTER, CONTRAST_WORSE
from prefalign.data.formats.readers import load_examples
from prefalign.data.records import DataError, split_hh_dialogue
from prefalign.data.tokenize import tokenize_response, truncate
from prefalign.losses import get_objective
from prefalign.models.causal_lm import FrozenReference, PolicyLogps, load_model, with_reference
from prefalign.recipes.policy import compute_reference_logps, prepare_examples
from prefalign.train.loop import make_batch
from prefalign.train.step import forward_batch
from tests_support import FIXTURES, write_jsonl


def response_logps(model, ids: list[int], start: int) -> torch.Tensor:
    """[len(ids) - start] log p(ids[t] | ids[:t]) for t >= start (t >= 1), from one unpadded forward."""
    logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    return torch.stack([logp[t - 1, ids[t]] for t in range(max(start, 1), len(ids))])


@pytest.fixture
def sharp_model(tiny_model_dir):
    # A random tiny model predicts nearly uniformly, so its contrast rewards would all be ~0.
    # Scaling the output projection sharpens its next-token distributions: the better and worse
    # prompts then give clearly different log-probs, and a misplaced value would show.
    model = load_model(str(tiny_model_dir))
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    return model.eval()


def test_contrast_token_rewards_equal_a_naive_per_example_computation(sharp_model, tokenizer, hh_file):
    examples, _ = load_examples(hh_file)
    tok = tokenize(examples[:3], tokenizer, max_length=96, max_prompt_length=48,
                   features=["contrast_token_rewards"], contrast=(CONTRAST_BETTER, CONTRAST_WORSE))
    batch = collate(tok, tokenizer.pad_token_id)
    seq = forward_batch(PolicyLogps(sharp_model), batch, FrozenReference(sharp_model), get_objective("treg"))
    r_hat = seq.features["contrast_token_rewards"]
    assert r_hat.shape == seq.features["policy_token_logps"].shape == (3, 2, batch.input_ids.shape[1])
    assert not r_hat.requires_grad
    with torch.no_grad():
        for b, ex in enumerate(tok):
            for k, (ids, start) in enumerate(zip(ex.sequences, ex.response_starts)):
                better_ids, better_start = ex.side_rows["contrast_token_rewards"]["better"][k]
                worse_ids, worse_start = ex.side_rows["contrast_token_rewards"]["worse"][k]
                response = ids[start:]
                assert better_ids[better_start:] == worse_ids[worse_start:] == response
                better = response_logps(sharp_model, better_ids, better_start)
                worse = response_logps(sharp_model, worse_ids, worse_start)
                expected = torch.sigmoid(better - worse) - 0.5
                got = r_hat[b, k]
                torch.testing.assert_close(got[max(start, 1): len(ids)], expected, atol=2e-6, rtol=1e-4)
                assert got[:max(start, 1)].eq(0).all() and got[len(ids):].eq(0).all()
    assert r_hat.abs().max() > 1e-2  # the comparison above is not between near-zeros


def ref_sample_rows(n: int) -> list[dict]:
    """Real HH pairs; each row's ref_sample is the chosen reply of the next row (a real response
    text standing in for a sample from the reference policy)."""
    rows = [json.loads(x) for x in (FIXTURES / "hh_harmless_64.jsonl").read_text(encoding="utf-8").splitlines()]
    out = []
    for i in range(n):
        prompt, chosen, rejected = split_hh_dialogue(rows[i]["chosen"], rows[i]["rejected"], "hh", i)
        nxt = rows[i + 1]
        _, other, _ = split_hh_dialogue(nxt["chosen"], nxt["rejected"], "hh", i + 1)
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "ref_sample": other})
    return out


def test_ref_sample_logps_equal_scoring_that_response_alone(tiny_model_dir, tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", ref_sample_rows(3))
    examples, _ = load_examples(path)
    tok = tokenize(examples, tokenizer, max_length=96, max_prompt_length=48, features=["ref_sample"])
    plain = tokenize(examples, tokenizer, max_length=96, max_prompt_length=48)
    model = load_model(str(tiny_model_dir))
    policy, reference = PolicyLogps(model), FrozenReference(model)
    batch = collate(tok, tokenizer.pad_token_id)
    assert batch.input_ids.shape[0] == 9 and batch.extras["ref_sample"].tolist() == [6, 7, 8]
    seq = forward_batch(policy, batch, reference, get_objective("selm"))
    assert seq.policy.shape == (3, 2)  # extra rows, not extra list entries
    # the list rows are unaffected by the extra rows in their batch
    alone = forward_batch(policy, collate(plain, tokenizer.pad_token_id), reference, get_objective("dpo"))
    torch.testing.assert_close(seq.policy, alone.policy, atol=1e-5, rtol=1e-6)

    got = seq.features["ref_sample_logps"]
    got.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    naive = []
    for ex in examples:
        ids, start = tokenize_response(tokenizer, ex.prompt, ex.extra["ref_sample"], ex.source)
        ids, start, _, _ = truncate(ids, start, 96, 48, tokenizer.bos_token_id)
        naive.append(response_logps(model, ids, start).sum())
    naive = torch.stack(naive)
    torch.testing.assert_close(got, naive, atol=1e-4, rtol=1e-5)
    naive.sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, atol=2e-5, rtol=1e-4, msg=f"grad of {n}")
    # a frozen copy of the untrained policy: the reference's values equal the policy's
    torch.testing.assert_close(seq.features["ref_sample_reference_logps"], got.detach(), atol=1e-5, rtol=1e-6)


def test_precomputed_ref_sample_reference_equals_live(tiny_model_dir, tokenizer, tmp_path):
    examples, _ = load_examples(write_jsonl(tmp_path / "pairs.jsonl", ref_sample_rows(5)))
    tok = tokenize(examples, tokenizer, max_length=96, max_prompt_length=48, features=["ref_sample"])
    model = load_model(str(tiny_model_dir))
    cache = compute_reference_logps(PolicyLogps(copy.deepcopy(model)), tok, tokenizer.pad_token_id, "cpu", 2)
    assert cache["responses"].shape == (5, 2) and cache["ref_sample"].shape == (5,)  # chosen, rejected; ref sample
    idx = [4, 1, 3]
    live = forward_batch(PolicyLogps(model), make_batch(tok, idx, tokenizer.pad_token_id),
                         FrozenReference(model), get_objective("xpo"))
    pre = forward_batch(PolicyLogps(model), make_batch(with_reference(tok, cache), idx, tokenizer.pad_token_id), None,
                        get_objective("xpo"))
    torch.testing.assert_close(pre.reference, live.reference, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(pre.features["ref_sample_reference_logps"],
                               live.features["ref_sample_reference_logps"], atol=1e-5, rtol=1e-6)


def test_missing_or_bad_ref_sample_names_file_row_and_field(tmp_path):
    rows = ref_sample_rows(3)
    del rows[1]["ref_sample"]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    examples, _ = load_examples(path)
    for name in ("selm", "xpo"):
        with pytest.raises(ValueError, match=rf"{name}.*field 'ref_sample'.*{tmp_path / 'pairs.jsonl'}:2"):
            prepare_examples(get_objective(name), examples, "best_vs_worst", str(path))
    prepare_examples(get_objective("dpo"), examples, "best_vs_worst", str(path))  # dpo ignores the field
    rows[1]["ref_sample"] = "   "
    with pytest.raises(DataError, match=r"row 2, field 'ref_sample': is empty"):
        load_examples(write_jsonl(tmp_path / "bad.jsonl", rows))


def test_contrast_rewards_need_a_live_reference(tiny_model_dir, tmp_path):
    from prefalign.config import load_config
    from prefalign.recipes.policy import resolve_reference

    cfg = load_config(None, [f"model={tiny_model_dir}", "data.train=x.jsonl", "objective=treg", "precompute_ref=true"])
    with pytest.raises(ValueError, match="live reference"):
        resolve_reference(cfg, get_objective("treg"))
    cfg = load_config(None, [f"model={tiny_model_dir}", "data.train=x.jsonl", "objective=selm", "precompute_ref=true"])
    assert resolve_reference(cfg, get_objective("selm")) == "precomputed"


def test_nested_row_batches_move_to_the_device():
    # "contrast" and KTO's "mismatched" are batches inside the batch; left on the host they would
    # meet device tensors in the step (the "meta" device stands in for an accelerator here)
    from prefalign.data.collate import Batch, Rows, to_device

    rows = Rows(*(torch.ones(4, 5) for _ in range(4)))
    grid = {name: torch.ones(2, 3) for name in ("input_ids", "attention_mask", "response_mask", "target_index",
                                                 "row_index", "valid", "target", "reference_logps")}
    batch = Batch(**grid, extras={"contrast": rows, "note": "kept",
                                                              "nested": {"x": torch.ones(1)}})
    moved = batch.to("meta")
    assert moved.input_ids.is_meta and moved.extras["contrast"].input_ids.is_meta and moved.extras["note"] == "kept"
    assert moved.extras["nested"]["x"].is_meta and moved.reference_logps.is_meta
    # reward-model batches are plain dicts of tensors and go through the same helper
    assert to_device({"input_ids": torch.ones(2, 3), "note": "kept"}, "meta")["input_ids"].is_meta
