"""A few DPO steps of prefalign's own step (forward_batch + objective) under torch FSDP2, for
tests/train/test_distributed.py. Under torchrun each rank shards the policy the way accelerate's
FSDP2 preset does (fully_shard on every decoder layer named in the model's _no_split_modules, then
on the root) and trains on its half of each step's examples; run plainly (no torchrun) it trains
one unsharded process on the whole batch.

    python -m torch.distributed.run --standalone --nproc_per_node 2 fsdp_worker.py MODEL DATA OUT
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from prefalign.data.formats.readers import load_examples
from prefalign.features import tokenize
from prefalign.losses import get_objective
from prefalign.models.causal_lm import AdapterOffReference, FrozenReference, PolicyLogps, add_lora, load_model, \
    load_tokenizer
from prefalign.models.lean_mlp import install_lean_mlp
from prefalign.recipes.policy import objective_params
from prefalign.train.loop import make_batch
from prefalign.train.step import forward_batch, run_objective

STEPS, BATCH = 3, 4  # global examples per step; each of two ranks takes half


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def train(model_dir: str, data: str, lora: bool, world: int, rank: int) -> dict:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    tokenizer = load_tokenizer(model_dir)
    obj = get_objective("dpo")
    obj_params = objective_params(obj, 0.1, {})
    examples, _ = load_examples(data)
    examples = tokenize(examples[: STEPS * BATCH], tokenizer, max_length=96, max_prompt_length=64,
                        features=obj.features)
    model = load_model(model_dir)
    lean_mlps = install_lean_mlp(model)  # as `prefalign train` does by default (LoRA's down_proj keeps the plain one)
    if lora:
        model = add_lora(model, r=4, alpha=8)
    policy = PolicyLogps(model)
    reference = AdapterOffReference(policy) if lora else FrozenReference(model)
    base = model.get_base_model() if lora else model
    if world > 1:
        for module in base.modules():
            if type(module).__name__ in base._no_split_modules:
                fully_shard(module)
        fully_shard(policy)
    params = [p for p in policy.parameters() if p.requires_grad]
    sharded = sum(isinstance(p, torch.distributed.tensor.DTensor) for p in params)
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    losses, norms = [], []
    per_rank = BATCH // world
    for step in range(STEPS):
        start = step * BATCH + rank * per_rank
        batch = make_batch(examples, list(range(start, start + per_rank)), tokenizer.pad_token_id, obj.features)
        out, _ = run_objective(obj, forward_batch(policy, batch, reference, obj), obj_params)
        loss = out.per_example.mean()
        loss.backward()  # FSDP2 reduce-scatters the gradients as a mean over ranks
        norms.append(float(full(torch.nn.utils.clip_grad_norm_(params, 1.0))))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = loss.detach().clone()
        if world > 1:
            dist.all_reduce(value)
        losses.append(float(value) / world)
    final = torch.cat([full(p.detach()).flatten() for p in params]).tolist()
    return {"losses": losses, "grad_norms": norms, "params": final, "sharded_params": sharded,
            "trainable": len(params), "world": world, "lean_mlps": lean_mlps}


def main() -> None:
    model_dir, data, out = sys.argv[1:4]
    dist.init_process_group("gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    results = {name: train(model_dir, data, name == "lora", world, rank) for name in ("full", "lora")}
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
