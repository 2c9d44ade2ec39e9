"""Examples -> token ids with an exact prompt/response boundary.

The boundary is found on tokens, not characters: the prompt and prompt+response are tokenized
separately and only the tokens the two share at the start count as prompt. When a BPE merge
crosses the boundary (prompt "...Assistant:" + response " Sure" can merge ": S"), the merged
token contains response characters, so it is scored as part of the response rather than
silently masked or mis-sliced (trl#2054, OpenRLHF's slicing by string length).

Special tokens are added in one place: plain text is tokenized with the tokenizer's own
special tokens (BOS where it uses one); chat text is rendered by the template, which already
holds them, and tokenized without. EOS is appended to a response unless it already ends with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prefalign.data.records import common_prefix, DataError, Example, Text


Row = tuple[list[int], int]  # token ids and the index of the first scored (response) token


@dataclass
class TokenizedExample:
    sequences: list[list[int]]  # K token-id lists: prompt + response (+ EOS)
    response_starts: list[int]  # index of the first response token in each sequence
    target: list[float]
    kind: str
    source: str
    truncated: bool = False
    extra: dict = field(default_factory=dict)
    # Extra rows a feature supplier (prefalign.features) built because the objective needs them,
    # by feature name. policy_rows: one row per example that the policy scores in the same forward,
    # after the list rows (collate records where). side_rows: rows of a separate batch that only
    # the reference scores, a list, or a dict of lists batched group by group (collate.side_batch).
    policy_rows: dict[str, Row] = field(default_factory=dict)
    side_rows: dict[str, list[Row] | dict[str, list[Row]]] = field(default_factory=dict)
    # Precomputed reference log-probs (reference=precomputed): "responses" holds the K summed
    # log-probs; a supplier whose extra rows the reference scores adds its own entry by name.
    reference: dict[str, list[float] | float] | None = None

    @property
    def n_tokens(self) -> int:
        return sum(len(s) for s in self.sequences)

    @property
    def max_len(self) -> int:
        return max(len(s) for s in self.sequences)


@dataclass
class TokenizeStats:
    examples: int = 0
    truncated_prompt: int = 0
    truncated_response: int = 0

    def as_dict(self) -> dict:
        return {"examples": self.examples, "truncated_prompt": self.truncated_prompt,
                "truncated_response": self.truncated_response}


def render_chat(tokenizer, prompt: Text, response: Text, source: str) -> tuple[str, str]:
    """(prompt text with the generation prompt, prompt + response text) from the chat template."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError(source, 0, "prompt", "is a message list but the tokenizer has no chat template")
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    reply = response if isinstance(response, list) else [{"role": "assistant", "content": response}]
    prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(messages + reply, tokenize=False)
    if not full_text.startswith(prompt_text):
        # Some templates render the last turn differently once a reply follows; we refuse
        # rather than guess where the response starts.
        raise DataError(source, 0, "prompt", "the chat template does not render the prompt as a prefix of "
                                             "prompt + response; cannot place the boundary")
    return prompt_text, full_text


def tokenize_response(tokenizer, prompt: Text, response: Text, source: str) -> tuple[list[int], int]:
    """Token ids of prompt + response and the index of the first response token."""
    chat = isinstance(prompt, list) or isinstance(response, list)
    if chat:
        prompt_text, full_text = render_chat(tokenizer, prompt, response, source)
        special = False
    else:
        prompt_text, full_text = prompt, prompt + response
        special = True
    prompt_ids = tokenizer(prompt_text, add_special_tokens=special)["input_ids"]
    full_ids = tokenizer(full_text, add_special_tokens=special)["input_ids"]
    start = common_prefix(prompt_ids, full_ids)
    if start >= len(full_ids):
        raise DataError(source, 0, "response", "tokenizes to nothing after the prompt")
    eos = tokenizer.eos_token_id
    tail = full_ids[start:]
    # templates often close a turn with EOS followed by a newline: both count as "already ends"
    if eos is not None and eos not in tail[-2:]:
        full_ids = full_ids + [eos]
    return full_ids, start


def truncate(ids: list[int], start: int, max_length: int, max_prompt_length: int, bos: int | None):
    """Prompt truncated from the left (keeping a leading BOS), response from the right."""
    prompt, response = ids[:start], ids[start:]
    cut_prompt = cut_response = False
    if len(prompt) > max_prompt_length:
        keep_bos = bos is not None and prompt and prompt[0] == bos
        tail = prompt[len(prompt) - (max_prompt_length - int(keep_bos)):]
        prompt = ([bos] if keep_bos else []) + tail
        cut_prompt = True
    room = max_length - len(prompt)
    if len(response) > room:
        response = response[:room]
        cut_response = True
    return prompt + response, len(prompt), cut_prompt, cut_response


