"""`prefalign data inspect`: what a data file holds, before anyone trains on it.

Three paths, chosen from the file itself:
  examples  a format load_examples reads (pairs, hh, ranked, unpaired, sft, triples): counts by kind,
            prompt/response lengths (chars; tokens with a tokenizer), exact duplicates, label balance
            (chosen longer than rejected, best response the longest, label shares), score and gap
            distributions; bad rows are counted by reason, never hidden.
  raw rows  JSON rows in no known format (OpenAssistant trees, multi-aspect groups without a prompt
            field): per-field presence, types, lengths and numbers, nested lists' sizes and numbers.
  text      .txt / .txt.gz corpora: documents (split at <|endoftext|>, else at blank lines), lengths,
            duplicate documents.
Every path returns (stats, series): stats is JSON-ready, series are the raw values behind the plot.
"""

from __future__ import annotations

import gzip
import json
import statistics
from collections import Counter
from pathlib import Path

from prefalign.data.formats.hub import is_dataset_source
from prefalign.data.formats.readers import load_examples, source_rows
from prefalign.data.records import DataError, detect_format


def describe(values: list[float]) -> dict:
    """n, min, mean, median, 95th percentile, max (None for an empty list)."""
    if not values:
        return {"n": 0}
    s = sorted(values)
    p95 = s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))]  # nearest rank, no interpolation
    return {"n": len(s), "min": s[0], "mean": round(statistics.fmean(s), 3), "median": statistics.median(s),
            "p95": p95, "max": s[-1]}


def as_text(value) -> str:
    """A prompt or response as one string (chat messages joined by newlines)."""
    return value if isinstance(value, str) else "\n".join(m["content"] for m in value)


def share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def inspect_file(path: str | Path, tokenizer=None, split: str = "train",
                 dataset_config: str | None = None) -> tuple[dict, dict]:
    """A data file, a save_to_disk folder or a Hub dataset id (`split`, `dataset_config` pick its part)."""
    dataset = not Path(path).is_file() and is_dataset_source(str(path))
    path = str(path) if dataset else Path(path)
    if not dataset and not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if not dataset and [s for s in path.suffixes if s != ".gz"][-1:] == [".txt"]:
        return inspect_text(path)
    label, rows = source_rows(path, split, dataset_config)
    first = next((row for _, row in rows if isinstance(row, dict)), None)
    if first is None:
        raise ValueError(f"{label}: no readable JSON object rows")
    try:
        fmt = detect_format(first, label)
        examples, report = load_examples(path, fmt, on_bad_row="skip", split=split, dataset_config=dataset_config)
    except (DataError, ValueError):
        return inspect_raw(path, split, dataset_config)
    stats, series = example_stats(examples, tokenizer)
    return {"file": label, "detected": fmt, "schema": sorted(first), **report.as_dict(), **stats}, series


def example_stats(examples: list, tokenizer=None) -> tuple[dict, dict]:
    prompts = [as_text(e.prompt) for e in examples]
    series = {"prompt chars": [len(p) for p in prompts]}
    stats = {"kinds": dict(Counter(e.kind for e in examples)), "prompt_chars": describe(series["prompt chars"])}
    pairs = [e for e in examples if e.kind == "pair"]
    lists = [e for e in examples if e.kind == "list"]
    if pairs:
        chosen = [len(as_text(e.responses[0])) for e in pairs]
        rejected = [len(as_text(e.responses[1])) for e in pairs]
        series.update({"chosen chars": chosen, "rejected chars": rejected})
        longer = sum(c > r for c, r in zip(chosen, rejected))
        equal = sum(c == r for c, r in zip(chosen, rejected))
        stats.update(chosen_chars=describe(chosen), rejected_chars=describe(rejected),
                     chosen_longer=longer, rejected_longer=len(pairs) - longer - equal, equal_length=equal,
                     chosen_longer_share=share(longer, len(pairs)))
        scored = [e for e in pairs if e.extra.get("score_chosen") is not None
                  and e.extra.get("score_rejected") is not None]
        if scored:
            gaps = [e.extra["score_chosen"] - e.extra["score_rejected"] for e in scored]
            series["score gap (chosen - rejected)"] = gaps
            stats.update(scored_pairs=len(scored), score_gap=describe(gaps), tied_scores=sum(g == 0 for g in gaps),
                         chosen_scored_lower=sum(g < 0 for g in gaps),
                         scores=describe([s for e in scored for s in (e.extra["score_chosen"], e.extra["score_rejected"])]))
    if lists:
        lengths = [len(as_text(r)) for e in lists for r in e.responses]
        gaps = [max(e.target) - min(e.target) for e in lists]
        best_longest = sum(max(range(len(e.target)), key=lambda i: (e.target[i], -i)) ==
                           max(range(len(e.responses)), key=lambda i: len(as_text(e.responses[i]))) for e in lists)
        series.update({"response chars": lengths, "score gap (best - worst)": gaps})
        ranked = all(t <= 0 and float(t).is_integer() for e in lists for t in e.target)
        stats.update(list_sizes=dict(sorted(Counter(len(e.responses) for e in lists).items())),
                     response_chars=describe(lengths), best_is_longest_share=share(best_longest, len(lists)),
                     score_gap=describe(gaps))
        if ranked:  # ranks were negated on reading (higher is better): report them as the file has them
            stats["ranks"] = dict(sorted(Counter(int(-t) for e in lists for t in e.target).items()))
        else:
            stats["scores"] = describe([t for e in lists for t in e.target])
    single = [e for e in examples if e.kind in ("unpaired", "sft", "triple")]
    if single:
        lengths = [len(as_text(r)) for e in single for r in e.responses]
        series["response chars"] = series.get("response chars", []) + lengths
        stats["response_chars"] = describe(series["response chars"])
    unpaired = [e for e in examples if e.kind == "unpaired"]
    if unpaired:
        stats["labels"] = {"desirable": sum(e.target[0] == 1.0 for e in unpaired),
                           "undesirable": sum(e.target[0] == 0.0 for e in unpaired)}
    keys = [json.dumps([e.prompt, e.responses], sort_keys=True, ensure_ascii=False) for e in examples]
    stats["duplicates"] = {"repeated_prompts": len(prompts) - len(set(map(json.dumps, (e.prompt for e in examples)))),
                           "exact_duplicate_examples": len(keys) - len(set(keys))}
    if tokenizer is not None:
        count = lambda t: len(tokenizer(t, add_special_tokens=False)["input_ids"])  # noqa: E731
        series["prompt tokens"] = [count(p) for p in prompts]
        series["response tokens"] = [count(as_text(r)) for e in examples for r in e.responses]
        stats.update(prompt_tokens=describe(series["prompt tokens"]), response_tokens=describe(series["response tokens"]))
    return stats, series


