"""`data.builders:` in the training config: validated against the registry, applied before tokenization."""

from __future__ import annotations

import json

import pytest

from prefalign.config import ConfigError, load_config
from prefalign.losses import get_objective
from prefalign.recipes.policy import load_data
from tests_support import FIXTURES

OASST = FIXTURES / "oasst_ranked_12.jsonl"


def cfg(*overrides):
    return load_config(None, ["model=m", f"data.train={OASST}", *overrides])


@pytest.mark.parametrize("value, message", [
    ("[{name: to_pair}]", "unknown builder 'to_pair'; did you mean 'to_pairs'?"),
    ("[{name: to_pairs, rul: all_pairs}]", r"data.builders\[0\] \(to_pairs\): unknown parameter\(s\) \['rul'\]"),
    ("[to_pairs]", r"data.builders\[0\] must be a mapping with a 'name' key"),
    ("to_pairs", "data.builders must be a list"),
])
def test_bad_builder_specs_are_config_errors(value, message):
    with pytest.raises(ConfigError, match=message):
        cfg(f"data.builders={value}")


def test_builders_run_before_tokenization_with_counts_in_the_report(tokenizer):
    """OASST's 12 ranked sets (sizes 3,2,2,2,3,2,2,3,6,4,2,3 -> 39 untied pairs): the seeded split holds
    1 set out (eval_fraction 0.05 of 12 rounds to 1); all pairs, then reward-augmented via the old key."""
    raw = [json.loads(x) for x in OASST.read_text().splitlines()]
    sizes = [len(r["responses"]) for r in raw]
    c = cfg("data.builders=[{name: to_pairs, rule: all_pairs}]", "data.reward_augment=true", "max_length=128",
            "max_prompt_length=64")
    train, held, report = load_data(c, get_objective("dpo"), tokenizer)
    steps = report["builders"]
    assert steps["train"][0]["in"] == 11 and steps["eval"][0]["in"] == 1
    pairs = steps["train"][0]["out"] + steps["eval"][0]["out"]
    assert pairs == sum(k * (k - 1) // 2 for k in sizes) == 39
    # reward_augment (the old key, now the registered builder) doubles every pair: ranks are distinct
    assert report["reward_augment"]["train"]["out"] == 2 * steps["train"][0]["out"]
    assert report["reward_augment"]["train"]["best_score"] == 0.0  # rank 0 negated: the best score
    assert len(train) == report["train_examples"] == 2 * steps["train"][0]["out"]


def test_builders_reach_summary_json(tiny_model_dir, tmp_path):
    from prefalign.recipes.policy import train

    c = load_config(None, [f"model={tiny_model_dir}", f"data.train={OASST}", f"output_dir={tmp_path / 'r'}",
                           "data.builders=[{name: to_pairs, rule: best_vs_each}]", "max_steps=1", "batch_size=2",
                           "max_length=64", "max_prompt_length=32", "progress=false"])
    train(c)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    step = summary["data"]["builders"]["train"][0]
    assert step["builder"] == "to_pairs" and step["rule"] == "best_vs_each" and step["out"] == step["pairs"]
    assert summary["config"]["data"]["builders"] == [{"name": "to_pairs", "rule": "best_vs_each"}]


def test_training_config_builds_the_judge_builders_use(tmp_path):
    from prefalign.config import DataConfig, TrainConfig
    from prefalign.data.builders.pipeline import run_builders
    from prefalign.data.records import Example
    from prefalign.recipes.policy import builder_context

    cfg = TrainConfig(model=str(tmp_path), data=DataConfig(
        train="x.jsonl", builder_judge="callable", builder_judge_args={"score_fn": "tests_support:length_score"}))
    context = builder_context(cfg)
    assert context.judge.score(["q"], ["four"]) == [4.0] and context.encoder is None
    pool = [Example("q", ["a", "bbbb", "cc"], [0.0, 0.0, 0.0], "list", "t:1")]
    out, reports = run_builders(pool, [{"name": "rso", "rewards": "judge", "labels": "judge", "beta": 1e-3,
                                        "num_samples": 2, "pairing": "tournament"}], context)
    # with beta -> 0 each pass accepts only the best remaining candidate by the judge's score
    # (length): "bbbb", then "cc"; the judge then labels the pair
    assert [e.responses for e in out] == [["bbbb", "cc"]]
