"""Candidate responses -> preference pairs with any judge (what `prefalign judge` and online rounds run).

Candidates file: one row per prompt, {"prompt": str, "responses": [str | {"text": str}, ...],
"reference": str (optional, for judges that take reference answers), "id": any (optional)}, as
JSONL / JSON / CSV / Parquet (gzip allowed). Rows need at least two responses.

A judge that scores: every response is scored once; the pair is the best against the worst.
A compare-only judge: every two responses of a row are compared (round robin); each response's
win rate is its mean P(win) over its compared pairs; the pair is the highest win rate against
the lowest, kept only if their own comparison agrees (else "intransitive").
Rows that yield no pair are dropped and counted by reason; nothing is silently skipped.
"""

from __future__ import annotations

import inspect
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from prefalign.data.formats.readers import iter_rows
from prefalign.data.records import DataError
from prefalign.judges.base import Judge
from prefalign.logging import progress_iter


@dataclass
class Candidates:
    prompt: str
    responses: list[str]
    reference: str | None = None
    id: object = None


def read_candidates(path: str | Path) -> list[Candidates]:
    rows = []
    for row_no, row in iter_rows(path):
        if isinstance(row, DataError):
            raise row
        bad = lambda name, why: DataError(str(path), row_no, name, why)  # noqa: E731
        if not isinstance(row, dict):
            raise bad("*", "a candidates row must be an object with 'prompt' and 'responses'")
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise bad("prompt", "must be a non-empty string")
        responses = row.get("responses")
        if not isinstance(responses, list) or len(responses) < 2:
            raise bad("responses", "must be a list of at least two responses")
        texts = []
        for i, r in enumerate(responses):
            text = r.get("text") if isinstance(r, dict) else r
            if not isinstance(text, str):
                raise bad(f"responses[{i}]", "must be a string or an object with a string 'text'")
            texts.append(text)
        ref = row.get("reference")
        if ref is not None and not isinstance(ref, str):
            raise bad("reference", "must be a string when given")
        rows.append(Candidates(row["prompt"], texts, ref, row.get("id")))
    if not rows:
        raise ValueError(f"{path}: no candidate rows")
    return rows


def takes_references(fn) -> bool:
    return "references" in inspect.signature(fn).parameters


@dataclass
class LabelReport:
    rows: int = 0
    pairs: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> rows
    judgements: int = 0  # score or compare calls' items

    def as_dict(self) -> dict:
        return {"rows": self.rows, "pairs": self.pairs, "dropped": sum(self.dropped.values()),
                "dropped_by_reason": dict(self.dropped), "judgements": self.judgements}


def batched_calls(fn, columns: list[list], batch_size: int, progress: bool, description: str) -> list:
    """fn(*column_slices) over batches of aligned columns, behind a progress bar."""
    n = len(columns[0])
    out: list = []
    for start in progress_iter(range(0, n, batch_size), description, enabled=progress):
        out.extend(fn(*[c[start:start + batch_size] for c in columns]))
    return out


def pair_row(c: Candidates, best: int, worst: int, values: dict, mode: str, judge_name: str, extra: dict) -> dict:
    row = {"prompt": c.prompt, "chosen": c.responses[best], "rejected": c.responses[worst],
           "chosen_score": values[best], "rejected_score": values[worst], "judge": judge_name, "mode": mode, **extra}
    if c.id is not None:
        row["id"] = c.id
    return row


def label_by_score(judge, rows, batch_size, progress, report) -> list[dict]:
    flat = [(k, i) for k, c in enumerate(rows) for i in range(len(c.responses))]
    columns = [[rows[k].prompt for k, _ in flat], [rows[k].responses[i] for k, i in flat]]
    fn = judge.score
    if takes_references(judge.score) and all(c.reference is not None for c in rows):
        columns.append([rows[k].reference for k, _ in flat])
        fn = lambda p, r, ref: judge.score(p, r, references=ref)  # noqa: E731
    scores = batched_calls(fn, columns, batch_size, progress, "scoring")
    report.judgements += len(scores)
    by_row: list[dict] = [{} for _ in rows]
    for (k, i), s in zip(flat, scores):
        if s is not None:
            by_row[k][i] = s
    pairs = []
    for c, values in zip(rows, by_row):
        if len(values) < 2:
            report.dropped["fewer than two scored responses"] += 1
            continue
        best, worst = max(values, key=values.get), min(values, key=values.get)
        if values[best] == values[worst]:
            report.dropped["all scores tied"] += 1
            continue
        pairs.append(pair_row(c, best, worst, values, "score", judge.name, {}))
    return pairs


def label_by_compare(judge, rows, batch_size, progress, report) -> list[dict]:
    flat = [(k, i, j) for k, c in enumerate(rows) for i, j in combinations(range(len(c.responses)), 2)]
    columns = [[rows[k].prompt for k, _, _ in flat], [rows[k].responses[i] for k, i, _ in flat],
               [rows[k].responses[j] for k, _, j in flat]]
    probs = batched_calls(judge.compare, columns, batch_size, progress, "comparing")
    report.judgements += len(probs)
    wins: list[dict] = [{} for _ in rows]
    direct: list[dict] = [{} for _ in rows]
    for (k, i, j), p in zip(flat, probs):
        if p is None:
            continue
        direct[k][(i, j)], direct[k][(j, i)] = p, 1.0 - p
        for who, won in ((i, p), (j, 1.0 - p)):
            wins[k].setdefault(who, []).append(won)
    pairs = []
    for k, c in enumerate(rows):
        rates = {i: sum(w) / len(w) for i, w in wins[k].items()}
        if len(rates) < 2:
            report.dropped["fewer than two compared responses"] += 1
            continue
        best, worst = max(rates, key=rates.get), min(rates, key=rates.get)
        if rates[best] == rates[worst]:
            report.dropped["all win rates tied"] += 1
            continue
        p = direct[k].get((best, worst))
        if p is not None and p <= 0.5:
            report.dropped["intransitive"] += 1
            continue
        pairs.append(pair_row(c, best, worst, rates, "compare", judge.name, {"p_chosen_over_rejected": p}))
    return pairs


def label_pairs(judge: Judge, rows: list[Candidates], mode: str = "auto", batch_size: int = 16,
                progress: bool = True) -> tuple[list[dict], LabelReport]:
    """Preference pairs from candidate rows; mode "score", "compare" or "auto" (score when the judge
    can, else compare)."""
    if mode not in ("auto", "score", "compare"):
        raise ValueError(f"mode must be auto, score or compare, got {mode!r}")
    report = LabelReport(rows=len(rows))
    if mode == "compare" or (mode == "auto" and not judge.can_score):
        pairs = label_by_compare(judge, rows, batch_size, progress, report)
    else:  # mode "score" on a compare-only judge raises CompareOnlyError from score()
        pairs = label_by_score(judge, rows, batch_size, progress, report)
    report.pairs = len(pairs)
    return pairs, report