def short_sequence(tokenizer, short_prompt: Text, response: Text, main_ids: list[int], main_start: int,
                   max_length: int, max_prompt_length: int, source: str) -> tuple[list[int], int]:
    """LongPO's reference row: the short prompt's ids, then the main sequence's response ids copied.

    The reference must score exactly the tokens the policy scores (y_w, y_l under x_S vs x_L), so
    the response ids are copied, never re-tokenized after the other prompt. The short prompt's ids
    end where tokenize_response puts the boundary for short_prompt + response: both prompts end
    with the same instruction, so a BPE merge across the boundary falls the same way in both and
    prompt ids + copied ids spell short_prompt + response. The prompt is cut from the left (as
    `truncate` does) so that the whole response fits in max_length.
    """
    full, start = tokenize_response(tokenizer, short_prompt, response, source)
    response_ids = main_ids[main_start:]
    limit = min(max_prompt_length, max_length - len(response_ids))
    ids, start, _, cut_response = truncate(full[:start] + response_ids, start, max_length, limit,
                                           tokenizer.bos_token_id)
    if cut_response:
        raise DataError(source, 0, "short_prompt", f"leaves no room for the {len(response_ids)} response tokens "
                                                   f"within max_length={max_length}")
    # a row's first token is never scored: keep the scored tokens equal to the main row's
    return ids, start + (1 if main_start == 0 else 0)


def with_row(source: str, err: DataError) -> DataError:
    """The error re-raised with the example's file and row (tokenization only knows "file:row")."""
    file, _, row = source.rpartition(":")
    return DataError(file, int(row) if row.isdigit() else 0, err.field, err.reason)


@dataclass
class RowBuilder:
    """Tokenizes the rows of one example under the run's limits and remembers whether any was cut.
    Feature suppliers build their extra rows with it, so they follow the list rows' rules."""

    tokenizer: object
    max_length: int
    max_prompt_length: int
    options: dict  # supplier options passed to tokenize_examples (e.g. contrast templates)
    full_starts: list[int] = field(default_factory=list)  # list rows' response starts before truncation
    cut_prompt: bool = False
    cut_response: bool = False

    def response_row(self, prompt: Text, response: Text, source: str) -> tuple[list[int], int, int]:
        """(ids, start) of prompt + response after truncation, and the start before it."""
        ids, full_start = tokenize_response(self.tokenizer, prompt, response, source)
        ids, start, cut_p, cut_r = truncate(ids, full_start, self.max_length, self.max_prompt_length,
                                            self.tokenizer.bos_token_id)
        self.cut_prompt |= cut_p
        self.cut_response |= cut_r
        return ids, start, full_start


def tokenize_examples(
    examples: list[Example], tokenizer, max_length: int, max_prompt_length: int, stats: TokenizeStats | None = None,
    suppliers: tuple = (), **options,
) -> list[TokenizedExample]:
    """Every example's K responses as (prompt + response) rows with an exact boundary.

    suppliers: feature suppliers (prefalign.features) whose `tokenize(example, tokenized, builder)`
    adds the extra rows their feature needs; `options` reach them through builder.options.
    prefalign.features.tokenize picks the suppliers from an objective's features.
    """
    if max_prompt_length >= max_length:
        raise ValueError(f"max_prompt_length ({max_prompt_length}) must be below max_length ({max_length}) "
                         "so that every response keeps at least one token")
    stats = stats if stats is not None else TokenizeStats()
    out = []
    for ex in examples:
        builder = RowBuilder(tokenizer, max_length, max_prompt_length, options)
        seqs, starts = [], []
        for response in ex.responses:
            try:
                ids, start, full_start = builder.response_row(ex.prompt, response, ex.source)
            except DataError as err:
                raise with_row(ex.source, err) from None
            seqs.append(ids)
            starts.append(start)
            builder.full_starts.append(full_start)
        tokenized = TokenizedExample(seqs, starts, list(ex.target), ex.kind, ex.source, extra=dict(ex.extra))
        for supplier in suppliers:
            supplier.tokenize(ex, tokenized, builder)
        tokenized.truncated = builder.cut_prompt or builder.cut_response
        stats.examples += 1
        stats.truncated_prompt += builder.cut_prompt
        stats.truncated_response += builder.cut_response
        out.append(tokenized)
    return out
