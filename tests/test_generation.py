import torch

from prefalign.generation import GenerateSettings, generate, generate_batch, keep_tail
from prefalign.models import load_model


def test_keep_tail_keeps_bos_and_end():
    assert keep_tail([1, 5, 6, 7, 8], 3, bos=1) == [1, 7, 8]
    assert keep_tail([5, 6, 7, 8], 2, bos=1) == [7, 8]
    assert keep_tail([1, 2], 5, bos=1) == [1, 2]


def test_greedy_batch_equals_one_prompt_at_a_time(tiny_model_dir, tokenizer):
    model = load_model(str(tiny_model_dir))
    prompts = ["\n\nHuman: hi there\n\nAssistant:", "\n\nHuman: what is a very long question about cats?\n\nAssistant:"]
    s = GenerateSettings(max_new_tokens=6, do_sample=False, batch_size=2)
    together = generate(model, tokenizer, prompts, s, progress=False)
    alone = [generate(model, tokenizer, [p], s, progress=False)[0] for p in prompts]
    # left padding with an attention mask must not change what a prompt generates
    assert together == alone


def test_greedy_matches_manual_argmax(tiny_model_dir, tokenizer):
    model = load_model(str(tiny_model_dir)).eval()
    prompt = "\n\nHuman: hello\n\nAssistant:"
    b = generate_batch(model, tokenizer, [prompt], GenerateSettings(max_new_tokens=5, do_sample=False))
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        for _ in range(5):
            nxt = model(ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], 1)
            if nxt == tokenizer.eos_token_id:
                break
    n = ids.shape[1]
    assert b.ids[0, :n].tolist() == ids[0].tolist()
    assert int(b.response_mask[0].sum()) == n - len(tokenizer(prompt)["input_ids"])


def test_sampling_is_seeded_and_masks_after_eos(tiny_model_dir, tokenizer):
    model = load_model(str(tiny_model_dir))
    prompts = ["\n\nHuman: a\n\nAssistant:"] * 3
    s = GenerateSettings(max_new_tokens=8, seed=3, num_return_sequences=2, batch_size=3)
    first, second = generate(model, tokenizer, prompts, s, progress=False), generate(model, tokenizer, prompts, s,
                                                                                   progress=False)
    assert first == second and all(len(r) == 2 for r in first)
    b = generate_batch(model, tokenizer, prompts, s)
    eos = tokenizer.eos_token_id
    for row, keep in zip(b.ids, b.response_mask):
        kept = row[keep].tolist()
        # at most one EOS survives, and only as the last kept token
        assert eos not in kept[:-1]
    assert b.prompt_index == [0, 0, 1, 1, 2, 2]
