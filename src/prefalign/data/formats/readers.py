"""Files (JSONL, JSON, Parquet, CSV; gzip allowed) and in-memory datasets -> validated Examples."""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
from pathlib import Path
from typing import Any, Iterable, Iterator

from prefalign.data.formats.hub import is_dataset_source, open_dataset
from prefalign.data.formats.oasst import TreeOptions, TreeReport, tree_examples
from prefalign.data.records import DataError, Example, LoadReport, detect_format, make_example

BAD_ROW_POLICIES = ("error", "skip")


def open_text(path: Path) -> io.TextIOBase:
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    # strict decoding: a non-UTF-8 byte is an error naming the row, never a replacement char
    return io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="")


def file_kind(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    ext = suffixes[-1] if suffixes else ""
    kinds = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
    if ext not in kinds:
        raise ValueError(f"{path}: unsupported file type {ext!r}; use .jsonl, .json, .parquet or .csv (optionally .gz)")
    return kinds[ext]


def iter_rows(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(row number from 1, parsed row). A row that cannot be decoded is yielded as a DataError."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    kind = file_kind(path)
    if kind == "jsonl":
        raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
        with raw:
            for i, line in enumerate(raw, start=1):
                if not line.strip():
                    continue
                try:
                    yield i, json.loads(line.decode("utf-8"))
                except UnicodeDecodeError as e:
                    yield i, DataError(str(path), i, "*", f"is not valid UTF-8 ({e.reason} at byte {e.start})")
                except json.JSONDecodeError as e:
                    yield i, DataError(str(path), i, "*", f"is not valid JSON ({e.msg})")
    elif kind == "json":
        try:
            with open_text(path) as f:
                data = json.load(f)
        except UnicodeDecodeError as e:
            raise DataError(str(path), 0, "*", f"file is not valid UTF-8 ({e.reason})") from e
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(str(path), 0, "*", "a .json data file must hold a list of rows (or {\"data\": [...]})")
        yield from enumerate(data, start=1)
    elif kind == "parquet":
        import pyarrow.parquet as pq  # optional dependency (extra "data")

        yield from enumerate(pq.read_table(path).to_pylist(), start=1)
    else:
        with open_text(path) as f:
            try:
                for i, row in enumerate(csv.DictReader(f), start=1):
                    yield i, {k: decode_csv_cell(v) for k, v in row.items()}
            except UnicodeDecodeError as e:
                raise DataError(str(path), 0, "*", f"file is not valid UTF-8 ({e.reason})") from e


def decode_csv_cell(value: str | None) -> Any:
    """CSV cells are strings; JSON lists/objects (chat messages, responses) and booleans are parsed."""
    if value is None:
        return None
    stripped = value.strip()
    if stripped[:1] in "[{":
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return value
    if stripped.lower() in ("true", "false"):
        return stripped.lower() == "true"
    return value


def source_rows(source, split: str = "train", dataset_config: str | None = None,
                name: str | None = None) -> tuple[str, Iterator[tuple[int, Any]]]:
    """(label, (row number from 1, row) pairs) of a file, a save_to_disk folder, a Hub dataset id, or
    rows in memory; the label (file, or id:split) names the source in every row error."""
    if isinstance(source, (str, Path)) and not Path(source).is_file() and is_dataset_source(str(source)):
        label, dataset = open_dataset(str(source), split, dataset_config)
        return label, enumerate(dataset, start=1)
    if isinstance(source, (str, Path)):
        return str(source), iter_rows(source)
    return name or type(source).__name__, enumerate(source, start=1)


def load_examples(
    source: str | Path | Iterable[dict],
    fmt: str = "auto",
    on_bad_row: str = "error",
    score_aspect: str | dict | None = None,
    name: str | None = None,
    tree_options: TreeOptions | None = None,
    split: str = "train",
    dataset_config: str | None = None,
) -> tuple[list[Example], LoadReport]:
    """Read and validate every row. `source` is a file, a `save_to_disk` folder, a Hub dataset id
    (`owner/name` or `owner/name:split`; `split` and `dataset_config` pick the split and config), or an
    in-memory dataset (e.g. `datasets.Dataset` or a list of dicts). Bad rows raise, or with on_bad_row="skip" are
    counted in the report by reason. An OpenAssistant tree row ("oasst_trees") gives one
    example per ranked reply set; its left-out messages are counted in `report.left_out`."""
    if on_bad_row not in BAD_ROW_POLICIES:
        raise ValueError(f"on_bad_row must be one of {BAD_ROW_POLICIES}, got {on_bad_row!r}")
    label, rows = source_rows(source, split, dataset_config, name)
    report, examples = LoadReport(), []
    for row_no, row in rows:
        report.rows += 1
        try:
            if isinstance(row, DataError):
                raise row
            if fmt == "auto":
                fmt = detect_format(row, label)
            if fmt == "oasst_trees":
                trees = TreeReport()
                examples.extend(tree_examples(row, label, row_no, tree_options, trees))
                report.left_out.update(trees.left_out)
            else:
                examples.append(make_example(row, fmt, label, row_no, score_aspect, report))
        except DataError as err:
            if on_bad_row == "error":
                raise
            report.skip(err)
    report.kept = len(examples)
    if not examples:
        raise ValueError(f"{label}: no usable rows ({report.rows} read, {sum(report.skipped.values())} skipped)")
    return examples, report


def seeded_split(examples: list[Example], eval_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Deterministic train/eval split: the same seed and data always give the same split."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval fraction must be in (0, 1), got {eval_fraction}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(len(examples) * eval_fraction)))
    eval_idx = set(order[:n_eval])
    train = [e for i, e in enumerate(examples) if i not in eval_idx]
    held_out = [e for i, e in enumerate(examples) if i in eval_idx]
    return train, held_out
