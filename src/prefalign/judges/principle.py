"""Principle-conditioned judge (SALMON, arXiv:2310.05910).

SALMON collects synthetic preferences by showing a judge LM a list of principles, the user query
and two outputs, and reading the judge's preference as the difference of the log-probabilities
of its choosing "Output (a)" versus "Output (b)"; it judges both orders and averages to remove
position bias. Here, with L(c) = log p(c | judge prompt ending in "Output ("):

    logit(a > b) = ( [L(a) - L(b)]_(a first)  +  [L(b) - L(a)]_(b first) ) / 2
    P(a > b)     = sigmoid(logit / temperature)

so P(a > b) + P(b > a) = 1 exactly when both orders are judged (swap=True).

Departures: SALMON uses these preferences to train an instructable reward model that then scores
single responses under principles given at RL time; training that model is out of scope, so this
judge compares pairs directly with the judge LM's preference (compare-only: score() raises). The
default principles are this project's short list written in SALMON's style, not the paper's 31;
pass your own (a list, or a text file with one principle per line).
"""

from __future__ import annotations

from pathlib import Path

from prefalign.judges.base import Judge, bt_probability, check_aligned, register_judge
from prefalign.judges.lm import continuation_logps, encode_context, load_lm, uses_chat_template

DEFAULT_PRINCIPLES = (
    "Honest and accurate: the AI states only what it believes true and says when it is unsure.",
    "Helpful: the AI answers the user's actual question directly and completely.",
    "Harmless: the AI declines to help with dangerous or unethical requests and explains why.",
    "Concise: the AI avoids filler, repetition and unrequested detail.",
    "No self-praise: the AI does not praise its own answer or promise that it is correct.",
)


def load_principles(value) -> list[str]:
    if value is None:
        return list(DEFAULT_PRINCIPLES)
    if isinstance(value, (str, Path)):
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"principles file not found: {path} (one principle per line)")
        value = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    principles = [str(p) for p in value]
    if not principles:
        raise ValueError("the principle judge needs at least one principle")
    return principles


def judge_prompt(principles: list[str], query: str, first: str, second: str) -> str:
    listed = "\n".join(f"{i}. {p}" for i, p in enumerate(principles, 1))
    return ("You are a reviewer judging two outputs of an AI assistant against the principles below.\n\n"
            f"Principles:\n{listed}\n\nUser query:\n{query}\n\nOutput (a):\n{first}\n\nOutput (b):\n{second}\n\n"
            "Which output follows the principles better? Answer with Output (a) or Output (b).")


@register_judge("principle")
class PrincipleJudge(Judge):
    """SALMON-style principle-following preference from a judge LM's choice log-probs (arXiv:2310.05910)."""

    def __init__(self, path: str | None = None, model=None, tokenizer=None, principles=None, swap: bool = True,
                 chat: bool | None = None, batch_size: int = 8, temperature: float = 1.0, device: str = "cpu",
                 revision: str | None = None, trust_remote_code: bool = False):
        super().__init__()
        self.principles = load_principles(principles)
        self.model, self.tokenizer = load_lm(path, model, tokenizer, device=device, revision=revision,
                                             trust_remote_code=trust_remote_code)
        self.chat = uses_chat_template(self.tokenizer, chat)
        self.swap, self.batch_size, self.temperature = swap, batch_size, temperature

    def context(self, query: str, first: str, second: str) -> list[int]:
        text = judge_prompt(self.principles, query, first, second)
        if self.chat:
            rendered = self.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                          add_generation_prompt=True, tokenize=False)
            return encode_context(self.tokenizer, rendered + "Output (", True)
        return encode_context(self.tokenizer, text + "\nAnswer: Output (", False)

    def choice_logits(self, prompts, first, second) -> list[float]:
        """[pair] log p(judge picks "a") - log p(judge picks "b") with `first` shown as Output (a)."""
        contexts = [self.context(p, x, y) for p, x, y in zip(prompts, first, second)]
        both = continuation_logps(self.model, self.tokenizer, contexts + contexts, ["a"] * len(contexts)
                                  + ["b"] * len(contexts), self.batch_size)
        n = len(contexts)
        return [la - lb for la, lb in zip(both[:n], both[n:])]

    def compare(self, prompts, a, b):
        check_aligned(prompts, a, b)
        logits = self.choice_logits(prompts, a, b)
        if self.swap:
            # in the swapped prompt, picking "b" means picking the original a
            logits = [(x - y) / 2 for x, y in zip(logits, self.choice_logits(prompts, b, a))]
        out = [bt_probability(z, self.temperature) for z in logits]
        for p in out:
            self.stats.record(p)
        return out
