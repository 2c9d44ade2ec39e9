"""A programmatic gold reward: VADER sentiment of the response text (no model, no human).

VADER (Hutto & Gilbert, ICWSM 2014; PyPI `vaderSentiment` 3.3.2) is a lexicon-and-rules
sentiment analyser; its `compound` score lies in [-1, 1]. The DPO paper's controlled-sentiment
task (arXiv:2305.18290, section 6.1) labels sampled continuations with a sentiment classifier and
scores aligned models with the same classifier; VADER plays that role here on a CPU. It is a
gold reward for testbeds only: positive words raise it whatever the text says, so it can be gamed
(which is what over-optimisation studies want to see).
"""

from __future__ import annotations

from prefalign.judges.base import Judge, check_aligned, register_judge


@register_judge("vader_sentiment")
class VaderSentimentJudge(Judge):
    """score = VADER compound sentiment of the response alone (the prompt is not read), in [-1, 1]."""

    # scores only: compare() is the Bradley-Terry link of two scores, so response order cannot matter
    position_free = True

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as err:  # an optional extra: say which one
            raise ImportError("the vader_sentiment judge needs vaderSentiment: pip install 'prefalign[gold]'") from err
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.analyzer, self.temperature = SentimentIntensityAnalyzer(), float(temperature)

    def score(self, prompts: list, responses: list) -> list[float]:
        check_aligned(prompts, responses)
        out = []
        for i, r in enumerate(responses):
            if not isinstance(r, str):
                raise ValueError(f"vader_sentiment scores text; response {i} is {type(r).__name__}")
            out.append(float(self.analyzer.polarity_scores(r)["compound"]))
            self.stats.record(out[-1])
        return out
