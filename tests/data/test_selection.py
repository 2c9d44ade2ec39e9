"""deita selection (arXiv:2312.15685), dedup and length filters on hand-built sets with hand counts."""

import math
from pathlib import Path

import pytest
import torch

from prefalign.data.builders.pipeline import BuildContext, run_builder
from prefalign.data.records import Example
from prefalign.data.builders.selection import (complexity_heuristic, dedup, deita_select, length_filter, quality_heuristic,
                                      shingles)
from prefalign.judges import CallableJudge


def pair(prompt, chosen="yes", rejected="no", src=""):
    return Example(prompt, [chosen, rejected], [1.0, 0.0], "pair", src)


class FakeEncoder:
    """Unit vectors looked up by the first word of the text (tests choose the cosines)."""

    def __init__(self, vectors):
        self.vectors = {k: torch.nn.functional.normalize(torch.tensor(v, dtype=torch.float), dim=0)
                        for k, v in vectors.items()}
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        return torch.stack([self.vectors[t.split()[0].casefold()] for t in texts])


B = "the quick brown fox jumps over the lazy dog while the farmer sleeps under an old oak tree near the river"


def test_dedup_exact_and_jaccard_counts():
    """B has 21 words -> 19 word trigrams. B1 changes the last word: 18 shared of 20 -> J = 0.9,
    a near duplicate. B2 changes the 11th word: 3 trigrams differ, 16 shared of 22 -> J = 0.727,
    kept at threshold 0.8. "Hello  WORLD" is an exact duplicate of "hello world" after
    normalisation. The last row repeats prompt 1 with other responses: a duplicate by prompt only."""
    b1 = B.rsplit(" ", 1)[0] + " lake"
    words = B.split()
    words[10] = "a"
    b2 = " ".join(words)
    rows = [pair("hello world"), pair("Hello  WORLD"), pair(B), pair(b1), pair(b2), pair("other"),
            pair("hello world", "sure", "nah")]
    out, report = dedup(rows, key="prompt", context=BuildContext())
    assert [e.prompt for e in out] == ["hello world", B, b2, "other"]
    assert report.as_dict() == {"kept": 4, "dropped": {"exact duplicate": 2,
                                                       "near duplicate (word 3-gram Jaccard >= 0.8)": 1}}
    out, report = dedup(rows, key="example", near="none", context=BuildContext())
    assert len(out) == 6 and report.dropped == {"exact duplicate": 1}
    out, _ = dedup(rows, key="prompt", threshold=0.7, context=BuildContext())
    assert [e.prompt for e in out] == ["hello world", B, "other"]


def test_dedup_embedding_uses_the_encoder():
    enc = FakeEncoder({"cat": [1, 0], "kitten": [0.96, 0.28], "car": [0, 1]})  # cos(cat, kitten) = 0.96
    rows = [pair("cat sits"), pair("kitten sits"), pair("car drives")]
    out, report = dedup(rows, near="embedding", threshold=0.95, context=BuildContext(encoder=enc))
    assert [e.prompt for e in out] == ["cat sits", "car drives"]
    assert report.dropped == {"near duplicate (embedding cosine >= 0.95)": 1}
    with pytest.raises(ValueError, match="needs an encoder"):
        dedup(rows, near="embedding", context=BuildContext())


def test_length_filter_counts_per_reason():
    rows = [pair("one two three", "a b c d", "a b"),  # kept
            pair("one", "a b c", "a b c"),  # prompt under 2 words
            pair("one two", "a", "a b c"),  # a response under 2 words
            pair("one two", "a b c d e f", "a b"),  # a response over 5 words
            pair([{"role": "user", "content": "x y"}, {"role": "assistant", "content": "z"},
                  {"role": "user", "content": "w v u"}], "a b", "c d")]  # chat: 6 words > 5
    out, report = length_filter(rows, min_prompt=2, max_prompt=5, min_response=2, max_response=5)
    assert len(out) == 1 and report.dropped == {"prompt under 2 words": 1, "response under 2 words": 1,
                                                "response over 5 words": 1, "prompt over 5 words": 1}
    out, report = run_builder("length_filter", rows, {"unit": "chars", "max_response": 5})
    # "a b c d" (7 chars) and "a b c d e f" (11 chars) break the limit; "a b c" is exactly 5
    assert len(out) == 3 and report["dropped"] == {"response over 5 chars": 2}


