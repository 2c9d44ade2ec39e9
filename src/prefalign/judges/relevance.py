"""Regularised relevance reward (R^3, "Preference-free Alignment Learning with Regularized Relevance
Reward", arXiv:2402.03469: the id is from memory and could not be checked offline; the title is
the one in PAPERS.md).

The paper's observations: reward models trained on human preferences score long off-topic
responses above short on-topic ones; a retriever's query-response relevance alone is a better
signal but is hacked when optimised against (short responses that restate the query score
highest). R^3 therefore mixes the relevance with inductive biases that regularise each other.
Here, with e(.) the unit sentence embedding (MiniLM by default):

    score = w_rel * cos(e(x), e(y))                 relevance to the prompt
          + w_ref * cos(e(ref), e(y))               agreement with a reference answer, when given
          + w_len * min(1, log(1+n) / log(1+L))     length incentive, saturating at L words
          - w_rep * (1 - distinct k-grams / k-grams) repetition penalty
          - w_copy * (share of k-grams copied from x) query-copying penalty

Departures: the paper's exact component set and weights could not be read offline; the
relevance and length incentive follow its abstract and findings, the reference term is optional,
and the repetition and copy penalties (the two cheapest hacks of an embedding relevance: say the
topic words again, or restate the question) are this project's, each with its own weight
(set any weight to 0 to drop its term). An empty response gets no score (None, counted).
"""

from __future__ import annotations

import math
import re

import torch

from prefalign.judges.base import Judge, check_aligned, register_judge

WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(tokens: list[str], k: int) -> list[tuple]:
    return [tuple(tokens[i:i + k]) for i in range(len(tokens) - k + 1)]


def repetition(text: str, k: int = 3) -> float:
    """1 - distinct k-grams / k-grams: 0 for no repeated k-gram, toward 1 for a loop."""
    grams = ngrams(words(text), k)
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


def copied(prompt: str, response: str, k: int = 3) -> float:
    """Share of the response's k-grams that also occur in the prompt."""
    grams = ngrams(words(response), k)
    source = set(ngrams(words(prompt), k))
    return 0.0 if not grams else sum(g in source for g in grams) / len(grams)


def length_incentive(text: str, target_words: int = 100) -> float:
    return min(1.0, math.log1p(len(words(text))) / math.log1p(target_words))


def unit_rows(vectors) -> torch.Tensor:
    v = torch.as_tensor(vectors, dtype=torch.float32)
    return torch.nn.functional.normalize(v, dim=-1)


@register_judge("relevance")
class RelevanceJudge(Judge):
    """R^3-style regularised relevance (arXiv:2402.03469); `encoder` is anything with encode(texts) -> [N, H]."""

    def __init__(self, encoder=None, path: str | None = None, relevance_weight: float = 1.0,
                 reference_weight: float = 1.0, length_weight: float = 0.2, target_words: int = 100,
                 repetition_weight: float = 0.5, copy_weight: float = 0.5, ngram: int = 3, temperature: float = 0.1):
        super().__init__()
        if encoder is None:
            from prefalign.models.encoders import SentenceEncoder

            encoder = SentenceEncoder(path)
        if not hasattr(encoder, "encode"):
            raise ValueError("the relevance judge's encoder needs an encode(texts) -> [N, H] method")
        if target_words < 1 or ngram < 1:
            raise ValueError("target_words and ngram must be >= 1")
        self.encoder = encoder
        self.weights = {"relevance": relevance_weight, "reference": reference_weight, "length": length_weight,
                        "repetition": -repetition_weight, "copy": -copy_weight}
        self.target_words, self.ngram, self.temperature = target_words, ngram, temperature

    def components(self, prompts, responses, references=None) -> list[dict | None]:
        """Per response, each term before weighting (None for an empty response)."""
        n = check_aligned(prompts, responses)
        if references is not None:
            check_aligned(prompts, references)
        keep = [i for i in range(n) if responses[i].strip()]
        out: list[dict | None] = [None] * n
        if not keep:
            return out
        resp = unit_rows(self.encoder.encode([responses[i] for i in keep]))
        rel = (unit_rows(self.encoder.encode([prompts[i] for i in keep])) * resp).sum(-1).tolist()
        ref = None
        if references is not None:
            ref = (unit_rows(self.encoder.encode([references[i] for i in keep])) * resp).sum(-1).tolist()
        for j, i in enumerate(keep):
            out[i] = {"relevance": rel[j], "reference": ref[j] if ref is not None else 0.0,
                      "length": length_incentive(responses[i], self.target_words),
                      "repetition": repetition(responses[i], self.ngram),
                      "copy": copied(prompts[i], responses[i], self.ngram)}
        return out

    def score(self, prompts, responses, references=None):
        out = []
        for parts in self.components(prompts, responses, references):
            value = None if parts is None else sum(self.weights[k] * v for k, v in parts.items())
            self.stats.record(value, "empty response")
            out.append(value)
        return out
