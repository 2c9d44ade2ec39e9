"""The command line: help, errors on stderr with a non-zero exit, the README's example config."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from prefalign.cli.main import main, objective_rows

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "prefalign.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_help_lists_commands_and_train_options():
    top = run_cli("--help")
    assert top.returncode == 0 and "train" in top.stdout and "quickstart" in top.stdout
    sub = run_cli("train", "--help")
    assert sub.returncode == 0
    for key in ("model", "data.train", "data.eval", "objective", "beta", "output_dir", "max_steps", "batch_size",
                "learning_rate", "max_length", "seed", "precompute_ref", "save_steps", "resume"):
        assert re.search(rf"^\s+{re.escape(key)}\s", sub.stdout, re.M), key


def test_unknown_key_is_an_error_with_a_suggestion(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: m\ndata: {train: t.jsonl}\nlearning_rat: 0.1\n")
    out = run_cli("train", str(cfg))
    assert out.returncode != 0
    assert "unknown config key 'learning_rat'" in out.stderr and "learning_rate" in out.stderr
    out = run_cli("train", str(cfg).replace("c.yaml", "missing.yaml"))
    assert out.returncode != 0 and "missing.yaml" in out.stderr


def test_bad_data_row_exits_nonzero_naming_file_row_field(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n')
    # no YAML file: every word after `train` is an override
    code = main(["train", f"model={tiny_model_dir}", f"data.train={data}", f"output_dir={tmp_path / 'o'}"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"{data}, row 2, field 'rejected': is missing" in err
    assert "data.on_bad_row=skip" in err  # the way out, for a first-time user


def test_overrides_alone_train_and_curriculum_summary_prints(tiny_model_dir, tmp_path):
    out = run_cli("train", f"model={tiny_model_dir}", f"data.train={ROOT / 'tests/fixtures/oasst_ranked_12.jsonl'}",
                  f"output_dir={tmp_path / 'cur'}", "data.curriculum_stages=2", "max_steps=2", "batch_size=2",
                  "max_length=64", "max_prompt_length=32", "progress=false")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "held-out metrics" in out.stdout and "stage-2" in out.stdout


def test_readme_minimal_config_trains(tiny_model_dir, tmp_path):
    """The README's minimal config, with only the paths and the length of the run swapped."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"A minimal config \(`examples/dpo_minimal.yaml`\):\n\n```yaml\n(.*?)```", readme, re.S).group(1)
    assert yaml.safe_load(block) == yaml.safe_load((ROOT / "examples/dpo_minimal.yaml").read_text())
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(block)
    out = run_cli("train", str(cfg), f"model={tiny_model_dir}", f"data.train={ROOT / 'tests/fixtures/hh_harmless_64.jsonl'}",
                  f"output_dir={tmp_path / 'run'}", "max_steps=3", "max_length=96", "max_prompt_length=64",
                  "progress=false", "tensorboard=true")
    assert out.returncode == 0, out.stderr[-2000:]
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["objective"] == "dpo"
    assert "held-out metrics" in out.stdout


def test_readme_objectives_table_is_the_registry():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- objectives-table:start -->\n")[1].split("<!-- objectives-table:end -->")[0]
    printed = run_cli("objectives", "--markdown").stdout
    assert table.strip() == printed.strip(), "README table is stale: paste `prefalign objectives --markdown`"
    assert len(objective_rows()) == printed.count("\n| `")


def test_readme_builders_table_is_the_registry():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- builders-table:start -->\n")[1].split("<!-- builders-table:end -->")[0]
    printed = run_cli("data", "list", "--markdown").stdout
    assert table.strip() == printed.strip(), "README table is stale: paste `prefalign data list --markdown`"
    from prefalign.data.builders.pipeline import BUILDERS, load_all_builders

    load_all_builders()
    assert len(BUILDERS) == printed.count("\n| `")


def test_readme_prose_matches_the_registry():
    """The prose around the objectives table says what `prefalign objectives` prints today: the count,
    and no "loss only" caveat unless some objective is still loss only."""
    readme = (ROOT / "README.md").read_text()
    from prefalign.losses import OBJECTIVES

    assert f"There are {len(OBJECTIVES)} of them today" in readme
    printed = run_cli("objectives", "--markdown").stdout
    prose = readme.replace(printed.strip(), "")
    assert ("loss only" in prose) == ("loss only" in printed), "README mentions 'loss only' objectives"


def test_overrides_after_an_option_are_overrides(tmp_path, capsys):
    # `prefalign train cfg.yaml --resume beta=0.2`: argparse alone rejects the override after --resume
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: m\ndata: {train: t.jsonl}\n")
    assert main(["train", str(cfg), "--resume", "learning_rat=0.1"]) == 1
    assert "unknown config key 'learning_rat'" in capsys.readouterr().err  # reached the config: parsed as override
    try:
        main(["train", str(cfg), "--resume", "--no-such-flag"])
    except SystemExit as exit:
        assert exit.code == 2
    else:
        raise AssertionError("an unknown flag must still be an argparse error")
