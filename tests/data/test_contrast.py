"""T-REG's contrast rows: the main sequence's response ids, copied after each contrast prompt."""

from __future__ import annotations

import pytest

from prefalign.config import ConfigError, load_config
from prefalign.data.contrast import CONTRAST_BETTER, CONTRAST_WORSE, contrast_sequences
from prefalign.data.records import Example
from prefalign.features import tokenize

FEATURES = ["contrast_token_rewards"]
TEMPLATES = (CONTRAST_BETTER, CONTRAST_WORSE)


def head_text(template: str, draft: str) -> str:
    return template.split("{prompt}")[0].replace("{response}", draft)


def test_contrast_rows_copy_the_response_ids_when_a_merge_crosses_the_boundary(tokenizer):
    # "Assistant: " + "Sure thing": byte-level BPE merges the prompt's trailing space into the first
    # response token (" S"), so the main response starts with a token holding a prompt character.
    # Tokenizing contrast prompt + response text afresh could split differently; the rows must
    # hold the same ids.
    prompt = "\n\nHuman: can you help me?\n\nAssistant: "
    ex = Example(prompt, ["Sure thing", "No way"], [1.0, 0.0], "pair", "t:1")
    (tok,) = tokenize([ex], tokenizer, max_length=400, max_prompt_length=100, features=FEATURES, contrast=TEMPLATES)
    main, start = tok.sequences[0], tok.response_starts[0]
    merged = tokenizer.decode(main[start:start + 1])
    assert merged.startswith(" ") and tokenizer.decode(main[:start]).endswith(":"), "no merge across the boundary"
    for k, (seq, s) in enumerate(zip(tok.sequences, tok.response_starts)):
        for name, template in zip(("better", "worse"), TEMPLATES):
            ids, c_start = tok.side_rows["contrast_token_rewards"][name][k]
            assert ids[c_start:] == seq[s:]  # the same ids, EOS included
            assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
            draft = ex.responses[k]
            # the text reads instruction, draft, prompt, response: no character lost or doubled at the boundary
            assert tokenizer.decode(ids, skip_special_tokens=True) == head_text(template, draft) + prompt + draft
    better, worse = tok.side_rows["contrast_token_rewards"]["better"][0][0], tok.side_rows["contrast_token_rewards"]["worse"][0][0]
    assert better != worse and "helpful, correct" in tokenizer.decode(better)
    assert "unhelpful, incorrect" in tokenizer.decode(worse)


def test_truncated_text_prompt_keeps_the_instruction_and_the_main_prompt_ids(tokenizer):
    prompt = "\n\nHuman: " + "tell me more about the weather, " * 30 + "\n\nAssistant:"
    ex = Example(prompt, [" It is sunny.", " I do not know."], [1.0, 0.0], "pair", "t:1")
    (tok,) = tokenize([ex], tokenizer, max_length=96, max_prompt_length=48, features=FEATURES, contrast=TEMPLATES)
    assert tok.truncated and tok.response_starts[0] == 48
    ids, c_start = tok.side_rows["contrast_token_rewards"]["better"][0]
    head = tokenizer(head_text(CONTRAST_BETTER, "It is sunny."), add_special_tokens=False)["input_ids"]
    main = tok.sequences[0]
    # BOS, the whole instruction, then exactly the (left-truncated) main prompt and response
    assert ids == main[:1] + head + main[1:]
    assert c_start == len(head) + tok.response_starts[0]


def test_chat_prompt_instruction_in_the_last_user_turn_and_truncation_mirrored(tokenizer):
    history = [{"role": "user", "content": "an old question " * 40}, {"role": "assistant", "content": "an old answer"},
               {"role": "user", "content": "and now, how are you? {prompt} {response}"}]
    ex = Example(history, ["Fine, thanks.", "Go away."], [1.0, 0.0], "pair", "t:1")
    (short,) = tokenize([ex], tokenizer, max_length=400, max_prompt_length=300, features=FEATURES, contrast=TEMPLATES)
    (cut,) = tokenize([ex], tokenizer, max_length=96, max_prompt_length=48, features=FEATURES, contrast=TEMPLATES)
    for tok in (short, cut):
        for k in range(2):
            ids, c_start = tok.side_rows["contrast_token_rewards"]["worse"][k]
            assert ids[c_start:] == tok.sequences[k][tok.response_starts[k]:]
            text = tokenizer.decode(ids[:c_start])
            assert "unhelpful, incorrect" in text and "and now, how are you? {prompt} {response}" in text
            assert text.endswith("Assistant:") and text.startswith(tokenizer.bos_token)
    # the main prompt lost its first tokens to left truncation; the contrast prompt lost as many
    lost = short.response_starts[0] - cut.response_starts[0]
    full, _ = short.side_rows["contrast_token_rewards"]["worse"][0]
    kept, _ = cut.side_rows["contrast_token_rewards"]["worse"][0]
    assert lost > 0 and kept[1:kept.index(tokenizer.eos_token_id)] == full[1 + lost:full.index(tokenizer.eos_token_id)]


def test_response_at_position_zero_scores_the_same_tokens(tokenizer):
    # Without BOS a merge can pull the whole prompt into the first response token (start 0);
    # token 0 of a row is never scored, so the contrast row must leave it out too.
    main = [7, 8, 9, tokenizer.eos_token_id]
    rows = contrast_sequences(tokenizer, "Hi", " there", TEMPLATES, main, 0, 0, "t:1")
    for ids, start in rows.values():
        assert ids[start - 1:] == main and start > 1


def test_templates_are_config_keys_checked_for_their_placeholder(tiny_model_dir):
    base = [f"model={tiny_model_dir}", "data.train=x.jsonl"]
    cfg = load_config(None, base)
    assert (cfg.data.contrast_better, cfg.data.contrast_worse) == TEMPLATES
    custom = load_config(None, base + ["data.contrast_better=Be good. {prompt}"])
    assert custom.data.contrast_better == "Be good. {prompt}"
    with pytest.raises(ConfigError, match=r"data.contrast_worse must contain \{prompt\} exactly once"):
        load_config(None, base + ["data.contrast_worse=Be bad."])
