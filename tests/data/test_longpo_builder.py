"""LongPO's short-to-long builder: exact output with a scripted generator, then once with the tiny model."""

from __future__ import annotations

import pytest

from prefalign.data.builders.longpo import (CONTEXT_TEMPLATE, INSTRUCTION_TEMPLATE, chunk_text, document_examples,
                                   load_documents)
from prefalign.data.builders.pipeline import BUILDERS, BuildContext, run_builders
from prefalign.data.formats.readers import load_examples
from prefalign.features import tokenize
from prefalign.losses import get_objective
from prefalign.recipes.policy import prepare_examples
from tests_support import FIXTURES, write_jsonl


def stories():
    return load_documents(FIXTURES / "tinystories_8.txt")


class ScriptedGenerator:
    """Instruction prompts get "What about <first word of the chunk>?"; answer prompts get
    "answer after <N> chars", N the prompt's length, so the short and long answers differ and
    every output can be recomputed by hand. Chunks starting with `blank` get an empty instruction."""

    def __init__(self, blank: str = "\0"):
        self.calls, self.blank = [], blank

    def __call__(self, prompts, settings):
        self.calls.append((list(prompts), settings))
        out = []
        for p in prompts:
            if p.startswith("Read the text below"):
                chunk = p.split("Text:\n", 1)[1]
                out.append(["" if chunk.startswith(self.blank) else f"What about {chunk.split()[0]}?"])
            else:
                out.append([f"answer after {len(p)} chars", "a second sample, ignored"])
        return out


def test_chunks_are_consecutive_whitespace_cuts():
    text = stories()[0].prompt
    chunks = chunk_text(text, 120)
    assert len(chunks) > 3 and all(len(c) <= 120 for c in chunks)
    at = 0
    for c in chunks:  # verbatim, in order, separated only by whitespace
        found = text.index(c, at)
        assert text[at:found].strip() == ""
        at = found + len(c)
    assert text[at:].strip() == ""
    assert chunk_text("a bb ccc", 4) == ["a bb", "ccc"] and chunk_text("abcdefgh xy", 4) == ["abcdefgh", "xy"]
    assert chunk_text("one\ntwo three", 9) == ["one\ntwo", "three"]


def test_scripted_generator_gives_exact_pairs():
    docs = stories()[:3] + document_examples(["A short note."], "notes")
    gen = ScriptedGenerator()
    pairs, reports = run_builders(docs, [{"name": "longpo_short_to_long", "chunk_chars": 200, "max_new_tokens": 32}],
                                  BuildContext(generator=gen, seed=3))
    report = reports[0]
    assert report["documents"] == 4 and report["chunks"] == 3 and report["pairs"] == 3
    assert report["dropped"] == {"document not longer than one chunk": 1}
    assert [p.source for p in pairs][0].startswith(str(FIXTURES / "tinystories_8.txt") + ":1#chunk")
    assert len(gen.calls) == 3  # one batched call each for instructions, short answers, long answers
    settings = gen.calls[0][1]
    assert (settings.max_new_tokens, settings.do_sample, settings.seed) == (32, False, 3)
    for doc, pair in zip(docs, pairs):
        chunk = chunk_text(doc.prompt, 200)[pair.extra["chunk"]]
        instruction = f"What about {chunk.split()[0]}?"
        short = f"{chunk}\n\n{instruction}"
        long = f"{doc.prompt}\n\n{instruction}"
        assert pair.extra["instruction"] == instruction
        assert pair.prompt == long and pair.extra["short_prompt"] == short
        assert pair.responses == [f"answer after {len(short)} chars", f"answer after {len(long)} chars"]
        assert pair.kind == "pair" and pair.target == [1.0, 0.0]
        assert chunk in doc.prompt  # the short context is verbatim part of the long one
    # the instruction prompt is the template around the chunk, verbatim
    first_chunk = chunk_text(docs[0].prompt, 200)[pairs[0].extra["chunk"]]
    assert gen.calls[0][0][0] == INSTRUCTION_TEMPLATE.replace("{context}", first_chunk)
    assert CONTEXT_TEMPLATE == "{context}\n\n{instruction}"


