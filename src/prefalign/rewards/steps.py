"""Step-delimited responses -> token ids with the position of each step's last token.

A response "step 1<d>step 2<d>step 3" (d the delimiter, e.g. "\\n\\n" or "<step>") is tokenized
step by step, each step keeping its trailing delimiter, so that a step's last token is known
exactly (tokenizing the joined text could merge tokens across a step boundary). The prompt is
cut from the left and steps that do not fit max_length are dropped and counted.

With a decoder the step-end state has seen only the steps up to it (a causal process reward);
with a bidirectional encoder every position sees the whole response, so a step's score can
depend on later steps. Prefer a decoder backbone for process rewards.
"""

from __future__ import annotations

import torch

from prefalign.rewards.backbone import render


def split_steps(text: str, delimiter: str) -> list[str]:
    """Non-empty steps of `text` split at `delimiter` (empty pieces from doubled delimiters dropped)."""
    return [s for s in text.split(delimiter) if s.strip()]


def encode_steps(backbone, prompts: list, step_lists: list[list[str]], delimiter: str) -> dict:
    """input_ids/attention_mask [N, T] (right-padded), step_row/step_pos [S] (row and token index
    of each kept step's last token, in order), kept_counts (steps kept per row: a prefix of its
    steps) and n_dropped: steps cut by max_length."""
    tok = backbone.tokenizer
    head, middle, tail = backbone.frame
    rows, step_row, step_pos, dropped, kept_counts = [], [], [], 0, []
    for i, (prompt, steps) in enumerate(zip(prompts, step_lists)):
        pieces = [tok(s + (delimiter if k < len(steps) - 1 else ""), add_special_tokens=False)["input_ids"]
                  for k, s in enumerate(steps)]
        budget = backbone.max_response_length
        kept = []
        for ids in pieces:
            if not ids or sum(map(len, kept)) + len(ids) > budget:
                break
            kept.append(ids)
        dropped += len(steps) - len(kept)
        kept_counts.append(len(kept))
        p_ids = tok(render(prompt), add_special_tokens=False)["input_ids"]
        room = max(backbone.max_length - sum(map(len, kept)) - len(head) - len(middle) - len(tail), 0)
        p_ids = p_ids[len(p_ids) - room:] if room else []
        pos = len(head) + len(p_ids) + len(middle)
        for ids in kept:
            pos += len(ids)
            step_row.append(i)
            step_pos.append(pos - 1)
        rows.append(head + p_ids + middle + [t for ids in kept for t in ids] + tail)
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id
    return {"input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
            "step_row": torch.tensor(step_row, dtype=torch.long), "step_pos": torch.tensor(step_pos, dtype=torch.long),
            "n_dropped": dropped, "kept_counts": kept_counts}
