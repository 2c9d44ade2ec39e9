"""nash_md through the trainer: the judge's soft_label and (for kl_estimator=token) the per-token
log-probs reach the objective, and the policy settles where the objective's gradient vanishes.

Offline UltraFeedback pairs stand in for the online samples (column 0 plays y ~ pi): this checks the
plumbing and the fixed point of the per-sample update, not the Nash game itself.
"""

from __future__ import annotations

import json
import math

from prefalign.config import load_config
from prefalign.recipes.policy import train
from tests_support import FIXTURES, write_jsonl


def soft_pairs() -> list[dict]:
    """p = sigmoid(GPT-4 score gap): the probability that the chosen response wins."""
    out = []
    for line in (FIXTURES / "ultrafeedback_12.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        gap = r["score_chosen"] - r["score_rejected"]
        out.append({"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"],
                    "soft_label": 1 / (1 + math.exp(-gap))})
    return out


def run(tiny_model_dir, tmp_path, kl_estimator: str) -> list[dict]:
    data = write_jsonl(tmp_path / "data.jsonl", soft_pairs())
    out = tmp_path / kl_estimator
    train(load_config(None, [f"model={tiny_model_dir}", f"data.train={data}", f"output_dir={out}",
                             "objective=nash_md", f"objective_args={json.dumps({'kl_estimator': kl_estimator})}",
                             "max_steps=24", "batch_size=4", "learning_rate=2e-3", "max_length=96",
                             "max_prompt_length=48", "logging_steps=1", "data.eval_fraction=0.2", "progress=false",
                             "warmup_ratio=0", "lr_scheduler=constant"]))
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if "loss" in m]
    assert len(steps) == 24 and all(math.isfinite(m["loss"]) for m in steps)
    return steps


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def test_nash_md_trains_to_its_fixed_point_and_the_token_form_allows_more_kl(tiny_model_dir, tmp_path):
    """Sequence form: the gradient on log pi(y) is beta h - (p - 1/2), so beta h (rewards/chosen) starts at
    0 (reference = initial policy) and hovers around the mean p - 1/2 (0.29 on these pairs).
    Token form (TRL's): each token stops at a log-ratio (p - 1/2)/beta, so the sequence log-ratio
    grows with the response length, several times the sequence form's."""
    sequence = run(tiny_model_dir, tmp_path, "sequence")
    assert sequence[0]["rewards/chosen"] == 0.0 and sequence[0]["sample_kl"] == 0.0
    late = sequence[-12:]
    target = mean(m["win_rate"] - 0.5 for m in late)
    assert 0.2 < target < 0.4
    assert abs(mean(m["rewards/chosen"] for m in late) - target) < 0.1
    token = run(tiny_model_dir, tmp_path, "token")
    assert mean(m["sample_kl"] for m in token[-12:]) > 5 * mean(m["sample_kl"] for m in late)
