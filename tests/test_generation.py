import logging
from pathlib import Path

import pytest
import torch
from conftest import hh_rows

from prefalign.models.generation import GenerateSettings, GenerateStats, generate, generate_batch, keep_tail
from prefalign.models.causal_lm import load_model


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


def short_context_llama(folder, tokenizer, positions: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=positions,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config).eval()


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_long_prompt_is_cut_to_leave_room_for_new_tokens(tmp_path, tokenizer, caplog):
    """prompt + max_new_tokens stays within max_position_embeddings: the prompt keeps its BOS and its
    end, the cut is counted and logged, and transformers never warns about exceeding the length."""
    positions, new = 40, 12
    model = short_context_llama(tmp_path, tokenizer, positions)
    long_prompt = hh_rows()[0]["chosen"].rsplit("\n\nAssistant:", 1)[0] + "\n\nAssistant:"
    full = tokenizer(long_prompt)["input_ids"]
    short = "\n\nHuman: hi\n\nAssistant:"
    assert len(full) > positions and len(tokenizer(short)["input_ids"]) < positions - new
    seen = Records()
    logging.getLogger("transformers").addHandler(seen)
    try:
        with caplog.at_level(logging.WARNING, logger="prefalign.models.generation"):
            s = GenerateSettings(max_new_tokens=new, do_sample=False, batch_size=2)
            b = generate_batch(model, tokenizer, [long_prompt, short], s)
            stats = GenerateStats()
            texts = generate(model, tokenizer, [long_prompt, short, long_prompt], s, progress=False, stats=stats)
    finally:
        logging.getLogger("transformers").removeHandler(seen)
    assert b.ids.shape[1] <= positions and b.ids.shape[1] == positions  # full room used: prompt fills the rest
    prompt_row = b.ids[0][b.attention_mask[0].bool() & ~b.response_mask[0]].tolist()
    room = positions - new
    assert prompt_row == [tokenizer.bos_token_id] + full[len(full) - room + 1:]  # BOS kept, then the end
    assert b.truncated == 1 and (stats.prompts, stats.truncated) == (3, 2) and len(texts) == 3
    assert any("1 of 2 prompts cut from the left to 28 tokens" in r.getMessage() for r in caplog.records)
    assert not [m for m in seen.messages if "maximum length" in m], seen.messages


def test_a_cut_to_the_prompt_budget_is_info_and_a_cut_for_positions_a_warning(tmp_path, tokenizer, caplog):
    """Training cuts prompts to max_prompt_length too, so a cut to that budget is counted at INFO;
    only a cut the model's positions force (a budget the model cannot serve) warns."""
    model = short_context_llama(tmp_path, tokenizer, 40)
    long_prompt = hh_rows()[0]["chosen"].rsplit("\n\nAssistant:", 1)[0] + "\n\nAssistant:"
    with caplog.at_level(logging.INFO, logger="prefalign.models.generation"):
        budget = generate_batch(model, tokenizer, [long_prompt], GenerateSettings(max_new_tokens=4, max_prompt_tokens=20,
                                                                               do_sample=False))
        forced = generate_batch(model, tokenizer, [long_prompt], GenerateSettings(max_new_tokens=12, do_sample=False))
    assert budget.truncated == forced.truncated == 1
    levels = [(r.levelno, r.getMessage().split(" (")[0]) for r in caplog.records]
    assert levels == [(logging.INFO, "1 of 1 prompts cut from the left to 20 tokens"),
                      (logging.WARNING, "1 of 1 prompts cut from the left to 28 tokens")]


def test_max_new_tokens_beyond_the_model_positions_is_a_clear_error(tmp_path, tokenizer):
    model = short_context_llama(tmp_path, tokenizer, 16)
    with pytest.raises(ValueError, match=r"max_new_tokens \(16\) leaves no room for a prompt: the model has 16"):
        generate_batch(model, tokenizer, ["hi"], GenerateSettings(max_new_tokens=16, do_sample=False))


def test_every_generation_path_goes_through_generate_batch():
    """Only models/generation.py calls a model's generate(): every other path (diagnose, judges, builders,
    the over-optimisation monitor, quickstart) gets the prompt cut that leaves room for new tokens."""
    import prefalign

    root = Path(prefalign.__file__).parent
    callers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if ".generate(" in p.read_text())
    # the vLLM sampler calls its engine's generate(), not a model's, after cutting prompts with fit_prompts
    assert callers == ["models/generation.py", "online/vllm_sampler.py"], callers
    assert "fit_prompts(" in (root / "online/vllm_sampler.py").read_text()


def test_sample_kl_reports_prompts_cut_to_fit(tmp_path, tokenizer):
    from prefalign.diagnostics.kl import sample_kl

    model = short_context_llama(tmp_path, tokenizer, 40)
    long_prompt = hh_rows()[0]["chosen"].rsplit("\n\nAssistant:", 1)[0] + "\n\nAssistant:"
    r = sample_kl(model, model, tokenizer, [long_prompt, "\n\nHuman: hi\n\nAssistant:"], max_new_tokens=8)
    assert r["truncated_prompts"] == 1 and r["samples"] == 2
    assert r["kl"] == pytest.approx(0.0, abs=1e-5)  # policy = reference, so the cut prompt still scores alike
