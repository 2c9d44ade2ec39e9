"""What the LM-based judges share: loading a local causal LM, rendering a turn, scoring continuations.

The rubric (Prometheus), follow-up (FLR) and principle (SALMON) judges all read a local causal
LM; this keeps the three from each growing their own loader and teacher-forcing loop.
"""

from __future__ import annotations

import torch

from prefalign.logps import lean_path_supported, token_logps


def load_lm(path: str | None, model=None, tokenizer=None, dtype: str = "float32", device: str = "cpu",
            revision: str | None = None, trust_remote_code: bool = False):
    """(model, tokenizer): the objects given, else both loaded from `path` (a local folder or Hub id,
    pinned by `revision`; the judge's own modelling code runs only with trust_remote_code=True)."""
    if model is not None and tokenizer is not None:
        return model, tokenizer
    if path is None:
        raise ValueError("an LM judge needs path= (a local HF model folder or Hub id) or both model= and tokenizer=")
    from prefalign.models.causal_lm import load_model, load_tokenizer

    model = load_model(str(path), dtype=dtype, revision=revision, trust_remote_code=trust_remote_code)
    return model.to(device).eval(), load_tokenizer(str(path), revision, trust_remote_code)


def uses_chat_template(tokenizer, chat: bool | None) -> bool:
    """chat=None means: use the chat template when the tokenizer has one."""
    has = getattr(tokenizer, "chat_template", None) is not None
    if chat and not has:
        raise ValueError("chat=True needs a tokenizer with a chat template")
    return has if chat is None else bool(chat)


def encode_context(tokenizer, text: str, rendered: bool) -> list[int]:
    # a chat template writes its own BOS into the text; plain text gets the tokenizer's specials
    return tokenizer(text, add_special_tokens=not rendered)["input_ids"]


@torch.no_grad()
def continuation_logps(model, tokenizer, contexts: list[list[int]], continuations: list[str],
                       batch_size: int = 8, per_token: bool = False) -> list[float]:
    """log p(continuation | context) under `model`, teacher-forced: summed over the continuation's
    tokens, or their mean when per_token. Contexts are token ids, continuations text tokenized on
    their own (no specials), so every candidate continuation meets the same context tokens."""
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    impl = "lean" if lean_path_supported(model) else "full"
    out: list[float] = []
    for start in range(0, len(contexts), batch_size):
        rows, targets = [], []
        for ctx, cont in zip(contexts[start:start + batch_size], continuations[start:start + batch_size]):
            cont_ids = tokenizer(cont, add_special_tokens=False)["input_ids"]
            if not ctx or not cont_ids:
                raise ValueError(f"cannot score continuation {cont!r}: empty context or continuation")
            rows.append(list(ctx) + cont_ids)
            targets.append(len(cont_ids))
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        response = torch.zeros_like(ids, dtype=torch.bool)
        for i, (r, n) in enumerate(zip(rows, targets)):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
            response[i, len(r) - n:len(r)] = True
        logps = token_logps(model, ids.to(device), mask.to(device), response.to(device), impl).float().cpu()
        sums = logps.sum(1)
        out.extend((s / n if per_token else s).item() for s, n in zip(sums, targets))
    return out
