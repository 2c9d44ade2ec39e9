"""`prefalign train --from-trl`: TRL DPO / CPO / ORPO / KTO configs, written as `trl dpo --config` reads
them, map key by key onto a prefalign config; what cannot be mapped is listed with its reason, and what
would change the loss is refused. Expected values are TRL's formulas worked by hand, not TRL's code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from prefalign.config import ConfigError
from prefalign.config_trl import load_trl_config, map_trl, read_trl_yaml, render
from prefalign.losses import OBJECTIVES
from prefalign.losses.trl_names import TRL_LOSS_TYPES

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT / "tests/fixtures/hh_harmless_64.jsonl"

# the shape of TRL's own example recipes: ScriptArguments, ModelConfig and DPOConfig keys in one file
DPO_YAML = """\
# trl dpo --config dpo.yaml
model_name_or_path: Qwen/Qwen2-0.5B-Instruct
model_revision: main
dataset_name: trl-lib/ultrafeedback_binarized
dataset_train_split: train
dataset_test_split: test
learning_rate: 5.0e-7
num_train_epochs: 1
per_device_train_batch_size: 2
per_device_eval_batch_size: 4
gradient_accumulation_steps: 8
gradient_checkpointing: true
lr_scheduler_type: cosine
warmup_ratio: 0.1
logging_steps: 25
eval_strategy: steps
eval_steps: 50
save_steps: 100
output_dir: Qwen2-0.5B-DPO
loss_type: ipo
beta: 0.2
max_length: 1024
max_prompt_length: 512
precompute_ref_log_probs: true
use_peft: true
lora_r: 32
lora_alpha: 16
lora_dropout: 0.05
bf16: true
seed: 7
report_to: [tensorboard, comet_ml]
push_to_hub: true
hub_model_id: me/qwen-dpo
dataset_num_proc: 8
frobnicate_level: 3
"""


def write(tmp_path: Path, text: str, name: str = "trl.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def unmapped(mapping) -> dict:
    return {key: why for key, _, why in mapping.unmapped}


def test_dpo_config_maps_each_key_and_lists_the_rest_with_reasons(tmp_path):
    mapping = map_trl(read_trl_yaml(str(write(tmp_path, DPO_YAML))))
    assert mapping.trainer == "dpo" and mapping.epochs == 1.0
    assert mapping.tree == {
        "objective": "ipo", "beta": 0.2, "objective_args": {"length_normalize": True},  # TRL averages ipo's logps
        "model": "Qwen/Qwen2-0.5B-Instruct", "model_revision": "main",
        "data": {"train": "trl-lib/ultrafeedback_binarized", "split": "train",
                 "eval": "trl-lib/ultrafeedback_binarized", "eval_split": "test"},
        "batch_size": 2, "eval_batch_size": 4, "gradient_accumulation_steps": 8, "learning_rate": 5e-7,
        "warmup_ratio": 0.1, "max_length": 1024, "max_prompt_length": 512, "output_dir": "Qwen2-0.5B-DPO", "seed": 7,
        "logging_steps": 25, "gradient_checkpointing": True, "lora": True, "lora_r": 32, "lora_alpha": 16,
        "precompute_ref": True, "lr_scheduler": "cosine", "eval_steps": 50, "save_steps": 100,
        "report_to": ["jsonl", "tensorboard"], "mixed_precision": "bf16"}
    why = unmapped(mapping)
    assert set(why) == {"frobnicate_level", "push_to_hub", "hub_model_id", "dataset_num_proc", "lora_dropout",
                        "report_to"}
    assert "not a key prefalign maps" in why["frobnicate_level"]
    assert "prefalign push" in why["hub_model_id"] and "no dropout" in why["lora_dropout"]
    assert "jsonl" in why["report_to"]  # comet_ml: prefalign has no such tracker
    printed = render(mapping, "dpo.yaml")
    assert yaml.safe_load(printed) == mapping.tree  # the printed YAML is the mapped config (comments aside)
    assert "#   frobnicate_level: 3 (not a key prefalign maps" in printed


def test_keys_left_out_take_trl_defaults_not_prefaligns():
    mapping = map_trl({"model_name_or_path": "m", "dataset_name": "d.jsonl"})
    tree = mapping.tree
    # DPOConfig / TrainingArguments defaults where prefalign's differ (prefalign: cosine, 0.1 warm-up, 512, batch 4)
    assert (tree["objective"], tree["beta"], tree["lr_scheduler"], tree["warmup_ratio"]) == ("dpo", 0.1, "linear", 0.0)
    assert (tree["max_length"], tree["max_prompt_length"], tree["batch_size"]) == (1024, 512, 8)
    assert mapping.epochs == 3.0 and "objective_args" not in tree and "eval" not in tree["data"]
    assert any(k == "num_train_epochs" and "TRL default" in how for k, _, how in mapping.mapped)


@pytest.mark.parametrize("loss_type, extra, objective, beta, args", [
    ("sigmoid", {"label_smoothing": 0.1}, "dpo", 0.5, {"label_smoothing": 0.1}),  # cDPO
    ("hinge", {}, "hinge", 0.5, None),
    ("robust", {"label_smoothing": 0.2}, "robust_dpo", 0.5, {"epsilon": 0.2}),  # rDPO's flip rate
    ("robust", {}, "robust_dpo", 0.5, {"epsilon": 0.0}),  # TRL's 0, not prefalign's illustrative 0.1
    ("sppo_hard", {}, "sppo_hard", None, {"eta": 2.0}),  # targets +-1/(2 beta) = +-eta/2: eta = 1/0.5
    ("ipo", {}, "ipo", 0.5, {"length_normalize": True}),
])
def test_dpo_loss_types_map_to_objectives_with_trls_parameters(loss_type, extra, objective, beta, args):
    tree = map_trl({"loss_type": loss_type, "beta": 0.5, **extra}).tree
    assert (tree["objective"], tree.get("beta"), tree.get("objective_args")) == (objective, beta, args)


def test_every_mapped_trl_loss_type_names_a_registered_objective():
    assert {"sigmoid", "hinge", "ipo", "robust", "sppo_hard"} <= set(TRL_LOSS_TYPES)
    for name, objective in TRL_LOSS_TYPES.items():
        assert objective in OBJECTIVES, name
        assert map_trl({"loss_type": name}).tree["objective"] == objective


def test_what_would_train_another_loss_is_refused():
    with pytest.raises(ConfigError, match="loss_type 'not_a_loss' has no prefalign objective"):
        map_trl({"loss_type": "not_a_loss"})
    with pytest.raises(ConfigError, match="rpo_alpha=1.0"):
        map_trl({"loss_type": "sigmoid", "rpo_alpha": 1.0})
    with pytest.raises(ConfigError, match="hinge has no label smoothing"):
        map_trl({"loss_type": "hinge", "label_smoothing": 0.1})
    with pytest.raises(ConfigError, match="weighted sum"):
        map_trl({"loss_type": ["sigmoid", "sft"], "loss_weights": None})
    # a loss-changing key at TRL's default changes nothing: listed, not refused
    assert "TRL's default" in unmapped(map_trl({"rpo_alpha": None}))["rpo_alpha"]


CPO_YAML = """\
model_name_or_path: Qwen/Qwen2-0.5B-Instruct
dataset_name: trl-lib/ultrafeedback_binarized
loss_type: sigmoid
beta: 0.1
cpo_alpha: 0.5
per_device_train_batch_size: 4
"""


def test_cpo_configs_map_to_cpo_or_simpo():
    cpo = map_trl(yaml.safe_load(CPO_YAML))
    assert cpo.trainer == "cpo"  # detected from cpo_alpha
    assert (cpo.tree["objective"], cpo.tree["beta"], cpo.tree["objective_args"]) == ("cpo", 0.1, {"lam": 0.5})
    simpo = map_trl({**yaml.safe_load(CPO_YAML), "loss_type": "simpo", "cpo_alpha": 0.0, "beta": 2.0,
                     "simpo_gamma": 0.8})
    # TRL: beta * (mean logp_w - mean logp_l - simpo_gamma / beta) = SimPO's beta * diff - gamma, gamma = 0.8
    assert (simpo.tree["objective"], simpo.tree["beta"], simpo.tree["objective_args"]) == ("simpo", 2.0, {"gamma": 0.8})
    assert map_trl({"loss_type": "simpo", "cpo_alpha": 0}, "cpo").tree["objective_args"] == {"gamma": 0.5}
    with pytest.raises(ConfigError, match="CPO-SimPO"):  # TRL's default cpo_alpha 1.0 adds an NLL term
        map_trl({"loss_type": "simpo", "simpo_gamma": 0.5})
    with pytest.raises(ConfigError, match="CPO loss_type 'hinge'"):
        map_trl({"loss_type": "hinge"}, "cpo")


def test_orpo_beta_is_lambda_and_kto_weights_map():
    orpo = map_trl({"model_name_or_path": "m", "beta": 0.25}, "orpo")
    assert orpo.tree["objective"] == "orpo" and orpo.tree["objective_args"] == {"lam": 0.25}
    assert "beta" not in orpo.tree  # orpo has no beta: its lambda weighs the odds-ratio term
    kto = map_trl({"beta": 0.2, "desirable_weight": 1.33, "undesirable_weight": 1.0})
    assert kto.trainer == "kto" and kto.tree["objective"] == "kto"
    assert kto.tree["beta"] == 0.2 and kto.tree["objective_args"] == {"desirable_weight": 1.33,
                                                                     "undesirable_weight": 1.0}
    with pytest.raises(ConfigError, match="KTO loss_type 'apo_zero_unpaired'"):
        map_trl({"loss_type": "apo_zero_unpaired"}, "kto")


def held_out_count(n: int, fraction: float) -> int:
    return max(1, int(round(n * fraction)))  # the seeded split's rule, data.eval_fraction of N


def test_epochs_become_max_steps_from_the_data_size(tiny_model_dir, tmp_path):
    trl = write(tmp_path, f"model_name_or_path: {tiny_model_dir}\ndataset_name: {HH}\nnum_train_epochs: 2\n"
                          "per_device_train_batch_size: 4\ngradient_accumulation_steps: 2\nwarmup_steps: 4\n")
    n = len([line for line in HH.read_text().splitlines() if line.strip()]) - held_out_count(64, 0.05)
    cfg, mapping = load_trl_config(str(trl))
    assert cfg.max_steps == math.ceil(2 * math.ceil(math.ceil(n / 4) / 2)) == 16
    assert cfg.warmup_ratio == 4 / 16  # warmup_steps over the derived max_steps
    assert f"ceil({n} training examples" in mapping.steps_note
    # overrides apply on top, before the count, by prefalign's or TRL's key name; max_steps itself wins
    halved = math.ceil(2 * math.ceil(math.ceil(n / 8) / 2))
    assert halved == 8
    assert load_trl_config(str(trl), ["batch_size=8"])[0].max_steps == halved
    assert load_trl_config(str(trl), ["per_device_train_batch_size=8"])[0].max_steps == halved
    assert load_trl_config(str(trl), ["max_steps=5"])[0].max_steps == 5


def test_train_from_trl_end_to_end_on_the_tiny_model(tiny_model_dir, tmp_path, capsys):
    from prefalign.cli.main import main

    trl = write(tmp_path, f"""\
model_name_or_path: {tiny_model_dir}
dataset_name: {HH}
loss_type: sigmoid
beta: 0.2
learning_rate: 1.0e-4
num_train_epochs: 1
per_device_train_batch_size: 4
max_length: 96
max_prompt_length: 64
output_dir: {tmp_path / 'run'}
logging_steps: 1
report_to: none
frobnicate_level: 3
""")
    assert main(["train", "--from-trl", str(trl), "data.max_examples=8", "progress=false"]) == 0
    printed = capsys.readouterr().out
    assert "max_steps: 2" in printed and "objective: dpo" in printed  # 1 epoch of 8 examples at batch 4
    assert "frobnicate_level: 3 (not a key prefalign maps" in printed
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["objective"] == "dpo"
    assert summary["objective_params"]["beta"] == 0.2
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["learning_rate"] == 1e-4 and saved["lr_scheduler"] == "linear" and saved["warmup_ratio"] == 0.0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]


def test_from_trl_and_a_prefalign_config_together_are_refused(tmp_path):
    from prefalign.cli.main import main

    trl = write(tmp_path, "loss_type: sigmoid\n")
    assert main(["train", str(write(tmp_path, "model: m\n", "p.yaml")), "--from-trl", str(trl)]) == 1
