"""Reward-model training data: preference pairs, multi-aspect ratings, step-labelled responses.

  pairs    any file prefalign reads (pairs, hh, ranked lists -> pairs; data/formats/readers.py), with an
           optional margin from score gaps and a dataset id + weight when several files train together
  ratings  {PROMPT_FIELD, "responses": [{"text", "scores": {attribute: number}}]} (one row per prompt,
           e.g. sf_nlg_multiaspect) or {PROMPT_FIELD, "response", "scores": {...}}; an attribute a
           response does not rate is masked, a response rating none of them is an error
  steps    {"prompt", "steps": [str, ...], "labels": [0/1, ...]} or {"prompt", "response", "labels"}
           with the response split at the step delimiter; one label per step (1 = good step)
Bad rows raise DataError naming file, row and field, or are skipped and counted (on_bad_row=skip).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from prefalign.data.builders.pairs import pairs_from_lists
from prefalign.data.formats.readers import load_examples, source_rows
from prefalign.data.records import DataError, LoadReport, Text, check_text, require
from prefalign.rewards.steps import encode_steps, split_steps

MARGINS = ("none", "score_gap")


@dataclass
class RMExample:
    prompt: Text
    responses: list  # pairs: [chosen, rejected]; ratings and steps: [response]
    source: str
    margin: float = 0.0
    dataset: int = 0
    weight: float = 1.0
    ratings: list[float] | None = None
    rating_mask: list[float] | None = None
    steps: list[str] | None = None
    labels: list[float] | None = None
    user: str | None = None  # PAL: the annotator's id (as a string)
    extra: dict = field(default_factory=dict)

    @property
    def max_len(self) -> int:
        """A length proxy (characters) for length-grouped batching; tokenization happens per batch."""
        return len(str(self.prompt)) + sum(len(str(r)) for r in self.responses)


def load_pairs(path: str, fmt: str = "auto", on_bad_row: str = "error", list_to_pairs: str = "best_vs_worst",
               min_gap: float = 0.0, margin: str = "none", margin_scale: float = 1.0, dataset: int = 0,
               weight: float = 1.0, user_field: str | None = None, split: str = "train",
               dataset_config: str | None = None) -> tuple[list[RMExample], dict]:
    """Pairs for a pairwise kind; with `user_field` (PAL) every row must name its user there. `split` and
    `dataset_config` pick the part of a Hub dataset id or DatasetDict folder (files have none)."""
    if margin not in MARGINS:
        raise ValueError(f"margin must be one of {MARGINS}, got {margin!r}")
    examples, report = load_examples(path, fmt, on_bad_row, split=split, dataset_config=dataset_config)
    kinds = {e.kind for e in examples}
    if not kinds <= {"pair", "list"}:
        raise ValueError(f"{path}: a pairwise reward model needs pairs or ranked lists, the file holds {sorted(kinds)}")
    info = {"load": report.as_dict()}
    if user_field:
        examples, users = read_users(path, examples, user_field, on_bad_row, report, split, dataset_config)
        info["load"] = report.as_dict()
        info["users"] = len(set(users.values()))
    if "list" in kinds:
        examples, pairing = pairs_from_lists(examples, list_to_pairs, min_gap)
        info["pairing"] = pairing.as_dict()
    out = []
    for e in examples:
        m = 0.0
        if margin == "score_gap":
            if "score_chosen" not in e.extra or "score_rejected" not in e.extra:
                raise ValueError(f"{e.source}: margin=score_gap needs score_chosen and score_rejected (or ranked lists)")
            m = margin_scale * (float(e.extra["score_chosen"]) - float(e.extra["score_rejected"]))
            if m < 0:
                raise ValueError(f"{e.source}: score_chosen is below score_rejected; a negative margin is not a preference")
        out.append(RMExample(e.prompt, list(e.responses), e.source, m, dataset, weight, extra=dict(e.extra),
                             user=users[e.source] if user_field else None))
    return out, info


def user_id(value, source: str, row: int, name: str) -> str:
    """A user id: a non-empty string or an integer (kept as its decimal string)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(source, row, name, f"must be a string or integer user id, got {value!r}")
    if isinstance(value, str) and not value.strip():
        raise DataError(source, row, name, "is empty")
    return str(value)


