"""Likelihood over-optimisation indicators (arXiv:2410.11677) and the trainer's early stopping."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import prefalign.diagnostics.overoptimization as oo
from prefalign.config import load_config
from prefalign.diagnostics.overoptimization import OveroptMonitor, likelihood_indicators, topk_stats
from prefalign.models.causal_lm import load_model
from prefalign.recipes.policy import train

ROOT = Path(__file__).resolve().parents[2]


def test_topk_stats_of_a_known_distribution():
    """p = (1/2, 1/4, 1/8, 1/8). k=2: mass 3/4, q = (2/3, 1/3), H = ln 3 - (2/3) ln 2.
    k=4: mass 1, H = 1/2 ln 2 + 1/4 ln 4 + 2 * 1/8 ln 8 = 1.75 ln 2. k=1: mass 1/2, H = 0."""
    logits = torch.log(torch.tensor([[0.125, 0.5, 0.125, 0.25]])) + 3.0  # order and shift must not matter
    h, m = topk_stats(logits, 2)
    assert h.item() == pytest.approx(math.log(3) - 2 / 3 * math.log(2), abs=1e-6)
    assert m.item() == pytest.approx(0.75, abs=1e-6)
    h, m = topk_stats(logits, 4)
    assert (h.item(), m.item()) == pytest.approx((1.75 * math.log(2), 1.0), abs=1e-6)
    h, m = topk_stats(logits, 1)
    assert (h.item(), m.item()) == pytest.approx((0.0, 0.5), abs=1e-6)
    with pytest.raises(ValueError, match="k must be"):
        topk_stats(logits, 5)


def naive_indicators(model, tokenizer, prompt: str, response: str, k: int) -> tuple[float, float]:
    """Independent path: full logits, softmax, sort; positions found from the prompt's own token count."""
    p_ids = tokenizer(prompt)["input_ids"]
    ids = tokenizer(prompt + response)["input_ids"] + [tokenizer.eos_token_id]
    assert ids[:len(p_ids)] == p_ids  # the fixture text keeps the boundary on a token edge
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    top = probs[len(p_ids) - 1:len(ids) - 1].sort(-1, descending=True).values[:, :k]
    q = top / top.sum(-1, keepdim=True)
    return float((-(q * q.log()).sum(-1)).mean()), float(top.sum(-1).mean())


def test_indicators_along_given_responses_match_a_naive_computation(tiny_model_dir, tokenizer):
    model = load_model(str(tiny_model_dir))
    prompts = ["\n\nHuman: How do I bake bread?\n\nAssistant:", "\n\nHuman: Tell me a joke.\n\nAssistant:"]
    responses = [" You need flour, water and yeast.", " I can't think of one right now, sorry."]
    got = likelihood_indicators(model, tokenizer, prompts, k=5, responses=responses)
    want = [naive_indicators(model, tokenizer, p, r, 5) for p, r in zip(prompts, responses)]
    assert got["topk_entropy"] == pytest.approx(sum(w[0] for w in want) / 2, abs=1e-5)
    assert got["topk_mass"] == pytest.approx(sum(w[1] for w in want) / 2, abs=1e-5)
    assert got["responses"] == 2 and got["mode"] == "given responses"


def test_generated_indicators_with_k_equal_to_the_vocabulary(tiny_model_dir, tokenizer):
    """k = V: the mass is exactly 1 and the entropy is the full entropy, at most ln V."""
    model = load_model(str(tiny_model_dir))
    v = model.config.vocab_size
    got = likelihood_indicators(model, tokenizer, ["\n\nHuman: hi\n\nAssistant:"] * 3, k=v, max_new_tokens=8)
    assert got["topk_mass"] == pytest.approx(1.0, abs=1e-5)
    assert 0 < got["topk_entropy"] <= math.log(v) + 1e-6
    assert got["responses"] == 3 and 3 <= got["positions"] <= 24


