"""Data from a local model alone: Magpie instruction synthesis and URIAL in-context answers.

Magpie (Xu et al., arXiv:2406.08464): an aligned chat model given only its chat template's
pre-query prefix (everything before the first user message's content) writes a user
instruction and ends the turn; the same model then answers it. Departures from the paper:
the prefix is whatever the model's template renders before the user content, so a template
that inserts a default system prompt (SmolLM2's does) keeps it, where the paper's Llama-3
prefix has none; the paper's quality/difficulty tagging by an LLM judge is left to the
selection builders. Filters here are the mechanical ones, each counted: an instruction that
never ended its turn within the token budget, empty text, exact (case/space-folded) duplicates,
empty responses.

URIAL (Lin et al., arXiv:2312.01552): a base (untuned) model answers in an assistant's style
when the prompt holds a short preamble, a few restyled query/answer examples and the query.
The preamble and examples below are our own, written in the paper's spirit (affirm the
request, answer in a structured way, close with a short summary); the paper's text is not
copied. Generation stops at the answer block's closing fence; an answer that never closed
within the budget is dropped and counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from prefalign.data.builders.registry import BuildContext, data_builder
from prefalign.data.records import Example
from prefalign.models.generation import GenerateSettings, encode_prompt, generate_batch, response_texts

SLOT = "PREFALIGN_QUERY_SLOT_7f3a"


@dataclass
class LocalModel:
    """A local HF model + tokenizer as the BuildContext's generator (callable(prompts, settings))."""

    model: Any
    tokenizer: Any

    def __call__(self, prompts: list, settings: GenerateSettings | None = None) -> list[list[str]]:
        from prefalign.models.generation import generate

        return generate(self.model, self.tokenizer, prompts, settings, progress=False)


@dataclass
class SynthReport:
    requested: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count

    def as_dict(self) -> dict:
        return {"requested": self.requested, "kept": self.kept, "dropped": dict(self.dropped)}


