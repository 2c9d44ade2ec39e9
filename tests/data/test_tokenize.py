"""The prompt/response boundary, special tokens, truncation and collation, with literal tensors."""

from __future__ import annotations

import torch

from prefalign.data.collate import collate, epoch_batches
from prefalign.data.records import Example
from prefalign.data.tokenize import TokenizeStats, tokenize_examples, tokenize_response


def test_boundary_exact_when_a_merge_crosses_it(tokenizer):
    # With a trailing space in the prompt, byte-level BPE tokenizes "Assistant: " + "Sure" as
    # [..., ":", " Sure"] but the prompt alone as [..., ":", " "]: slicing prompt+response at
    # len(tokenize(prompt)) would cut " Sure" in half. The boundary must fall before " Sure".
    prompt, response = "\n\nHuman: can you help me?\n\nAssistant: ", "Sure thing"
    prompt_ids = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + response)["input_ids"]
    assert full[: len(prompt_ids)] != prompt_ids, "the fixture must exercise a merge across the boundary"
    ids, start = tokenize_response(tokenizer, prompt, response, "t:1")
    assert ids == full + [tokenizer.eos_token_id]
    assert tokenizer.decode(ids[start:-1]) == " Sure thing"
    assert tokenizer.decode(ids[1:start]) == prompt.rstrip(" ")


def test_bos_added_once_and_eos_once(tokenizer):
    ids, start = tokenize_response(tokenizer, "Hello", " world", "t:1")
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    assert ids[-1] == tokenizer.eos_token_id and ids.count(tokenizer.eos_token_id) == 1


def test_chat_template_not_doubling_bos_or_eos(tokenizer):
    prompt = [{"role": "user", "content": "hi there"}]
    ids, start = tokenize_response(tokenizer, prompt, "hello", "t:1")
    assert ids.count(tokenizer.bos_token_id) == 1
    # the template closes the turn with EOS already: no second one
    assert ids.count(tokenizer.eos_token_id) == 1 and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[:start]).endswith("Assistant:")


def test_truncation_left_prompt_right_response_and_counted(tokenizer):
    ex = Example("word " * 50, [" yes " * 40, " no"], [1.0, 0.0], "pair", "t:1")
    stats = TokenizeStats()
    (tok,) = tokenize_examples([ex], tokenizer, max_length=40, max_prompt_length=16, stats=stats)
    long, short = tok.sequences
    assert len(long) == 40 and tok.response_starts[0] == 16
    assert long[0] == tokenizer.bos_token_id  # BOS survives left truncation
    assert stats.truncated_prompt == 1 and stats.truncated_response == 1 and tok.truncated
    assert short[-1] == tokenizer.eos_token_id


def test_collate_masks_chosen_and_rejected_with_literal_tensors():
    from prefalign.data.tokenize import TokenizedExample

    a = TokenizedExample([[1, 5, 6, 7], [1, 5, 8]], [2, 2], [1.0, 0.0], "pair", "a")
    b = TokenizedExample([[1, 9, 10], [1, 9, 11, 12, 13]], [2, 2], [1.0, 0.0], "pair", "b")
    batch = collate([a, b], pad_id=0)
    assert batch.input_ids.tolist() == [[1, 5, 6, 7, 0], [1, 5, 8, 0, 0], [1, 9, 10, 0, 0], [1, 9, 11, 12, 13]]
    assert batch.response_mask.int().tolist() == [[0, 0, 1, 1, 0], [0, 0, 1, 0, 0], [0, 0, 1, 0, 0],
                                                     [0, 0, 1, 1, 1]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch.row_index.tolist() == [0, 1, 2, 3]
    assert batch.target.tolist() == [[1.0, 0.0], [1.0, 0.0]]


def test_collate_ragged_lists_only_real_rows():
    from prefalign.data.tokenize import TokenizedExample

    a = TokenizedExample([[1, 2], [1, 3], [1, 4]], [1, 1, 1], [3.0, 2.0, 1.0], "list", "a")
    b = TokenizedExample([[1, 5], [1, 6]], [1, 1], [0.0, 1.0], "list", "b")
    batch = collate([a, b], pad_id=0)
    assert batch.input_ids.shape == (5, 2)
    assert batch.row_index.tolist() == [0, 1, 2, 3, 4]
    assert batch.valid.tolist() == [[True, True, True], [True, True, False]]


def test_epoch_batches_deterministic_and_length_grouped():
    lengths = [i % 7 * 10 for i in range(100)]
    a = epoch_batches(100, 8, seed=1, epoch=0)
    assert a == epoch_batches(100, 8, seed=1, epoch=0) and a != epoch_batches(100, 8, seed=1, epoch=1)
    assert len(a) == 12 and all(len(b) == 8 for b in a)
    grouped = epoch_batches(100, 8, seed=1, epoch=0, lengths=lengths, group_by_length=True)
    spread = lambda bs: sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in bs)  # noqa: E731
    assert spread(grouped) < spread(a)
    flat = [i for b in grouped for i in b]  # 12 full batches of distinct examples (the last 4 dropped)
    assert len(grouped) == 12 and len(set(flat)) == len(flat) == 96 and set(flat) <= set(range(100))
    assert torch.tensor([len(b) for b in grouped]).eq(8).all()


def test_tokenizer_without_bos_gets_none_added(tmp_path, tokenizer):
    """A tokenizer with no BOS (GPT-2 style) must not get one invented; EOS is still appended once."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    backend = tokenizer.backend_tokenizer.__class__.from_str(tokenizer.backend_tokenizer.to_str())
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    plain = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    assert plain.bos_token_id is None
    ids, start = tokenize_response(plain, "Hello", " world", "t:1")
    assert ids == plain("Hello world")["input_ids"] + [plain.eos_token_id]
    assert tokenizer.bos_token_id not in ids and ids.count(plain.eos_token_id) == 1
    ex = Example("word " * 50, [" yes"], [1.0], "sft", "t:1")
    (tok,) = tokenize_examples([ex], plain, max_length=40, max_prompt_length=16)
    assert tok.response_starts[0] == 16 and tok.sequences[0][0] != tokenizer.bos_token_id