def test_monitor_stops_at_the_first_fall_past_the_threshold_and_keeps_the_last_healthy_step(tmp_path):
    """threshold 0.2 of a step-0 value 2.0: healthy while >= 1.6. 1.9, 1.7 healthy; 1.5 stops."""
    saved = []
    mon = OveroptMonitor([], None, every=10, threshold=0.2, save_best=saved.append, state_path=tmp_path / "s.json")
    stops = [mon.observe(step, {"topk_entropy": v, "topk_mass": 0.9})
             for step, v in ((0, 2.0), (10, 1.9), (20, 1.7), (30, 1.5))]
    assert stops == [False, False, False, True]
    assert saved == [0, 10, 20] and mon.best_step == 20 and mon.stopped_at == 30
    s = mon.summary(tmp_path / "best")
    assert s["stopped_early"] and s["threshold_value"] == pytest.approx(1.6)
    assert "at step 30" in s["stop_reason"] and s["best_model"] == str(tmp_path / "best")
    # a resumed monitor keeps the step-0 baseline; a fresh one starts over
    assert OveroptMonitor([], None, 10, threshold=0.2, state_path=tmp_path / "s.json", resume=True).initial == 2.0
    assert OveroptMonitor([], None, 10, threshold=0.2, state_path=tmp_path / "s.json").initial is None


def test_monitor_without_threshold_only_logs():
    mon = OveroptMonitor([], None, every=5, indicator="topk_mass")
    assert not any(mon.observe(s, {"topk_entropy": 1.0, "topk_mass": v}) for s, v in ((0, 0.9), (5, 0.1)))
    assert mon.best_step is None and not mon.summary()["stopped_early"]
    assert mon.due(0, 12) and mon.due(5, 12) and not mon.due(6, 12) and mon.due(12, 12)


def config(model_dir, out, *overrides):
    base = [f"model={model_dir}", f"data.train={ROOT / 'tests/fixtures/hh_harmless_64.jsonl'}",
            f"output_dir={out}", "max_steps=6", "batch_size=4", "learning_rate=1e-3", "max_length=96",
            "max_prompt_length=64", "logging_steps=1", "data.eval_fraction=0.125", "progress=false",
            "warmup_ratio=0"]
    return load_config(None, base + list(overrides))


def losses(out) -> list[float]:
    return [m["loss"] for m in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines()) if "loss" in m]


def test_trainer_logs_indicators_without_changing_training(tiny_model_dir, tmp_path):
    train(config(tiny_model_dir, tmp_path / "plain"))
    summary = train(config(tiny_model_dir, tmp_path / "probed", "overopt_steps=4", "overopt_prompts=3",
                           "overopt_max_new_tokens=6"))
    assert losses(tmp_path / "plain") == losses(tmp_path / "probed")  # the probe samples on a forked RNG
    rows = [json.loads(x) for x in (tmp_path / "probed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "overopt/topk_entropy" in r] == [0, 4, 6]  # start, every 4, end
    assert summary["overopt"]["stopped_early"] is False and summary["steps"] == 6
    assert not (tmp_path / "probed" / "best").exists()  # no threshold: nothing to keep


def test_trainer_stops_early_and_keeps_the_last_healthy_model(tiny_model_dir, tmp_path, monkeypatch):
    """A scripted indicator 2.0, 1.9, 1.7, 1.5 at steps 0, 2, 4, 6 with a 20% threshold: stop at 6, best is 4."""
    script = iter([2.0, 1.9, 1.7, 1.5, 1.4, 1.3])
    monkeypatch.setattr(oo, "likelihood_indicators",
                        lambda *a, **k: {"topk_entropy": next(script), "topk_mass": 0.5})
    out = tmp_path / "run"
    summary = train(config(tiny_model_dir, out, "max_steps=10", "save_steps=2", "keep_last=10", "overopt_steps=2",
                           "overopt_stop=0.2"))
    assert summary["steps"] == 6
    o = summary["overopt"]
    assert o["stopped_early"] and o["best_step"] == 4 and o["best_model"] == str(out / "best")
    assert json.loads((out / "summary.json").read_text())["overopt"]["best_step"] == 4
    best = load_file(str(out / "best" / "model.safetensors"))
    at4 = load_file(str(out / "checkpoint-4" / "model.safetensors"))
    at6 = load_file(str(out / "checkpoint-6" / "model.safetensors"))
    assert all(torch.equal(best[k], at4[k]) for k in at4)
    assert not all(torch.equal(best[k], at6[k]) for k in at6)
