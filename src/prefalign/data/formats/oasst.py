"""OpenAssistant Conversations message trees -> ranked lists of sibling replies.

OpenAssistant Conversations (Kopf et al. 2023, arXiv:2304.07327) stores each conversation as a
tree: a prompter message, the assistant replies written for it (ranked against each other by
volunteers, rank 0 = best), the prompter's follow-ups to each reply, and so on. Every prompter
message with at least `min_siblings` ranked assistant replies becomes one "list" Example:

  prompt     the conversation from the root down to that prompter message, as chat messages
             ({"role": "user" | "assistant", "content"}) ending with the user turn answered
  responses  the ranked sibling replies, best first (rank ascending; equal ranks keep file order)
  target     -rank for each reply, so the best scores highest (as the "ranked" format reads `rank`)

Trees are walked depth-first in file order (a message before its replies, replies in stored
order), which reproduces the normalized view shared/data/oasst_en100_ranked.jsonl.gz exactly.
A message that fails a filter (deleted, synthetic, wrong language, failed review) is left out
with its whole subtree, since the conversations below it would run through it; every message
left out is counted by reason, and so are replies without a rank and sets with too few replies.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from prefalign.data.records import DataError, Example

TREE_FIELDS = {"message_tree_id", "prompt"}  # how load_examples recognises the format
ROLES = {"prompter": "user", "assistant": "assistant"}


@dataclass
class TreeOptions:
    """Which messages to keep. The defaults reproduce the normalized ranked view (only deleted
    messages are dropped); the others are off because that view keeps them."""

    skip_deleted: bool = True
    skip_synthetic: bool = False  # model-written messages (e.g. chip20b) mixed into early exports
    skip_review_failed: bool = False  # review_result false: volunteers flagged the message
    lang: str | None = None  # keep only messages in this language code (e.g. "en"); None keeps all
    min_siblings: int = 2  # ranked replies a prompter message needs to become a list


@dataclass
class TreeReport:
    trees: int = 0
    lists: int = 0
    left_out: Counter = field(default_factory=Counter)  # reason -> messages (or reply sets) left out

    def as_dict(self) -> dict:
        return {"trees": self.trees, "lists": self.lists, "left_out": dict(self.left_out)}


def skip_reason(msg: dict, opts: TreeOptions) -> str | None:
    if opts.skip_deleted and msg.get("deleted") is True:
        return "deleted message"
    if opts.skip_synthetic and msg.get("synthetic") is True:
        return "synthetic message"
    if opts.skip_review_failed and msg.get("review_result") is False:
        return "review failed"
    if opts.lang is not None and msg.get("lang") != opts.lang:
        return f"language not {opts.lang}"
    return None


def check_message(msg, source: str, row: int, path: str, opts: TreeOptions) -> dict:
    """The fields the walk relies on, with errors naming the message's path in the tree. A
    message that will be left out needs no text (deleted messages may have lost it)."""
    if not isinstance(msg, dict):
        raise DataError(source, row, path, f"must be a message object, got {type(msg).__name__}")
    if msg.get("role") not in ROLES:
        raise DataError(source, row, f"{path}.role", f"must be 'prompter' or 'assistant', got {msg.get('role')!r}")
    text = msg.get("text")
    if skip_reason(msg, opts) is None and (not isinstance(text, str) or not text.strip()):
        raise DataError(source, row, f"{path}.text", "is missing or empty")
    replies = msg.get("replies", [])
    if not isinstance(replies, list):
        raise DataError(source, row, f"{path}.replies", "must be a list of messages")
    rank = msg.get("rank")
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool)):
        raise DataError(source, row, f"{path}.rank", f"must be an integer (0 = best), got {rank!r}")
    return msg


def count_subtree(msg: dict) -> int:
    return 1 + sum(count_subtree(r) for r in msg.get("replies", []) if isinstance(r, dict))


def tree_examples(row: dict, source: str, row_no: int, opts: TreeOptions | None = None,
                  report: TreeReport | None = None) -> list[Example]:
    """All ranked lists of one tree row {"message_tree_id", "prompt": Message}, in walk order."""
    opts = opts or TreeOptions()
    report = report if report is not None else TreeReport()
    if not isinstance(row.get("prompt"), dict):
        raise DataError(source, row_no, "prompt", "must be the root message object of the tree")
    report.trees += 1
    out: list[Example] = []
    tree_id = row.get("message_tree_id")

    def walk(msg: dict, path: str, history: list[dict]) -> None:
        reason = skip_reason(msg, opts)
        if reason is not None:
            report.left_out[reason] += 1
            below = count_subtree(msg) - 1
            if below:
                report.left_out["below a left-out message"] += below
            return
        history = history + [{"role": ROLES[msg["role"]], "content": msg["text"]}]
        replies = [(f"{path}.replies[{i}]", check_message(r, source, row_no, f"{path}.replies[{i}]", opts))
                   for i, r in enumerate(msg.get("replies", []))]
        if msg["role"] == "prompter":
            ranked = []
            for p, r in replies:
                if r["role"] != "assistant" or skip_reason(r, opts) is not None:
                    continue  # counted when the walk reaches it
                if r.get("rank") is None:
                    report.left_out["reply without a rank"] += 1
                else:
                    ranked.append(r)
            example = ranked_list(msg, ranked, history, tree_id, f"{source}:{row_no}", opts, report)
            if example is not None:
                out.append(example)
        for p, r in replies:
            walk(r, p, history)

    walk(check_message(row["prompt"], source, row_no, "prompt", opts), "prompt", [])
    report.lists += len(out)
    return out


def ranked_list(msg: dict, replies: list[dict], history: list[dict], tree_id, source: str,
                opts: TreeOptions, report: TreeReport) -> Example | None:
    if not replies:
        return None  # a leaf question or one with no ranked reply: nothing to rank
    if len(replies) < opts.min_siblings:
        report.left_out[f"fewer than {opts.min_siblings} ranked replies"] += 1
        return None
    replies = sorted(replies, key=lambda r: r["rank"])  # stable: equal ranks keep file order
    texts = [r["text"] for r in replies]
    if len(set(texts)) < len(texts):
        report.left_out["identical sibling replies"] += 1
        return None
    if len({r["rank"] for r in replies}) == 1:
        report.left_out["all sibling ranks equal"] += 1
        return None
    extra = {"id": msg.get("message_id"), "tree_id": tree_id,
             "message_ids": [r.get("message_id") for r in replies],
             "synthetic": [bool(r.get("synthetic")) for r in replies]}
    return Example(history, texts, [-float(r["rank"]) for r in replies], "list", source, extra)


def read_oasst_trees(rows: Iterable[tuple[int, Any]], source: str,
                     opts: TreeOptions | None = None) -> tuple[list[Example], TreeReport]:
    """Every ranked list of every tree in `rows` ((row number, parsed row), e.g.
    `readers.iter_rows(path)`); `source` names the file in errors. The rows come in from the
    caller because readers.py imports this module to read the "oasst_trees" format."""
    report, out = TreeReport(), []
    for row_no, row in rows:
        if isinstance(row, DataError):
            raise row
        if not isinstance(row, dict) or not TREE_FIELDS <= set(row):
            raise DataError(source, row_no, "*", f"an OpenAssistant tree row needs {sorted(TREE_FIELDS)}")
        out.extend(tree_examples(row, source, row_no, opts, report))
    return out, report
