"""`prefalign diagnose`'s token-shift and over-optimisation sections on a tiny run folder with checkpoints."""

from __future__ import annotations

import json
import math
from argparse import Namespace

import pytest
import torch

from conftest import FIXTURES
from prefalign.cli.main import main
from prefalign.cli.diagnose import load_pairs, run_inputs
from prefalign.config import DataConfig, TrainConfig, save_config
from prefalign.diagnostics.overopt_sections import (can_score, evenly_spaced, logged_indicators, monitor_sentence,
                                                    reward_section)
from prefalign.diagnostics.overoptimization import likelihood_indicators
from prefalign.diagnostics.report import Report
from prefalign.models.generation import GenerateSettings
from prefalign.judges import CallableJudge, Judge
from prefalign.models.causal_lm import load_model

MONITOR = {"indicator": "topk_entropy", "k": 10, "threshold": 0.2, "initial": 2.0, "threshold_value": 1.6,
           "stopped_early": True, "stop_reason": "topk_entropy fell to 1.5 at step 3, below 0.8 x its step-0 value 2",
           "best_step": 2, "best_model": "RUN/best", "history": []}


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tokenizer, tmp_path_factory):
    """A run whose checkpoint-1, checkpoint-2 and final are the base model at temperature 1/4, 1/16, 1/64
    (final norm weight scaled, so every logit is): ever sharper, ever farther from the base, so each
    sampled KL is clearly positive. With in-training overopt/* metrics and a stop verdict."""
    run = tmp_path_factory.mktemp("run")
    for scale, name in ((4.0, "checkpoint-1"), (16.0, "checkpoint-2"), (64.0, "final")):
        model = load_model(str(tiny_model_dir))
        with torch.no_grad():
            model.model.norm.weight.mul_(scale)
        model.save_pretrained(run / name, safe_serialization=True)
        tokenizer.save_pretrained(run / name)
    save_config(TrainConfig(model=str(tiny_model_dir), data=DataConfig(train=str(FIXTURES / "hh_harmless_64.jsonl"),
                                                                        eval_fraction=0.25),
                            beta=0.2, max_length=96, max_prompt_length=48), run / "config.yaml")
    (run / "summary.json").write_text(json.dumps({"objective": "dpo", "steps": 3, "objective_params": {"beta": 0.2},
                                                  "overopt": MONITOR}))
    rows = [{"step": 0, "overopt/topk_entropy": 2.0, "overopt/topk_mass": 0.5}, {"step": 1, "loss": 0.69},
            {"step": 3, "overopt/topk_entropy": 1.5, "overopt/topk_mass": 0.4}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def sections(folder) -> dict:
    return {s["title"]: s for s in json.loads((folder / "report.json").read_text())["sections"]}


COMMON = ["--pairs", "4", "--prompts", "3", "--max-new-tokens", "4", "--batch-size", "4", "--bootstrap", "50",
          "--no-progress"]


def test_every_checkpoint_probed_with_a_scoring_judge(run_dir, tiny_model_dir, tokenizer, tmp_path, capsys):
    out = tmp_path / "rep"
    code = main(["diagnose", str(run_dir), *COMMON, "--checkpoints", "0", "--no-token-shift", "--output-dir", str(out),
                 "--judge", "callable", "--judge-arg", "score_fn=prefalign.diagnostics.factors:log_words"])
    assert code == 0, capsys.readouterr().err
    got = sections(out)
    titles = list(got)
    assert "Token distribution shift" not in got
    assert titles.index("Preference factors") < titles.index("Likelihood over-optimisation") \
        < titles.index("Reward over-optimisation") < titles.index("Training curves")
    lik = got["Likelihood over-optimisation"]
    assert [r["step"] for r in lik["table"]] == [0, 1, 2, 3]  # the start model, each checkpoint, final
    assert [r["model"] for r in lik["table"]][1:] == ["checkpoint-1", "checkpoint-2", "final"]
    assert lik["table"][0]["entropy vs start"] == "+0.0%" and lik["table"][0]["mass vs start"] == "+0.0%"
    assert "Only the start and the final model were probed" not in lik["text"]
    assert len(lik["data"]["logged_in_training"]) == 2 and lik["data"]["training_monitor"]["best_step"] == 2
    assert "stopped early" in lik["text"] and "step 2" in lik["text"] and "2 times" in lik["text"]
    rew = got["Reward over-optimisation"]
    rows = rew["data"]["rows"]
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and rows[0]["is_reference"] and rows[0]["gain"] == 0.0
    for r in rows[1:]:
        assert r["kl"] > 0 and r["d"] == pytest.approx(math.sqrt(r["kl"]))
        assert r["gain"] == pytest.approx(r["score"] - rows[0]["score"])
    fit = rew["data"]["fit"]
    assert fit is not None and fit["points"] == 3 and f"a = {fit['a']:.4g}" in rew["text"]
    assert "`callable(log_words)`" in rew["text"] and rew["data"]["judge"] == "callable(log_words)"
    html = (out / "report.html").read_text()
    assert "likelihood_overopt" in html and "reward_overopt" in html


def test_start_row_equals_the_probe_run_alone(run_dir, tiny_model_dir, tokenizer, tmp_path, capsys):
    """--checkpoints 2 keeps the start and the final model; the start row is likelihood_indicators of the base
    model on the diagnose prompts (the first distinct prompts of the held-out pairs), same seed and length,
    prompts cut to the run's max_prompt_length as training cut them."""
    out = tmp_path / "rep"
    code = main(["diagnose", str(run_dir), *COMMON, "--checkpoints", "2", "--output-dir", str(out)])
    assert code == 0, capsys.readouterr().err
    got = sections(out)
    assert "Reward over-optimisation" not in got  # no judge
    rows = got["Likelihood over-optimisation"]["data"]["rows"]
    assert [r["step"] for r in rows] == [0, 3]
    assert "Only the start and the final model were probed" in got["Likelihood over-optimisation"]["text"]
    shift = got["Token distribution shift"]["data"]
    assert sum(shift["counts"].values()) == shift["positions"] and shift["prompts"] == 3
    assert sum(shift[f"{k}_share"] for k in ("unshifted", "marginal", "shifted")) == pytest.approx(1.0)
    inputs = run_inputs(Namespace(run=str(run_dir), model=None, reference=None, data=None, format=None, beta=None,
                                  output_dir=None))
    examples, _ = load_pairs(inputs, 4)
    prompts = list({repr(e.prompt): e.prompt for e in examples}.values())[:3]
    alone = likelihood_indicators(load_model(str(tiny_model_dir)), tokenizer, prompts, 10, max_new_tokens=4, seed=0,
                                  batch_size=4, max_prompt_tokens=inputs["max_prompt_length"])
    assert rows[0]["topk_entropy"] == pytest.approx(alone["topk_entropy"], abs=1e-6)
    assert rows[0]["topk_mass"] == pytest.approx(alone["topk_mass"], abs=1e-6)


def test_bad_checkpoint_count_fails_clearly(run_dir, capsys):
    assert main(["diagnose", str(run_dir), "--checkpoints", "1"]) == 1
    assert "--checkpoints must be 0 (all) or at least 2" in capsys.readouterr().err


def test_evenly_spaced_keeps_start_and_final():
    models = [(s, f"m{s}") for s in range(7)]
    assert evenly_spaced(models, 0) == models and evenly_spaced(models, 9) == models
    assert [s for s, _ in evenly_spaced(models, 2)] == [0, 6]
    assert [s for s, _ in evenly_spaced(models, 3)] == [0, 3, 6]
    assert [s for s, _ in evenly_spaced(models, 4)] == [0, 2, 4, 6]
    with pytest.raises(ValueError, match="at least 2"):
        evenly_spaced(models, 1)


def test_can_score_tells_compare_only_judges_apart():
    assert can_score(CallableJudge(score_fn=lambda p, r: 1.0))
    assert not can_score(CallableJudge(compare_fn=lambda p, a, b: 0.5))
    assert not can_score(Judge())


def test_compare_only_judge_gives_a_sentence_not_a_crash(tmp_path):
    report = Report("t", tmp_path / "rep")
    got = reward_section(report, [(0, "base"), (3, "final")], "base", CallableJudge(compare_fn=lambda p, a, b: 0.5),
                         "pairwise", ["hi"], None, GenerateSettings())
    assert got is None and "only compares pairs" in report.sections[0].text
    report.discard()


def test_logged_indicators_and_monitor_sentences(run_dir, tmp_path):
    assert logged_indicators(run_dir / "metrics.jsonl") == [
        {"step": 0, "topk_entropy": 2.0, "topk_mass": 0.5}, {"step": 3, "topk_entropy": 1.5, "topk_mass": 0.4}]
    assert logged_indicators(tmp_path / "absent.jsonl") == [] and logged_indicators(None) == []
    assert "never fired" in monitor_sentence({**MONITOR, "stopped_early": False})
    assert "20%" in monitor_sentence({**MONITOR, "stopped_early": False})
    assert "without a stop threshold" in monitor_sentence({**MONITOR, "stopped_early": False, "threshold": 0.0})
