"""`prefalign sweep`: cells are ordinary run folders (skipped when done, resumed when interrupted),
a bad cell fails before any trains, and the report's numbers are what its definitions say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prefalign.cli.main import main
from prefalign.config import ConfigError
from prefalign.diagnostics.sweep_report import interpolate, matched_kl_ranking, sample_and_score
from prefalign.recipes.sweep import load_sweep, parse_grid, sweep

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT / "tests/fixtures/hh_harmless_64.jsonl"


def base(model_dir, out, *more) -> list[str]:
    return [f"model={model_dir}", f"data.train={HH}", f"output_dir={out}", "max_steps=2", "batch_size=4",
            "learning_rate=1e-3", "max_length=96", "max_prompt_length=64", "data.eval_fraction=0.25",
            "progress=false", "warmup_ratio=0", "sweep.eval_prompts=4", "sweep.max_new_tokens=6",
            "sweep.judge=length_target", "sweep.judge_args={target_words: 3}", "sweep.bootstrap=200", *more]


def test_parse_grid_splits_commas_and_reads_yaml_values():
    grid = parse_grid(["objective=dpo,ipo", "beta=0.05,0.1", "data.builders=[[], [{name: dedup}]]"])
    assert grid == {"objective": ["dpo", "ipo"], "beta": [0.05, 0.1], "data.builders": [[], [{"name": "dedup"}]]}
    with pytest.raises(ConfigError, match="key=value"):
        parse_grid(["beta"])


def test_sweep_options_written_after_the_grid_are_options_not_axes(tiny_model_dir, tmp_path):
    # argparse hands every word after --grid to the grid: a sweep.KEY=value among them is still an option
    tree, opts, grid = load_sweep(None, base(tiny_model_dir, tmp_path / "sw"),
                                  ["objective=dpo,ipo", "sweep.eval_prompts=8", "max_steps=3"], None)
    assert opts.eval_prompts == 8 and "sweep" not in tree
    assert grid == {"objective": ["dpo", "ipo"], "max_steps": [3]}


def test_a_cell_whose_objective_has_no_beta_fails_before_any_cell_runs(tiny_model_dir, tmp_path):
    out = tmp_path / "sw"
    tree, opts, grid = load_sweep(None, base(tiny_model_dir, out), ["objective=dpo,orpo", "beta=0.1,0.3"], None)
    with pytest.raises(ConfigError, match=r"sweep cell objective-orpo_beta-0.1 .*beta"):
        sweep(tree, opts, grid)
    assert not out.exists()  # nothing trained, nothing written
    # kto needs unpaired rows: the pairs file is refused for its cell, unless its own override converts them
    tree, opts, grid = load_sweep(None, base(tiny_model_dir, out), ["objective=dpo,kto"], None)
    with pytest.raises(ConfigError, match=r"sweep cell objective-kto .*unpaired"):
        sweep(tree, opts, grid)
    assert not out.exists()


def test_matched_kl_ranking_interpolates_each_objective_at_the_common_kl():
    def cell(objective, kl, score):
        return {"objective": objective, "samples": {"kl": {"mean": kl}, "score": {"mean": score}}}

    cells = [cell("a", 1.0, 0.2), cell("a", 3.0, 0.6), cell("b", 0.5, 0.5), cell("b", 2.0, 0.7), cell("c", 2.5, 0.9)]
    ranking = matched_kl_ranking(cells)
    # KL* = min(3.0, 2.0, 2.5) = 2.0; a: 0.2 + (0.6 - 0.2) * (2 - 1) / (3 - 1) = 0.4; b: its point at 2.0;
    # c never reaches down to 2.0 (its only cell is at 2.5): no value, ranked last
    assert ranking["kl_star"] == 2.0
    assert [(r["objective"], r["score_at_kl_star"], r["rank"]) for r in ranking["rows"]] == [
        ("b", 0.7, 1), ("a", pytest.approx(0.4), 2), ("c", None, None)]
    assert interpolate([(0.0, 1.0)], 0.0) == 1.0 and interpolate([(0.0, 1.0), (1.0, 3.0)], 1.5) is None


def test_sampled_kl_of_a_policy_against_itself_is_zero_and_lengths_are_counted(tiny_model_dir, tokenizer):
    from prefalign.judges import make_judge
    from prefalign.models.causal_lm import load_model

    model = load_model(str(tiny_model_dir))
    judge = make_judge("length_target", target_words=3)
    out = sample_and_score(model, model, tokenizer, judge, ["Hello there", "How are you?", "Tell me"], 5, seed=1)
    assert out["kl"] == [0.0, 0.0, 0.0]
    assert all(1 <= t <= 5 for t in out["tokens"])
    assert out["score"] == judge.score(["x"] * 3, out["text"])


@pytest.mark.slow
def test_sweep_trains_every_cell_skips_finished_ones_and_resumes_an_interrupted_one(tiny_model_dir, tmp_path):
    out = tmp_path / "sw"
    args = ["sweep", *base(tiny_model_dir, out, "save_steps=1", "keep_last=3"),
            "--grid", "objective=dpo,ipo", "beta=0.1", "--workers", "2"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    names = sorted(c["name"] for c in report["cells"])
    assert names == ["objective-dpo", "objective-ipo"]  # a one-value axis is an override, not in the name
    for c in report["cells"]:
        folder = out / "cells" / c["name"]
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["objective"] == c["objective"] and summary["objective_params"]["beta"] == c["beta"]
        assert c["eval_end"] == summary["eval_end"] and "eval/rewards/accuracy" in c["eval_end"]
        per = c["per_prompt"]
        assert len(per["kl"]) == 4 and c["samples"]["kl"]["mean"] == pytest.approx(sum(per["kl"]) / 4)
        assert c["samples"]["score"]["low"] <= c["samples"]["score"]["mean"] <= c["samples"]["score"]["high"]
    # the untouched model sampled the same prompts once: KL 0, and each cell's win rate is counted from it
    (untouched,) = json.loads((out / "untouched_eval.json").read_text())
    assert untouched["per_prompt"]["kl"] == pytest.approx([0.0] * 4, abs=1e-5)
    for c in report["cells"]:
        pairs = list(zip(c["per_prompt"]["score"], untouched["per_prompt"]["score"]))
        wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / 4
        assert c["vs_untouched"]["win_rate"]["mean"] == pytest.approx(wins)
        assert c["pairs"][0]["untouched"] == untouched["per_prompt"]["text"][0]
        assert c["pairs"][0]["aligned"] == c["examples"][0]["response"]
    assert "win rate vs untouched" in (out / "report.md").read_text()
    for name in ("report.md", "report.html", "frontier.png"):
        assert (out / name).stat().st_size > 0
    assert "Ranked by score at matched KL" in (out / "report.md").read_text()
    # interrupted after its first checkpoint: final model and summary gone, checkpoint-1 kept
    cut = out / "cells" / "objective-ipo"
    for name in ("summary.json", "final", "checkpoint-2", "sweep_eval.json"):
        path = cut / name
        import shutil

        shutil.rmtree(path) if path.is_dir() else path.unlink()
    done = out / "cells" / "objective-dpo" / "summary.json"
    stamp = done.stat().st_mtime_ns
    tree, opts, grid = load_sweep(None, base(tiny_model_dir, out, "save_steps=1", "keep_last=3"),
                                  ["objective=dpo,ipo", "beta=0.1"], 1)
    again = sweep(tree, opts, grid)
    assert again["states_before"] == {"objective-dpo": "done", "objective-ipo": "resume"}
    assert done.stat().st_mtime_ns == stamp  # a finished cell is not trained again
    resumed = json.loads((cut / "summary.json").read_text())
    assert resumed["steps"] == 2
    # a cell folder holding a run with another config is refused, never replaced
    tree, opts, grid = load_sweep(None, base(tiny_model_dir, out, "save_steps=1", "keep_last=3", "max_steps=3"),
                                  ["objective=dpo,ipo", "beta=0.1"], 1)
    with pytest.raises(ConfigError, match="different config .*max_steps"):
        sweep(tree, opts, grid)
    assert done.stat().st_mtime_ns == stamp
    assert torch.isfinite(torch.tensor([c["samples"]["kl"]["mean"] for c in again["cells"]])).all()


def test_objective_overrides_reach_only_their_objectives_cells(tiny_model_dir, tmp_path):
    from prefalign.recipes.sweep import plan_cells

    tree, opts, grid = load_sweep(None, base(tiny_model_dir, tmp_path / "sw"), ["objective=dpo,kto"], None)
    cells = plan_cells(tree, grid, tmp_path / "sw", {"kto": {"data.builders": [{"name": "pairs_to_unpaired"}]}})
    assert [(c.name, c.cfg.data.builders) for c in cells] == [
        ("objective-dpo", []), ("objective-kto", [{"name": "pairs_to_unpaired"}])]
    assert cells[1].cfg.output_dir == str(tmp_path / "sw" / "cells" / "objective-kto")


def test_against_untouched_counts_wins_ties_and_length_change_per_prompt():
    from prefalign.diagnostics.sweep_report import against_untouched

    cell = {"name": "c", "per_prompt": {"score": [0.9, 0.1, 0.5, 0.3], "tokens": [10, 12, 8, 20]}}
    base = {"per_prompt": {"score": [0.2, 0.4, 0.5, 0.1], "tokens": [14, 12, 10, 20]}}
    out = against_untouched(cell, base, bootstrap=200)
    # wins on prompts 1 and 4, a tie on 3, a loss on 2: (1 + 0 + 0.5 + 1) / 4
    assert out["win_rate"]["mean"] == pytest.approx(0.625)
    assert out["score_change"]["mean"] == pytest.approx((0.7 - 0.3 + 0.0 + 0.2) / 4)
    assert out["token_change"]["mean"] == pytest.approx((-4 + 0 - 2 + 0) / 4)
    assert out["win_rate"]["low"] <= 0.625 <= out["win_rate"]["high"]
    no_judge = against_untouched({"name": "c", "per_prompt": {"score": [None] * 4, "tokens": [1] * 4}},
                                 {"per_prompt": {"score": [None] * 4, "tokens": [1] * 4}})
    assert set(no_judge) == {"token_change"}
    with pytest.raises(ValueError, match="different prompts"):
        against_untouched(cell, {"per_prompt": {"score": [0.1], "tokens": [1]}})


def test_without_a_judge_the_frontier_reads_held_out_accuracy(tmp_path):
    from prefalign.diagnostics.sweep_report import write_sweep_report

    def cell(name, objective, beta, kl, acc):
        return {"name": name, "objective": objective, "beta": beta, "eval_end": {"eval/rewards/accuracy": acc},
                "samples": {"kl": {"mean": kl, "low": kl, "high": kl}, "tokens": {"mean": 5.0}}}

    cells = [cell("a1", "dpo", 0.1, 2.0, 0.7), cell("a2", "dpo", 1.0, 1.0, 0.6), cell("b1", "ipo", 0.1, 1.5, 0.5)]
    report = write_sweep_report(cells, tmp_path, None)
    assert report["frontier_value"] == "heldout_accuracy" and report["matched_kl"]["kl_star"] == 1.5
    # dpo at KL 1.5: halfway between 0.6 (KL 1) and 0.7 (KL 2)
    rows = {r["objective"]: r["heldout_accuracy_at_kl_star"] for r in report["matched_kl"]["rows"]}
    assert rows == {"dpo": pytest.approx(0.65), "ipo": 0.5}
    assert "| 1 | dpo |" in (tmp_path / "report.md").read_text() and (tmp_path / "frontier.png").is_file()
