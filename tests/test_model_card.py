"""final/README.md is a Hub model card (front matter, objective and paper, data, hyper-parameters,
held-out metrics before/after, version), written inside final/'s atomic save; `prefalign push
--dry-run` lists what would be uploaded without touching the network."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from prefalign.cli.main import main
from prefalign.config import load_config
from prefalign.losses import get_objective
from prefalign.recipes.model_card import model_card
from prefalign.recipes.policy import train

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT / "tests/fixtures/hh_harmless_64.jsonl"

SUMMARY = {
    "objective": "dpo", "objective_params": {"beta": 0.1, "label_smoothing": 0.0}, "reference": "frozen",
    "data": {"train": {"rows": 70, "kept": 64, "skipped": 6, "skipped_by_reason": {"empty chosen": 6}},
             "eval": "split", "train_examples": 48, "eval_examples": 16},
    "steps": 20, "eval_start": {"eval/loss": 0.6931, "eval/rewards/accuracy": 0.5},
    "eval_end": {"eval/loss": 0.5125, "eval/rewards/accuracy": 0.8125},
    "best_step": 15, "best_metric": {"name": "eval/loss", "value": 0.5},
}
CONFIG = {"model": "/home/me/models/tiny", "objective": "dpo", "beta": None, "objective_args": {},
          "learning_rate": 5e-7, "batch_size": 8, "max_steps": 20, "seed": 3, "lora": False, "lora_r": 16,
          "data": {"train": "/home/me/pairs.jsonl", "eval": None, "eval_fraction": 0.25}}


def card_parts(card: str) -> tuple[dict, str]:
    """The card's YAML front matter (parsed) and its Markdown body."""
    assert card.startswith("---\n")
    head, body = card[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def table_row(body: str, first_cell: str) -> list[str]:
    rows = [line for line in body.splitlines() if line.startswith(f"| {first_cell} |")]
    assert len(rows) == 1, (first_cell, rows)
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def test_card_from_a_literal_summary():
    meta, body = card_parts(model_card(SUMMARY, CONFIG, version="9.8.7"))
    # local paths are not Hub ids: the Hub would reject them as base_model/datasets, so only the body names them
    assert meta == {"library_name": "transformers", "tags": ["prefalign", "dpo"]}
    assert "`/home/me/models/tiny`" in body and "`/home/me/pairs.jsonl`" in body
    paper = get_objective("dpo").paper
    assert paper and f"https://arxiv.org/abs/{paper}" in body
    assert "prefalign 9.8.7" in body
    assert "70 read, 64 kept, 6 skipped (empty chosen: 6)" in body
    assert "48 train, 16 held-out" in body and "seeded 0.25 split" in body
    assert table_row(body, "eval/loss") == ["eval/loss", "0.6931", "0.5125"]
    assert table_row(body, "eval/rewards/accuracy") == ["eval/rewards/accuracy", "0.5", "0.8125"]
    assert table_row(body, "learning_rate") == ["learning_rate", "5e-07"]
    assert table_row(body, "seed") == ["seed", "3"]
    assert "| lora_r |" not in body  # LoRA's rank means nothing when LoRA is off
    assert "| beta |" not in body and '| objective parameters (resolved) | {"beta": 0.1' in body
    assert "Best step: 15 (eval/loss = 0.5)" in body


def test_card_front_matter_names_hub_ids():
    cfg = {**CONFIG, "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "lora": True,
           "data": {"train": "Anthropic/hh-rlhf", "eval": "data/held_out.jsonl"}}
    meta, body = card_parts(model_card({**SUMMARY, "objective": "ipo"}, cfg, version="1"))
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["datasets"] == ["Anthropic/hh-rlhf"] and meta["tags"] == ["prefalign", "ipo"]
    assert f"https://arxiv.org/abs/{get_objective('ipo').paper}" in body
    assert table_row(body, "lora_r") == ["lora_r", "16"]


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("card") / "run"
    train(load_config(None, [f"model={tiny_model_dir}", f"data.train={HH}", f"output_dir={out}", "max_steps=2",
                             "batch_size=4", "max_length=96", "max_prompt_length=64", "data.eval_fraction=0.25",
                             "progress=false", "warmup_ratio=0", "objective=ipo"]))
    return out


def test_training_writes_the_card_into_final(trained_run):
    summary = json.loads((trained_run / "summary.json").read_text())
    meta, body = card_parts((trained_run / "final" / "README.md").read_text())
    assert meta["tags"] == ["prefalign", "ipo"]
    assert f"https://arxiv.org/abs/{get_objective('ipo').paper}" in body
    for name, before in summary["eval_start"].items():
        after = summary["eval_end"][name]
        assert table_row(body, name)[1:] == [f"{before:.6g}", f"{after:.6g}"]
    assert not list(trained_run.glob(".final*"))  # the atomic write's temporary folder is gone


def test_push_dry_run_lists_final_and_makes_no_network_call(trained_run, monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise AssertionError("push --dry-run opened a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert main(["push", str(trained_run), "--repo", "me/tiny-ipo", "--dry-run"]) == 0
    out = capsys.readouterr().out
    files = sorted(p for p in (trained_run / "final").rglob("*") if p.is_file())
    assert "README.md" in {p.name for p in files} and "me/tiny-ipo" in out
    assert f"would upload {len(files)} files" in out
    for p in files:
        line = [row for row in out.splitlines() if row.split()[:1] == [p.relative_to(trained_run / "final").as_posix()]]
        assert len(line) == 1 and f"{p.stat().st_size:,d} bytes" in line[0]


def test_push_offline_fails_with_a_message(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push", str(trained_run), "--repo", "me/tiny-ipo"]) == 1
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE" in err and "--dry-run" in err and "Traceback" not in err
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.yaml").write_text("objective: dpo\n")
    assert main(["push", str(tmp_path / "unfinished"), "--repo", "me/x", "--dry-run"]) == 1
    assert "no final/ folder" in capsys.readouterr().err


RM_SUMMARY = {"objective": "reward model (bt)", "kind": "bt", "steps": 12, "backbone_commit": None,
              "data": {"files": {"/data/pairs.jsonl": {"load": {"rows": 70, "kept": 66, "skipped": 4},
                                                       "train": 60, "weight": 1.0}},
                       "train_examples": 60, "eval_examples": 6},
              "eval_start": {"eval/accuracy": 0.5}, "eval_end": {"eval/accuracy": 0.8333}}
RM_CONFIG = {"backbone": "owner/encoder", "kind": "bt", "head_args": {}, "loss_args": {"center": 0.01},
             "learning_rate": 2e-5, "batch_size": 8, "max_steps": 12, "seed": 1,
             "data": {"train": "/data/pairs.jsonl", "eval": None, "eval_fraction": 0.1}}


def test_reward_model_card_from_a_literal_summary():
    from prefalign.recipes.model_card import reward_model_card
    from prefalign.rewards.heads import get_reward_kind

    meta, body = card_parts(reward_model_card(RM_SUMMARY, RM_CONFIG, version="1.2.3"))
    assert meta == {"library_name": "transformers", "base_model": "owner/encoder",
                    "tags": ["prefalign", "reward-model", "bt"]}
    paper = get_reward_kind("bt").paper
    assert paper and f"https://arxiv.org/abs/{paper}" in body
    assert "base backbone: `owner/encoder`" in body and "prefalign 1.2.3" in body
    assert "`/data/pairs.jsonl`: 70 rows read, 66 kept, 4 skipped, weight 1.0" in body
    assert "seeded 0.1 split" in body and "60 train, 6 held-out" in body
    assert table_row(body, "loss_args") == ["loss_args", '{"center": 0.01}']
    assert table_row(body, "learning_rate") == ["learning_rate", "2e-05"]
    assert table_row(body, "eval/accuracy") == ["eval/accuracy", "0.5", "0.8333"]


def test_train_rm_writes_its_card_inside_final(tiny_model_dir, tmp_path):
    from prefalign.recipes.reward_model import load_reward_config, train_reward_model

    out = tmp_path / "rm"
    summary = train_reward_model(load_reward_config(None, [
        f"backbone={tiny_model_dir}", f"data.train={HH}", f"output_dir={out}", "max_steps=2", "batch_size=4",
        "max_length=64", "progress=false", "data.eval_fraction=0.25"]))
    meta, body = card_parts((out / "final" / "README.md").read_text())
    assert "base_model" not in meta  # a local folder is not a Hub id
    assert f"`{tiny_model_dir}`" in body and "Trained for 2 optimizer steps." in body
    start, end = summary["eval_start"], summary["eval_end"]
    for name in start:  # the held-out table is the run's own before/after numbers
        assert table_row(body, name)[1:] == [f"{start[name]:.6g}", f"{end[name]:.6g}"]
    assert not list(tmp_path.glob(".final*"))  # written in the atomic save: no temporary folder left
