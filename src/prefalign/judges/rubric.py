"""Rubric judge: a local causal LM grades in the Prometheus format (arXiv:2310.08491).

Absolute grading (Prometheus, Appendix prompt): the judge sees the task description, the
instruction, the response to evaluate, an optional reference answer that would score 5, and a
score rubric (criterion + a description per score 1-5); it writes "Feedback: ... [RESULT] n".
Relative grading (Prometheus 2, arXiv:2405.01535): two responses A and B, the same rubric, and
"... [RESULT] A" or "[RESULT] B".

The verdict is parsed from the judge's own generated text only (never from the prompt), and is
given only when it is unambiguous: exactly one verdict value (repeats of the same value allowed),
well formed. Everything else is None with a counted reason; nothing is guessed. Text being judged
is quoted with its verdict markers and section headers defanged, and a verdict whose preceding
text matches the text right before a marker inside a judged response is refused as an echo.

Departures: Prometheus was trained for this prompt; any other local LM is only prompted with it,
so a small model's verdicts are mostly None (counted, as they should be). Reference answers are
optional here (the paper always gives one); without one the reference section is left out. In
relative mode with swap=True each pair is judged in both orders (the paper judges one order) and
an order-dependent verdict is None ("position-inconsistent"), guarding against position bias.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from prefalign.judges.base import Judge, bt_probability, check_aligned, register_judge
from prefalign.judges.lm import load_lm, uses_chat_template

MARKER = re.compile(r"\*{0,2}\[\s*RESULT\s*\]\*{0,2}[ \t]*:?[ \t]*", re.IGNORECASE)
NUMBER = re.compile(r"\(?\s*(-?\d+(?:\.\d+)?)(?!\d)\s*\)?")
OUT_OF_FIVE = re.compile(r"^\s*(?:/\s*5|out\s+of\s+5)(?!\d)")
CHOICE = re.compile(r"\(?\s*(?:(?i:response)\s+)?([AB])(?![A-Za-z0-9])\s*\)?")
ECHO = "verdict echoes the judged response"
TIE_WORDS = re.compile(r"^\W*(?:tie|draw|both|neither|c)\b", re.IGNORECASE)


@dataclass
class Rubric:
    """A Prometheus score rubric: the criterion and what each score 1-5 means."""

    criteria: str = "Is the response helpful, correct and on topic for the user's instruction?"
    score1: str = "The response ignores the instruction, is wrong, or is harmful."
    score2: str = "The response touches the instruction but is mostly unhelpful or has major errors."
    score3: str = "The response addresses the instruction with some errors or omissions."
    score4: str = "The response is helpful and correct with minor omissions."
    score5: str = "The response fully and correctly addresses the instruction, clearly and concisely."

    def render(self) -> str:
        lines = [f"[{self.criteria}]"] + [f"Score {i}: {getattr(self, f'score{i}')}" for i in range(1, 6)]
        return "\n".join(lines)

    @classmethod
    def load(cls, value) -> "Rubric":
        """A Rubric from a Rubric, a dict, or a YAML/JSON file holding one."""
        if value is None or isinstance(value, Rubric):
            return value or cls()
        if isinstance(value, (str, Path)):
            path = Path(value)
            if not path.is_file():
                raise FileNotFoundError(f"rubric file not found: {path}")
            value = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(value, dict):
            raise ValueError(f"a rubric must be a mapping with keys criteria, score1..score5; got {type(value).__name__}")
        unknown = set(value) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown rubric keys {sorted(unknown)}; expected criteria, score1..score5")
        return cls(**{k: str(v) for k, v in value.items()})


def quote(text: str) -> str:
    """Judged text as it appears in the prompt: no verdict markers, no section headers to imitate."""
    return MARKER.sub("(RESULT) ", text).replace("###", "# # #")


ABSOLUTE_TASK = (
    "###Task Description:\n"
    "An instruction (might include an Input inside it), a response to evaluate, {ref_clause}"
    "and a score rubric representing a evaluation criteria are given.\n"
    "1. Write a detailed feedback that assess the quality of the response strictly based on the given score "
    "rubric, not evaluating in general.\n"
    "2. After writing a feedback, write a score that is an integer between 1 and 5. You should refer to the "
    "score rubric.\n"
    "3. The output format should look as follows: \"Feedback: (write a feedback for criteria) [RESULT] "
    "(an integer number between 1 and 5)\"\n"
    "4. Please do not generate any other opening, closing, and explanations.\n\n")

RELATIVE_TASK = (
    "###Task Description:\n"
    "An instruction (might include an Input inside it), two responses to evaluate (denoted as Response A and "
    "Response B), {ref_clause}and a score rubric representing a evaluation criteria are given.\n"
    "1. Write a detailed feedback that assess the quality of two responses strictly based on the given score "
    "rubric, not evaluating in general.\n"
    "2. After writing a feedback, choose a better response between Response A and Response B. You should refer "
    "to the score rubric.\n"
    "3. The output format should look as follows: \"(write a feedback for criteria) [RESULT] (A or B)\"\n"
    "4. Please do not generate any other opening, closing, and explanations.\n\n")


def absolute_prompt(instruction: str, response: str, rubric: Rubric, reference: str | None = None) -> str:
    ref = reference is not None
    parts = [ABSOLUTE_TASK.format(ref_clause="a reference answer that gets a score of 5, " if ref else ""),
             f"###The instruction to evaluate:\n{quote(instruction)}\n\n",
             f"###Response to evaluate:\n{quote(response)}\n\n"]
    if ref:
        parts.append(f"###Reference Answer (Score 5):\n{quote(reference)}\n\n")
    parts.append(f"###Score Rubrics:\n{rubric.render()}\n\n###Feedback: ")
    return "".join(parts)


def relative_prompt(instruction: str, a: str, b: str, rubric: Rubric, reference: str | None = None) -> str:
    ref = reference is not None
    parts = [RELATIVE_TASK.format(ref_clause="a reference answer, " if ref else ""),
             f"###Instruction:\n{quote(instruction)}\n\n",
             f"###Response A:\n{quote(a)}\n\n", f"###Response B:\n{quote(b)}\n\n"]
    if ref:
        parts.append(f"###Reference Answer:\n{quote(reference)}\n\n")
    parts.append(f"###Score Rubric:\n{rubric.render()}\n\n###Feedback: ")
    return "".join(parts)


def read_one(tail: str, mode: str):
    """(value, None) or (None, reason) for the text right after one [RESULT] marker, up to the line end."""
    tail = tail.strip().strip("*\"'` ")
    if not tail:
        return None, "empty verdict"
    if mode == "relative":
        if TIE_WORDS.match(tail):
            return None, "tie"
        m = CHOICE.match(tail)
        if not m:
            return None, "not A or B"
        if re.search(r"(?<![A-Za-z])[AB](?![A-Za-z])", tail[m.end():]):
            return None, "ambiguous verdict"
        return m.group(1), None
    m = NUMBER.match(tail)
    if not m:
        return None, "not an integer"
    rest = OUT_OF_FIVE.sub("", tail[m.end():])
    if re.search(r"\d", rest):
        return None, "ambiguous verdict"
    if "." in m.group(1):
        return None, "not an integer"
    value = int(m.group(1))
    if not 1 <= value <= 5:
        return None, "out of range"
    return value, None


def norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def common_suffix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def echoes(generated: str, start: int, quoted: list[str], min_chars: int = 8) -> bool:
    """Whether the text before a verdict marker repeats (at least min_chars of) the text before a
    marker inside a judged text: the judge copying the response's self-grade, not grading."""
    before = norm(generated[:start])
    for text in quoted:
        for m in MARKER.finditer(text):
            if common_suffix(before, norm(text[:m.start()])) >= min_chars:
                return True
    return False


