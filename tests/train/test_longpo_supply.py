"""LongPO's batch supply: short-context reference rows and the long chosen sequence's NLL, each
checked against a naive computation on the tiny model (one unpadded sequence at a time)."""

from __future__ import annotations

import copy
import pytest
import torch

from prefalign.features import collate, tokenize
from prefalign.data.formats.readers import load_examples
from prefalign.data.records import DataError
from prefalign.data.tokenize import tokenize_response, truncate
from prefalign.losses import get_objective
from prefalign.models.causal_lm import FrozenReference, PolicyLogps, data_fingerprint, load_model, with_reference
from prefalign.recipes.policy import compute_reference_logps, prepare_examples
from prefalign.train.loop import make_batch
from prefalign.train.step import forward_batch
from tests_support import hh_long_short, write_jsonl

MAX_LEN, MAX_PROMPT = 160, 128


def long_short_rows(n: int) -> list[dict]:
    return hh_long_short(n)


def response_logps(model, ids: list[int], start: int) -> torch.Tensor:
    """[len(ids) - max(start, 1)] log p(ids[t] | ids[:t]) for t >= start, from one unpadded forward."""
    logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    return torch.stack([logp[t - 1, ids[t]] for t in range(max(start, 1), len(ids))])


def tokenized(tokenizer, path, features=()):
    examples, _ = load_examples(path)
    return examples, tokenize(examples, tokenizer, MAX_LEN, MAX_PROMPT, features=features)


@pytest.fixture
def sharp_model(tiny_model_dir):
    # a random tiny model predicts nearly uniformly: sharpening its output makes the context
    # matter, so long- and short-context log-probs differ clearly and a mix-up would show
    model = load_model(str(tiny_model_dir))
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    return model.eval()


def test_short_rows_are_the_short_prompt_then_the_same_response_ids(tokenizer, tmp_path):
    examples, tok = tokenized(tokenizer, write_jsonl(tmp_path / "p.jsonl", long_short_rows(6)),
                              features=["short_prompt"])
    same = 0
    for ex, t in zip(examples, tok):
        assert len(t.side_rows["short_prompt"]) == 2
        for k, ((ids, start), main, main_start) in enumerate(zip(t.side_rows["short_prompt"], t.sequences, t.response_starts)):
            assert ids[start:] == main[main_start:]  # the very same response tokens
            assert len(ids) < len(main)  # the short context is shorter
            # an independent tokenization of short_prompt + response, truncated the usual way
            alone, alone_start = tokenize_response(tokenizer, ex.extra["short_prompt"], ex.responses[k], ex.source)
            alone, alone_start, _, _ = truncate(alone, alone_start, MAX_LEN, MAX_PROMPT, tokenizer.bos_token_id)
            response = main[main_start:]
            # the main response may be cut to fit after the long prompt, or end in an added EOS
            body = response[:-1] if response[-1] == tokenizer.eos_token_id else response
            if alone[alone_start:alone_start + len(body)] == body:  # same boundary: same prompt ids
                assert ids[:start] == alone[:alone_start]
                same += 1
    assert same >= 10  # the comparison above ran (it is skipped only where a merge moved the boundary)


def test_reference_is_scored_after_the_short_prompt(sharp_model, tokenizer, tmp_path):
    _, tok = tokenized(tokenizer, write_jsonl(tmp_path / "p.jsonl", long_short_rows(3)),
                       features=["short_prompt", "long_chosen_nll"])
    batch = collate(tok, tokenizer.pad_token_id)
    seq = forward_batch(PolicyLogps(sharp_model), batch, FrozenReference(sharp_model), get_objective("longpo"))
    with torch.no_grad():
        for b, t in enumerate(tok):
            for k in range(2):
                short = response_logps(sharp_model, *t.side_rows["short_prompt"][k]).sum()
                long = response_logps(sharp_model, t.sequences[k], t.response_starts[k]).sum()
                torch.testing.assert_close(seq.reference[b, k], short, atol=1e-4, rtol=1e-5)
                torch.testing.assert_close(seq.policy[b, k].detach(), long, atol=1e-4, rtol=1e-5)
                assert abs(float(short - long)) > 0.1  # the two contexts really give different values


