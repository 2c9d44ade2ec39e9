"""Examples -> JSONL or Parquet rows in the formats `load_examples` reads back, written atomically.

  pair      {prompt, chosen, rejected, score_chosen?, score_rejected?, id?, stage?, ...}   (pairs)
  list      {prompt, responses: [{text, score, scores?}], id?}                             (ranked)
  triple    {prompt, gold, chosen, rejected}                                                (triples)
  unpaired  {prompt, completion, label}                                                     (unpaired)
  sft       {prompt, completion}                                                            (sft)

A file holds one kind: the reader detects the format from the first row and reads every row so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from prefalign.data.records import DATA_FEATURES, PAIR_EXTRAS, RESPONSE_FIELDS, Example


def example_row(e: Example) -> dict:
    if e.kind == "pair":
        row = {"prompt": e.prompt, "chosen": e.responses[0], "rejected": e.responses[1]}
        row.update({k: e.extra[k] for k in PAIR_EXTRAS if k in e.extra})
        row.update({k: e.extra[k] for k in RESPONSE_FIELDS if k in e.extra})
    elif e.kind == "list":
        ratings = e.extra.get("aspect_scores")
        responses = [{"text": t, "score": s} for t, s in zip(e.responses, e.target)]
        if ratings:
            for r, scores in zip(responses, ratings):
                r["scores"] = scores  # the reader ranks by `score`; the aspects stay for re-ranking
        row = {"prompt": e.prompt, "responses": responses, **({"id": e.extra["id"]} if "id" in e.extra else {})}
    elif e.kind == "triple":
        row = {"prompt": e.prompt, "gold": e.responses[0], "chosen": e.responses[1], "rejected": e.responses[2]}
    elif e.kind == "unpaired":
        row = {"prompt": e.prompt, "completion": e.responses[0], "label": bool(e.target[0])}
    elif e.kind == "sft":
        row = {"prompt": e.prompt, "completion": e.responses[0]}
    else:
        raise ValueError(f"{e.source}: cannot write an example of kind {e.kind!r}")
    if e.kind in ("pair", "sft"):
        row.update({k: v for k, v in e.extra.get("features", {}).items() if k in DATA_FEATURES})
    return row


def write_examples(examples: list[Example], path: str | Path) -> Path:
    """Write .jsonl or .parquet through a temporary file and a rename: a reader never sees half a file."""
    path = Path(path)
    kinds = sorted({e.kind for e in examples})
    if len(kinds) > 1:
        raise ValueError(f"{path}: the examples mix kinds {kinds}; a data file holds one kind (write them separately)")
    if not examples:
        raise ValueError(f"{path}: nothing to write (0 examples)")
    rows = [example_row(e) for e in examples]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".jsonl":
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    elif path.suffix == ".parquet":
        write_parquet(rows, tmp, path)
    else:
        raise ValueError(f"{path}: write .jsonl or .parquet")
    os.replace(tmp, path)
    return path


def write_parquet(rows: list[dict], tmp: Path, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = list(dict.fromkeys(k for r in rows for k in r))  # every column, in first-seen order
    for key in keys:
        types = {type(r.get(key)).__name__ for r in rows if r.get(key) is not None}
        if len(types) > 1:
            raise ValueError(f"{path}: column {key!r} mixes {sorted(types)} (e.g. text and chat prompts); "
                             "Parquet needs one type per column: write .jsonl")
    try:
        table = pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise ValueError(f"{path}: cannot store these rows as Parquet ({err}); write .jsonl") from err
    pq.write_table(table, tmp)
