"""Batched generation from a local HF causal LM: the one generate path for diagnostics, judges and data.

Prompts are plain text (tokenized with the tokenizer's special tokens, as training does), a
chat message list (rendered with the chat template and its generation prompt) or a list of
token ids (a tokenized example's prompt, used as it is). Batches are
left-padded so that every prompt ends where generation starts. Long prompts keep their end,
the turn being answered, and a leading BOS, as training truncates them; they are also cut so that
prompt + max_new_tokens fits the model's positions (fit_prompts), and every cut is counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from prefalign.logging import progress_iter


@dataclass
class GenerateSettings:
    max_new_tokens: int = 64
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    batch_size: int = 8
    num_return_sequences: int = 1
    max_prompt_tokens: int = 512


@dataclass
class GeneratedBatch:
    """One generate() call: token ids [N, T] with prompt and response masks, left-padded."""

    ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor  # True at generated tokens up to and including the first EOS
    prompt_index: list[int]  # which input prompt each row answers
    finished: list[bool]  # whether the row emitted EOS within max_new_tokens
    truncated: int = 0  # prompts of this batch cut from the left (see fit_prompts)


@dataclass
class GenerateStats:
    """What generate() did to its prompts: how many, and how many were cut from the left."""

    prompts: int = 0
    truncated: int = 0


def keep_tail(ids: list[int], limit: int, bos: int | None) -> list[int]:
    if len(ids) <= limit:
        return ids
    if bos is not None and ids[0] == bos:
        return [bos] + ids[len(ids) - limit + 1:]
    return ids[-limit:]


def prompt_ids(tokenizer, prompt) -> list[int]:
    """A prompt's full token ids, before any cut."""
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt) and prompt:
        # already token ids (a tokenized example's prompt): used as they are, no second BOS
        return list(prompt)
    if isinstance(prompt, list):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("a message-list prompt needs a tokenizer with a chat template")
        text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def encode_prompt(tokenizer, prompt, max_prompt_tokens: int) -> list[int]:
    return keep_tail(prompt_ids(tokenizer, prompt), max_prompt_tokens, tokenizer.bos_token_id)


def max_positions(model) -> int | None:
    """The longest sequence the model's position embeddings cover (None when its config does not say)."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):  # Llama/Qwen/NeoX name it one way, GPT-2 the other
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def fit_prompts(model, tokenizer, encoded: list[list[int]], s: GenerateSettings) -> tuple[list[list[int]], int]:
    """Prompt ids cut from the left to min(max_prompt_tokens, positions - max_new_tokens), keeping a BOS.

    Generating past the model's positions degrades or breaks the output (transformers only warns),
    so room for every new token is kept. Returns the ids and how many prompts were cut.
    """
    limit = s.max_prompt_tokens
    positions = max_positions(model)
    if positions is not None:
        if s.max_new_tokens >= positions:
            raise ValueError(f"max_new_tokens ({s.max_new_tokens}) leaves no room for a prompt: the model has "
                             f"{positions} positions")
        limit = min(limit, positions - s.max_new_tokens)
    fitted = [keep_tail(ids, limit, tokenizer.bos_token_id) for ids in encoded]
    truncated = sum(len(a) < len(b) for a, b in zip(fitted, encoded))
    if truncated:
        # a cut to the configured prompt budget is what training does too (counted, an info line);
        # a cut forced by the model's positions is news to the user, so it is a warning
        level = logging.WARNING if limit < s.max_prompt_tokens else logging.INFO
        logging.getLogger(__name__).log(
            level, "%d of %d prompts cut from the left to %d tokens (max_prompt_tokens %d, model positions %s, "
            "max_new_tokens %d)", truncated, len(encoded), limit, s.max_prompt_tokens, positions, s.max_new_tokens)
    return fitted, truncated


def left_pad(encoded: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(e) for e in encoded)
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])
    starts = torch.tensor([width - len(e) for e in encoded])
    mask = (torch.arange(width)[None, :] >= starts[:, None]).long()
    return ids, mask


@torch.no_grad()
def generate_batch(model, tokenizer, prompts: list, s: GenerateSettings) -> GeneratedBatch:
    """Generate for one batch of prompts; `s.num_return_sequences` rows per prompt, in prompt order."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    encoded, truncated = fit_prompts(model, tokenizer, [prompt_ids(tokenizer, p) for p in prompts], s)
    ids, mask = left_pad(encoded, pad)
    device = next(model.parameters()).device
    sampling = dict(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k) if s.do_sample \
        else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=s.max_new_tokens,
                         num_return_sequences=s.num_return_sequences, pad_token_id=pad, eos_token_id=eos,
                         **sampling).cpu()
    width = ids.shape[1]
    mask = mask.repeat_interleave(s.num_return_sequences, 0)
    gen = out[:, width:]
    is_eos = (gen == eos) if eos is not None else torch.zeros_like(gen, dtype=torch.bool)
    # tokens after the first EOS are generate's padding, not samples; the EOS itself is kept
    after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    response = torch.zeros_like(out, dtype=torch.bool)
    response[:, width:] = ~after_eos
    attention = torch.cat([mask, (~after_eos).long()], 1)
    index = [i for i in range(len(prompts)) for _ in range(s.num_return_sequences)]
    return GeneratedBatch(out, attention, response, index, is_eos.any(1).tolist(), truncated)


def response_texts(tokenizer, batch: GeneratedBatch) -> list[str]:
    eos = tokenizer.eos_token_id
    texts = []
    for row, keep in zip(batch.ids, batch.response_mask):
        tokens = [t for t in row[keep].tolist() if t != eos]
        texts.append(tokenizer.decode(tokens, skip_special_tokens=True))
    return texts


def generate(model, tokenizer, prompts: list, settings: GenerateSettings | None = None,
             progress: bool = True, description: str = "generating",
             stats: GenerateStats | None = None) -> list[list[str]]:
    """Responses for every prompt: a list of `num_return_sequences` strings per prompt.

    Seeded once at the start, so the same settings and batch size give the same samples.
    `stats`, when given, adds up the prompts and how many were cut from the left.
    """
    s = settings or GenerateSettings()
    torch.manual_seed(s.seed)
    was_training = model.training
    model.eval()
    results: list[list[str]] = [[] for _ in prompts]
    starts = range(0, len(prompts), s.batch_size)
    for start in progress_iter(starts, description, enabled=progress):
        chunk = prompts[start:start + s.batch_size]
        batch = generate_batch(model, tokenizer, chunk, s)
        if stats is not None:
            stats.prompts += len(chunk)
            stats.truncated += batch.truncated
        for i, text in zip(batch.prompt_index, response_texts(tokenizer, batch)):
            results[start + i].append(text)
    model.train(was_training)
    return results
