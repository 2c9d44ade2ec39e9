"""Method presets end to end on the tiny model: what each round writes and trains is what its paper
says (the bandit checks in test_bandit.py test where the methods converge)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import build_tiny_llama

from prefalign.config import load_online_config
from prefalign.models.causal_lm import load_tokenizer
from prefalign.online.store import load_samples
from prefalign.recipes.online import online

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
JUDGE = ["online.judge=callable", "online.judge_args={score_fn: 'tests_support:length_score'}"]


def run(model: Path, out: Path, *overrides: str) -> dict:
    base = [f"model={model}", f"data.train={FIXTURES / 'hh_harmless_64.jsonl'}", f"output_dir={out}",
            "max_length=96", "progress=false", "max_steps=2", "batch_size=2", "learning_rate=1e-3",
            "online.rounds=1", "online.prompts_per_round=4", "online.max_new_tokens=6", "online.eval_prompts=2",
            "online.bootstrap=20"]
    return online(load_online_config(None, base + list(overrides)))


def specs_of(out: Path, r: int = 0) -> list[dict]:
    return json.loads((out / f"rounds/round-{r}/examples.json").read_text())["specs"]


def test_dpa_rft_writes_the_direction_into_prompts_and_fine_tunes_on_the_best(tiny_model_dir, tmp_path):
    out = tmp_path / "dpa"
    summary = run(tiny_model_dir, out, "online.method=dpa_rft", "online.direction=[3, 4]", "max_length=192",
                  "max_prompt_length=120", *JUDGE)
    tok = load_tokenizer(str(tiny_model_dir))
    samples = load_samples(out / "rounds/round-0/samples/main-00000.json")
    assert "helpfulness*0.60 + verbosity*0.80" in tok.decode(samples[0].prompt_ids)
    by_prompt: dict[int, list] = {}
    for s in samples:
        by_prompt.setdefault(s.prompt_index, []).append(s)
    for spec in specs_of(out):
        group = by_prompt[spec["prompt"]]
        texts = [tok.decode(s.response_ids[:-1] if s.finished else s.response_ids, skip_special_tokens=True)
                 for s in group]
        best = max(range(len(texts)), key=lambda k: (len(texts[k]), -k))
        assert spec["kind"] == "sft" and spec["rows"] == [["main", best]]
    assert summary["objective"] == "sft" and summary["rounds"][0]["labels"]["examples"] == 4


def test_selm_ranks_a_greedy_sample_with_the_data_pair(tiny_model_dir, tmp_path):
    out = tmp_path / "selm"
    run(tiny_model_dir, out, "online.method=selm", *JUDGE)
    samples = load_samples(out / "rounds/round-0/samples/greedy-00000.json")
    assert len(samples) == 4 and all(s.sample_index == 0 for s in samples)
    for spec in specs_of(out):
        assert spec["ref_sample"] == ["greedy", 0]
        assert all(ref[0] in ("greedy", "data") for ref in spec["rows"])


def test_sppo_lists_carry_win_rates_and_previous_reference(tiny_model_dir, tmp_path):
    out = tmp_path / "sppo"
    summary = run(tiny_model_dir, out, "online.method=sppo", "online.samples_per_prompt=3", "objective_args={eta: 2}",
                  *JUDGE)
    for spec in specs_of(out):
        assert spec["kind"] == "list" and len(spec["rows"]) == 3
        assert sum(spec["target"]) == pytest.approx(1.5)  # win rates with the diagonal sum to K / 2
    assert summary["reference"] == "previous"


def test_the_policy_judges_itself_with_its_implicit_reward(tiny_model_dir, tmp_path):
    # the policy as its own judge: every implicit reward is 0 while it equals its reference, so round 0
    # has only ties and trains nothing (said, not skipped silently)
    out = tmp_path / "self"
    summary = run(tiny_model_dir, out, "online.method=online_dpo", "online.judge=implicit_reward")
    assert summary["rounds"][0]["labels"]["dropped_by_reason"] == {"tie": 4}
    assert not (out / "rounds/round-0/train").exists()
    # against another reference its implicit rewards differ, and the round trains on them
    other = tmp_path / "other"
    build_tiny_llama(other, load_tokenizer(str(tiny_model_dir)), seed=1)
    summary = run(tiny_model_dir, tmp_path / "self2", "online.method=online_dpo", "online.judge=implicit_reward",
                  f"reference_model={other}")
    assert summary["rounds"][0]["labels"]["examples"] == 4


def test_lora_online_run_with_previous_iterate_reference(tiny_model_dir, tmp_path):
    out = tmp_path / "lora"
    summary = run(tiny_model_dir, out, "online.method=iterative_dpo", "online.reference=previous",
                  "online.samples_per_prompt=3", "online.rounds=2", "lora=true", "lora_r=4", "lora_alpha=8", *JUDGE)
    assert (out / "final" / "adapter_model.safetensors").exists()
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    assert all({"kl", "topk_entropy", "topk_mass", "judge_score", "win_vs_initial"} <= set(r["eval"])
               for r in summary["rounds"])


def test_nash_md_pairs_a_policy_sample_with_a_mixture_sample(tiny_model_dir, tmp_path):
    out = tmp_path / "nash"
    summary = run(tiny_model_dir, out, "online.method=nash_md", *JUDGE)
    for source in ("policy", "mixture"):
        assert len(load_samples(out / f"rounds/round-0/samples/{source}-00000.json")) == 4
    for spec in specs_of(out):
        assert spec["rows"] == [["policy", 0], ["mixture", 0]] and 0.0 <= spec["soft_label"] <= 1.0
    assert summary["objective"] == "nash_md" and summary["rounds"][0]["trained"]


def test_sami_scores_every_response_under_every_constitution(tiny_model_dir, tmp_path):
    out = tmp_path / "sami"
    constitutions = "online.constitutions=['Answer kindly.', 'Answer rudely.']"
    summary = run(tiny_model_dir, out, "online.method=sami", constitutions, "max_length=128")
    tok = load_tokenizer(str(tiny_model_dir))
    kind = load_samples(out / "rounds/round-0/samples/c0-00000.json")
    rude = load_samples(out / "rounds/round-0/samples/c1-00000.json")
    assert tok.decode(kind[0].prompt_ids).startswith("<|bos|>Answer kindly.")
    assert tok.decode(rude[0].prompt_ids).startswith("<|bos|>Answer rudely.")
    for spec in specs_of(out):
        assert spec["rows"] == [["c0", 0, "c0"], ["c1", 0, "c0"], ["c0", 0, "c1"], ["c1", 0, "c1"]]
    assert summary["rounds"][0]["trained"] and "judge_score" not in summary["rounds"][0]["eval"]


def test_self_rewarding_trains_scir_on_the_pairs_both_judges_agree_on(tiny_model_dir, tmp_path):
    """The preset's objective is scir (DPO + SCIR's consistency term); a length judge stands in for the
    policy's rubric, and the implicit reward (against another reference, so it is not all ties) filters."""
    other = tmp_path / "other"
    build_tiny_llama(other, load_tokenizer(str(tiny_model_dir)), seed=1)
    out = tmp_path / "scir"
    summary = run(tiny_model_dir, out, "online.method=self_rewarding", *JUDGE, "online.judge_on_policy=false",
                  f"reference_model={other}", "online.prompts_per_round=8")
    assert summary["objective"] == "scir" and summary["objective_params"] == {"beta": 0.1, "consistency": 1.0}
    labels = summary["rounds"][0]["labels"]
    assert labels["examples"] >= 1 and labels["examples"] + labels["dropped"] == 8
    assert all(0.5 < spec["soft_label"] <= 1.0 for spec in specs_of(out))  # the judge's P of the kept side
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("consistency_kl" in line for line in lines)
