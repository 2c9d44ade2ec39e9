"""TRL's preference shapes (text or chat, explicit or implicit prompt), the H4 shape that repeats the
prompt inside chosen/rejected, and unpaired rows: each real fixture row loads to the Example of its
explicit text row, and chat rows tokenize with the boundary at the message boundary.

The fixtures in fixtures/trl_shapes/ are real UltraFeedback and OpenAssistant rows reshaped (see
fixtures/SOURCES.md); the expected Examples here are built from the unreshaped source rows."""

from __future__ import annotations

import json

import pytest

from prefalign.data.formats.readers import load_examples
from prefalign.data.records import DataError, detect_format, split_shared_text
from prefalign.data.tokenize import tokenize_examples
from tests_support import FIXTURES, write_jsonl

SHAPES = FIXTURES / "trl_shapes"
UF_ROWS, OASST_ROWS = (8, 9, 11), (3, 6)  # UF rows whose responses start with different words


def source_rows(name: str, picks: tuple) -> list[dict]:
    rows = [json.loads(x) for x in (FIXTURES / name).read_text(encoding="utf-8").splitlines()]
    return [rows[i] for i in picks]


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def reply(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def chat_expected() -> list[tuple]:
    """(prompt, chosen, rejected) of the conversational shapes, from the source rows."""
    out = [([user(r["prompt"])], reply(r["chosen"]), reply(r["rejected"]))
           for r in source_rows("ultrafeedback_12.jsonl", UF_ROWS)]
    for r in source_rows("oasst_ranked_12.jsonl", OASST_ROWS):
        ranked = sorted(r["responses"], key=lambda x: x["rank"])
        out.append((r["messages"], reply(ranked[0]["text"]), reply(ranked[-1]["text"])))
    return out


def loaded(name: str, **kw) -> list[tuple]:
    examples, report = load_examples(SHAPES / f"{name}.jsonl", **kw)
    assert report.kept == report.rows and all(e.target == [1.0, 0.0] and e.kind == "pair" for e in examples)
    return [(e.prompt, *e.responses) for e in examples]


def test_standard_implicit_prompt_is_the_shared_text():
    """{chosen: prompt + reply, rejected: prompt + reply}: the prompt is the shared text up to the word
    where the replies part, so the blank line before them stays with the replies."""
    expected = [(r["prompt"], "\n\n" + r["chosen"], "\n\n" + r["rejected"])
                for r in source_rows("ultrafeedback_12.jsonl", UF_ROWS)]
    first = json.loads((SHAPES / "standard_implicit.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert detect_format(first, "f") == "implicit"
    assert loaded("standard_implicit") == expected


@pytest.mark.parametrize("shape", ["conversational_explicit", "conversational_implicit", "h4_repeated_prompt"])
def test_chat_shapes_load_to_the_explicit_example(shape):
    """The UltraFeedback rows are single-turn and the OpenAssistant rows three turns deep (user,
    assistant, user): the shared leading messages are the prompt, the final assistant turns the replies."""
    expected = chat_expected()
    if shape == "h4_repeated_prompt":
        expected = expected[:3]  # the H4 shape gives the prompt as text: single-turn rows only
    assert loaded(shape) == expected


def test_conversational_implicit_keeps_row_fields():
    """trl-lib/ultrafeedback_binarized carries score_chosen/score_rejected beside the conversations."""
    examples, _ = load_examples(SHAPES / "conversational_implicit.jsonl")
    raw = source_rows("ultrafeedback_12.jsonl", UF_ROWS)
    assert [e.extra["score_chosen"] for e in examples[:3]] == [r["score_chosen"] for r in raw]


@pytest.mark.parametrize("shape", ["unpaired_standard", "unpaired_conversational", "unpaired_repeated_prompt"])
def test_unpaired_shapes(shape):
    chat = shape != "unpaired_standard"
    expected = []
    for r in source_rows("ultrafeedback_12.jsonl", UF_ROWS):
        prompt = [user(r["prompt"])] if chat else r["prompt"]
        for text, label in ((r["chosen"], 1.0), (r["rejected"], 0.0)):
            expected.append((prompt, reply(text) if chat else text, [label]))
    examples, _ = load_examples(SHAPES / f"{shape}.jsonl")
    assert all(e.kind == "unpaired" for e in examples)
    assert [(e.prompt, e.responses[0], e.target) for e in examples] == expected


@pytest.mark.parametrize("shape", ["conversational_implicit", "h4_repeated_prompt"])
def test_chat_boundary_falls_on_the_message_boundary(tokenizer, shape):
    """Same token ids as the explicit row; the prompt part is exactly the rendered prompt turns with
    the generation prompt, the response part the rendered reply turn."""
    implicit, _ = load_examples(SHAPES / f"{shape}.jsonl")
    explicit, _ = load_examples(SHAPES / "conversational_explicit.jsonl")
    args = dict(tokenizer=tokenizer, max_length=4096, max_prompt_length=2048)
    ours, theirs = tokenize_examples(implicit, **args), tokenize_examples(explicit[:len(implicit)], **args)
    assert [t.sequences for t in ours] == [t.sequences for t in theirs]
    assert [t.response_starts for t in ours] == [t.response_starts for t in theirs]
    for ex, tok in zip(implicit, ours):
        prompt_text = tokenizer.apply_chat_template(ex.prompt, add_generation_prompt=True, tokenize=False)
        for ids, start, response in zip(tok.sequences, tok.response_starts, ex.responses):
            assert tokenizer.decode(ids[:start]) == prompt_text
            assert tokenizer.decode(ids[start:]) == " " + response[0]["content"] + tokenizer.eos_token


@pytest.mark.parametrize("chosen, rejected, expected", [
    ("The sky is blue.", "The sky is green.", ("The sky is", " blue.", " green.")),  # TRL's own example
    ("Answer: 42", "Answer: 45", ("Answer:", " 42", " 45")),  # a partly shared word goes to the replies
    ("It is 4", "It is 42", ("It is", " 4", " 42")),  # one reply a prefix of the other's word
    ("I like it.", "I like it!", ("I like", " it.", " it!")),
    ("\n\nHuman: hi\n\nAssistant: Sure thing", "\n\nHuman: hi\n\nAssistant: Sure, no",
     ("\n\nHuman: hi\n\nAssistant:", " Sure thing", " Sure, no")),  # HH transcripts keep the HH rule
])
def test_shared_text_split(chosen, rejected, expected):
    assert split_shared_text(chosen, rejected, "f", 1) == expected


def test_shared_text_counts_shared_first_words_as_prompt():
    """The known limit of text without a prompt field: replies that begin alike (real UltraFeedback
    row 3, both "The Big Bang Theory ...") lend those words to the prompt. A `prompt` field avoids it."""
    (r,) = source_rows("ultrafeedback_12.jsonl", (3,))
    prompt, chosen, rejected = split_shared_text(r["prompt"] + "\n\n" + r["chosen"],
                                                 r["prompt"] + "\n\n" + r["rejected"], "f", 1)
    assert prompt == r["prompt"] + "\n\nThe Big Bang Theory"
    assert prompt + chosen == r["prompt"] + "\n\n" + r["chosen"]


def test_hh_format_still_demands_the_hh_marker():
    with pytest.raises(DataError, match="no shared '\\\\n\\\\nAssistant:' turn") as info:
        load_examples(SHAPES / "standard_implicit.jsonl", fmt="hh")
    assert (info.value.row, info.value.field) == (1, "chosen")


Q = [user("What is 2+2?")]
BAD_ROWS = [
    ({"chosen": Q + reply("4"), "rejected": [user("2+2?")] + reply("5")}, "chosen", "shares no leading message"),
    ({"chosen": Q + reply("4"), "rejected": Q + reply("5") + [{"role": "tool", "content": "5"}]}, "rejected",
     "must end with an assistant"),
    ({"chosen": Q + reply("4"), "rejected": Q + reply("5") + [user("ok")] + reply("6")}, "rejected", "user turn"),
    ({"chosen": Q + reply("4"), "rejected": "5"}, "rejected", "like chosen"),
    ({"chosen": Q + reply("4"), "rejected": Q + reply(" ")}, "rejected", "has no reply after the prompt"),
    ({"chosen": Q + reply("4"), "rejected": Q}, "rejected", "has no turns after the prompt"),
    ({"chosen": "Four.", "rejected": "Five."}, "chosen", "shares no leading words"),
    ({"chosen": "Say 4", "rejected": "Say 4 5"}, "chosen", "response is empty"),
    ({"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: yo\n\nAssistant: b"}, "chosen",
     "no shared '\\n\\nAssistant:' turn"),  # an HH transcript keeps the HH rule even when it finds no cut
    ({"prompt": "What is 2+2?", "chosen": [user("What is 3+3?")] + reply("6"), "rejected": reply("5")},
     "chosen", "does not repeat the prompt"),
    ({"prompt": "What is 2+2?", "chosen": reply("4"), "rejected": Q}, "rejected", "does not repeat the prompt"),
    ({"prompt": Q, "chosen": reply("4") + [user("more")], "rejected": reply("5")}, "chosen", "user turn"),
    ({"prompt": "What is 2+2?", "completion": [user("What?")] + reply("4"), "label": True}, "completion",
     "does not repeat the prompt"),
]


@pytest.mark.parametrize("row, field, message", BAD_ROWS)
def test_bad_shaped_rows_name_file_row_and_field(tmp_path, row, field, message):
    good = {"pairs": {"prompt": "p", "chosen": "a", "rejected": "b"},
            "implicit": {"chosen": Q + reply("4"), "rejected": Q + reply("5")},
            "unpaired": {"prompt": "p", "completion": "c", "label": True}}
    kind = "unpaired" if "label" in row else "pairs" if "prompt" in row else "implicit"
    path = write_jsonl(tmp_path / "bad.jsonl", [good[kind], row])
    with pytest.raises(DataError) as info:
        load_examples(path)
    err = info.value
    assert (err.source, err.row, err.field) == (str(path), 2, field)
    assert message in str(err) and str(path) in str(err)
