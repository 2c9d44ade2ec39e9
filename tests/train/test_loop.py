"""Loop invariants on a tiny Llama and real HH-RLHF pairs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prefalign.config import load_config
from prefalign.recipes.policy import train
from prefalign.train.checkpoint import checkpoints
from prefalign.train.loop import NonFiniteLossError

ROOT = Path(__file__).resolve().parents[2]


def config(model_dir, out, *overrides, data=None):
    base = [f"model={model_dir}", f"data.train={data or ROOT / 'tests/fixtures/hh_harmless_64.jsonl'}",
            f"output_dir={out}", "max_steps=6", "batch_size=4", "learning_rate=1e-3", "max_length=96",
            "max_prompt_length=64", "logging_steps=1", "data.eval_fraction=0.25", "progress=false",
            "warmup_ratio=0", f"ref_cache_dir={out}/../refcache"]
    return load_config(None, base + list(overrides))


def metrics(out) -> list[dict]:
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def train_losses(out) -> list[float]:
    return [m["loss"] for m in metrics(out) if "loss" in m]


def test_first_loss_is_ln2_and_training_accuracy_rises(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    summary = train(config(tiny_model_dir, out, "max_steps=40", "eval_steps=0", "data.eval_fraction=0.125"))
    rows = [m for m in metrics(out) if "loss" in m]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    # the same 56 training pairs for 40 steps of 4: ~3 epochs; the model must learn to separate them
    first = sum(r["rewards/accuracy"] for r in rows[:5]) / 5
    last = sum(r["rewards/accuracy"] for r in rows[-5:]) / 5
    assert last > first + 0.2, (first, last)
    assert sum(r["rewards/margins"] for r in rows[-5:]) > 0
    assert summary["eval_start"]["eval/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert (out / "final" / "model.safetensors").exists() and (out / "summary.json").exists()
    assert (out / "config.yaml").exists()


def test_batch4_accum1_equals_batch2_accum2(tiny_model_dir, tmp_path):
    train(config(tiny_model_dir, tmp_path / "a", "batch_size=4", "gradient_accumulation_steps=1"))
    train(config(tiny_model_dir, tmp_path / "b", "batch_size=2", "gradient_accumulation_steps=2"))
    a, b = train_losses(tmp_path / "a"), train_losses(tmp_path / "b")
    assert len(a) == len(b) == 6
    assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.parametrize("objective", ["dpo", "sparsepo"])
def test_resume_after_interruption_equals_uninterrupted_run(objective, tiny_model_dir, tmp_path, monkeypatch):
    """sparsepo also trains its mask head (with dropout): the head and its optimizer state must resume too."""
    args = ("max_steps=8", "save_steps=4", f"objective={objective}")
    train(config(tiny_model_dir, tmp_path / "full", *args))
    import prefalign.train.loop as loop

    real, calls = loop.check_finite, {"n": 0}

    def killed_in_step_6(*args):  # called once per optimizer step, before the update
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt("killed")
        return real(*args)

    monkeypatch.setattr(loop, "check_finite", killed_in_step_6)
    with pytest.raises(KeyboardInterrupt):
        train(config(tiny_model_dir, tmp_path / "part", *args))
    monkeypatch.setattr(loop, "check_finite", real)
    assert [p.name for p in checkpoints(tmp_path / "part")] == ["checkpoint-4"]
    lines = [m for m in metrics(tmp_path / "part") if "loss" in m]
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5]  # step 5 was logged, step 6 died
    if objective == "sparsepo":
        assert (tmp_path / "part" / "checkpoint-4" / "mask_head.safetensors").exists()
    train(config(tiny_model_dir, tmp_path / "part", *args, "resume=true"))
    full = train_losses(tmp_path / "full")
    resumed = [m["loss"] for m in metrics(tmp_path / "part") if "loss" in m]
    resumed = resumed[:4] + resumed[5:]  # drop the killed run's step 5: the resumed run redoes it
    assert len(full) == 8 and len(resumed) == 8
    assert resumed == pytest.approx(full, abs=1e-6)
    if objective == "sparsepo":  # the final head is saved beside the final model, the same in both runs
        from prefalign.models.causal_lm import load_mask_head

        heads = [load_mask_head(tmp_path / run / "final").state_dict() for run in ("full", "part")]
        assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])


def test_reference_features_need_a_live_reference(tiny_model_dir, tmp_path):
    for objective in ("sparsepo", "sparsepo_act"):
        with pytest.raises(ValueError, match="precompute_ref cannot cache"):
            train(config(tiny_model_dir, tmp_path / objective, f"objective={objective}", "precompute_ref=true"))
        assert not (tmp_path / objective / "final").exists()


def test_checkpoints_rotate_and_a_crashed_save_leaves_no_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(config(tiny_model_dir, out, "max_steps=6", "save_steps=2", "keep_last=2"))
    assert [p.name for p in checkpoints(out)] == ["checkpoint-4", "checkpoint-6"]
    ck = checkpoints(out)[-1]
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng.json", "rng.safetensors",
                 "trainer_state.json"):
        assert (ck / name).exists(), name
    assert json.loads((ck / "trainer_state.json").read_text())["step"] == 6

    import prefalign.train.checkpoint as ckpt

    real_save = torch.save

    def crash_on_optimizer(obj, path, *a, **k):
        if str(path).endswith("optimizer.pt"):
            raise OSError("disk full (simulated)")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", crash_on_optimizer)
    out2 = tmp_path / "crash"
    with pytest.raises(OSError, match="simulated"):
        train(config(tiny_model_dir, out2, "max_steps=4", "save_steps=2"))
    assert checkpoints(out2) == [] and not (out2 / "checkpoint-2").exists()
    assert not (out2 / "final").exists()


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_last_checkpoint(tiny_model_dir, tmp_path,
                                                                              monkeypatch):
    import prefalign.train.loop as loop

    real = loop.reduce_loss
    calls = {"n": 0}

    def poisoned(per_example, n):
        calls["n"] += 1
        loss = real(per_example, n)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(loop, "reduce_loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 5.*checkpoint-4"):
        train(config(tiny_model_dir, out, "max_steps=6", "save_steps=2"))
    assert [p.name for p in checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]


def test_precomputed_reference_equals_frozen_and_is_cached(tiny_model_dir, tmp_path):
    train(config(tiny_model_dir, tmp_path / "frozen", "reference=frozen"))
    s1 = train(config(tiny_model_dir, tmp_path / "pre1", "precompute_ref=true"))
    s2 = train(config(tiny_model_dir, tmp_path / "pre2", "precompute_ref=true"))
    assert s1["reference"] == "precomputed" and s1["reference_cache_hit"] is False
    assert s2["reference_cache_hit"] is True
    assert train_losses(tmp_path / "pre1") == pytest.approx(train_losses(tmp_path / "frozen"), abs=1e-5)
    assert train_losses(tmp_path / "pre2") == pytest.approx(train_losses(tmp_path / "pre1"), abs=1e-7)
    cached = list((tmp_path / "refcache").glob("reflogps-*.shards"))  # one folder of shards per cache
    assert len(cached) == 1
    # other tokenization settings are another key: no stale reuse
    s3 = train(config(tiny_model_dir, tmp_path / "pre3", "precompute_ref=true", "max_length=80"))
    assert s3["reference_cache_hit"] is False and len(list((tmp_path / "refcache").glob("*.shards"))) == 2


def test_objective_data_mismatch_fails_before_training(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="needs \\['unpaired'\\] examples"):
        train(config(tiny_model_dir, tmp_path / "x", "objective=kto"))


@pytest.mark.parametrize("objective", ["dpo", "sparsepo"])
def test_two_processes_equal_one_process_with_twice_the_batch(objective, tiny_model_dir, tmp_path):
    """Two gloo processes on the CPU vs one process, batch 2 x 2 == 4.

    accelerate 1.x's `launch --cpu --num_processes 2` starts one process unless MPI is set up;
    `--multi_gpu` with ACCELERATE_USE_CPU=1 runs torchrun with the gloo backend instead.
    sparsepo: the token KL and the mask head (no dropout here: each process draws its own) must
    get their gradients synchronised like the model's.
    Seen failing once under load; causes removed: the rendezvous port is picked free by accelerate
    (--main_process_port 0) instead of a fixed one that a concurrent session (CI job, another
    checkout) may take between accelerate's in-use check and torchrun's bind, a window that load
    widens; the subprocess limit is a hang guard far above a loaded machine's start-up time; and
    both sides run one thread, so only the batch split (padding, the gloo sum) separates their
    float arithmetic."""
    script = tmp_path / "job.py"
    script.write_text(
        "import sys\nfrom prefalign.config import load_config\nfrom prefalign.recipes.policy import train\n"
        "train(load_config(None, sys.argv[1:]))\n")
    common = [f"model={tiny_model_dir}", f"data.train={ROOT / 'tests/fixtures/hh_harmless_64.jsonl'}",
              "max_steps=4", "learning_rate=1e-3", "max_length=96", "max_prompt_length=64", "logging_steps=1",
              "data.eval_fraction=0.25", "progress=false", "warmup_ratio=0", f"objective={objective}",
              "mask_head_dropout=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"), "ACCELERATE_USE_CPU": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              "0"]
    two = subprocess.run(launch + [str(script), *common, "batch_size=2", f"output_dir={tmp_path / 'two'}"],
                         env=env, capture_output=True, text=True, timeout=1200)
    assert two.returncode == 0, two.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the launched processes (OMP_NUM_THREADS=1)
    try:
        train(load_config(None, common + ["batch_size=4", f"output_dir={tmp_path / 'one'}"]))
    finally:
        torch.set_num_threads(threads)
    m2, m1 = metrics(tmp_path / "two"), metrics(tmp_path / "one")
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["num_processes"] == 2
    for key in ("loss", "rewards/accuracy", "rewards/margins", "logps/chosen", "grad_norm"):
        a = [m[key] for m in m1 if key in m]
        b = [m[key] for m in m2 if key in m]
        assert len(a) == len(b) == 4 and a == pytest.approx(b, rel=1e-4, abs=1e-5), key
    e1, e2 = ([m for m in ms if "eval/loss" in m][-1] for ms in (m1, m2))
    assert e1["eval/loss"] == pytest.approx(e2["eval/loss"], rel=1e-4)


def test_reference_model_is_used_for_frozen_and_precomputed(tiny_model_dir, tokenizer, tmp_path):
    """A reference other than the policy's start: the first loss is no longer ln 2, and the frozen
    and precomputed paths agree on it."""
    from conftest import build_tiny_llama

    other = tmp_path / "other-ref"
    build_tiny_llama(other, tokenizer, seed=7)
    frozen = train(config(tiny_model_dir, tmp_path / "f", f"reference_model={other}", "max_steps=2"))
    pre = train(config(tiny_model_dir, tmp_path / "p", f"reference_model={other}", "precompute_ref=true",
                       "max_steps=2"))
    first = train_losses(tmp_path / "f")[0]
    assert abs(first - math.log(2)) > 1e-3
    assert train_losses(tmp_path / "p") == pytest.approx(train_losses(tmp_path / "f"), abs=1e-5)
    assert frozen["eval_start"]["eval/loss"] == pytest.approx(pre["eval_start"]["eval/loss"], abs=1e-5)
    with pytest.raises(ValueError, match="adapter_off uses the policy's base weights"):
        train(config(tiny_model_dir, tmp_path / "x", f"reference_model={other}", "reference=adapter_off",
                     "lora=true"))
