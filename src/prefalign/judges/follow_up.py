"""Follow-up likelihood as reward (FLR, arXiv:2409.13948).

A response is good when the user is likely to answer it with a satisfied follow-up and unlikely
to answer it with a complaint. With the conversation (x, y) rendered and a user turn opened:

    FLR(x, y) = mean_{f in F+} log p(f | x, y)  -  mean_{f in F-} log p(f | x, y)

under a causal LM, teacher-forced. log p(f | x, y) is the per-token mean log-prob of the
follow-up's tokens by default (per_token=True), so follow-ups of different lengths weigh alike;
per_token=False sums them.

Departures: the paper's own lists of follow-up utterances and its exact length normalisation
could not be read offline; the default utterances below are written for this project in the
paper's spirit (satisfied thanks / approval versus complaints that the request was not met),
and both lists are arguments. The paper's further step (fine-tuning the follow-up LM on natural
language feedback) is out of scope: pass any local LM, fine-tuned or not.
"""

from __future__ import annotations

from prefalign.judges.base import Judge, check_aligned, register_judge
from prefalign.judges.lm import continuation_logps, encode_context, load_lm, uses_chat_template

POSITIVE_FOLLOW_UPS = (
    "Thank you, that is exactly what I needed.",
    "Great, that answers my question.",
    "That was really helpful, thanks!",
    "Perfect, that makes sense now.",
)
NEGATIVE_FOLLOW_UPS = (
    "That is not what I asked for.",
    "That doesn't answer my question.",
    "That's wrong.",
    "I don't understand what you are saying.",
)


def split_follow_up(tokenizer, prompt, response: str, follow_up: str, chat: bool) -> tuple[str, str, bool]:
    """(context text, continuation text, rendered) for log p(follow_up | prompt, response)."""
    if chat:
        messages = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        messages += [{"role": "assistant", "content": response}, {"role": "user", "content": follow_up}]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        at = text.rindex(follow_up)
        context = text[:at]
    else:
        if isinstance(prompt, list):
            raise ValueError("a message-list prompt needs chat=True and a tokenizer with a chat template")
        context = f"\n\nHuman: {prompt}\n\nAssistant: {response}\n\nHuman: "
    # a BPE vocabulary spells " word" as one token: the space joins the follow-up, not the context
    stripped = context.rstrip(" ")
    return stripped, context[len(stripped):] + follow_up, chat


@register_judge("follow_up")
class FollowUpJudge(Judge):
    """FLR score: follow-up likelihood of satisfied versus dissatisfied user replies (arXiv:2409.13948)."""

    def __init__(self, path: str | None = None, model=None, tokenizer=None, positive=POSITIVE_FOLLOW_UPS,
                 negative=NEGATIVE_FOLLOW_UPS, per_token: bool = True, chat: bool | None = None,
                 batch_size: int = 8, temperature: float = 1.0, device: str = "cpu",
                 revision: str | None = None, trust_remote_code: bool = False):
        super().__init__()
        self.positive, self.negative = [str(f) for f in positive], [str(f) for f in negative]
        if not self.positive or not self.negative:
            raise ValueError("follow_up needs at least one positive and one negative follow-up")
        self.model, self.tokenizer = load_lm(path, model, tokenizer, device=device, revision=revision,
                                             trust_remote_code=trust_remote_code)
        self.chat = uses_chat_template(self.tokenizer, chat)
        self.per_token, self.batch_size, self.temperature = per_token, batch_size, temperature

    def follow_up_logps(self, prompts, responses, follow_ups) -> list[list[float]]:
        """[response][follow-up] log p(follow-up | prompt, response)."""
        contexts, continuations = [], []
        for p, r in zip(prompts, responses):
            for f in follow_ups:
                ctx, cont, rendered = split_follow_up(self.tokenizer, p, r, f, self.chat)
                contexts.append(encode_context(self.tokenizer, ctx, rendered))
                continuations.append(cont)
        flat = continuation_logps(self.model, self.tokenizer, contexts, continuations, self.batch_size,
                                  self.per_token)
        k = len(follow_ups)
        return [flat[i * k:(i + 1) * k] for i in range(len(prompts))]

    def score(self, prompts, responses):
        check_aligned(prompts, responses)
        pos = self.follow_up_logps(prompts, responses, self.positive)
        neg = self.follow_up_logps(prompts, responses, self.negative)
        out = [sum(p) / len(p) - sum(n) / len(n) for p, n in zip(pos, neg)]
        for v in out:
            self.stats.record(v)
        return out