def parse_verdict(generated: str, mode: str = "absolute", quoted: list[str] | None = None):
    """(verdict, None) or (None, reason) from the judge's generated text.

    mode "absolute": an int 1-5; "relative": "A" or "B". Tolerated: whitespace, "[RESULT]: 4",
    "**[RESULT]** 4", a trailing period or "/5". Refused: no marker, empty, non-integer or out of
    range values, several different verdicts, a marker that is not a verdict next to one that is,
    and verdicts that echo a marker inside the judged texts (`quoted`).
    """
    if mode not in ("absolute", "relative"):
        raise ValueError(f"mode must be 'absolute' or 'relative', got {mode!r}")
    markers = list(MARKER.finditer(generated))
    if not markers:
        return None, "no verdict"
    values, reasons = [], []
    for i, m in enumerate(markers):
        # a verdict's text runs to the line end or the next marker, whichever comes first
        ends = [e for e in (generated.find("\n", m.end()), markers[i + 1].start() if i + 1 < len(markers) else -1)
                if e >= 0]
        value, reason = read_one(generated[m.end():min(ends)] if ends else generated[m.end():], mode)
        if value is not None and echoes(generated, m.start(), quoted or []):
            value, reason = None, ECHO
        if value is None:
            reasons.append(reason)
        else:
            values.append(value)
    if ECHO in reasons:
        return None, ECHO
    if len(set(values)) > 1:
        return None, "conflicting verdicts"
    if values and reasons:
        return None, "ambiguous verdict"
    if not values:
        return None, reasons[0]
    return values[0], None


