"""`prefalign data build | list | inspect | magpie` and `prefalign generate` on small files."""

from __future__ import annotations

import json

import pytest
import yaml

from prefalign.cli.main import main
from prefalign.cli.data import reward_conditioning
from prefalign.data.formats.readers import load_examples
from tests_support import FIXTURES, scripted_llama, write_jsonl

OASST = FIXTURES / "oasst_ranked_12.jsonl"
SIZES = [3, 2, 2, 2, 3, 2, 2, 3, 6, 4, 2, 3]  # responses per ranked set in the fixture


def test_list_prints_every_registered_builder(capsys):
    assert main(["data", "list", "--markdown"]) == 0
    out = capsys.readouterr().out
    for name in ("to_pairs", "reward_augment", "curriculum", "magpie", "urial"):
        assert f"| `{name}` |" in out
    assert "arXiv:2406.08464" in out and "rule='best_vs_worst'" in out


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_build_writes_a_file_that_reads_back(tmp_path, capsys, suffix):
    out = tmp_path / f"pairs{suffix}"
    code = main(["data", "build", str(OASST), "--builder", "to_pairs", "--param", "rule=best_vs_each",
                 "--out", str(out)])
    assert code == 0
    pairs, report = load_examples(out)
    assert len(pairs) == report.rows == sum(k - 1 for k in SIZES) == 22
    assert all(p.extra["score_chosen"] == 0.0 for p in pairs)  # best_vs_each: the rank-0 reply is always chosen
    assert "to_pairs: 12 in, 22 out" in capsys.readouterr().out


