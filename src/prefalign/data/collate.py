"""Batches: dynamic padding, ragged K, deterministic (optionally length-grouped) order."""

from __future__ import annotations

import random

import torch

from prefalign.data.tokenize import TokenizedExample


def collate(examples: list[TokenizedExample], pad_id: int, reference: torch.Tensor | None = None,
            pad_multiple: int = 1) -> dict:
    """Flatten B examples x K_b responses into one [N, T] batch padded to the longest row.

    Only real responses become rows (ragged lists waste no compute); `row_index` maps each row
    back to its [B, K] slot. `reference` is [B, K] precomputed reference log-probs, if any.
    """
    k_max = max(len(e.sequences) for e in examples)
    rows = [(b, k, seq, e.response_starts[k]) for b, e in enumerate(examples) for k, seq in enumerate(e.sequences)]
    t_max = max(len(seq) for _, _, seq, _ in rows)
    t_max = -(-t_max // pad_multiple) * pad_multiple  # few distinct shapes keep GPU kernels' plans cached
    n = len(rows)
    input_ids = torch.full((n, t_max), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, t_max), dtype=torch.long)
    response_mask = torch.zeros((n, t_max), dtype=torch.bool)
    row_index = torch.empty(n, dtype=torch.long)
    for r, (b, k, seq, start) in enumerate(rows):
        input_ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[r, : len(seq)] = 1
        response_mask[r, start: len(seq)] = True
        row_index[r] = b * k_max + k
    valid = torch.zeros(len(examples), k_max, dtype=torch.bool)
    target = torch.zeros(len(examples), k_max)
    for b, e in enumerate(examples):
        valid[b, : len(e.sequences)] = True
        target[b, : len(e.target)] = torch.tensor(e.target)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask,
             "row_index": row_index, "valid": valid, "target": target}
    for name in examples[0].extra.get("features", {}):
        batch[f"feature/{name}"] = torch.tensor([e.extra["features"][name] for e in examples])
    if reference is not None:
        batch["reference_logps"] = reference
    return batch


def mismatched(examples: list[TokenizedExample]) -> list[TokenizedExample]:
    """Prompt i with the completion of example i+1 (mod B): KTO's in-batch KL reference point.

    The result is never longer than the longer of the two source sequences, so it stays within
    max_length.
    """
    if len(examples) < 2:
        raise ValueError("mismatched prompt/completion pairs need at least 2 examples per micro-batch")
    out = []
    for i, e in enumerate(examples):
        other = examples[(i + 1) % len(examples)]
        prompt = e.sequences[0][: e.response_starts[0]]
        response = other.sequences[0][other.response_starts[0]:]
        limit = max(len(e.sequences[0]), len(other.sequences[0]))
        seq = (prompt + response)[:limit]
        out.append(TokenizedExample([seq], [len(prompt)], [0.0], "unpaired", e.source))
    return out


def epoch_batches(
    n_examples: int, batch_size: int, seed: int, epoch: int, lengths: list[int] | None = None,
    group_by_length: bool = False, drop_last: bool = True,
) -> list[list[int]]:
    """Index lists for one epoch, the same for the same (seed, epoch) on every process.

    With group_by_length, examples are sorted by length inside shuffled windows of 50 batches
    and the batches are shuffled again, so each batch pads little yet the order stays random.
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(n_examples))
    rng.shuffle(order)
    if group_by_length and lengths is not None:
        window = batch_size * 50
        order = [i for s in range(0, n_examples, window)
                 for i in sorted(order[s:s + window], key=lambda j: -lengths[j])]
    batches = [order[s:s + batch_size] for s in range(0, n_examples, batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    if group_by_length:
        rng.shuffle(batches)
    return batches