def test_long_chosen_nll_is_the_mean_nll_of_the_whole_chosen_sequence(tiny_model_dir, tokenizer, tmp_path):
    _, tok = tokenized(tokenizer, write_jsonl(tmp_path / "p.jsonl", long_short_rows(3)),
                       features=["short_prompt", "long_chosen_nll"])
    model = load_model(str(tiny_model_dir))
    batch = collate(tok, tokenizer.pad_token_id)
    assert batch.input_ids.shape[0] == 9 and batch.extras["long_chosen_nll"].tolist() == [6, 7, 8]
    seq = forward_batch(PolicyLogps(model), batch, FrozenReference(model), get_objective("longpo"))
    assert seq.policy.shape == (3, 2)  # an extra row, not an extra list entry
    got = seq.features["long_chosen_nll"]
    got.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    # independent: every token after the first of the chosen long sequence (prompt included)
    naive = torch.stack([-response_logps(model, t.sequences[0], 1).mean() for t in tok])
    assert all(t.response_starts[0] > 20 for t in tok)  # the prompt is a large part of what is averaged
    torch.testing.assert_close(got, naive, atol=1e-5, rtol=1e-5)
    naive.sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, atol=2e-5, rtol=1e-4, msg=f"grad of {n}")


def test_precomputed_short_reference_equals_live_and_keys_the_cache(tiny_model_dir, tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", long_short_rows(5))
    _, tok = tokenized(tokenizer, path, features=["short_prompt", "long_chosen_nll"])
    model = load_model(str(tiny_model_dir))
    cache = compute_reference_logps(PolicyLogps(copy.deepcopy(model)), tok, tokenizer.pad_token_id, "cpu", 2)
    assert cache["responses"].shape == (5, 2) and set(cache) == {"responses"}
    idx = [4, 1, 3]
    live = forward_batch(PolicyLogps(model), make_batch(tok, idx, tokenizer.pad_token_id),
                         FrozenReference(model), get_objective("longpo"))
    pre = forward_batch(PolicyLogps(model), make_batch(with_reference(tok, cache), idx, tokenizer.pad_token_id), None,
                        get_objective("longpo"))
    torch.testing.assert_close(pre.reference, live.reference, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(pre.features["long_chosen_nll"], live.features["long_chosen_nll"])
    # the cache must not be reused when only the short contexts change
    rows = long_short_rows(5)
    rows[2]["short_prompt"] = "Human: a different short context." + rows[2]["short_prompt"]
    _, other = tokenized(tokenizer, write_jsonl(tmp_path / "q.jsonl", rows), features=["short_prompt"])
    assert [t.sequences for t in other] == [t.sequences for t in tok]
    assert data_fingerprint(other) != data_fingerprint(tok)


def test_missing_or_bad_short_prompt_names_file_row_and_field(tiny_model_dir, tmp_path):
    rows = long_short_rows(3)
    del rows[1]["short_prompt"]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    examples, _ = load_examples(path)
    with pytest.raises(ValueError, match=rf"longpo.*field 'short_prompt'.*{tmp_path / 'p.jsonl'}:2"):
        prepare_examples(get_objective("longpo"), examples, "best_vs_worst", str(path))
    prepare_examples(get_objective("dpo"), examples, "best_vs_worst", str(path))  # dpo ignores the field
    # a training run fails before any model is loaded or step taken
    from prefalign.config import load_config
    from prefalign.recipes.policy import train

    cfg = load_config(None, [f"model={tiny_model_dir}", f"data.train={path}", f"output_dir={tmp_path / 'run'}",
                             "objective=longpo", "max_steps=1", "progress=false"])
    with pytest.raises(ValueError, match="short_prompt"):
        train(cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    rows[1]["short_prompt"] = "  "
    with pytest.raises(DataError, match=r"row 2, field 'short_prompt': is empty"):
        load_examples(write_jsonl(tmp_path / "bad.jsonl", rows))
    rows[1]["short_prompt"] = [{"role": "user", "content": "hi"}]
    with pytest.raises(DataError, match=r"row 2, field 'short_prompt': must be text when prompt is text"):
        load_examples(write_jsonl(tmp_path / "bad.jsonl", rows))


def test_short_rows_cannot_mix_with_token_level_reference_features(tiny_model_dir, tokenizer, tmp_path):
    _, tok = tokenized(tokenizer, write_jsonl(tmp_path / "p.jsonl", long_short_rows(2)),
                       features=["short_prompt"])
    model = load_model(str(tiny_model_dir))
    with pytest.raises(ValueError, match="short-context reference rows"):
        forward_batch(PolicyLogps(model), collate(tok, tokenizer.pad_token_id), FrozenReference(model),
                      get_objective("sparsepo_act"))
