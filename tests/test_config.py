"""Config: YAML + overrides, types, closest-key errors, and how objective parameters resolve."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import pytest
import yaml

from prefalign.cli.diagnose import run_inputs
from prefalign.config import ConfigError, load_config, prompt_length
from prefalign.data.formats.readers import load_examples
from prefalign.data.tokenize import tokenize_examples
from prefalign.losses import get_objective
from prefalign.models.causal_lm import load_tokenizer
from prefalign.recipes.policy import objective_params, train

BASE = ["model=m", "data.train=t.jsonl"]


def test_yaml_then_overrides_with_dotted_keys(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("model: m\ndata:\n  train: a.jsonl\n  eval_fraction: 0.1\nbeta: 0.3\n")
    cfg = load_config(str(cfg_file), ["beta=0.5", "data.train=b.jsonl", "learning_rate=1e-5",
                                      "objective_args={label_smoothing: 0.1}"])
    assert cfg.beta == 0.5 and cfg.data.train == "b.jsonl" and cfg.data.eval_fraction == 0.1
    assert cfg.learning_rate == 1e-5  # "1e-5" is a string to YAML 1.1; accepted as a float
    assert cfg.objective_args == {"label_smoothing": 0.1}


@pytest.mark.parametrize("override, message", [
    ("learning_rat=1", "did you mean 'learning_rate'"),
    ("data.trian=x", "did you mean 'data.train'"),
    ("max_steps=ten", "max_steps must be int"),
    ("precompute_ref=maybe", "precompute_ref must be bool"),
    ("reference=shared", "reference must be one of"),
    ("max_prompt_length=900", r"max_prompt_length \(900\) must be .*below max_length \(512\)"),
    ("max_prompt_length=0", r"max_prompt_length \(0\) must be at least 1"),
    ("nokey", "must look like key=value"),
])
def test_bad_config_is_a_clear_error(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, BASE + [override])


def test_unset_beta_keeps_each_objectives_own_default():
    assert objective_params(get_objective("simpo"), None, {})["beta"] == 2.0
    assert objective_params(get_objective("dpo"), None, {})["beta"] == 0.1
    assert objective_params(get_objective("simpo"), 0.7, {"gamma": 0.3}) == {"beta": 0.7, "gamma": 0.3}


def test_beta_on_an_objective_without_one_and_unknown_args_are_errors():
    with pytest.raises(ValueError, match="has no beta"):
        objective_params(get_objective("orpo"), 0.1, {})
    with pytest.raises(ValueError, match="did you mean 'label_smoothing'"):
        objective_params(get_objective("dpo"), None, {"label_smothing": 0.1})


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("max_length", [256, 128])
def test_minimal_config_trains_at_short_max_length(max_length, tiny_model_dir, tmp_path):
    """examples/dpo_minimal.yaml sets no max_prompt_length: it is derived (half), never a fixed 256
    that max_length 256 or below would have to exceed."""
    keys = yaml.safe_load((ROOT / "examples/dpo_minimal.yaml").read_text())
    assert "max_prompt_length" not in keys
    cfg = load_config(str(ROOT / "examples/dpo_minimal.yaml"),
                      [f"model={tiny_model_dir}", f"data.train={ROOT / 'tests/fixtures/hh_harmless_64.jsonl'}",
                       f"output_dir={tmp_path / 'run'}", "max_steps=2", f"max_length={max_length}", "progress=false"])
    assert cfg.max_prompt_length is None and prompt_length(cfg) == max_length // 2
    summary = train(cfg)
    assert summary["steps"] == 2
    # the run's config.yaml keeps it unset; diagnose derives the same budget from it
    saved = Namespace(run=str(tmp_path / "run"), model=None, reference=None, data=None, format=None, beta=None,
                      output_dir=None)
    assert run_inputs(saved)["max_prompt_length"] == max_length // 2
    # the derived budget is what tokenization used: no prompt is longer than half of max_length
    tokenizer = load_tokenizer(str(tiny_model_dir))
    examples, _ = load_examples(str(ROOT / "tests/fixtures/hh_harmless_64.jsonl"), "auto", "error")
    tokenized = tokenize_examples(examples, tokenizer, max_length, prompt_length(cfg))
    assert max(s for t in tokenized for s in t.response_starts) <= max_length // 2
    long_prompts = sum(len(tokenizer(e.prompt)["input_ids"]) > max_length // 2 for e in examples)
    assert long_prompts > 0  # the fixture really exercises the derived budget


def test_explicit_max_prompt_length_at_or_above_max_length_names_both_values():
    with pytest.raises(ConfigError, match=r"max_prompt_length \(256\) must be .*below max_length \(256\)"):
        load_config(None, BASE + ["max_length=256", "max_prompt_length=256"])
    assert prompt_length(load_config(None, BASE + ["max_length=256", "max_prompt_length=200"])) == 200