def pre_query_prefix(tokenizer) -> str:
    """The chat template rendered up to where the first user message's content begins."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("Magpie needs a chat model: this tokenizer has no chat template")
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": SLOT}], tokenize=False)
    if SLOT not in rendered:
        raise ValueError("the chat template does not show the user's message verbatim; cannot find its prefix")
    return rendered[: rendered.index(SLOT)]


def raw_text_prompt(tokenizer, text: str) -> str:
    """`text` as a plain prompt that generation encodes to exactly its own tokens.

    generation.encode_prompt adds the tokenizer's special tokens (a BOS) to plain text, while a
    rendered template already holds its BOS: drop the template's copy so that it appears once.
    """
    wanted = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token or ""
    candidates = [text] + ([text[len(bos):]] if bos and text.startswith(bos) else [])
    for candidate in candidates:
        if encode_prompt(tokenizer, candidate, 10 ** 9) == wanted:
            return candidate
    raise ValueError("cannot feed the template prefix to generation unchanged (special tokens differ)")


def fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def sample_raw(model, tokenizer, prompt: str, n: int, s: GenerateSettings) -> list[tuple[str, bool]]:
    """n samples (text, finished) continuing one plain prompt, batched."""
    torch.manual_seed(s.seed)
    out = []
    for start in range(0, n, s.batch_size):
        batch = generate_batch(model, tokenizer, [prompt] * min(s.batch_size, n - start), s)
        out += list(zip(response_texts(tokenizer, batch), batch.finished))
    return out


def magpie(model, tokenizer, n: int, instruction: GenerateSettings, response: GenerateSettings,
           progress: bool = False) -> tuple[list[Example], SynthReport]:
    """n sampled instructions, filtered, each answered by the same model: SFT examples (prompt, completion)."""
    from prefalign.models.generation import generate

    report = SynthReport(requested=n)
    prompt = raw_text_prompt(tokenizer, pre_query_prefix(tokenizer))
    seen, instructions = set(), []
    for text, finished in sample_raw(model, tokenizer, prompt, n, instruction):
        text = text.strip()
        if not finished:
            report.dropped["instruction did not end its turn"] += 1
        elif not text:
            report.dropped["empty instruction"] += 1
        elif fold(text) in seen:
            report.dropped["duplicate instruction"] += 1
        else:
            seen.add(fold(text))
            instructions.append(text)
    answers = generate(model, tokenizer, [[{"role": "user", "content": i}] for i in instructions], response,
                       progress=progress, description="magpie responses") if instructions else []
    examples = []
    for i, (text, outs) in enumerate(zip(instructions, answers)):
        answer = outs[0].strip()
        if not answer:
            report.dropped["empty response"] += 1
            continue
        examples.append(Example(text, [answer], [1.0], "sft", f"magpie:{i + 1}", {"features": {}}))
    report.kept = len(examples)
    return examples, report


URIAL_PREAMBLE = (
    "Below are conversations between a curious person and an AI assistant. The assistant is helpful, "
    "honest and careful: it answers what was asked, explains its reasoning in plain words, organises longer "
    "answers into short steps or points, admits when it is unsure, and declines, politely and with a reason, "
    "to help with anything that could hurt someone.")
URIAL_EXAMPLES = (
    ("How do I keep basil alive on a windowsill?",
     "Happy to help, basil is easy once it gets what it likes. The essentials:\n\n"
     "1. **Light**: at least six hours of sun a day; a south-facing window is ideal.\n"
     "2. **Water**: keep the soil slightly moist, watering at the base when the top centimetre feels dry.\n"
     "3. **Pinching**: snip the top pair of leaves above a node every week so the plant grows bushy "
     "instead of flowering.\n\n"
     "In short: plenty of sun, steady moisture and regular pinching will keep it going for months."),
    ("What is the difference between weather and climate?",
     "Good question, the two are often mixed up.\n\n"
     "- **Weather** is the state of the atmosphere over hours or days: today's rain, tomorrow's wind.\n"
     "- **Climate** is the pattern of weather over decades: how warm, wet or windy a place usually is.\n\n"
     "A handy way to remember it: weather is your mood today, climate is your personality."),
    ("Tell me how to get into my neighbour's wifi without them knowing.",
     "I can't help with getting into someone else's network without permission; that is unauthorised "
     "access and illegal in most places. Some things that could help instead:\n\n"
     "- Ask your neighbour whether they would share access, perhaps splitting the cost.\n"
     "- Look for free public wifi at a library or cafe nearby.\n"
     "- Compare low-cost plans from local providers; many offer cheap basic tiers.\n\n"
     "I'm happy to help you compare plans or set up your own network securely."),
)
FENCE = "```"


def urial_prompt(query: str, examples=URIAL_EXAMPLES, preamble: str = URIAL_PREAMBLE) -> str:
    """Preamble, the example query/answer blocks, then the query with its answer block left open."""
    block = lambda q, a: f"# Query:\n{FENCE}\n{q}\n{FENCE}\n\n# Answer:\n{FENCE}\n{a}\n{FENCE}"  # noqa: E731
    shots = "\n\n".join(block(q, a) for q, a in examples)
    return f"# Instruction\n\n{preamble}\n\n{shots}\n\n# Query:\n{FENCE}\n{query}\n{FENCE}\n\n# Answer:\n{FENCE}\n"


def urial_answer(continuation: str) -> str | None:
    """The answer up to its closing fence, or None when the block never closed."""
    end = continuation.find(FENCE)
    return continuation[:end].strip() if end >= 0 else None


def query_text(prompt) -> str:
    return prompt if isinstance(prompt, str) else [m for m in prompt if m["role"] == "user"][-1]["content"]


def urial_generate(model, tokenizer, queries: list[str], settings: GenerateSettings,
                   progress: bool = False) -> tuple[list[str | None], SynthReport]:
    """One URIAL answer per query (None where it was empty or never closed; counted by reason)."""
    from prefalign.models.generation import generate

    report = SynthReport(requested=len(queries))
    outs = generate(model, tokenizer, [urial_prompt(q) for q in queries], settings, progress, "urial answers")
    answers = []
    for (text,) in (o[:1] for o in outs):
        answer = urial_answer(text)
        if answer is None:
            report.dropped["answer block did not close"] += 1
        elif not answer:
            report.dropped["empty answer"] += 1
        answers.append(answer or None)
    report.kept = sum(a is not None for a in answers)
    return answers, report


def local_model(context: BuildContext | None, builder: str) -> LocalModel:
    generator = context.generator if context else None
    if not isinstance(generator, LocalModel):
        raise ValueError(f"the {builder} builder needs a local model: pass --generator-model DIR")
    return generator


@data_builder("magpie", paper="2406.08464")
def magpie_step(examples: list[Example], *, n: int = 100, max_instruction_tokens: int = 96,
                max_response_tokens: int = 256, temperature: float = 1.0, top_p: float = 1.0,
                batch_size: int = 8, context: BuildContext = None):
    """Magpie: n instructions synthesised from the chat template's pre-query prefix, then answered (SFT rows)."""
    gen = local_model(context, "magpie")
    seed = context.seed if context else 0
    sampled = GenerateSettings(max_new_tokens=max_instruction_tokens, temperature=temperature, top_p=top_p,
                               seed=seed, batch_size=batch_size)
    answer = GenerateSettings(max_new_tokens=max_response_tokens, do_sample=False, seed=seed, batch_size=batch_size)
    made, report = magpie(gen.model, gen.tokenizer, int(n), sampled, answer)
    return list(examples) + made, report


@data_builder("urial", paper="2312.01552")
def urial_step(examples: list[Example], *, max_new_tokens: int = 256, temperature: float = 0.0,
               batch_size: int = 8, context: BuildContext = None):
    """URIAL: a base model answers each prompt in context (preamble + stylistic examples): SFT rows."""
    gen = local_model(context, "urial")
    settings = GenerateSettings(max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                                temperature=temperature or 1.0, seed=context.seed if context else 0,
                                batch_size=batch_size)
    answers, report = urial_generate(gen.model, gen.tokenizer, [query_text(e.prompt) for e in examples], settings)
    out = [Example(e.prompt, [a], [1.0], "sft", e.source, {"features": {}})
           for e, a in zip(examples, answers) if a is not None]
    return out, report
