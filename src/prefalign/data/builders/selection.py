"""Selecting training examples: deita scores and diversity, duplicates, lengths.

  deita_select   complexity x quality score, then the embedding-diversity "Repr Filter" under a budget
  dedup          exact duplicates (normalised text hash), then near duplicates (word n-gram Jaccard,
                 or embedding cosine with an encoder)
  length_filter  minimum / maximum words or characters of the prompt and of every response

Each builder keeps its input order and reports every example it drops, by reason.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from prefalign.data.builders.registry import BuildContext, data_builder
from prefalign.data.records import Example


@dataclass
class FilterReport:
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> examples

    def as_dict(self) -> dict:
        return {"kept": self.kept, "dropped": dict(self.dropped)}


def as_text(value) -> str:
    """A prompt or response as plain text: chat messages joined by newlines."""
    if isinstance(value, str):
        return value
    return "\n".join(m["content"] for m in value)


def best_response(e: Example):
    """The response deita's quality score looks at: the chosen one of a pair, the top of a list."""
    if e.kind == "list":
        return e.responses[max(range(len(e.target)), key=lambda i: e.target[i])]
    return e.responses[0]


WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return WORD.findall(text.casefold())


def complexity_heuristic(instruction: str) -> float:
    """ln(1 + distinct words of the instruction): longer, more varied requests score higher.
    A heuristic stand-in for deita's trained EVOL-COMPLEXITY scorer, not that scorer."""
    return math.log1p(len(set(words(instruction))))


def quality_heuristic(response: str) -> float:
    """ln(1 + distinct words) x (distinct / total words): rewards substance, penalises repetition.
    A heuristic stand-in for deita's trained EVOL-QUALITY scorer, not that scorer."""
    w = words(response)
    return math.log1p(len(set(w))) * len(set(w)) / len(w) if w else 0.0


COMPLEXITY_QUESTION = ("Rate how complex and demanding the following instruction is for an AI assistant "
                       "(more constraints, depth and reasoning = more complex).")


def judge_scores(judge, prompts: list, responses: list, what: str, report: FilterReport) -> list[float | None]:
    scores = judge.score(prompts, responses)
    for s in scores:
        if s is not None and s <= 0:
            raise ValueError(f"deita_select multiplies complexity by quality, so the judge's {what} scores must be "
                             f"positive (e.g. a 1-10 rubric); got {s}")
    report.dropped[f"no {what} verdict"] += sum(s is None for s in scores)
    return scores


@data_builder("deita_select", paper="2312.15685")
def deita_select(examples: list[Example], *, budget: int | None = None, max_similarity: float = 0.9,
                 complexity: str = "heuristic", quality: str = "heuristic", diversity: bool = True,
                 context: BuildContext) -> tuple[list[Example], FilterReport]:
    """deita selection: rank by complexity x quality, keep diverse examples up to a budget.

    Liu et al. 2023, "What Makes Good Data for Alignment?", arXiv:2312.15685: the evol score of
    an example is complexity(instruction) x quality(response); examples are visited from the
    highest score down and one joins the selection only if its embedding's cosine similarity to
    its nearest already-selected neighbour is below `max_similarity` (the "Repr Filter"; 0.9 as
    in the paper), until `budget` are selected (None: no limit).
    Scores: complexity="judge" asks context.extra["complexity_judge"] (else context.judge) to score
    the instruction as a response to COMPLEXITY_QUESTION; quality="judge" asks context.judge to
    score (prompt, best response). Judge scores must be positive. The "heuristic" defaults are
    lexical heuristics, NOT the paper's trained LLaMA scorers. Embeddings: context.encoder (e.g.
    prefalign.models.encoders.SentenceEncoder, MiniLM; the paper used LLaMA-13B hidden states) of the
    prompt and best response. Departures: a multi-turn prompt is scored as one text (the paper
    sums complexity x quality over turns); for preference data, quality is that of the best response.
    """
    report = FilterReport()
    prompts = [as_text(e.prompt) for e in examples]
    responses = [as_text(best_response(e)) for e in examples]
    if complexity == "judge":
        judge = context.extra.get("complexity_judge", context.judge)
        if judge is None:
            raise ValueError("deita_select complexity='judge' needs context.judge or extra['complexity_judge']")
        c = judge_scores(judge, [COMPLEXITY_QUESTION] * len(prompts), prompts, "complexity", report)
    elif complexity == "heuristic":
        c = [complexity_heuristic(p) for p in prompts]
    else:
        raise ValueError(f"complexity must be 'heuristic' or 'judge', got {complexity!r}")
    if quality == "judge":
        if context.judge is None:
            raise ValueError("deita_select quality='judge' needs a judge in the build context")
        q = judge_scores(context.judge, [e.prompt for e in examples], [best_response(e) for e in examples],
                         "quality", report)
    elif quality == "heuristic":
        q = [quality_heuristic(r) for r in responses]
    else:
        raise ValueError(f"quality must be 'heuristic' or 'judge', got {quality!r}")
    scored = [i for i in range(len(examples)) if c[i] is not None and q[i] is not None]
    order = sorted(scored, key=lambda i: -c[i] * q[i])  # stable: equal scores keep input order
    if diversity and context.encoder is None:
        raise ValueError("deita_select with diversity=True needs an encoder in the build context "
                         "(prefalign.models.encoders.SentenceEncoder); or set diversity=False")
    chosen = repr_filter(order, [p + "\n" + r for p, r in zip(prompts, responses)], max_similarity, budget,
                         context.encoder if diversity else None, report)
    out = []
    for i in sorted(chosen):
        extra = dict(examples[i].extra, deita={"complexity": c[i], "quality": q[i], "score": c[i] * q[i]})
        out.append(Example(examples[i].prompt, examples[i].responses, examples[i].target, examples[i].kind,
                           examples[i].source, extra))
    report.kept = len(out)
    report.dropped = Counter({k: v for k, v in report.dropped.items() if v})
    return out, report