def test_heuristics_by_hand():
    assert complexity_heuristic("Sort, sort the list") == pytest.approx(math.log(4))  # 3 distinct words
    assert quality_heuristic("x x y") == pytest.approx(math.log(3) * 2 / 3)
    assert quality_heuristic("") == 0.0


def test_deita_score_order_repr_filter_and_budget():
    """Judge complexity c and quality q per prompt (by first word): a 2 x 5 = 10, b 3 x 3 = 9,
    c 1 x 8 = 8, d 2 x 3 = 6, e 1 x 1 = 1. Visiting a, b, c, d, e: b's embedding has cosine 0.95
    with a's (>= 0.9) so it is skipped; a, c, d fill the budget of 3; e is over budget."""
    c = {"a": 2, "b": 3, "c": 1, "d": 2, "e": 1}
    q = {"a": 5, "b": 3, "c": 8, "d": 3, "e": 1}
    complexity = CallableJudge(score_fn=lambda p, r: c[r.split()[0]])  # scores the instruction
    quality = CallableJudge(score_fn=lambda p, r: q[p.split()[0]])
    enc = FakeEncoder({"a": [1, 0, 0], "b": [0.95, 0.312, 0], "c": [0, 1, 0], "d": [0, 0, 1], "e": [0.5, 0.5, 0.7]})
    rows = [pair(f"{k} task", f"{k} answer") for k in "edcba"]
    ctx = BuildContext(judge=quality, encoder=enc, extra={"complexity_judge": complexity})
    out, report = deita_select(rows, budget=3, complexity="judge", quality="judge", context=ctx)
    assert [e.prompt for e in out] == ["d task", "c task", "a task"]  # input order kept
    assert [e.extra["deita"]["score"] for e in out] == [6, 8, 10]
    assert report.as_dict() == {"kept": 3, "dropped": {"cosine >= 0.9 to a selected example": 1, "over budget": 1}}


def test_deita_heuristic_without_diversity_ranks_by_score():
    rows = [pair("say hi", "hi"), pair("explain why the sky is blue in detail", "because light scatters off air"),
            pair("list three fruits", "apple banana cherry")]
    out, report = deita_select(rows, budget=2, diversity=False, context=BuildContext())
    assert [e.prompt for e in out] == [rows[1].prompt, rows[2].prompt] and report.dropped == {"over budget": 1}


def test_deita_missing_verdicts_counted_and_bad_scores_raise():
    judge = CallableJudge(score_fn=lambda p, r: None if "skip" in p else 2.0)
    out, report = deita_select([pair("skip me"), pair("keep me")], quality="judge", diversity=False,
                               context=BuildContext(judge=judge))
    assert len(out) == 1 and report.dropped == {"no quality verdict": 1}
    negative = CallableJudge(score_fn=lambda p, r: -1.0)
    with pytest.raises(ValueError, match="must be positive"):
        deita_select([pair("x")], quality="judge", diversity=False, context=BuildContext(judge=negative))
    with pytest.raises(ValueError, match="needs an encoder"):
        deita_select([pair("x")], context=BuildContext())


def brute_force_near_dups(texts, threshold, n=3):
    """The definition, pair by pair: keep a text unless a kept one has Jaccard >= threshold
    (same shingles as dedup, so only the candidate search differs)."""
    kept = []
    for t in texts:
        s = shingles(t, n)
        if not any(len(s & o) / len(s | o) >= threshold for o in kept):
            kept.append(s)
    return len(kept)


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.95])
def test_prefix_filtered_jaccard_equals_brute_force(threshold):
    """Real HH prompts, each also with a word appended, a word dropped and a word swapped: the
    indexed search must drop exactly what the pairwise definition drops."""
    from prefalign.data.formats.readers import load_examples

    pairs, _ = load_examples(Path(__file__).resolve().parents[1] / "fixtures" / "hh_harmless_64.jsonl")
    texts = []
    for e in pairs:
        w = " ".join(e.prompt.replace(":", " ").split()).split(" ")
        texts += [" ".join(w), " ".join(w + ["please"]), " ".join(w[1:]), " ".join(w[:3] + ["zz"] + w[4:])]
    rows = [pair(t) for t in texts]
    out, report = dedup(rows, near="jaccard", threshold=threshold, context=BuildContext())
    assert len(out) == brute_force_near_dups(texts, threshold)
    assert len(out) + sum(report.dropped.values()) == len(rows)