@register_judge("rubric")
class RubricJudge(Judge):
    """Prometheus-format grading by a local causal LM (arXiv:2310.08491; relative: arXiv:2405.01535).

    score() -> the 1-5 verdict as a float. compare(): compare_mode "scores" is the Bradley-Terry
    link on two absolute grades (base class); "relative" asks for "[RESULT] A/B" and returns 1.0 or
    0.0. `generate_fn(prompts) -> texts` replaces the LM (tests, remote judges).
    """

    def __init__(self, path: str | None = None, model=None, tokenizer=None, generate_fn: Callable | None = None,
                 rubric=None, compare_mode: str = "scores", swap: bool = True, max_new_tokens: int = 256,
                 batch_size: int = 4, chat: bool | None = None, temperature: float = 1.0, progress: bool = False,
                 device: str = "cpu", revision: str | None = None, trust_remote_code: bool = False):
        super().__init__()
        if compare_mode not in ("scores", "relative"):
            raise ValueError(f"compare_mode must be 'scores' or 'relative', got {compare_mode!r}")
        self.rubric = Rubric.load(rubric)
        self.compare_mode, self.swap, self.temperature = compare_mode, swap, temperature
        if generate_fn is None:
            generate_fn = self.lm_generator(path, model, tokenizer, max_new_tokens, batch_size, chat, progress,
                                             device, revision, trust_remote_code)
        self.generate_fn = generate_fn

    @staticmethod
    def lm_generator(path, model, tokenizer, max_new_tokens, batch_size, chat, progress, device,
                     revision=None, trust_remote_code=False) -> Callable:
        from prefalign.models.generation import GenerateSettings, generate

        model, tokenizer = load_lm(path, model, tokenizer, device=device, revision=revision,
                                   trust_remote_code=trust_remote_code)
        as_chat = uses_chat_template(tokenizer, chat)
        # greedy: a judge's verdict should not depend on a sampling seed
        settings = GenerateSettings(max_new_tokens=max_new_tokens, do_sample=False, batch_size=batch_size,
                                    max_prompt_tokens=4096)

        def run(prompts: list[str]) -> list[str]:
            inputs = [[{"role": "user", "content": p}] if as_chat else p for p in prompts]
            return [texts[0] for texts in generate(model, tokenizer, inputs, settings, progress, "judging")]

        return run

    def judge(self, prompts: list[str], quoted: list[list[str]], mode: str) -> list:
        outputs = self.generate_fn(prompts)
        if len(outputs) != len(prompts):
            raise ValueError(f"generate_fn returned {len(outputs)} texts for {len(prompts)} prompts")
        return [parse_verdict(text, mode, q) for text, q in zip(outputs, quoted)]

    def score(self, prompts, responses, references=None):
        n = check_aligned(prompts, responses)
        refs = references if references is not None else [None] * n
        check_aligned(prompts, refs)
        texts = [absolute_prompt(p, r, self.rubric, ref) for p, r, ref in zip(prompts, responses, refs)]
        out = []
        for value, reason in self.judge(texts, [[r] for r in responses], "absolute"):
            self.stats.record(value, reason)
            out.append(None if value is None else float(value))
        return out

    def compare(self, prompts, a, b, references=None):
        n = check_aligned(prompts, a, b)
        refs = references if references is not None else [None] * n
        if self.compare_mode == "scores":
            sa, sb = self.score(prompts, a, refs), self.score(prompts, b, refs)
            return [None if x is None or y is None else bt_probability(x - y, self.temperature) for x, y in zip(sa, sb)]
        texts = [relative_prompt(p, x, y, self.rubric, r) for p, x, y, r in zip(prompts, a, b, refs)]
        quoted = [[x, y] for x, y in zip(a, b)]
        first = self.judge(texts, quoted, "relative")
        second = None
        if self.swap:
            swapped = [relative_prompt(p, y, x, self.rubric, r) for p, x, y, r in zip(prompts, a, b, refs)]
            second = self.judge(swapped, quoted, "relative")
        out = []
        for i, (v1, why1) in enumerate(first):
            p, reason = (None, why1) if v1 is None else (1.0 if v1 == "A" else 0.0, None)
            if second is not None and p is not None:
                v2, why2 = second[i]
                if v2 is None:
                    p, reason = None, why2
                elif (v2 == "B") != (p == 1.0):
                    p, reason = None, "position-inconsistent"
            self.stats.record(p, reason)
            out.append(p)
        return out

