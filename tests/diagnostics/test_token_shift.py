"""Token distribution shift (URIAL, arXiv:2312.01552): ranks of the aligned model's tokens under the base model."""

from __future__ import annotations

import pytest
import torch

from prefalign.diagnostics.token_shift import plot_token_shift, summarise_shift, token_ranks, token_shift
from prefalign.models.causal_lm import load_model

PROMPTS = ["\n\nHuman: How do I bake bread?\n\nAssistant:", "\n\nHuman: hi\n\nAssistant:",
           "\n\nHuman: What is the capital of France?\n\nAssistant:"]


def test_token_ranks_by_hand():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0], [5.0, 5.0, 1.0, 0.0]])
    assert token_ranks(logits, torch.tensor([1, 0])).tolist() == [1, 1]  # the top token; a tie with the top is 1
    assert token_ranks(logits, torch.tensor([2, 2])).tolist() == [2, 3]
    assert token_ranks(logits, torch.tensor([3, 3])).tolist() == [4, 4]


def test_summary_of_hand_built_ranks():
    """ranks 1,1,2,3,4,10 -> 2 unshifted, 2 marginal (2 and 3), 2 shifted (4 and 10)."""
    ranks = torch.tensor([1, 1, 2, 3, 4, 10])
    positions = torch.tensor([0, 1, 0, 1, 2, 0])
    tokens = torch.tensor([5, 6, 5, 7, 8, 8])
    s = summarise_shift(ranks, positions, tokens, lambda t: f"tok{t}")
    assert s["counts"] == {"unshifted": 2, "marginal": 2, "shifted": 2}
    assert s["shifted_share"] == pytest.approx(1 / 3) and s["mean_base_rank"] == pytest.approx(21 / 6)
    by_pos = {r["position"]: r for r in s["per_position"]}
    assert (by_pos[0]["unshifted"], by_pos[0]["marginal"], by_pos[0]["shifted"]) == pytest.approx((1 / 3,) * 3)
    assert (by_pos[1]["unshifted"], by_pos[1]["marginal"], by_pos[2]["shifted"]) == (0.5, 0.5, 1.0)
    assert s["most_shifted"] == [{"token": "tok8", "id": 8, "shifted": 2, "occurrences": 2}]
    with pytest.raises(ValueError, match="no response positions"):
        summarise_shift(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long),
                        torch.tensor([], dtype=torch.long), str)


def test_a_model_against_itself_has_no_shifted_tokens(tiny_model_dir, tokenizer, tmp_path):
    model = load_model(str(tiny_model_dir))
    s = token_shift(model, model, tokenizer, PROMPTS, max_new_tokens=12)
    assert s["unshifted_share"] == 1.0 and s["shifted_share"] == 0.0 and s["most_shifted"] == []
    assert s["positions"] > 3 and s["prompts"] == 3
    assert plot_token_shift(s, tmp_path / "t.png").stat().st_size > 5000


def test_ranks_match_a_naive_per_answer_computation(tiny_model_dir, tokenizer, tmp_path):
    """Two different models: ranks recomputed independently (HF greedy generate, full forward, argsort)."""
    from conftest import build_tiny_llama

    other = tmp_path / "other"
    build_tiny_llama(other, tokenizer, seed=1)
    aligned, base = load_model(str(tiny_model_dir)), load_model(str(other))
    s = token_shift(aligned, base, tokenizer, PROMPTS, max_new_tokens=10, batch_size=2)
    want = {"unshifted": 0, "marginal": 0, "shifted": 0}
    for p in PROMPTS:
        ids = tokenizer(p, return_tensors="pt")["input_ids"]
        out = aligned.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=tokenizer.eos_token_id)[0]
        answer = out[ids.shape[1]:].tolist()
        if tokenizer.eos_token_id in answer:
            answer = answer[:answer.index(tokenizer.eos_token_id) + 1]
        with torch.no_grad():
            logits = base(input_ids=out[None, :ids.shape[1] + len(answer)]).logits[0]
        for i, tok in enumerate(answer):
            order = logits[ids.shape[1] - 1 + i].argsort(descending=True).tolist()
            rank = order.index(tok) + 1
            want["unshifted" if rank == 1 else "marginal" if rank <= 3 else "shifted"] += 1
    assert s["counts"] == want
    assert s["shifted_share"] > 0  # two unrelated random models disagree somewhere