def read_users(path: str, examples: list, field_name: str, on_bad_row: str, report: LoadReport,
               split: str = "train", dataset_config: str | None = None) -> tuple[list, dict]:
    """The user id of every example's row (examples' sources end in ':row'); rows with a missing or
    bad id raise DataError naming file, row and field, or (on_bad_row=skip) are dropped and counted."""
    label, found = source_rows(path, split, dataset_config)
    rows = dict(found)
    path = label
    kept, users = [], {}
    for e in examples:
        row_no = int(e.source.rsplit(":", 1)[1])
        row = rows.get(row_no)
        try:
            if not isinstance(row, dict) or row.get(field_name) is None:
                raise DataError(str(path), row_no, field_name, "is missing (a PAL reward model needs each row's user)")
            users[e.source] = user_id(row[field_name], str(path), row_no, field_name)
            kept.append(e)
        except DataError as err:
            if on_bad_row == "error":
                raise
            report.skip(err)
            report.kept -= 1
    return kept, users


def number(value, source: str, row: int, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(source, row, name, f"must be a number, got {value!r}")
    return float(value)


def rated_response(resp, attributes: list[str], source: str, row: int, name: str) -> tuple[str, list, list]:
    if not isinstance(resp, dict):
        raise DataError(source, row, name, "must be {text, scores}")
    text = check_text(resp.get("text", resp.get("response")), source, row, f"{name}.text")
    scores = resp.get("scores")
    if not isinstance(scores, dict):
        raise DataError(source, row, f"{name}.scores", "must be a mapping of attribute -> number")
    ratings = [number(scores[a], source, row, f"{name}.scores.{a}") if a in scores else 0.0 for a in attributes]
    mask = [1.0 if a in scores else 0.0 for a in attributes]
    if not any(mask):
        raise DataError(source, row, f"{name}.scores", f"rates none of {attributes} (it has {sorted(scores)})")
    return text, ratings, mask


def load_ratings(path: str, attributes: list[str], prompt_field: str = "prompt", on_bad_row: str = "error",
                 split: str = "train", dataset_config: str | None = None) -> tuple[list[RMExample], dict]:
    if not attributes:
        raise ValueError("a multi-objective reward model needs data.attributes, e.g. [informativeness, naturalness]")
    out, report = [], LoadReport()
    path, rows = source_rows(path, split, dataset_config)  # path: the file, or id:split, that errors name
    for row_no, row in rows:
        report.rows += 1
        try:
            if isinstance(row, DataError):
                raise row
            prompt = check_text(require(row, prompt_field, str(path), row_no), str(path), row_no, prompt_field)
            if "responses" in row:
                responses = row["responses"]
                if not isinstance(responses, list) or not responses:
                    raise DataError(str(path), row_no, "responses", "must be a non-empty list")
                items = [rated_response(r, attributes, str(path), row_no, f"responses[{i}]")
                         for i, r in enumerate(responses)]
            else:
                items = [rated_response({"text": require(row, "response", str(path), row_no), "scores": row.get("scores")},
                                        attributes, str(path), row_no, "response")]
            for text, ratings, mask in items:
                out.append(RMExample(prompt, [text], f"{path}:{row_no}", ratings=ratings, rating_mask=mask))
            report.kept += 1
        except DataError as err:
            if on_bad_row == "error":
                raise
            report.skip(err)
    if not out:
        raise ValueError(f"{path}: no usable rows ({report.rows} read)")
    return out, {"load": report.as_dict(), "responses": len(out)}


def label(value, source: str, row: int, name: str) -> float:
    if isinstance(value, bool) or (isinstance(value, (int, float)) and value in (0, 1)):
        return float(value)
    raise DataError(source, row, name, f"must be 0/1 or true/false, got {value!r}")


def load_steps(path: str, delimiter: str = "\n\n", on_bad_row: str = "error", split: str = "train",
               dataset_config: str | None = None) -> tuple[list[RMExample], dict]:
    out, report = [], LoadReport()
    path, rows = source_rows(path, split, dataset_config)  # path: the file, or id:split, that errors name
    for row_no, row in rows:
        report.rows += 1
        src = str(path)
        try:
            if isinstance(row, DataError):
                raise row
            prompt = check_text(require(row, "prompt", src, row_no), src, row_no, "prompt")
            if "steps" in row:
                steps = require(row, "steps", src, row_no)
                if not isinstance(steps, list) or not steps:
                    raise DataError(src, row_no, "steps", "must be a non-empty list of strings")
                steps = [check_text(s, src, row_no, f"steps[{i}]", allow_messages=False) for i, s in enumerate(steps)]
            else:
                text = check_text(require(row, "response", src, row_no), src, row_no, "response", allow_messages=False)
                steps = split_steps(text, delimiter)
            labels = require(row, "labels", src, row_no)
            if not isinstance(labels, list) or len(labels) != len(steps):
                raise DataError(src, row_no, "labels", f"must be a list with one label per step ({len(steps)} steps)")
            labels = [label(v, src, row_no, f"labels[{i}]") for i, v in enumerate(labels)]
            out.append(RMExample(prompt, [delimiter.join(steps)], f"{src}:{row_no}", steps=steps, labels=labels))
            report.kept += 1
        except DataError as err:
            if on_bad_row == "error":
                raise
            report.skip(err)
    if not out:
        raise ValueError(f"{path}: no usable rows ({report.rows} read)")
    return out, {"load": report.as_dict()}


def build_batch(model, examples: list[RMExample], indices: list[int]) -> dict:
    """One micro-batch for `model` (a RewardModel): encoded rows plus what its kind's loss reads."""
    chosen = [examples[i] for i in indices]
    data = model.kind.data
    if data == "pairs":
        prompts = [e.prompt for e in chosen]
        users = [e.user for e in chosen] if "user" in model.head.inputs else None
        if users is not None and None in users:
            raise ValueError(f"{chosen[users.index(None)].source}: no user id; a {model.kind.name!r} model "
                             "needs one per pair (train-rm reads data.user_field)")
        batch = model.encode(prompts + prompts, [e.responses[0] for e in chosen] + [e.responses[1] for e in chosen],
                             users + users if users is not None else None)
        batch["margin"] = torch.tensor([e.margin for e in chosen])
        batch["dataset"] = torch.tensor([e.dataset for e in chosen], dtype=torch.long)
        if any(e.weight != 1.0 for e in chosen):
            batch["dataset_weight"] = torch.tensor([e.weight for e in chosen])
        return batch
    if data == "ratings":
        batch = model.encode([e.prompt for e in chosen], [e.responses[0] for e in chosen])
        batch["ratings"] = torch.tensor([e.ratings for e in chosen])
        batch["rating_mask"] = torch.tensor([e.rating_mask for e in chosen])
        return batch
    batch = encode_steps(model.backbone, [e.prompt for e in chosen], [e.steps for e in chosen], model.head.delimiter)
    batch["step_labels"] = torch.tensor([v for e, k in zip(chosen, batch["kept_counts"]) for v in e.labels[:k]])
    batch["n_rows"] = len(chosen)
    return batch


def rating_stats(examples: list[RMExample], attributes: list[str]) -> tuple[list[float], list[float]]:
    """Per-attribute mean and standard deviation of the training ratings (masked), std floored at 1e-3."""
    r = torch.tensor([e.ratings for e in examples], dtype=torch.float64)
    m = torch.tensor([e.rating_mask for e in examples], dtype=torch.float64)
    n = m.sum(0).clamp(min=1)
    mean = (r * m).sum(0) / n
    std = (((r - mean) ** 2 * m).sum(0) / n).sqrt().clamp(min=1e-3)
    return mean.tolist(), std.tolist()
