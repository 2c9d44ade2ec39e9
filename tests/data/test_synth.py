"""Magpie and URIAL: the template prefix, the filters' accounting (scripted model) and a tiny-model run."""

from __future__ import annotations

import pytest
import torch

from prefalign.data.builders.pipeline import BuildContext, run_builder
from prefalign.data.records import Example
from prefalign.data.builders.synth import (URIAL_EXAMPLES, LocalModel, magpie, pre_query_prefix, raw_text_prompt,
                                  urial_answer, urial_prompt)
from prefalign.models.generation import GenerateSettings, encode_prompt


class ScriptedLM(torch.nn.Module):
    """Stands in for a causal LM: each generate() call returns the next scripted continuations."""

    def __init__(self, tokenizer, scripts: list[list[str]], finished: list[list[bool]]):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tok, self.scripts, self.finished, self.prompts = tokenizer, scripts, finished, []

    def generate(self, input_ids, attention_mask, max_new_tokens, num_return_sequences, pad_token_id,
                 eos_token_id, **sampling):
        texts, ends = self.scripts.pop(0), self.finished.pop(0)
        assert len(texts) == input_ids.shape[0]
        self.prompts.append([self.tok.decode(row[m.bool()]) for row, m in zip(input_ids, attention_mask)])
        rows = [self.tok(t, add_special_tokens=False)["input_ids"] + ([eos_token_id] if e else []) for t, e in
                zip(texts, ends)]
        # like HF generate: an unfinished row runs to max_new_tokens, finished ones are padded after EOS
        width = max([max_new_tokens] + [len(r) for r in rows])
        rows = [r if e else (r * width)[:width] for r, e in zip(rows, ends)]
        new = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows], dtype=torch.long)
        return torch.cat([input_ids, new], 1)


def test_pre_query_prefix_is_the_template_before_the_user_content(tokenizer):
    # the fixture's template: "{{ bos }}{% ... %}\n\nHuman: {content}" for a user turn
    prefix = pre_query_prefix(tokenizer)
    assert prefix == "<|bos|>\nHuman: "  # Jinja's trim_blocks eats the first newline after a tag
    prompt = raw_text_prompt(tokenizer, prefix)
    # generation adds the BOS itself, so the template's copy is dropped: the ids are the template's exactly
    assert prompt == "\nHuman: "
    assert encode_prompt(tokenizer, prompt, 10_000) == tokenizer(prefix, add_special_tokens=False)["input_ids"]


def test_a_template_that_hides_the_user_text_is_an_error(tokenizer):
    fake = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    fake.chat_template = "{% for m in messages %}<turn>{% endfor %}"
    with pytest.raises(ValueError, match="does not show the user's message"):
        pre_query_prefix(fake)
    fake.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        pre_query_prefix(fake)


def test_magpie_filters_are_counted_exactly(tokenizer):
    """5 sampled instructions: one never ends its turn, one is empty, one repeats another up to case and
    spaces; the two left are answered, one answer is empty: 1 kept, 4 dropped by reason."""
    instr = ["Name a colour.", "", "name  a COLOUR.", "unfinished", "Count to three."]
    lm = ScriptedLM(tokenizer, [instr, ["Blue.", " "]], [[True, True, True, False, True], [True, True]])
    s = GenerateSettings(max_new_tokens=16, batch_size=5)
    examples, report = magpie(lm, tokenizer, 5, s, s)
    assert report.as_dict() == {"requested": 5, "kept": 1, "dropped": {
        "empty instruction": 1, "duplicate instruction": 1, "instruction did not end its turn": 1,
        "empty response": 1}}
    assert [(e.prompt, e.responses, e.kind) for e in examples] == [("Name a colour.", ["Blue."], "sft")]
    # the instructions were sampled from the bare prefix; the answers through the chat template
    assert lm.prompts[0] == ["<|bos|>\nHuman: "] * 5
    assert lm.prompts[1][0] == "<|bos|>\nHuman: Name a colour.\nAssistant:"


def test_magpie_builder_on_the_tiny_model_accounts_for_every_sample(tiny_model_dir, tokenizer):
    from prefalign.models.causal_lm import load_model

    context = BuildContext(generator=LocalModel(load_model(str(tiny_model_dir)), tokenizer), seed=3)
    out, report = run_builder("magpie", [], {"n": 5, "max_instruction_tokens": 6, "max_response_tokens": 3,
                                             "batch_size": 4}, context)
    assert report["requested"] == 5 == report["kept"] + sum(report["dropped"].values())
    assert report["out"] == report["kept"] == len(out) and all(e.kind == "sft" for e in out)
    with pytest.raises(ValueError, match="needs a local model: pass --generator-model"):
        run_builder("magpie", [], {"n": 1})


def test_urial_prompt_and_answer_cutting():
    prompt = urial_prompt("Why is the sky blue?")
    assert prompt.startswith("# Instruction\n\n") and prompt.endswith("# Query:\n```\nWhy is the sky blue?\n```"
                                                                       "\n\n# Answer:\n```\n")
    assert prompt.count("# Query:") == len(URIAL_EXAMPLES) + 1 and prompt.count("# Answer:") == len(URIAL_EXAMPLES) + 1
    assert urial_answer("Because of scattering.\n```\n\n# Query:\n```\nnext") == "Because of scattering."
    assert urial_answer("it never closes") is None


def test_urial_builder_keeps_closed_answers_and_counts_the_rest(tokenizer):
    lm = ScriptedLM(tokenizer, [["Short answer.\n```\n# Query:", "runs on and on", "\n```"]], [[False] * 3])
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "And you?"}]
    examples = [Example("Q1?", ["a", "b"], [1.0, 0.0], "pair", "f:1"), Example("Q2?", ["a"], [1.0], "sft", "f:2"),
                Example(chat, ["a"], [1.0], "sft", "f:3")]
    out, report = run_builder("urial", examples, {}, BuildContext(generator=LocalModel(lm, tokenizer)))
    assert [(e.prompt, e.responses, e.source) for e in out] == [("Q1?", ["Short answer."], "f:1")]
    assert report["dropped"] == {"answer block did not close": 1, "empty answer": 1} and report["kept"] == 1
    assert lm.prompts[0][2].endswith("# Query:\n```\nAnd you?\n```\n\n# Answer:\n```\n")  # last user turn
