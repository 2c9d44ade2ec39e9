"""`prefalign diagnose` end to end on a tiny run folder and on --model/--reference/--data."""

from __future__ import annotations

import json

import pytest

from conftest import FIXTURES, build_tiny_llama
from prefalign.cli.main import main
from prefalign.config import DataConfig, TrainConfig, save_config


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tokenizer, tmp_path_factory):
    """A run folder as `prefalign train` leaves it: config, summary, metrics and a final model that
    differs from the base (another seed), so the policy's numbers differ from the reference's."""
    run = tmp_path_factory.mktemp("run")
    build_tiny_llama(run / "final", tokenizer, seed=1)
    save_config(TrainConfig(model=str(tiny_model_dir), data=DataConfig(train=str(FIXTURES / "hh_harmless_64.jsonl"),
                                                                        eval_fraction=0.25),
                            beta=0.2, max_length=96, max_prompt_length=48), run / "config.yaml")
    (run / "summary.json").write_text(json.dumps({"objective": "dpo", "steps": 2, "objective_params": {"beta": 0.2},
                                                  "eval_start": {"eval/loss": 0.69}, "eval_end": {"eval/loss": 0.6}}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 0.7 - 0.01 * s}) + "\n" for s in (1, 2)))
    return run


def sections(folder) -> dict:
    return {s["title"]: s for s in json.loads((folder / "report.json").read_text())["sections"]}


def test_diagnose_a_run_folder_with_a_judge(run_dir, capsys):
    code = main(["diagnose", str(run_dir), "--pairs", "10", "--prompts", "4", "--max-new-tokens", "6",
                 "--batch-size", "4", "--bootstrap", "200", "--no-progress", "--judge", "callable",
                 "--judge-arg", "score_fn=prefalign.diagnostics.factors:log_words",
                 # switched off here (and their PNGs absent), tested in test_diagnose_overopt.py
                 "--no-token-shift", "--no-likelihood-overopt", "--no-reward-overopt"])
    assert code == 0, capsys.readouterr().err
    out = run_dir / "diagnostics"
    for name in ("report.md", "report.html", "report.json", "ranking_margins.png", "judge_reliability.png",
                 "preference_factors.png", "training_curves.png"):
        assert (out / name).is_file(), name
    got = sections(out)
    assert list(got) == ["Inputs", "Ranking accuracy", "Hardest pairs", "Sample KL", "Win rate", "Samples", "Judge calibration",
                         "Preference factors", "Training curves"]
    assert not any((out / n).exists() for n in ("token_shift.png", "likelihood_overopt.png", "reward_overopt.png"))
    ranking = got["Ranking accuracy"]["data"]
    assert ranking["pairs"] == 10 and "assumption" in got["Ranking accuracy"]["text"]  # p assumed, said so
    assert "beta = 0.2" in got["Ranking accuracy"]["text"]  # the run's beta
    win = got["Win rate"]["data"]
    assert win["judged"] + win["missing"] == 4 and not win["both_orders"]  # a score judge: one order
    factors = got["Preference factors"]["data"]
    assert {"data labels", "policy implicit reward", "judge callable(log_words)"} <= set(factors)
    # the judge scores log word count, so its preferences are explained by length
    length = next(r for r in factors["judge callable(log_words)"]["factors"] if r["factor"] == "length")
    assert length["weight"] > 0
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "Length bias" in html


def test_model_equal_to_reference_has_zero_kl_and_no_model_preference(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "rep"
    code = main(["diagnose", "--model", str(tiny_model_dir), "--reference", str(tiny_model_dir),
                 "--data", str(FIXTURES / "hh_harmless_64.jsonl"), "--pairs", "6", "--prompts", "3",
                 "--max-new-tokens", "5", "--no-progress", "--output-dir", str(out), "--true-p", "0.8"])
    assert code == 0, capsys.readouterr().err
    got = sections(out)
    assert got["Sample KL"]["data"]["kl"] == 0.0
    r = got["Ranking accuracy"]["data"]
    assert r["ranking_accuracy"] == r["reference_ranking_accuracy"]
    assert got["Preference factors"]["data"]["undecided_sources"] == ["policy implicit reward"]
    assert "Win rate" not in got and "Training curves" not in got
    # the policy's greedy tokens are the reference's own top tokens at every position
    shift = got["Token distribution shift"]["data"]
    assert shift["unshifted_share"] == 1.0 and shift["counts"]["shifted"] == 0 and shift["most_shifted"] == []
    assert shift["positions"] == sum(r["count"] for r in shift["per_position"]) > 0
    assert "Likelihood over-optimisation" not in got  # no run folder, no checkpoints


def test_bad_inputs_fail_with_a_clear_message(tmp_path, capsys):
    assert main(["diagnose"]) == 1
    assert "give a run folder, or all of --model, --reference and --data" in capsys.readouterr().err
    assert main(["diagnose", str(tmp_path)]) == 1
    assert "no config.yaml" in capsys.readouterr().err
