"""Precomputed reference values on disk, written batch by batch and read row by row.

A cache is a folder: one safetensors shard per computed batch ({name: [rows, ...]}) and index.json
(rows per shard, names). Neither side holds the whole data set's values: the writer keeps one batch,
the reader memory-maps one shard and copies out only the rows asked for, so memory stays flat in
the data size. ReferencedExamples attaches each example's values when the loop reads it, in place
of copying them onto every example up front.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

INDEX = "index.json"


def write_reference_cache(folder: Path, batches: Iterable[dict[str, torch.Tensor]]) -> int:
    """Write each batch's values ({name: [b, ...]}, the same names in every batch, rows in data order)
    as one shard; the folder appears complete or not at all. Returns the number of rows."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shards, names = [], None
    for i, values in enumerate(batches):
        rows = {len(v) for v in values.values()}
        if len(rows) != 1 or (names is not None and set(values) != names):
            raise ValueError(f"reference batch {i}: every batch needs the names {sorted(names or values)} "
                             f"with one row count, got { {k: tuple(v.shape) for k, v in values.items()} }")
        names = set(values)
        save_file({k: v.detach().float().cpu().contiguous() for k, v in values.items()},
                  str(tmp / f"shard-{i:05d}.safetensors"))
        shards.append(rows.pop())
    (tmp / INDEX).write_text(json.dumps({"shard_rows": shards, "names": sorted(names or ())}))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    return sum(shards)


class ReferenceCache:
    """Row-wise reader of a cache folder. It keeps the index and at most one open (memory-mapped)
    shard; `row` copies out one row's values."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        index = json.loads((self.folder / INDEX).read_text())
        self.names: list[str] = index["names"]
        self.starts = [0]
        for n in index["shard_rows"]:
            self.starts.append(self.starts[-1] + n)
        self._open: tuple[int, object] | None = None

    def __len__(self) -> int:
        return self.starts[-1]

    def _shard(self, i: int):
        if self._open is None or self._open[0] != i:
            self._open = (i, safe_open(str(self.folder / f"shard-{i:05d}.safetensors"), framework="pt"))
        return self._open[1]

    def row(self, index: int) -> dict[str, list[float] | float]:
        """{name: that row's values as Python numbers} (K floats for [N, K] entries, a float for [N])."""
        if not 0 <= index < len(self):
            raise IndexError(f"{self.folder}: row {index} of {len(self)}")
        shard = next(i for i in range(len(self.starts) - 1) if self.starts[i + 1] > index)
        handle, at = self._shard(shard), index - self.starts[shard]
        return {name: handle.get_slice(name)[at: at + 1][0].tolist() for name in self.names}


def complete(folder: Path) -> bool:
    return (Path(folder) / INDEX).exists()


class ReferencedExamples(Sequence):
    """The tokenized examples, each handed out with its cached reference values (rows offset,
    offset + 1, ...): what with_reference does, read from disk when the loop takes an example."""

    def __init__(self, examples: list, cache: ReferenceCache, offset: int = 0):
        if offset + len(examples) > len(cache):
            raise ValueError(f"{cache.folder} holds {len(cache)} rows; {offset + len(examples)} needed")
        self.examples, self.cache, self.offset = examples, cache, offset

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        e = self.examples[i]
        entry = self.cache.row(self.offset + (i % len(self)))
        entry["responses"] = entry["responses"][: len(e.sequences)]
        return replace(e, reference=entry)

    def __add__(self, other) -> list:
        return list(self) + list(other)
