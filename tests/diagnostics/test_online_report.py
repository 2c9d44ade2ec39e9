"""Per-round online evaluation (diagnostics/online.py) and the online section of `prefalign diagnose`."""

from __future__ import annotations

import json
import math
import random
import statistics
from argparse import Namespace

import pytest
import yaml

from conftest import FIXTURES, build_tiny_llama
from prefalign.cli.diagnose import run_inputs
from prefalign.cli.main import main
from prefalign.config import ConfigError, DataConfig, TrainConfig, load_config, save_config
from prefalign.diagnostics.online import (metrics_line, paired_difference, read_rounds, round_eval,
                                          unfinished_rounds)


def test_round_eval_means_missing_and_extras():
    scores = [0.2, None, 0.8, 0.5, None, 0.9]
    kl = [0.1, 0.3, 0.2, 0.0, 0.4, 0.5]
    out = round_eval(2, {"judge_score": scores, "kl": kl, "finished": [1, 0, 1, 1, True, 1]},
                     {"tokens_per_s": 123.0, "labels": {"pairs": 5, "ties": 1}}, bootstrap=500, seed=3)
    judge = out["metrics"]["judge_score"]
    # missing verdicts are left out, not imputed: the mean is over the four scores
    assert judge["mean"] == pytest.approx(statistics.mean([0.2, 0.8, 0.5, 0.9]))
    assert (judge["n"], judge["missing"]) == (4, 2)
    assert out["metrics"]["kl"]["mean"] == pytest.approx(statistics.mean(kl))
    assert out["metrics"]["finished"]["mean"] == pytest.approx(5 / 6)
    for s in out["metrics"].values():
        assert s["low"] <= s["mean"] <= s["high"]
    assert out["round"] == 2 and out["prompts"] == 6
    assert out["tokens_per_s"] == 123.0 and out["labels"] == {"pairs": 5, "ties": 1}
    assert out["per_prompt"]["judge_score"] == scores  # kept for paired comparisons
    assert out["bootstrap"] == {"samples": 500, "level": 0.95, "seed": 3}
    json.dumps(out, allow_nan=False)  # JSON-able as is
    assert round_eval(2, {"kl": kl}, bootstrap=500, seed=3)["metrics"]["kl"] == out["metrics"]["kl"]  # seeded


