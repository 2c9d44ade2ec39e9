"""What an online round writes to disk, and the judge's verdict cache.

Every phase output of `rounds/round-N/` is written to a temporary name and renamed into place,
so a file that exists is complete: a resumed run trusts it and redoes only what is missing.
The verdict cache is the one append-only file: each answered batch is appended and flushed to
disk before the next question is asked, so after a kill no judge is asked a question twice. A
line cut short by the kill is the only thing dropped (it is counted and re-asked).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

from prefalign.logging import progress_iter
from prefalign.online.samplers import Sample


def write_json_atomic(path: Path, value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); it was written atomically, so it was changed by hand "
                         "or the disk is damaged: delete it to redo that phase") from None


def save_samples(path: Path, samples: list[Sample]) -> Path:
    return write_json_atomic(path, [asdict(s) for s in samples])


def load_samples(path: Path) -> list[Sample]:
    return [Sample(**row) for row in read_json(path)]


def verdict_key(judge_key: str, kind: str, prompt, *responses) -> str:
    """One question to one judge: which judge (name and arguments), score or compare, and the exact inputs."""
    text = json.dumps([judge_key, kind, prompt, *responses], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class VerdictCache:
    """{question key: verdict (float or None)} kept in a JSONL file that only grows."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.values: dict[str, float | None] = {}
        self.discarded = 0  # a last line cut short by a kill
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    key, value = json.loads(line)
                except (json.JSONDecodeError, ValueError):
                    self.discarded += 1
                    continue
                self.values[key] = value
        self.asked = 0  # questions sent to the judge by this process
        self.hits = 0

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def add(self, items: list[tuple[str, float | None]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            if self.discarded and f.tell() and not self.path.read_bytes().endswith(b"\n"):
                f.write("\n")  # the cut line ends here; new verdicts start on a line of their own
            for key, value in items:
                f.write(json.dumps([key, value]) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.values.update(items)


def call_judge(judge, kind: str, prompts: list, responses: list[list]) -> list:
    """Ask `judge` to score (one column) or compare (two columns) responses given as (text, ids) pairs
    or text: ids go to a judge that reads them (`score_ids`), text to every other; a judge that
    combines others (`compare_raw`) gets the pairs as they are."""
    if hasattr(judge, "compare_raw"):
        return judge.compare_raw(prompts, *responses) if kind == "compare" else judge.score_raw(prompts, *responses)
    if hasattr(judge, "score_ids"):
        ids = [[r[1] for r in col] for col in responses]
        return judge.score_ids(prompts, *ids) if kind == "score" else judge.compare_ids(prompts, *ids)
    texts = [[r[0] if isinstance(r, tuple) else r for r in col] for col in responses]
    return judge.score(prompts, *texts) if kind == "score" else judge.compare(prompts, *texts)


class CachedJudge:
    """A judge whose every answer is looked up in, or written to, a VerdictCache.

    `score(prompts, responses)` and `compare(prompts, a, b)` keep the judge interface; only the
    questions not in the cache reach the judge, in batches of `batch_size`. Responses may be
    (text, ids) pairs: the text goes to a text judge, the ids to a judge with `score_ids` (the
    policy's implicit reward), and the key holds both.
    """

    def __init__(self, judge, cache: VerdictCache, judge_key: str, batch_size: int = 16, progress: bool = False,
                 description: str = "judging"):
        self.judge, self.cache, self.judge_key, self.batch_size = judge, cache, judge_key, batch_size
        self.progress, self.description = progress, description

    @property
    def can_score(self) -> bool:
        return self.judge.can_score

    @property
    def filters_pairs(self) -> bool:  # a consistency judge: a chosen pair must pass its compare
        return bool(getattr(self.judge, "filters_pairs", False))

    @property
    def position_sensitive(self) -> bool:
        return bool(getattr(self.judge, "position_sensitive", False))

    def ask(self, kind: str, columns: list[list]) -> list[float | None]:
        keys = [verdict_key(self.judge_key, kind, *row) for row in zip(*columns)]
        first = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        # each question not yet answered is asked once, even when it repeats within this call
        todo = [i for k, i in first.items() if k not in self.cache]
        self.cache.hits += len(keys) - len(todo)
        starts = range(0, len(todo), self.batch_size)
        for start in progress_iter(starts, self.description, enabled=self.progress and len(starts) > 1):
            chunk = todo[start:start + self.batch_size]
            answers = self.call(kind, [[col[i] for i in chunk] for col in columns])
            self.cache.asked += len(chunk)
            self.cache.add([(keys[i], None if v is None else float(v)) for i, v in zip(chunk, answers)])
        return [self.cache.values[k] for k in keys]

    def call(self, kind: str, columns: list[list]) -> list:
        return call_judge(self.judge, kind, columns[0], columns[1:])

    def score(self, prompts: list, responses: list) -> list[float | None]:
        return self.ask("score", [prompts, responses])

    def compare(self, prompts: list, a: list, b: list) -> list[float | None]:
        """P(a preferred over b); a position-sensitive judge is asked in both orders and averaged
        (either order missing: no verdict)."""
        forward = self.ask("compare", [prompts, a, b])
        if not self.position_sensitive:
            return forward
        backward = self.ask("compare", [prompts, b, a])
        return [None if x is None or y is None else (x + 1.0 - y) / 2 for x, y in zip(forward, backward)]