def repr_filter(order: list[int], texts: list[str], max_similarity: float, budget: int | None, encoder,
                report: FilterReport, chunk: int = 64) -> list[int]:
    """Visit `order`; select an index if no selected one is at cosine >= max_similarity (encoder
    None: no diversity check), stopping at `budget`. Embeddings are computed chunk by chunk in
    visit order, so a small budget never pays for encoding the whole dataset."""
    chosen, bank = [], None  # bank[:len(chosen)] holds the selected examples' embeddings
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        emb = encoder.encode([texts[i] for i in part]) if encoder is not None else None
        if emb is not None and bank is None:
            bank = emb.new_zeros((min(len(order), budget or len(order)), emb.shape[1]))
        for k, i in enumerate(part):
            if budget is not None and len(chosen) >= budget:
                report.dropped["over budget"] += len(order) - start - k
                return chosen
            if emb is not None and chosen and float((bank[:len(chosen)] @ emb[k]).max()) >= max_similarity:
                report.dropped[f"cosine >= {max_similarity} to a selected example"] += 1
                continue
            if emb is not None:
                bank[len(chosen)] = emb[k]
            chosen.append(i)
    return chosen


def normalise(text: str) -> str:
    """Case, Unicode form and whitespace do not make a different text."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def dedup_text(e: Example, key: str) -> str:
    if key == "prompt":
        return as_text(e.prompt)
    if key == "example":
        return "\n\x1f".join([as_text(e.prompt)] + [as_text(r) for r in e.responses])
    raise ValueError(f"dedup key must be 'prompt' or 'example', got {key!r}")


def shingles(text: str, n: int) -> set:
    w = words(text)
    return {tuple(w[k:k + n]) for k in range(max(1, len(w) - n + 1))}


@data_builder("dedup")
def dedup(examples: list[Example], *, key: str = "prompt", near: str = "jaccard", threshold: float = 0.8,
          ngram: int = 3, context: BuildContext) -> tuple[list[Example], FilterReport]:
    """Drop exact duplicates (normalised text hash), then near duplicates; the first one is kept.

    key: "prompt" (one example per prompt) or "example" (prompt and all responses).
    near: "jaccard" (default): Jaccard similarity of word `ngram`-gram sets >= threshold (0.8). It
    needs no model, is exact and explainable, and catches the copies that survive an exact hash
    (templated rows, small edits, different punctuation). "embedding": cosine of
    context.encoder embeddings >= threshold (use ~0.95); it also catches paraphrases, at the cost
    of a model and false positives on short, formulaic texts. "none": exact duplicates only.
    """
    if near not in ("jaccard", "embedding", "none"):
        raise ValueError(f"near must be 'jaccard', 'embedding' or 'none', got {near!r}")
    report, seen, unique = FilterReport(), set(), []
    for e in examples:
        digest = hashlib.sha256(normalise(dedup_text(e, key)).encode("utf-8")).hexdigest()
        if digest in seen:
            report.dropped["exact duplicate"] += 1
        else:
            seen.add(digest)
            unique.append(e)
    if near == "jaccard":
        out = near_dups_jaccard(unique, key, threshold, ngram, report)
    elif near == "embedding":
        if context.encoder is None:
            raise ValueError("dedup near='embedding' needs an encoder in the build context")
        out = near_dups_embedding(unique, key, threshold, context.encoder, report)
    else:
        out = unique
    report.kept = len(out)
    return out, report


def near_dups_jaccard(examples: list[Example], key: str, threshold: float, n: int,
                      report: FilterReport) -> list[Example]:
    """Greedy in input order, exact Jaccard. Candidates come from prefix filtering (a set-similarity
    join): with every set's shingles in one global rarest-first order, two sets with Jaccard >= t
    must share a shingle among the first |A| - ceil(t |A|) + 1 of each, so only those prefixes are
    indexed, and common shingles (chat markers, boilerplate) never make every pair a candidate."""
    if not 0 < threshold <= 1:
        raise ValueError(f"a Jaccard threshold must be in (0, 1], got {threshold}")
    sets = [shingles(dedup_text(e, key), n) for e in examples]
    freq = Counter(g for s in sets for g in s)
    kept, kept_sets, index = [], [], defaultdict(list)  # prefix shingle -> positions in kept
    for e, s in zip(examples, sets):
        ordered = sorted(s, key=lambda g: (freq[g], g))
        prefix = ordered[: len(s) - math.ceil(threshold * len(s) - 1e-9) + 1]
        candidates = {j for g in prefix for j in index[g]}
        if any(len(s & kept_sets[j]) >= threshold * len(s | kept_sets[j]) for j in candidates):
            report.dropped[f"near duplicate (word {n}-gram Jaccard >= {threshold})"] += 1
            continue
        for g in prefix:
            index[g].append(len(kept))
        kept.append(e)
        kept_sets.append(s)
    return kept


def near_dups_embedding(examples: list[Example], key: str, threshold: float, encoder,
                        report: FilterReport) -> list[Example]:
    emb = encoder.encode([normalise(dedup_text(e, key)) for e in examples])
    kept, rows = [], []
    for k, e in enumerate(examples):
        if rows and float((emb[rows] @ emb[k]).max()) >= threshold:
            report.dropped[f"near duplicate (embedding cosine >= {threshold})"] += 1
            continue
        kept.append(e)
        rows.append(k)
    return kept


@data_builder("length_filter")
def length_filter(examples: list[Example], *, unit: str = "words", min_prompt: int | None = None,
                  max_prompt: int | None = None, min_response: int | None = None,
                  max_response: int | None = None) -> tuple[list[Example], FilterReport]:
    """Keep examples whose prompt, and every response, lie within the limits (inclusive).

    unit: "words" (runs of letters/digits) or "chars". Chat prompts count all messages. An
    example is dropped for the first limit it breaks, prompt limits first.
    """
    if unit not in ("words", "chars"):
        raise ValueError(f"unit must be 'words' or 'chars', got {unit!r}")
    size = (lambda t: len(words(t))) if unit == "words" else len
    report, out = FilterReport(), []
    for e in examples:
        reason = out_of_range("prompt", [size(as_text(e.prompt))], min_prompt, max_prompt, unit) or \
            out_of_range("response", [size(as_text(r)) for r in e.responses], min_response, max_response, unit)
        if reason:
            report.dropped[reason] += 1
        else:
            out.append(e)
    report.kept = len(out)
    return out, report


def out_of_range(what: str, sizes: list[int], low: int | None, high: int | None, unit: str) -> str | None:
    if low is not None and min(sizes) < low:
        return f"{what} under {low} {unit}"
    if high is not None and max(sizes) > high:
        return f"{what} over {high} {unit}"
    return None