def test_round_eval_interval_shrinks_with_n_like_the_normal_approximation():
    def width(n):
        s = round_eval(0, {"judge_score": [0.0, 1.0] * (n // 2)}, bootstrap=4000)["metrics"]["judge_score"]
        assert s["low"] < s["mean"] == 0.5 < s["high"]
        return s["high"] - s["low"]

    small, large = width(20), width(2000)
    assert large < small / 5
    # independent check: for large n the percentile interval approaches mean +- 1.96 sd / sqrt(n)
    assert large == pytest.approx(2 * 1.96 * 0.5 / math.sqrt(2000), rel=0.1)


def test_round_eval_all_missing_and_bad_input():
    s = round_eval(-1, {"win_vs_initial": [None, None], "kl": [0.0, 0.0]})["metrics"]["win_vs_initial"]
    assert s == {"mean": None, "low": None, "high": None, "n": 0, "missing": 2}
    with pytest.raises(ValueError, match="same prompts"):
        round_eval(0, {"kl": [1.0, 2.0], "judge_score": [1.0]})
    with pytest.raises(ValueError, match=r"per_prompt\['kl'\]\[1\] is nan"):
        round_eval(0, {"kl": [1.0, float("nan")]})
    with pytest.raises(ValueError, match=r"per_prompt\['judge_score'\]\[0\] must be a number"):
        round_eval(0, {"judge_score": ["good"]})
    with pytest.raises(ValueError, match="reserved"):
        round_eval(0, {"kl": [1.0]}, {"metrics": 1})
    with pytest.raises(ValueError, match="round"):
        round_eval(-2, {"kl": [1.0]})


def test_paired_difference_excludes_zero_only_when_the_change_is_consistent():
    rng = random.Random(0)
    before = [rng.uniform(0, 10) for _ in range(40)]  # prompts differ a lot from each other...
    after = [b + 0.3 + rng.uniform(-0.1, 0.1) for b in before]  # ...but every one rose by about 0.3
    d = paired_difference(before, after, bootstrap=2000, seed=0)
    assert d["mean"] == pytest.approx(statistics.mean(a - b for b, a in zip(before, after)))
    assert d["excludes_zero"] and 0 < d["low"] <= d["mean"] <= d["high"]
    # the same numbers unpaired: the prompt-to-prompt spread swamps the rise
    unpaired = round_eval(0, {"b": before, "a": after})["metrics"]
    assert unpaired["a"]["low"] < unpaired["b"]["high"]

    noise = [rng.choice((-1.0, 1.0)) for _ in range(40)]
    flat = paired_difference(before, [b + e for b, e in zip(before, noise)], bootstrap=2000, seed=0)
    assert not flat["excludes_zero"] and flat["low"] < 0 < flat["high"]

    fell = paired_difference([1.0, 1.0, None, 2.0], [0.0, 0.5, 3.0, None])
    assert fell["mean"] == pytest.approx(-0.75) and (fell["n"], fell["missing"]) == (2, 2)
    assert fell["high"] < 0 and fell["excludes_zero"]
    assert not paired_difference([None], [1.0])["excludes_zero"]
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference([1.0], [1.0, 2.0])


def write_eval(path, evaluation):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(evaluation))


def test_read_rounds_numeric_order_unfinished_and_malformed(tmp_path):
    write_eval(tmp_path / "rounds" / "initial_eval.json", round_eval(-1, {"kl": [0.0]}))
    for n in (0, 1, 2, 9, 10, 11):
        write_eval(tmp_path / "rounds" / f"round-{n}" / "eval.json", round_eval(n, {"kl": [float(n)]}))
    (tmp_path / "rounds" / "round-12").mkdir()  # still running: no eval.json yet
    (tmp_path / "rounds" / "round-3.tmp").mkdir()  # an interrupted atomic write is not a round
    evals = read_rounds(tmp_path)
    assert [e["round"] for e in evals] == [-1, 0, 1, 2, 9, 10, 11]
    assert [e["metrics"]["kl"]["mean"] for e in evals] == [0.0, 0.0, 1.0, 2.0, 9.0, 10.0, 11.0]
    assert unfinished_rounds(tmp_path) == [12]

    bad = tmp_path / "rounds" / "round-10" / "eval.json"
    bad.write_text('{"round": 10, "metrics": {')
    with pytest.raises(ValueError, match=r"round-10[/\\]eval\.json: not valid JSON"):
        read_rounds(tmp_path)
    write_eval(bad, round_eval(4, {"kl": [0.0]}))
    with pytest.raises(ValueError, match="says round 4, but its place says round 10"):
        read_rounds(tmp_path)
    with pytest.raises(FileNotFoundError, match="no rounds/ folder"):
        read_rounds(tmp_path / "rounds")


def test_metrics_line_is_flat():
    e = round_eval(1, {"judge_score": [1.0, None, 3.0]}, {"tokens_per_s": 50.5, "labels": {"ties": 2},
                                                          "note": "text is not a metric"})
    line = metrics_line(e)
    s = e["metrics"]["judge_score"]
    assert line == {"online/round": 1, "online/judge_score": 2.0, "online/judge_score_low": s["low"],
                    "online/judge_score_high": s["high"], "online/judge_score_missing": 1,
                    "online/tokens_per_s": 50.5, "online/labels/ties": 2}


def online_run(tmp_path, rise: float, rounds: int = 3, prompts: int = 30, model=None):
    """An online run folder as the loop leaves it: config with an `online:` mapping, metrics.jsonl,
    rounds/initial_eval.json and rounds/round-N/eval.json; judge scores rise by `rise` per round."""
    run = tmp_path / "online"
    run.mkdir()
    save_config(TrainConfig(model=str(model or tmp_path / "no-model-needed"), max_length=96, max_prompt_length=48,
                            data=DataConfig(train=str(FIXTURES / "hh_harmless_64.jsonl"), eval_fraction=0.25)),
                run / "config.yaml")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["online"] = {"rounds": rounds, "prompts_per_round": 16, "judge": "callable"}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 0.7 - 0.02 * s}) + "\n"
                                               for s in range(1, 7)))
    rng = random.Random(1)
    base = [rng.uniform(0, 1) for _ in range(prompts)]
    evals = []
    for r in range(-1, rounds):
        scores = [b + rise * (r + 1) + rng.uniform(-0.05, 0.05) for b in base]
        scores[r + 1] = None  # one missing verdict per round
        per_prompt = {"judge_score": scores, "kl": [0.1 * (r + 1) + 0.01 * i for i in range(prompts)],
                      "win_vs_initial": [None if r == -1 else 0.5 + 0.1 * (r + 1)] * prompts,
                      "response_tokens": [20 + r] * prompts, "finished": [1, 0] * (prompts // 2),
                      "topk_entropy": [1.5 - 0.1 * r] * prompts}
        e = round_eval(r, per_prompt, {"tokens_per_s": 100.0 + r, "sampling_s": 2.0}, bootstrap=300)
        path = run / "rounds" / ("initial_eval.json" if r == -1 else f"round-{r}/eval.json")
        write_eval(path, e)
        evals.append(e)
    return run, evals


def sections(folder) -> dict:
    return {s["title"]: s for s in json.loads((folder / "report.json").read_text())["sections"]}


def test_diagnose_an_online_run_without_loading_models(tmp_path, capsys):
    run, evals = online_run(tmp_path, rise=0.2)
    with pytest.raises(ConfigError, match="online"):
        load_config(str(run / "config.yaml"))  # why the online path must not go through load_config
    code = main(["diagnose", str(run), "--bootstrap", "500", "--no-progress", "--judge", "callable"])
    assert code == 0, capsys.readouterr().err
    out = run / "diagnostics"
    for name in ("report.md", "report.html", "report.json", "online_rounds.png", "training_curves.png"):
        assert (out / name).is_file(), name
    got = sections(out)
    assert list(got) == ["Inputs", "Online rounds", "Training curves"]
    assert "--model" in got["Inputs"]["text"] and "skipped" in got["Inputs"]["text"]
    assert "--judge `callable` not used" in got["Inputs"]["text"]  # said, not silently ignored
    assert got["Inputs"]["data"]["online"]["rounds"] == 3
    online = got["Online rounds"]
    assert [row["round"] for row in online["table"]] == ["initial", "0", "1", "2"]
    assert online["table"][0]["win vs initial [95% CI]"] is None  # the initial policy is not compared to itself
    assert online["table"][3]["sampling tokens/s"] == 102.0 and online["table"][3]["top-k entropy"] == 1.3
    assert online["table"][1]["judge score [95% CI]"].endswith("(1 missing)")
    for row, e in zip(online["data"]["rounds"], evals):
        assert row["metrics"] == e["metrics"]
    diff = online["data"]["final_vs_initial"]
    before, after = evals[0]["per_prompt"]["judge_score"], evals[-1]["per_prompt"]["judge_score"]
    pairs = [(b, a) for b, a in zip(before, after) if a is not None and b is not None]
    assert diff["mean"] == pytest.approx(statistics.mean(a - b for b, a in pairs))
    assert (diff["n"], diff["missing"], diff["final_round"]) == (len(pairs), 2, 2)
    assert diff["excludes_zero"] and "excludes 0" in online["text"] and "rose" in online["text"]
    md = (out / "report.md").read_text()
    assert "## Online rounds" in md and "online_rounds.png" in md
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 2


def test_diagnose_an_online_run_with_no_change_says_so(tmp_path, capsys):
    run, _ = online_run(tmp_path, rise=0.0)
    (run / "rounds" / "round-3").mkdir()  # the next round was interrupted before its evaluation
    assert main(["diagnose", str(run), "--bootstrap", "500", "--no-progress", "--output-dir",
                 str(tmp_path / "rep")]) == 0, capsys.readouterr().err
    online = sections(tmp_path / "rep")["Online rounds"]
    assert not online["data"]["final_vs_initial"]["excludes_zero"]
    assert "includes 0" in online["text"] and "no change" in online["text"]
    assert online["data"]["unfinished_rounds"] == [3] and "Rounds without an evaluation yet" in online["text"]


def test_a_malformed_round_fails_diagnose_naming_the_file(tmp_path, capsys):
    run, _ = online_run(tmp_path, rise=0.1)
    (run / "rounds" / "round-1" / "eval.json").write_text("{not json")
    assert main(["diagnose", str(run), "--no-progress"]) == 1
    assert "round-1/eval.json: not valid JSON" in capsys.readouterr().err.replace("\\", "/")
    assert not (run / "diagnostics").exists()  # no half-written report


def test_online_run_with_model_adds_the_model_sections(tmp_path, tiny_model_dir, tokenizer, capsys):
    """With --model, an online run's config (its `online:` mapping set aside) supplies the reference,
    data and beta as an ordinary run's does, and the online section joins the model sections."""
    run, _ = online_run(tmp_path, rise=0.1, model=tiny_model_dir)
    build_tiny_llama(run / "final", tokenizer, seed=1)
    inputs = run_inputs(Namespace(run=str(run), model=str(run / "final"), reference=None, data=None, format=None,
                                  beta=None, output_dir=None))
    assert inputs["reference"] == str(tiny_model_dir) and inputs["run"] == run
    code = main(["diagnose", str(run), "--model", str(run / "final"), "--pairs", "4", "--prompts", "2",
                 "--max-new-tokens", "4", "--bootstrap", "200", "--no-progress", "--no-token-shift",
                 "--no-likelihood-overopt", "--no-reward-overopt"])
    assert code == 0, capsys.readouterr().err
    got = sections(run / "diagnostics")
    assert {"Ranking accuracy", "Sample KL", "Online rounds", "Training curves"} <= set(got)
    assert got["Ranking accuracy"]["data"]["pairs"] == 4
    assert got["Online rounds"]["data"]["final_vs_initial"]["final_round"] == 2
