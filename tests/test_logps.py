"""Log-probs: the lean chunked path equals naive log_softmax + gather, values and gradients."""

from __future__ import annotations

import pytest
import torch

from prefalign.data.collate import collate
from prefalign.data.formats.readers import load_examples
from prefalign.data.tokenize import tokenize_examples
from prefalign.logps import ChunkedTokenLogps, naive_token_logps, token_logps
from prefalign.models.causal_lm import PolicyLogps, load_model, sequence_sums


@pytest.mark.parametrize("keep_elements", [0, 7 * 11], ids=["recomputed", "kept"])
def test_chunked_function_matches_log_softmax_and_gradcheck(keep_elements):
    """Both backward paths: logits recomputed per chunk, and probabilities kept from forward."""
    torch.manual_seed(0)
    h = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 11, (7,))
    out = ChunkedTokenLogps.apply(h, w, t, 3, keep_elements)
    ref = torch.log_softmax(h @ w.T, dim=1).gather(1, t[:, None]).squeeze(1)
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=1e-6)
    # backward against autograd of the naive formula, chunk smaller than the rows
    g = torch.randn(7, dtype=torch.float64)
    gh, gw = torch.autograd.grad((out * g).sum(), (h, w))
    rh, rw = torch.autograd.grad((ref * g).sum(), (h, w))
    torch.testing.assert_close(gh, rh)
    torch.testing.assert_close(gw, rw)


def test_chunked_function_keeps_probabilities_only_when_gradients_are_wanted_and_they_fit():
    h = torch.randn(7, 5, requires_grad=True)
    w = torch.randn(11, 5)
    t = torch.randint(0, 11, (7,))
    kept = lambda out: out.grad_fn.saved_tensors[3] is not None  # noqa: E731
    assert kept(ChunkedTokenLogps.apply(h, w, t, 3, 77))
    assert not kept(ChunkedTokenLogps.apply(h, w, t, 3, 76))  # one element over the budget


def test_lean_and_full_paths_equal_naive_on_a_padded_batch(tiny_model_dir, tokenizer, hh_file):
    model = load_model(str(tiny_model_dir))
    examples, _ = load_examples(hh_file)
    tok = tokenize_examples(examples[:3], tokenizer, max_length=96, max_prompt_length=64)
    batch = collate(tok, tokenizer.pad_token_id)
    args = (batch.input_ids, batch.attention_mask, batch.response_mask)
    naive = naive_token_logps(model, *args)
    naive.sum().backward()
    naive_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for impl in ("lean", "full"):
        got = token_logps(model, *args, impl=impl)
        torch.testing.assert_close(got, naive, atol=2e-5, rtol=1e-5)
        # the host-computed index from collate selects exactly the positions the masks do
        with torch.no_grad():
            indexed = token_logps(model, *args, impl=impl, target_index=batch.target_index)
        torch.testing.assert_close(indexed, got.detach(), atol=0, rtol=0)
        got.sum().backward()
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.grad, naive_grads[n], atol=2e-5, rtol=1e-4, msg=f"{impl} grad of {n}")
        model.zero_grad()


def test_sequence_sums_equal_unpadded_per_example_computation(tiny_model_dir, tokenizer, hh_file):
    model = load_model(str(tiny_model_dir)).eval()
    examples, _ = load_examples(hh_file)
    tok = tokenize_examples(examples[:4], tokenizer, max_length=128, max_prompt_length=64)
    batch = collate(tok, tokenizer.pad_token_id)
    policy = PolicyLogps(model)
    with torch.no_grad():
        sums, n_tokens = sequence_sums(policy(batch.input_ids, batch.attention_mask, batch.response_mask),
                                       batch)
        for b, ex in enumerate(tok):
            for k, (ids, start) in enumerate(zip(ex.sequences, ex.response_starts)):
                x = torch.tensor([ids])
                logp = torch.log_softmax(model(input_ids=x).logits[0].double(), -1)
                expected = sum(logp[t - 1, ids[t]].item() for t in range(start, len(ids)))
                assert abs(sums[b, k].item() - expected) < 1e-3 * max(1.0, abs(expected))
                assert n_tokens[b, k].item() == len(ids) - start
