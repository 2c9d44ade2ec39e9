"""Batches: dynamic padding, ragged K, deterministic (optionally length-grouped) order."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields, replace

import torch

from prefalign.packing import Packed, PackOptions, pack_rows
from prefalign.data.tokenize import TokenizedExample
from prefalign.logps import predicting_index


def to_device(value, device):
    """A tensor, a batch of rows or a dict of them moved to `device`; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (Rows, Packed)):  # a Batch too
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


@dataclass
class Rows:
    """Right-padded token rows [N, T]: what one forward of a model reads.

    target_index: the scored positions as flat indices, computed on the host (logps.predicting_index).
    packed: the same rows packed without padding (packing.py), which the model reads instead, or None.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    target_index: torch.Tensor | None = None
    # keyword-only: Batch's own fields keep their positions after the four row tensors
    packed: Packed | None = field(default=None, kw_only=True)

    def to(self, device):
        return replace(self, **{f.name: to_device(getattr(self, f.name), device) for f in fields(self)})

    def scored_mask(self, n: int | None = None) -> torch.Tensor:
        """[n, T - 1] True where token t + 1 of a row is a scored response token (first n rows)."""
        n = self.input_ids.shape[0] if n is None else n
        return self.response_mask[:n, 1:] & self.attention_mask[:n, 1:].bool()

    def computed_positions(self) -> tuple[int, int]:
        """(positions the model computes, those that hold a token): padded or packed rows."""
        if self.packed is not None:
            return self.packed.slots, self.packed.tokens
        return self.attention_mask.numel(), int(self.attention_mask.sum())


@dataclass
class Batch(Rows):
    """B examples x K_b responses as rows, plus what maps the rows back to [B, K] slots.

    The N list rows come first; a feature supplier's policy rows follow them in the same tensors
    (their indices [B] are in extras under the feature's name). row_index [N]: each list row's flat
    slot b * K + k. valid, target [B, K]. reference_logps [B, K]: precomputed reference log-probs.
    extras: supplier-owned tensors by feature name (policy-row indices, side-row batches, row fields);
    a key that names a feature makes the step run its supplier, other keys ("ref_sample/reference")
    are what a supplier keeps for itself.
    """

    row_index: torch.Tensor = None
    valid: torch.Tensor = None
    target: torch.Tensor = None
    reference_logps: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        """N, the number of list rows (extra rows follow them)."""
        return self.row_index.numel()

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.valid.shape)


def pad_rows(rows: list[tuple[list[int], int]], pad_id: int, pad_multiple: int = 1,
             pack: PackOptions | None = None) -> Rows:
    """(ids, response start) rows -> right-padded input_ids, attention_mask, response_mask [N, T],
    and target_index: the scored positions as flat indices, computed here on the host. With `pack`,
    also the rows packed without padding (the model's input; the padded tensors stay the index)."""
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
    packed = pack_rows(rows, t_max, pad_id, pack, pad_multiple) if pack is not None else None
    return Rows(input_ids, attention_mask, response_mask, target_index, packed=packed)


def all_or_none(examples: list[TokenizedExample], attr: str, name: str) -> bool:
    present = [name in getattr(e, attr) for e in examples]
    if any(present) and not all(present):
        raise ValueError(f"a batch mixes examples with and without {name!r} rows")
    return all(present)


def side_batch(examples: list[TokenizedExample], name: str, pad_id: int, pad_multiple: int = 1,
               pack: PackOptions | None = None) -> Rows:
    """One batch of every example's side rows for `name`: a list per example is taken example by
    example; a dict of lists group by group (all examples' first group, then the second, ...)."""
    first = examples[0].side_rows[name]
    groups = list(first) if isinstance(first, dict) else [None]
    return pad_rows([row for g in groups for e in examples
                     for row in (e.side_rows[name] if g is None else e.side_rows[name][g])], pad_id, pad_multiple,
                    pack)


def collate(examples: list[TokenizedExample], pad_id: int, pad_multiple: int = 1,
            pack: PackOptions | None = None) -> Batch:
    """Flatten B examples x K_b responses into one [N, T] batch padded to the longest row.

    Only real responses become rows (ragged lists waste no compute); `row_index` maps each row
    back to its [B, K] slot. The examples' extra rows (built by feature suppliers) go into extras
    under the feature's name: policy rows after the N list rows in the same tensors, as their row
    indices [B]; side rows as a separate Rows batch (side_batch). Numeric row fields the reader
    kept (extra["features"]) become [B] or [B, M] tensors in extras. Precomputed reference
    log-probs on the examples become reference_logps [B, K]. `pack`: also pack every row batch.
    """
    k_max = max(len(e.sequences) for e in examples)
    slots = [(b, k) for b, e in enumerate(examples) for k in range(len(e.sequences))]
    rows = [(e.sequences[k], e.response_starts[k]) for e in examples for k in range(len(e.sequences))]
    extras = {}
    for name in examples[0].policy_rows:
        if all_or_none(examples, "policy_rows", name):
            extras[name] = torch.arange(len(rows), len(rows) + len(examples))
            rows += [e.policy_rows[name] for e in examples]
    for name in examples[0].side_rows:
        if all_or_none(examples, "side_rows", name):
            extras[name] = side_batch(examples, name, pad_id, pad_multiple, pack)
    for name in examples[0].extra.get("features", {}):
        extras[name] = torch.tensor([e.extra["features"][name] for e in examples])
    valid = torch.zeros(len(examples), k_max, dtype=torch.bool)
    target = torch.zeros(len(examples), k_max)
    for b, e in enumerate(examples):
        valid[b, : len(e.sequences)] = True
        target[b, : len(e.target)] = torch.tensor(e.target)
    reference = None
    if examples[0].reference is not None:
        reference = torch.zeros(len(examples), k_max)
        for b, e in enumerate(examples):
            if e.reference is None:
                raise ValueError("a batch mixes examples with and without precomputed reference log-probs")
            reference[b, : len(e.sequences)] = torch.tensor(e.reference["responses"])
    row_index = torch.tensor([b * k_max + k for b, k in slots], dtype=torch.long)
    return Batch(**vars(pad_rows(rows, pad_id, pad_multiple, pack)), row_index=row_index, valid=valid, target=target,
                 reference_logps=reference, extras=extras)


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
