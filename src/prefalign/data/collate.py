"""Batches: dynamic padding, ragged K, deterministic (optionally length-grouped) order."""

from __future__ import annotations

import random

import torch

from prefalign.data.tokenize import TokenizedExample
from prefalign.logps import predicting_index


def pad_rows(rows: list[tuple[list[int], int]], pad_id: int, pad_multiple: int = 1) -> dict:
    """(ids, response start) rows -> right-padded input_ids, attention_mask, response_mask [N, T],
    and target_index: the scored positions as flat indices, computed here on the host."""
    t_max = max(len(seq) for seq, _ in rows)
    t_max = -(-t_max // pad_multiple) * pad_multiple  # few distinct shapes keep GPU kernels' plans cached
    input_ids = torch.full((len(rows), t_max), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), t_max), dtype=torch.long)
    response_mask = torch.zeros((len(rows), t_max), dtype=torch.bool)
    for r, (seq, start) in enumerate(rows):
        input_ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[r, : len(seq)] = 1
        response_mask[r, start: len(seq)] = True
    target_index = predicting_index(response_mask[:, 1:] & attention_mask[:, 1:].bool())
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask,
            "target_index": target_index}


def all_or_none(examples: list[TokenizedExample], name: str) -> bool:
    present = [getattr(e, name) is not None for e in examples]
    if any(present) and not all(present):
        raise ValueError(f"a batch mixes examples with and without {name!r} rows")
    return all(present)


def collate(examples: list[TokenizedExample], pad_id: int, reference: torch.Tensor | None = None,
            pad_multiple: int = 1) -> dict:
    """Flatten B examples x K_b responses into one [N, T] batch padded to the longest row.

    Only real responses become rows (ragged lists waste no compute); `row_index` maps each row
    back to its [B, K] slot. `reference` is [B, K] precomputed reference log-probs, if any.
    Extra rows: reference-policy samples follow the N response rows in the same tensors (one
    policy forward for all), at `ref_sample_index` [B]; T-REG's contrast rows are a separate
    batch `contrast` (reference-only): the "better" row of each response row in order, then the
    "worse" rows, so that row r and row N + r belong to response row r.
    LongPO: the whole-chosen NLL rows follow any reference samples in the same tensors, at
    `nll_index` [B]; the short-context rows are a separate batch `short` (reference-only) whose
    row r is response row r, with the same row_index and valid, so it sums into the same slots.
    """
    k_max = max(len(e.sequences) for e in examples)
    slots = [(b, k) for b, e in enumerate(examples) for k in range(len(e.sequences))]
    rows = [(e.sequences[k], e.response_starts[k]) for e in examples for k in range(len(e.sequences))]
    with_ref_sample = all_or_none(examples, "ref_sample")
    with_nll = all_or_none(examples, "nll_row")
    extra = ([e.ref_sample for e in examples] if with_ref_sample else []) + \
        ([e.nll_row for e in examples] if with_nll else [])
    batch = pad_rows(rows + extra, pad_id, pad_multiple)
    batch["row_index"] = torch.tensor([b * k_max + k for b, k in slots], dtype=torch.long)
    if with_ref_sample:
        batch["ref_sample_index"] = torch.arange(len(rows), len(rows) + len(examples))
    if with_nll:
        batch["nll_index"] = torch.arange(len(rows) + len(extra) - len(examples), len(rows) + len(extra))
    if all_or_none(examples, "contrast"):
        batch["contrast"] = pad_rows([row for name in ("better", "worse") for e in examples
                                      for row in e.contrast[name]], pad_id, pad_multiple)
    valid = torch.zeros(len(examples), k_max, dtype=torch.bool)
    target = torch.zeros(len(examples), k_max)
    for b, e in enumerate(examples):
        valid[b, : len(e.sequences)] = True
        target[b, : len(e.target)] = torch.tensor(e.target)
    batch.update(valid=valid, target=target)
    if all_or_none(examples, "short_rows"):
        batch["short"] = pad_rows([row for e in examples for row in e.short_rows], pad_id, pad_multiple)
        batch["short"].update(row_index=batch["row_index"], valid=valid)
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
