"""`prefalign diagnose` of a run with a MiniLM relevance judge: the over-optimisation probes with a stand-in gold reward.

    python scripts/overopt_probes.py RUN_DIR [any prefalign diagnose option]

The three probes (token distribution shift, likelihood and reward over-optimisation over the run's
checkpoints) are sections of `prefalign diagnose`; this wrapper only adds a judge that needs no
reward model: the cosine of the MiniLM embeddings of the prompt's last turn and of the response
(all-MiniLM-L6-v2, installed offline), registered as `minilm_relevance`. Any diagnose option works,
e.g. `--judge callable --judge-arg score_fn=prefalign.diagnostics.factors:log_words` instead.
"""

from __future__ import annotations

import sys

from prefalign.cli.main import main
from prefalign.judges import CallableJudge, register_judge


@register_judge("minilm_relevance")
class MiniLMRelevance(CallableJudge):
    """score(prompt, response) = cosine of their MiniLM embeddings (the last user turn of a chat prompt)."""

    name = "minilm_relevance"

    def __init__(self):
        from prefalign.models.encoders import SentenceEncoder

        encoder = SentenceEncoder()

        def relevance(prompt, response) -> float:
            text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            return float(encoder.encode([text])[0] @ encoder.encode([response or " "])[0])

        super().__init__(score_fn=relevance)


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(["diagnose", *args] + ([] if "--judge" in args else ["--judge", "minilm_relevance"])))
