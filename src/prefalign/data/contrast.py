"""T-REG's contrastive prompts: each response's own token ids after a "better" and a "worse" instruction.

T-REG (Zhou et al., arXiv:2412.02685) scores every response token under the reference model
twice, once after a prompt asking to revise the reply to be better and once after one asking to
make it worse; the token reward is sigmoid of the log-prob difference, minus 0.5. The scored ids
must be exactly the main sequence's response ids: re-tokenizing the response after another
prompt can move a BPE merge across the boundary and shift or split tokens, and the rewards would
then sit on the wrong tokens. So a contrast sequence is the contrast prompt's ids followed by
the main sequence's response ids, copied, never a new tokenization of the response.

A template holds `{prompt}` once and may hold `{response}`. Plain-text prompts: the text before
and after `{prompt}` is tokenized on its own and placed around the main sequence's (already
truncated) prompt ids, so the instruction is never truncated away and the conversation tokens
are the ones the policy sees. Chat prompts: `{prompt}` is the last user message's content and
the conversation is rendered again with the chat template; the contrast prompt then loses as
many leading tokens as the main prompt did when truncated. `{response}` is the text of the
scored response ids (after truncation, special tokens dropped): the draft the instruction asks
to revise.
"""

from __future__ import annotations

from prefalign.data.records import DataError, Text

# The paper's two instructions could not be read here. These follow a third-party summary of it
# (revision prompts toward helpful, correct, coherent, concise vs. unhelpful, incorrect,
# incoherent, verbose); the wording is ours. The instruction comes first so that a plain-text
# prompt still ends where the reply begins (HH's "\n\nAssistant:"). data.contrast_better /
# data.contrast_worse replace them.
CONTRAST_BETTER = (
    "Below is a draft reply to the conversation that follows it. Revise the draft so that the reply is "
    "helpful, correct, coherent and concise.\n\nDraft reply: {response}\n\n{prompt}"
)
CONTRAST_WORSE = (
    "Below is a draft reply to the conversation that follows it. Revise the draft so that the reply is "
    "unhelpful, incorrect, incoherent and verbose.\n\nDraft reply: {response}\n\n{prompt}"
)


def template_error(template: str) -> str | None:
    """Why `template` cannot be used, or None."""
    if not isinstance(template, str) or template.count("{prompt}") != 1:
        return "must contain {prompt} exactly once (and may contain {response})"
    return None


def around_prompt(template: str, draft: str) -> tuple[str, str]:
    """The template's text before and after {prompt}, with {response} filled in. Splitting first
    and using str.replace (not str.format) keeps braces in the prompt or the draft plain text."""
    head, tail = template.split("{prompt}")
    return head.replace("{response}", draft), tail.replace("{response}", draft)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def wrap_last_user(prompt: Text, head: str, tail: str, source: str) -> list[dict]:
    messages = [dict(m) for m in prompt] if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last is None:
        raise DataError(source, 0, "prompt", "has no user message to put T-REG's contrast instruction in")
    messages[last]["content"] = head + messages[last]["content"] + tail
    return messages


def chat_prompt_ids(tokenizer, prompt: Text, head: str, tail: str, source: str) -> list[int]:
    """The chat prompt with head/tail around the last user message, rendered as tokenize.render_chat
    renders prompts (generation prompt on, special tokens from the template only)."""
    messages = wrap_last_user(prompt, head, tail, source)
    return encode(tokenizer, tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def contrast_prompt_ids(tokenizer, prompt: Text, response: Text, template: str, main_ids: list[int],
                        main_start: int, full_prompt_len: int, source: str) -> list[int]:
    """Token ids of the contrast prompt for one main sequence (prompt ids main_ids[:main_start]).

    full_prompt_len: the main prompt's length in tokens before truncation, so that the chat path
    can drop as many leading tokens as the main prompt lost.
    """
    error = template_error(template)
    if error:
        raise ValueError(f"contrast template {template!r} {error}")
    head, tail = around_prompt(template, tokenizer.decode(main_ids[main_start:], skip_special_tokens=True).strip())
    prompt_ids = main_ids[:main_start]
    if not (isinstance(prompt, list) or isinstance(response, list)):
        bos = tokenizer.bos_token_id
        lead = prompt_ids[:1] if bos is not None and prompt_ids[:1] == [bos] else []
        return lead + encode(tokenizer, head) + prompt_ids[len(lead):] + encode(tokenizer, tail)
    ids = chat_prompt_ids(tokenizer, prompt, head, tail, source)
    # A BPE merge across the main boundary moved the prompt's last token(s) into the response;
    # drop as many here so that their characters do not appear twice.
    absorbed = len(chat_prompt_ids(tokenizer, prompt, "", "", source)) - full_prompt_len
    ids = ids[: len(ids) - absorbed] if absorbed > 0 else ids
    dropped = full_prompt_len - main_start  # what left truncation removed from the main prompt
    if dropped > 0:
        keep = 1 if ids[:1] == [tokenizer.bos_token_id] and prompt_ids[:1] == ids[:1] else 0
        ids = ids[:keep] + ids[keep + dropped:]
    return ids


def contrast_sequences(tokenizer, prompt: Text, response: Text, templates: tuple[str, str], main_ids: list[int],
                       main_start: int, full_prompt_len: int, source: str) -> dict[str, tuple[list[int], int]]:
    """{"better": (ids, start), "worse": (ids, start)}: each contrast prompt + the main response ids.

    `start` marks the same response tokens the main sequence scores: the first token of a row is
    never scored, so when the main response starts at position 0 its first token is left out here too.
    """
    response_ids = main_ids[main_start:]
    out = {}
    for name, template in zip(("better", "worse"), templates):
        head = contrast_prompt_ids(tokenizer, prompt, response, template, main_ids, main_start, full_prompt_len,
                                   source)
        out[name] = (head + response_ids, len(head) + (1 if main_start == 0 else 0))
    return out
