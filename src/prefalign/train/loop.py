"""The one training loop for every offline objective.

It only calls components that `prefalign.run` built: a prepared policy, optimizer and
scheduler, a reference provider, an objective and tokenized data. Batches of one optimizer
step are cut from a seeded permutation that every process computes identically; process p
takes slice p of each global micro-batch, so P processes with batch b see exactly the data of
one process with batch P*b.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from prefalign.data.collate import epoch_batches, to_device
from prefalign.features import collate
from prefalign.logging import Progress
from prefalign.losses import Objective
from prefalign.train.checkpoint import checkpoints, load_checkpoint, save_checkpoint
from prefalign.train.metrics import MetricAccumulator
from prefalign.train.reduce import reduce_loss
from prefalign.train.step import forward_batch, run_objective


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class Components:
    accelerator: object
    policy: torch.nn.Module  # PolicyLogps, prepared
    optimizer: object
    scheduler: object
    objective: Objective
    objective_params: dict
    reference: object | None  # callable(batch) -> token logps, with .features(batch, ...); or None
    train_set: list
    eval_set: list
    pad_id: int
    tokenizer: object
    sinks: list
    pad_multiple: int = 1
    overopt: object | None = None  # diagnostics.overoptimization.OveroptMonitor, or None
    # Other trainees (reward models) plug in here; None keeps the policy path (make_batch, objective).
    build_batch: Callable | None = None  # (examples, indices) -> batch dict with an attention_mask
    compute_loss: Callable | None = None  # (prepared model, batch) -> (per-example losses [B], metric sums)


@dataclass
class LoopSettings:
    out_dir: Path
    max_steps: int
    batch_size: int
    accumulation: int
    max_grad_norm: float
    seed: int
    save_steps: int
    keep_last: int
    eval_steps: int
    eval_batch_size: int
    logging_steps: int
    group_by_length: bool
    resume: bool
    progress: bool


def make_batch(examples: list, indices: list[int], pad_id: int, features=(), pad_multiple: int = 1):
    """The examples at `indices` collated with what the suppliers of `features` add."""
    return collate([examples[i] for i in indices], pad_id, features, pad_multiple)


def micro_batch(c: Components, examples: list, indices: list[int]):
    if c.build_batch is not None:
        return c.build_batch(examples, indices)
    return make_batch(examples, indices, c.pad_id, c.objective.features, c.pad_multiple)


def micro_loss(c: Components, batch: dict) -> tuple[torch.Tensor, dict]:
    """Per-example losses [B] and metric sums of one micro-batch."""
    if c.compute_loss is not None:
        return c.compute_loss(c.policy, batch)
    seq = forward_batch(c.policy, batch, c.reference, c.objective)
    out, metrics = run_objective(c.objective, seq, c.objective_params)
    return out.per_example, metrics


@torch.no_grad()
def evaluate(c: Components, batch_size: int) -> dict[str, float]:
    acc = MetricAccumulator()
    rank, world = c.accelerator.process_index, c.accelerator.num_processes
    c.policy.eval()
    mine = list(range(rank, len(c.eval_set), world))
    for s in range(0, len(mine), batch_size):
        idx = mine[s:s + batch_size]
        batch = to_device(micro_batch(c, c.eval_set, idx), c.accelerator.device)
        with c.accelerator.autocast():
            _, metrics = micro_loss(c, batch)
        acc.add(metrics)
    c.policy.train()
    return {f"eval/{k}": v for k, v in acc.reduce(c.accelerator).items()}


def log(c: Components, step: int, metrics: dict) -> None:
    if c.accelerator.is_main_process:
        for sink in c.sinks:
            sink.log(step, metrics)


def train_loop(c: Components, s: LoopSettings) -> dict:
    acc = c.accelerator
    world, rank = acc.num_processes, acc.process_index
    unwrapped = acc.unwrap_model(c.policy)
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0}
    if s.resume and checkpoints(s.out_dir):
        last = checkpoints(s.out_dir)[-1]
        state = load_checkpoint(last, unwrapped.model, c.optimizer, c.scheduler, unwrapped.mask_head)
        acc.print(f"resumed from {last} at step {state['step']}")
    lengths = [e.max_len for e in c.train_set]
    global_micro = s.batch_size * world
    examples_per_step = s.batch_size * s.accumulation
    history = {"eval_start": evaluate(c, s.eval_batch_size) if c.eval_set and state["step"] == 0 else {}}
    if history["eval_start"]:
        log(c, state["step"], history["eval_start"])
    if c.overopt is not None and state["step"] == 0:  # the baseline the over-optimisation threshold is relative to
        c.overopt.at_step(0, acc, unwrapped.model, lambda m: log(c, 0, m))
    progress = Progress(s.max_steps, state["step"], s.progress and acc.is_main_process)
    window, tokens, padded, t0, last_good = MetricAccumulator(), 0, 0, time.perf_counter(), None
    window_steps = 0
    c.policy.train()
    while state["step"] < s.max_steps:
        batches = epoch_batches(len(c.train_set), global_micro, s.seed, state["epoch"], lengths, s.group_by_length)
        if len(batches) < s.accumulation:
            raise ValueError(f"{len(c.train_set)} training examples cannot fill one step of "
                             f"{examples_per_step * world} examples; lower batch_size or accumulation")
        while state["batch_in_epoch"] + s.accumulation <= len(batches) and state["step"] < s.max_steps:
            step_batches = batches[state["batch_in_epoch"]: state["batch_in_epoch"] + s.accumulation]
            step_loss = torch.zeros((), device=acc.device)
            for i, global_idx in enumerate(step_batches):
                idx = global_idx[rank * s.batch_size:(rank + 1) * s.batch_size]
                batch = micro_batch(c, c.train_set, idx)
                mask = batch["attention_mask"] if isinstance(batch, dict) else batch.attention_mask
                tokens += int(mask.sum())  # counted on the host, before the copy
                padded += mask.numel()
                batch = to_device(batch, acc.device)
                sync = i == s.accumulation - 1
                with (contextlib.nullcontext() if sync else acc.no_sync(c.policy)), acc.autocast():
                    per_example, metrics = micro_loss(c, batch)
                    loss = reduce_loss(per_example, examples_per_step)
                acc.backward(loss)
                step_loss = step_loss + loss.detach()
                window.add(metrics)
            # one host sync per step: a non-finite loss is caught before the update reaches the weights
            check_finite(acc, step_loss, state["step"] + 1, s.out_dir, last_good)
            grad_norm = clip_and_norm(acc, c.policy, s.max_grad_norm)
            c.optimizer.step()
            c.scheduler.step()
            c.optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            state["batch_in_epoch"] += s.accumulation
            step = state["step"]
            window_steps += 1
            if step % s.logging_steps == 0 or step == s.max_steps:
                elapsed = time.perf_counter() - t0
                stats = window.reduce(acc)
                counts = acc.reduce(torch.tensor([tokens, padded], device=acc.device, dtype=torch.float64),
                                    reduction="sum").tolist() if world > 1 else [tokens, padded]
                stats.update({"grad_norm": grad_norm, "learning_rate": c.scheduler.get_last_lr()[0],
                              "tokens_per_s": counts[0] / elapsed, "padded_tokens_per_s": counts[1] / elapsed,
                              "tokens": counts[0], "padded_tokens": counts[1],
                              "step_time_s": elapsed / window_steps, "epoch": state["epoch"]})
                log(c, step, stats)
                progress.update(0, loss=stats["loss"], acc=stats.get("rewards/accuracy", float("nan")),
                                tok_s=stats["tokens_per_s"])
                window, tokens, padded, t0, window_steps = MetricAccumulator(), 0, 0, time.perf_counter(), 0
            if s.eval_steps and step % s.eval_steps == 0 and c.eval_set and step != s.max_steps:
                log(c, step, evaluate(c, s.eval_batch_size))
            if s.save_steps and step % s.save_steps == 0:
                save_step_checkpoint(c, s, state)
                last_good = s.out_dir / f"checkpoint-{step}"
            progress.update(1)
            if c.overopt is not None and c.overopt.due(step, s.max_steps) and \
                    c.overopt.at_step(step, acc, unwrapped.model, lambda m: log(c, step, m)):
                break  # likelihood over-optimisation: the monitor kept the last healthy model
        if c.overopt is not None and c.overopt.stopped_at is not None:
            break
        if state["step"] < s.max_steps:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
    progress.close()
    history["eval_end"] = evaluate(c, s.eval_batch_size) if c.eval_set else {}
    if history["eval_end"]:
        log(c, state["step"], history["eval_end"])
    history["state"] = state
    return history


def save_step_checkpoint(c: Components, s: LoopSettings, state: dict) -> None:
    acc = c.accelerator
    acc.wait_for_everyone()
    if acc.is_main_process:
        unwrapped = acc.unwrap_model(c.policy)
        save_checkpoint(s.out_dir, state["step"], unwrapped.model, c.tokenizer, c.optimizer,
                        c.scheduler, dict(state), s.keep_last, unwrapped.mask_head)
    acc.wait_for_everyone()


def check_finite(acc, loss: torch.Tensor, step: int, out_dir: Path, last_good) -> None:
    """Stop on NaN/inf before it reaches the weights; every process agrees, none hangs."""
    bad = torch.tensor([0.0 if torch.isfinite(loss.detach()) else 1.0], device=acc.device)
    if acc.num_processes > 1:
        bad = acc.reduce(bad, reduction="sum")
    if bad.item() > 0:
        kept = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
        raise NonFiniteLossError(f"non-finite loss at step {step}: training stopped before the update; {kept}. "
                                 f"Lower learning_rate or beta, or check the data (run folder {out_dir}).")


def clip_and_norm(acc, policy, max_norm: float) -> float:
    params = [p for p in policy.parameters() if p.grad is not None]
    if max_norm > 0:
        return float(acc.clip_grad_norm_(params, max_norm))
    return float(torch.norm(torch.stack([p.grad.detach().float().norm() for p in params]))) if params else 0.0


def cosine_or_linear(kind: str, warmup: int, total: int):
    """LR multiplier: linear warm-up, then cosine/linear decay to 0 or constant."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if kind == "linear":
            return max(0.0, 1 - progress)
        return 1.0

    return factor