def test_build_runs_a_yaml_pipeline(tmp_path):
    steps = tmp_path / "steps.yaml"
    steps.write_text(yaml.safe_dump({"builders": [{"name": "curriculum", "n_stages": 2},
                                                  {"name": "reward_augment", "template": "{prompt} <{score:g}>"}]}))
    out = tmp_path / "built.jsonl"
    assert main(["data", "build", str(OASST), "--builders-yaml", str(steps), "--out", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    pairs = sum(k * (k - 1) // 2 for k in SIZES)  # 39 untied pairs, each relabeled twice
    assert len(rows) == 2 * pairs
    assert {r["stage"] for r in rows} == {1, 2} and rows[0]["stage"] == 1
    assert rows[0]["prompt"][-1]["content"].endswith(f" <{rows[0]['target_score']:g}>")


def test_build_errors_are_clear(tmp_path, capsys):
    out = str(tmp_path / "x.jsonl")
    assert main(["data", "build", str(OASST), "--builder", "to_pair", "--out", out]) == 1
    assert "unknown builder 'to_pair'; did you mean 'to_pairs'?" in capsys.readouterr().err
    assert main(["data", "build", str(OASST), "--builder", "magpie", "--out", out]) == 1
    assert "needs a local model: pass --generator-model" in capsys.readouterr().err
    assert main(["data", "build", str(OASST), "--out", out]) == 1
    assert "give one of --builder" in capsys.readouterr().err


def test_inspect_counts_a_small_file_exactly(tmp_path, tokenizer):
    rows = [{"prompt": "p1", "chosen": "long answer", "rejected": "no", "score_chosen": 8, "score_rejected": 3},
            {"prompt": "p1", "chosen": "yes", "rejected": "longer no", "score_chosen": 5, "score_rejected": 5},
            {"prompt": "p1", "chosen": "long answer", "rejected": "no", "score_chosen": 8, "score_rejected": 3},
            {"prompt": "p2", "chosen": "same", "rejected": "same"}]
    path = write_jsonl(tmp_path / "small.jsonl", rows)
    assert main(["data", "inspect", str(path), "--out-dir", str(tmp_path), "--tokenizer",
                 tokenizer.name_or_path]) == 0
    stats = json.loads((tmp_path / "small.inspect.json").read_text())
    assert (tmp_path / "small.inspect.png").stat().st_size > 0
    assert stats["detected"] == "pairs" and stats["rows"] == 4 and stats["kept"] == 3
    assert stats["skipped_by_reason"] == {"rejected: is identical to chosen": 1}
    assert (stats["chosen_longer"], stats["rejected_longer"], stats["equal_length"]) == (2, 1, 0)
    assert stats["chosen_longer_share"] == round(2 / 3, 4)
    assert stats["score_gap"] == {"n": 3, "min": 0, "mean": 3.333, "median": 5, "p95": 5, "max": 5}
    assert stats["tied_scores"] == 1
    assert stats["duplicates"] == {"repeated_prompts": 2, "exact_duplicate_examples": 1}
    assert stats["prompt_tokens"]["n"] == 3 and stats["prompt_chars"]["max"] == 2


def test_inspect_reads_ranked_lists_and_raw_rows(tmp_path):
    assert main(["data", "inspect", str(OASST), "--out-dir", str(tmp_path)]) == 0
    stats = json.loads((tmp_path / "oasst_ranked_12.inspect.json").read_text())
    assert stats["list_sizes"] == {"2": 6, "3": 4, "4": 1, "6": 1}
    assert stats["ranks"]["0"] == 12 and sum(stats["ranks"].values()) == sum(SIZES)
    # multi-aspect groups have no prompt field: read as raw rows with their numbers
    assert main(["data", "inspect", str(FIXTURES / "sf_nlg_12.jsonl"), "--out-dir", str(tmp_path)]) == 0
    raw = json.loads((tmp_path / "sf_nlg_12.inspect.json").read_text())
    assert raw["detected"].startswith("raw rows") and raw["rows"] == 12
    assert raw["numbers"]["responses[].scores.overall"]["n"] == sum(
        len(json.loads(x)["responses"]) for x in (FIXTURES / "sf_nlg_12.jsonl").read_text().splitlines())


def test_magpie_command_writes_what_the_model_says(tiny_model_dir, tokenizer, tmp_path, capsys):
    """3 sampled instructions, each "I" then end of turn: 1 kept, 2 dropped as duplicates; its
    answer is "I" too. Then a 1-token budget: no instruction can end its turn -> a clear error."""
    # "I" is one byte of the byte-level alphabet: a token in every vocabulary the fixture trains
    model = scripted_llama(tiny_model_dir, tokenizer, tmp_path / "says-I", [tokenizer.convert_tokens_to_ids("I")])
    out = tmp_path / "magpie.jsonl"
    code = main(["data", "magpie", "--model", str(model), "-n", "3", "--max-instruction-tokens", "4",
                 "--max-response-tokens", "4", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    examples, _ = load_examples(out)
    assert [(e.prompt, e.responses) for e in examples] == [("I", ["I"])]
    assert "magpie: 0 in, 1 out" in printed.out and "duplicate instruction" in printed.out
    code = main(["data", "magpie", "--model", str(model), "-n", "3", "--max-instruction-tokens", "1",
                 "--max-response-tokens", "4", "--out", str(tmp_path / "none.jsonl")])
    printed = capsys.readouterr()
    assert code == 1 and not (tmp_path / "none.jsonl").exists()
    assert "magpie kept none of 3 samples ({'instruction did not end its turn': 3})" in printed.err


def write_run(folder, data_cfg: dict, data_report: dict):
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": "m", "data": data_cfg}))
    (folder / "summary.json").write_text(json.dumps({"data": data_report}))
    return folder


def test_reward_conditioning_is_read_from_the_run(tmp_path):
    plain = write_run(tmp_path / "plain", {"reward_augment": False, "builders": []}, {})
    assert reward_conditioning(plain) is None
    old_key = write_run(tmp_path / "old", {"reward_augment": True, "reward_template": "{prompt} [{score:g}]"},
                        {"reward_augment": {"train": {"best_score": 9.5}}})
    assert reward_conditioning(old_key) == ("{prompt} [{score:g}]", 9.5)
    steps = write_run(tmp_path / "steps", {"builders": [{"name": "to_pairs"}, {"name": "reward_augment"}]},
                      {"builders": {"train": [{"builder": "to_pairs"}, {"builder": "reward_augment", "best_score": 0.0}]}})
    from prefalign.data.builders.pairs import REWARD_TEMPLATE

    assert reward_conditioning(steps) == (REWARD_TEMPLATE, 0.0)


def test_generate_conditions_a_reward_augmented_run_on_its_best_score(tiny_model_dir, tmp_path):
    from prefalign.config import load_config
    from prefalign.recipes.policy import train

    uf = FIXTURES / "ultrafeedback_12.jsonl"
    run = tmp_path / "run"
    train(load_config(None, [f"model={tiny_model_dir}", f"data.train={uf}", f"output_dir={run}",
                             "data.reward_augment=true", "data.reward_template='{prompt} (score {score:g})'",
                             "max_steps=1", "batch_size=2", "max_length=96", "max_prompt_length=48",
                             "progress=false"]))
    summary = json.loads((run / "summary.json").read_text())
    best = summary["data"]["reward_augment"]["train"]["best_score"]
    scores = [json.loads(x)["score_chosen"] for x in uf.read_text().splitlines()]
    assert best in scores and best <= max(scores)
    out = tmp_path / "gen.jsonl"
    assert main(["generate", "--run", str(run), "--prompt", "Hello?", "--max-new-tokens", "3",
                 "--out", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["prompt"] == "Hello?" and row["conditioned_prompt"] == f"Hello? (score {best:g})"
    assert main(["generate", "--run", str(run), "--prompt", "Hi", "--score", "2", "--max-new-tokens", "2",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["conditioned_prompt"] == "Hi (score 2)"