def test_chunk_choice_is_seeded_and_drops_are_counted():
    docs = stories()[:4]
    first = [p.extra["chunk"] for p in run_builders(docs, [{"name": "longpo_short_to_long", "chunk_chars": 150,
                                                            "chunks_per_document": 2}],
                                                    BuildContext(generator=ScriptedGenerator(), seed=5))[0]]
    again = [p.extra["chunk"] for p in run_builders(docs, [{"name": "longpo_short_to_long", "chunk_chars": 150,
                                                            "chunks_per_document": 2}],
                                                    BuildContext(generator=ScriptedGenerator(), seed=5))[0]]
    assert first == again and len(first) == 8
    assert all(a < b for a, b in zip(first[::2], first[1::2]))  # two distinct chunks per document, in order
    # chunks starting with "Once" get no instruction; an answerer that ignores its prompt gives ties
    gen = ScriptedGenerator(blank="Once")
    pairs, (report,) = run_builders(docs, [{"name": "longpo_short_to_long", "chunk_chars": 5000}],
                                    BuildContext(generator=gen))
    assert report["dropped"] == {"document not longer than one chunk": 4} and pairs == []

    def constant(prompts, settings):
        return [["Same answer."] if not p.startswith("Read") else ["Why?"] for p in prompts]

    pairs, (report,) = run_builders(docs, [{"name": "longpo_short_to_long", "chunk_chars": 150}],
                                    BuildContext(generator=constant))
    assert pairs == [] and report["dropped"] == {"identical answers": 4}
    blanks = sum(1 for d in docs if chunk_text(d.prompt, 150)[0].startswith("Once"))
    assert blanks > 0
    _, (report,) = run_builders(docs, [{"name": "longpo_short_to_long", "chunk_chars": 150,
                                        "chunks_per_document": 99}], BuildContext(generator=ScriptedGenerator("Once")))
    assert report["dropped"] == {"empty instruction": blanks}
    assert report["pairs"] == report["chunks"] - blanks == sum(len(chunk_text(d.prompt, 150)) for d in docs) - blanks


def test_builder_errors_are_clear():
    with pytest.raises(ValueError, match="needs a generator"):
        run_builders(stories(), [{"name": "longpo_short_to_long"}])
    with pytest.raises(ValueError, match="must contain {context} and {instruction}"):
        run_builders(stories(), [{"name": "longpo_short_to_long", "context_template": "{context}"}],
                     BuildContext(generator=ScriptedGenerator()))
    assert BUILDERS["longpo_short_to_long"].paper == "2502.13922"


def test_built_pairs_feed_longpo(tokenizer, tmp_path):
    pairs, _ = run_builders(stories()[:3], [{"name": "longpo_short_to_long", "chunk_chars": 200}],
                            BuildContext(generator=ScriptedGenerator()))
    rows = [{"prompt": p.prompt, "short_prompt": p.extra["short_prompt"], "chosen": p.responses[0],
             "rejected": p.responses[1]} for p in pairs]
    examples, _ = load_examples(write_jsonl(tmp_path / "longpo.jsonl", rows))
    examples = prepare_examples(get_objective("longpo"), examples, "best_vs_worst", "built")
    tok = tokenize(examples, tokenizer, 512, 448, features=["short_prompt", "long_chosen_nll"])
    assert all(len(t.side_rows["short_prompt"][0][0]) < len(t.sequences[0]) for t in tok)


def test_with_the_tiny_model(tiny_model_dir, tokenizer):
    from prefalign.models.generation import generate
    from prefalign.models.causal_lm import load_model

    model = load_model(str(tiny_model_dir)).eval()

    def generator(prompts, settings):
        return generate(model, tokenizer, prompts, settings)

    pairs, (report,) = run_builders(stories()[:1], [{"name": "longpo_short_to_long", "chunk_chars": 200,
                                                     "max_new_tokens": 6}],
                                    BuildContext(generator=generator, seed=1))
    assert report["chunks"] == 1
    assert report["pairs"] + sum(report["dropped"].values()) == 1 and report["pairs"] == len(pairs) == 1
    for p in pairs:
        ins = p.extra["instruction"]
        assert ins and p.prompt.endswith("\n\n" + ins) and p.extra["short_prompt"].endswith("\n\n" + ins)
        assert p.responses[0] != p.responses[1] and all(r.strip() for r in p.responses)
