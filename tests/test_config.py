"""Config: YAML + overrides, types, closest-key errors, and how objective parameters resolve."""

from __future__ import annotations

import pytest

from prefalign.config import ConfigError, load_config
from prefalign.losses import get_objective
from prefalign.run import objective_params

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
    ("max_prompt_length=900", "max_prompt_length must be below max_length"),
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