def numbers_in(value, prefix: str, out: dict) -> None:
    """Collect every number under `value` by dotted path (lists flattened): rank, scores.overall, ..."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        out.setdefault(prefix, []).append(float(value))
    elif isinstance(value, dict):
        for k, v in value.items():
            numbers_in(v, f"{prefix}.{k}" if prefix else k, out)
    elif isinstance(value, list):
        for v in value:
            numbers_in(v, f"{prefix}[]", out)


def tree_stats(root: dict) -> tuple[int, int, list[int]]:
    """(messages, depth, sizes of ranked sibling sets) of one OpenAssistant message tree."""
    replies = root.get("replies") or []
    ranked = [r for r in replies if r.get("rank") is not None and not r.get("deleted")]
    sets = [len(ranked)] if len(ranked) >= 2 else []
    messages, depth = 1, 1
    for r in replies:
        m, d, s = tree_stats(r)
        messages, depth, sets = messages + m, max(depth, 1 + d), sets + s
    return messages, depth, sets


def inspect_raw(path, split: str = "train", dataset_config: str | None = None) -> tuple[dict, dict]:
    fields, types, lengths, numbers, bad, rows = Counter(), {}, {}, {}, Counter(), []
    path, found = source_rows(path, split, dataset_config)
    for row_no, row in found:
        if isinstance(row, DataError) or not isinstance(row, dict):
            bad[row.reason if isinstance(row, DataError) else f"not an object ({type(row).__name__})"] += 1
            continue
        rows.append(row)
        for key, value in row.items():
            fields[key] += 1
            types.setdefault(key, Counter())[type(value).__name__] += 1
            if isinstance(value, (str, list)):
                lengths.setdefault(key, []).append(len(value))
            numbers_in(value, key, numbers)
    canon = [json.dumps(r, sort_keys=True) for r in rows]
    stats = {"file": str(path), "detected": "raw rows (no prefalign format)", "rows": len(rows) + sum(bad.values()),
             "unreadable_rows": dict(bad), "exact_duplicate_rows": len(canon) - len(set(canon)),
             "fields": {k: {"present": n, "types": dict(types[k])} for k, n in fields.items()},
             "lengths (chars or items)": {k: describe(v) for k, v in lengths.items()},
             "numbers": {k: describe(v) for k, v in numbers.items() if not k.endswith("_id") and k != "id"}}
    series = {f"{k} length": v for k, v in lengths.items()}
    if rows and "message_tree_id" in rows[0] and isinstance(rows[0].get("prompt"), dict):
        trees = [tree_stats(r["prompt"]) for r in rows]
        stats["detected"] = "OpenAssistant message trees"
        sets = [s for _, _, ss in trees for s in ss]
        stats["trees"] = {"trees": len(trees), "messages": sum(m for m, _, _ in trees),
                          "depth": describe([d for _, d, _ in trees]), "ranked_sibling_sets": len(sets),
                          "set_sizes": dict(sorted(Counter(sets).items()))}
        series = {"tree depth": [d for _, d, _ in trees], "ranked set size": sets}
    for key in ("responses[].scores.overall", "responses[].rank", "responses[].score"):
        if key in numbers:
            series[key] = numbers[key]
    return stats, series


def inspect_text(path: Path) -> tuple[dict, dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    sep = "<|endoftext|>" if "<|endoftext|>" in text else "\n\n"
    docs = [d.strip() for d in text.split(sep) if d.strip()]
    chars = [len(d) for d in docs]
    stats = {"file": str(path), "detected": f"plain text, documents split at {sep!r}", "chars": len(text),
             "lines": text.count("\n"), "documents": len(docs), "document_chars": describe(chars),
             "document_words": describe([len(d.split()) for d in docs]), "duplicate_documents": len(docs) - len(set(docs))}
    return stats, {"document chars": chars}


def plot_series(series: dict, out_png: str | Path, title: str = "") -> Path:
    """One histogram per series (at most 6), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [(k, v) for k, v in series.items() if v][:6]
    if not items:
        raise ValueError("nothing to plot")
    cols = min(3, len(items))
    rows = (len(items) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, values) in zip(axes.flat, items):
        ax.hist(values, bins=min(40, max(5, len(set(values)))), color="#4c72b0")
        ax.set_title(f"{name} (n={len(values)})", fontsize=9)
        ax.set_ylabel("count")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(items):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)
