"""Where a data source string that is not a file becomes rows: a folder written by
`datasets` `save_to_disk`, or a Hugging Face Hub dataset id (`owner/name` or `owner/name:split`).

Both go through `datasets` (the `data` extra), imported only here and only when needed. A Hub id is read
with `datasets.load_dataset`, which honours HF_DATASETS_OFFLINE / HF_HUB_OFFLINE and the local cache.
"""

from __future__ import annotations

import re
from pathlib import Path

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".gz")
DATASET_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?")


class DatasetNotFoundError(FileNotFoundError):
    """A data source that is neither a file, a saved dataset folder, nor a Hub id that could be loaded."""


def is_dataset_source(source: str) -> bool:
    """True for a saved dataset folder or something shaped like a Hub id; files (even missing ones,
    e.g. `data/train.jsonl`) stay with the file reader so a typo still says "data file not found"."""
    if Path(source).expanduser().is_dir():
        return True
    if source.startswith((".", "/", "~")) or source.lower().endswith(FILE_SUFFIXES):
        return False
    return DATASET_ID.fullmatch(source) is not None


def import_datasets():
    try:
        import datasets
    except ImportError as err:  # optional dependency
        raise ImportError("reading a saved dataset folder or a Hub dataset id needs the `datasets` package: "
                          "pip install 'prefalign[data]'") from err
    return datasets


def open_dataset(source: str, split: str = "train", config: str | None = None):
    """(label, rows) of a saved folder or Hub id; the label (`id:split`, `folder:split`) names the
    source in every row error. A split written in the source (`owner/name:test`) wins over `split`."""
    datasets = import_datasets()
    folder = Path(source).expanduser()
    if folder.is_dir():
        loaded = datasets.load_from_disk(str(folder))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DatasetNotFoundError(f"{source}: the saved dataset has no split {split!r}; its splits are "
                                           f"{sorted(loaded)} (set data.split / data.eval_split)")
            return f"{source}:{split}", loaded[split]
        return source, loaded
    repo_id, _, written_split = source.partition(":")
    split = written_split or split
    label = f"{repo_id}:{split}"
    try:
        rows = datasets.load_dataset(repo_id, name=config, split=split)
    except Exception as err:  # datasets raises many types (connection, missing cache, bad split); all mean "not loadable"
        raise DatasetNotFoundError(not_loaded_message(repo_id, split, config, err)) from None
    return label, rows


def not_loaded_message(repo_id: str, split: str, config: str | None, err: Exception) -> str:
    from datasets import config as ds_config
    from huggingface_hub import constants

    what = f"dataset {repo_id!r} split {split!r}" + (f" config {config!r}" if config else "")
    if ds_config.HF_DATASETS_OFFLINE or constants.HF_HUB_OFFLINE:
        todo = ("offline mode is on (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE) and the datasets cache has no copy of "
                "it; load it once while online, or unset the offline variables, or pass a local file or a "
                "save_to_disk folder")
    else:
        todo = ("check the id, split (data.split / data.eval_split, or id:split) and config (data.dataset_config) and "
                "your connection (gated datasets need `hf auth login`), or pass a local file or a save_to_disk folder")
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"cannot load {what}: {todo} ({type(err).__name__}: {first_line})"
