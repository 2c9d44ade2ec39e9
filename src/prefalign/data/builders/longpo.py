"""LongPO's short-to-long preference pairs, self-generated from long documents (arXiv:2502.13922).

Chen et al., "LongPO: Long Context Self-Evolution of Large Language Models through
Short-to-Long Preference Optimization" (ICLR 2025), the data recipe: from a long document x_L
take a short chunk x_S; the (short-context) model writes an instruction I about the chunk; it
then answers I twice, once given the chunk (y_w: what it does well in short contexts) and once
given the whole document (y_l: what it does in the long context it is not yet aligned for). Each
pair becomes a training row prompt = x_L + I, short_prompt = x_S + I, chosen = y_w, rejected = y_l,
which the `longpo` objective reads (policy after `prompt`, reference after `short_prompt`).

Departures and choices (the paper body could not be read here; steps from its public summary
and the authors' data-preparation notes): chunks are cut in characters at whitespace (the
builder sees no tokenizer), consecutive and non-overlapping, and `chunks_per_document` of them
are drawn at random (seeded) per document; the paper's multi-turn rows (several chunks and
instructions per document in one conversation) are not built: each chunk gives its own row.
The instruction prompt's wording is ours. Generation is greedy by default so that a rerun gives
the same pairs; set do_sample for sampled answers.
"""

from __future__ import annotations

import gzip
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from prefalign.data.builders.registry import BuildContext, data_builder
from prefalign.data.records import Example
from prefalign.models.generation import GenerateSettings

INSTRUCTION_TEMPLATE = (
    "Read the text below, then write one question or instruction that can be answered from this text "
    "alone. Write only the question or instruction.\n\nText:\n{context}\n\nQuestion or instruction:"
)
CONTEXT_TEMPLATE = "{context}\n\n{instruction}"


@dataclass
class ShortToLongReport:
    documents: int = 0
    chunks: int = 0
    pairs: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count

    def as_dict(self) -> dict:
        return {"documents": self.documents, "chunks": self.chunks, "pairs": self.pairs, "dropped": dict(self.dropped)}


def document_examples(texts: list[str], source: str = "documents") -> list[Example]:
    """Long documents as examples the builder reads (the text is the prompt; no responses yet)."""
    return [Example(text, [], [], "document", f"{source}:{i}") for i, text in enumerate(texts, start=1)]


def load_documents(path: str | Path, separator: str = "<|endoftext|>") -> list[Example]:
    """A .txt or .txt.gz file of documents separated by lines holding `separator`; blank ones skipped."""
    path = Path(path)
    raw = gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")
    with raw:
        parts = raw.read().split(separator)
    return document_examples([p.strip() for p in parts if p.strip()], str(path))


def chunk_text(text: str, chunk_chars: int) -> list[str]:
    """Consecutive pieces of the text, each at most chunk_chars characters long (a longer word is
    kept whole), cut at whitespace. Each piece is an exact substring of the text (its inner
    whitespace, newlines included, kept), so the short context is verbatim part of the long one."""
    chunks, first, last = [], None, None
    for word in re.finditer(r"\S+", text):
        if first is not None and word.end() - first > chunk_chars:
            chunks.append(text[first:last])
            first = None
        first = word.start() if first is None else first
        last = word.end()
    if first is not None:
        chunks.append(text[first:last])
    return chunks


def fill(template: str, **values: str) -> str:
    """str.replace, not str.format: braces in documents and answers stay plain text."""
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def as_prompt(text: str, chat: bool):
    return [{"role": "user", "content": text}] if chat else text


def first_texts(generator, prompts: list, settings: GenerateSettings) -> list[str]:
    outputs = generator(prompts, settings)
    if len(outputs) != len(prompts) or any(not out for out in outputs):
        raise ValueError(f"the generator returned {len(outputs)} answer lists for {len(prompts)} prompts (each must "
                         "hold at least one text)")
    return [out[0].strip() for out in outputs]


@data_builder("longpo_short_to_long", paper="2502.13922")
def longpo_short_to_long(
    examples: list[Example], *, chunk_chars: int = 2000, chunks_per_document: int = 1,
    instruction_template: str = INSTRUCTION_TEMPLATE, context_template: str = CONTEXT_TEMPLATE,
    max_new_tokens: int = 256, do_sample: bool = False, temperature: float = 1.0, chat: bool = False,
    context: BuildContext,
) -> tuple[list[Example], ShortToLongReport]:
    """LongPO short-to-long pairs: instruction from a short chunk, chosen answered from the chunk, rejected from the whole document.

    examples: documents (each example's prompt is one document's text; see document_examples).
    chunk_chars: the short context's size; documents not longer than one chunk are dropped (no
    long context). instruction_template holds {context}; context_template holds {context} and
    {instruction} and builds both prompts. chat: prompts are one user message (for chat models).
    Dropped and counted: short documents, empty instructions, empty answers, identical answers.
    """
    if context.generator is None:
        raise ValueError("longpo_short_to_long needs a generator (context.generator: the model that writes the "
                         "instructions and both answers)")
    if "{context}" not in instruction_template:
        raise ValueError("instruction_template must contain {context}")
    if "{context}" not in context_template or "{instruction}" not in context_template:
        raise ValueError("context_template must contain {context} and {instruction}")
    if chunk_chars < 1 or chunks_per_document < 1:
        raise ValueError("chunk_chars and chunks_per_document must be at least 1")
    settings = GenerateSettings(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                                seed=context.seed)
    report, rng, picked = ShortToLongReport(documents=len(examples)), random.Random(context.seed), []
    for ex in examples:
        if not isinstance(ex.prompt, str):
            raise ValueError(f"{ex.source}: a document must be text, got {type(ex.prompt).__name__}")
        chunks = chunk_text(ex.prompt, chunk_chars)
        if len(chunks) < 2:
            report.dropped["document not longer than one chunk"] += 1
            continue
        for i in sorted(rng.sample(range(len(chunks)), min(chunks_per_document, len(chunks)))):
            picked.append((ex, i, chunks[i]))
    report.chunks = len(picked)
    if not picked:
        return [], report
    instructions = first_texts(context.generator, [as_prompt(fill(instruction_template, context=c), chat)
                                                   for _, _, c in picked], settings)
    kept = [(p, ins) for p, ins in zip(picked, instructions) if ins]
    report.dropped["empty instruction"] += len(picked) - len(kept)
    short = [fill(context_template, context=c, instruction=ins) for (_, _, c), ins in kept]
    long = [fill(context_template, context=ex.prompt, instruction=ins) for (ex, _, _), ins in kept]
    chosen = first_texts(context.generator, [as_prompt(s, chat) for s in short], settings) if kept else []
    rejected = first_texts(context.generator, [as_prompt(s, chat) for s in long], settings) if kept else []
    out = []
    for ((ex, i, _), ins), s, lo, w, lose in zip(kept, short, long, chosen, rejected):
        if not w or not lose:
            report.dropped["empty answer"] += 1
        elif w == lose:
            report.dropped["identical answers"] += 1
        else:
            extra = {"short_prompt": as_prompt(s, chat), "instruction": ins, "chunk": i, "features": {}}
            out.append(Example(as_prompt(lo, chat), [w, lose], [1.0, 0.0], "pair", f"{ex.source}#chunk{i}", extra))
    report.pairs = len(out)
    report.dropped = Counter({k: v for k, v in report.dropped.items() if v})
    return out, report
