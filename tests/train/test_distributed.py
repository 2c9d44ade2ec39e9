"""Scale presets that are tested: FSDP2 on two gloo processes (full fine-tune and LoRA) against one
process, the accelerate presets in examples/accelerate/, and gradient checkpointing and bf16 autocast
against fp32 log-probs.

Why FSDP2 is driven through torch here and not through `accelerate launch --config_file fsdp2.yaml`:
accelerate 1.15 turns a run into FSDP only from a GPU-like distributed type (AcceleratorState switches
MULTI_GPU/NPU/XPU/... to DistributedType.FSDP); on the CPU (MULTI_CPU, gloo) it ignores the FSDP
plugin and trains plain data-parallel, and without ACCELERATE_USE_CPU and no GPU each process trains
alone (DistributedType.NO). torch's fully_shard itself runs on gloo, so the worker applies it the way
accelerate's FSDP2 preset does (every decoder layer of the model's _no_split_modules, then the root)
around prefalign's own step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prefalign.data.formats.readers import load_examples
from prefalign.features import tokenize
from prefalign.models.causal_lm import PolicyLogps, load_model, model_args
from prefalign.train.loop import make_batch

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "fixtures" / "hh_harmless_64.jsonl"
PRESETS = ROOT / "examples" / "accelerate"
BF16_UNIT_ROUNDOFF = 2.0 ** -8  # 8 significant bits


def test_fsdp2_two_gloo_processes_train_like_one(tiny_model_dir, tmp_path):
    """3 DPO steps of 4 pairs: two sharded processes of 2 pairs each vs one unsharded process of 4,
    full fine-tune and LoRA (adapter-off reference). Both processes run one thread, so only the
    batch split (padding, the gloo reduction) separates their float arithmetic: 1e-5."""
    sys.path.insert(0, str(Path(__file__).parent))
    import fsdp_worker

    out = tmp_path / "two.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(Path(fsdp_worker.__file__)), str(tiny_model_dir), str(DATA), str(out)],
                         env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    two = json.loads(out.read_text())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = {name: fsdp_worker.train(str(tiny_model_dir), str(DATA), name == "lora", 1, 0) for name in two}
    finally:
        torch.set_num_threads(threads)
    for name in ("full", "lora"):
        a, b = one[name], two[name]
        assert b["world"] == 2 and b["sharded_params"] == b["trainable"] > 0, name  # really sharded
        assert a["sharded_params"] == 0
        assert a["lean_mlps"] == b["lean_mlps"] == 2, name  # the default lean MLP runs sharded too
        assert a["losses"] == pytest.approx(b["losses"], abs=1e-5), name
        assert a["grad_norms"] == pytest.approx(b["grad_norms"], rel=1e-5), name
        moved = max(abs(x) for x in a["params"])
        assert moved > 0 and torch.allclose(torch.tensor(a["params"]), torch.tensor(b["params"]), atol=1e-5), name
    assert len(one["lora"]["params"]) < len(one["full"]["params"])  # LoRA trains the adapter only


@pytest.mark.parametrize("preset, kind", [("ddp", "MULTI_GPU"), ("fsdp2", "FSDP"), ("zero2", "DEEPSPEED"),
                                          ("zero3", "DEEPSPEED")])
def test_accelerate_presets_load_as_accelerate_reads_them(preset, kind):
    """accelerate's own config reader builds each preset (it rejects unknown keys), with the settings
    the file's comments promise."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(PRESETS / f"{preset}.yaml"))
    assert str(config.distributed_type).endswith(kind)
    if preset == "fsdp2":
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == int(preset[-1])
        assert config.deepspeed_config["gradient_clipping"] == 1.0


def sharp_batch(model_dir):
    """A batch of 4 fixture pairs and the tiny model with its output projection scaled up: a random
    tiny model predicts nearly uniformly (logits ~ 0), where rounding barely shows."""
    from prefalign.models.causal_lm import load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    examples, _ = load_examples(DATA)
    examples = tokenize(examples[:4], tokenizer, max_length=96, max_prompt_length=64)
    return make_batch(examples, [0, 1, 2, 3], tokenizer.pad_token_id)


def sharpen(model):
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    return model


def test_gradient_checkpointing_gives_the_fp32_log_probs_and_gradients(tiny_model_dir):
    """load_model(gradient_checkpointing=True) recomputes each decoder layer in backward (its forward
    runs twice) and changes nothing else: the same fp32 arithmetic, so log-probs and gradients agree
    to fp32 rounding (1e-6 relative)."""
    batch = sharp_batch(tiny_model_dir)
    results = {}
    for checkpointing in (False, True):
        model = sharpen(load_model(str(tiny_model_dir), gradient_checkpointing=checkpointing)).train()
        calls = []
        # transformers checkpoints the layer's forward (its own hooks stay outside), and the recompute
        # stops once the saved tensors are back: count calls into the layer's first submodule
        model.model.layers[0].input_layernorm.register_forward_pre_hook(lambda *a: calls.append(1))
        logps = PolicyLogps(model)(*model_args(batch))
        logps.sum().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results[checkpointing] = (logps.detach(), grads, len(calls))
    (plain, plain_grads, plain_calls), (ckpt, ckpt_grads, ckpt_calls) = results[False], results[True]
    assert (plain_calls, ckpt_calls) == (1, 2)
    assert torch.allclose(ckpt, plain, rtol=1e-6, atol=1e-6)
    assert torch.allclose(ckpt_grads, plain_grads, rtol=1e-5, atol=1e-7)


def test_bf16_autocast_log_probs_within_the_rounding_bound_of_fp32(tiny_model_dir):
    """bf16 autocast (mixed_precision=bf16 on the CPU) against fp32, token by token.

    The bound: a log-softmax moves by at most 2 max_j |dz_j| when the logits z move by dz. A bf16
    matmul rounds both inputs and its output, each to relative u = 2^-8, so the output projection
    moves logit j by at most about 3u sum_k |W_jk h_k|; each of the L decoder layers feeds the head a
    hidden state rounded the same way, so with no cancellation assumed,
    |d logp_t| <= 2 (L + 1) 3u max_j sum_k |W_jk h_tk| at each position t (h, W in fp32).
    Sequence sums: the sum of their tokens' bounds. Log-probs stay fp32 (the loss reads them)."""
    batch = sharp_batch(tiny_model_dir)
    model = sharpen(load_model(str(tiny_model_dir))).eval()
    policy = PolicyLogps(model)
    with torch.no_grad():
        fp32 = policy(*model_args(batch))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = policy(*model_args(batch))
        hidden = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        reach = (hidden.abs() @ model.lm_head.weight.abs().T).amax(-1)  # [N, T]: max_j sum_k |W_jk h_tk|
    layers = model.config.num_hidden_layers
    # token t is predicted from position t - 1's hidden state
    bound = torch.zeros_like(reach)
    bound[:, 1:] = 2 * (layers + 1) * 3 * BF16_UNIT_ROUNDOFF * reach[:, :-1]
    scored = batch.response_mask.bool()
    scored[:, 0] = False
    assert bf16.dtype == torch.float32
    error = (bf16 - fp32).abs()
    assert error[scored].max() > 0  # autocast really ran in bf16
    assert (error[scored] <= bound[scored]).all()
    assert ((bf16.sum(1) - fp32.sum(1)).abs() <= (bound * scored).sum(1)).all()
