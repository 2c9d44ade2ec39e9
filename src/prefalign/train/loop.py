"""The one training loop, for every trainee (a preference policy, a reward model).

It knows a trainee only through the Trainee protocol (train/trainee.py: make_batch, loss,
save, load) and calls back into evaluation, checkpointing and any Callback (best model and
early stopping, the over-optimisation monitor). Batches of one optimizer step are cut from a
seeded permutation that every process computes identically; process p takes slice p of each
global micro-batch, so P processes with batch b see exactly the data of one process with batch P*b.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prefalign.data.collate import epoch_batches, to_device
from prefalign.features import collate
from prefalign.logging import Progress
from prefalign.train.checkpoint import checkpoints, load_checkpoint, save_checkpoint
from prefalign.train.metrics import MetricAccumulator
from prefalign.train.reduce import reduce_loss


class NonFiniteLossError(RuntimeError):
    pass


class Callback:
    """Hooks the loop calls; each returns a reason to stop training early, or None.

    `state_dict` goes into every checkpoint's trainer_state.json and comes back through
    `load_state_dict` on resume, so a resumed run continues exactly where the killed one was.
    """

    name = "callback"

    def on_train_start(self, step: int) -> str | None:  # step 0: a fresh run; > 0: resumed
        return None

    def on_step_end(self, step: int) -> str | None:
        return None

    def on_evaluate(self, step: int, metrics: dict) -> str | None:
        return None

    def on_train_end(self, step: int) -> None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


@dataclass
class LoopParts:
    accelerator: object
    trainee: object  # train.trainee.Trainee
    optimizer: object
    scheduler: object
    train_set: list
    eval_set: list
    sinks: list
    callbacks: list = field(default_factory=list)


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


def make_batch(examples: list, indices: list[int], pad_id: int, features=(), pad_multiple: int = 1, pack=None):
    """The examples at `indices` collated with what the suppliers of `features` add (packed with `pack`)."""
    return collate([examples[i] for i in indices], pad_id, features, pad_multiple, pack)




@torch.no_grad()
def evaluate(p: LoopParts, batch_size: int) -> dict[str, float]:
    acc, trainee = p.accelerator, p.trainee
    metrics_sum = MetricAccumulator()
    rank, world = acc.process_index, acc.num_processes
    trainee.module.eval()
    mine = list(range(rank, len(p.eval_set), world))
    for s in range(0, len(mine), batch_size):
        batch = to_device(trainee.make_batch(p.eval_set, mine[s:s + batch_size], "eval"), acc.device)
        with acc.autocast():
            _, metrics = trainee.loss(batch)
        metrics_sum.add(metrics)
    trainee.module.train()
    return {f"eval/{k}": v for k, v in metrics_sum.reduce(acc).items()}


def log(p: LoopParts, step: int, metrics: dict) -> None:
    if p.accelerator.is_main_process:
        for sink in p.sinks:
            sink.log(step, metrics)


def first_reason(reasons) -> str | None:
    return next((r for r in reasons if r), None)


def train_loop(p: LoopParts, s: LoopSettings) -> dict:
    acc, trainee = p.accelerator, p.trainee
    world = acc.num_processes
    state = resume_state(p, s)
    lengths = [e.max_len for e in p.train_set]
    global_micro = s.batch_size * world
    examples_per_step = s.batch_size * s.accumulation
    last_eval = {}  # {step: metrics} of the latest evaluation, reused when training ends at that step

    def run_eval(step: int) -> str | None:
        metrics = evaluate(p, s.eval_batch_size)
        last_eval.clear()
        last_eval[step] = metrics
        log(p, step, metrics)
        return first_reason([cb.on_evaluate(step, metrics) for cb in p.callbacks])

    stop = None
    history = {"eval_start": {}}
    if p.eval_set and state["step"] == 0:
        stop = run_eval(0)
        history["eval_start"] = last_eval[0]
    stop = first_reason([stop] + [cb.on_train_start(state["step"]) for cb in p.callbacks])
    progress = Progress(s.max_steps, state["step"], s.progress and acc.is_main_process)
    window, counts, t0, last_good = MetricAccumulator(), [0, 0, 0], time.perf_counter(), None
    window_steps = 0
    trainee.module.train()
    while state["step"] < s.max_steps and stop is None:
        batches = epoch_batches(len(p.train_set), global_micro, s.seed, state["epoch"], lengths, s.group_by_length)
        if len(batches) < s.accumulation:
            raise ValueError(f"{len(p.train_set)} training examples cannot fill one step of "
                             f"{examples_per_step * world} examples; lower batch_size or accumulation")
        while state["batch_in_epoch"] + s.accumulation <= len(batches) and state["step"] < s.max_steps:
            step_batches = batches[state["batch_in_epoch"]: state["batch_in_epoch"] + s.accumulation]
            step_loss, *step_counts = accumulate_gradients(p, s, step_batches, window)
            counts = [a + b for a, b in zip(counts, step_counts)]
            # one host sync per step: a non-finite loss is caught before the update reaches the weights
            check_finite(acc, step_loss, state["step"] + 1, s.out_dir, last_good)
            grad_norm = clip_and_norm(acc, trainee.module, s.max_grad_norm)
            p.optimizer.step()
            p.scheduler.step()
            p.optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            state["batch_in_epoch"] += s.accumulation
            step = state["step"]
            window_steps += 1
            if step % s.logging_steps == 0 or step == s.max_steps:
                stats = window_stats(p, window, counts, time.perf_counter() - t0, window_steps)
                stats.update({"grad_norm": grad_norm, "epoch": state["epoch"]})
                log(p, step, stats)
                progress.update(0, loss=stats["loss"], acc=stats.get("rewards/accuracy", float("nan")),
                                tok_s=stats["tokens_per_s"])
                window, counts, t0, window_steps = MetricAccumulator(), [0, 0, 0], time.perf_counter(), 0
            if s.eval_steps and step % s.eval_steps == 0 and p.eval_set and step != s.max_steps:
                stop = run_eval(step)
            if s.save_steps and step % s.save_steps == 0:
                save_step_checkpoint(p, s, state)
                last_good = s.out_dir / f"checkpoint-{step}"
            progress.update(1)
            stop = first_reason([stop] + [cb.on_step_end(step) for cb in p.callbacks])
            if stop is not None:
                break
        if state["step"] < s.max_steps and stop is None:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
    progress.close()
    if stop is not None:
        acc.print(f"stopped early at step {state['step']}: {stop}")
    history["eval_end"] = {}
    if p.eval_set:  # the last weights' held-out metrics (already measured when an evaluation just ran)
        if state["step"] not in last_eval:
            run_eval(state["step"])  # training ends here: a stop reason from this evaluation changes nothing
        history["eval_end"] = last_eval[state["step"]]
    for cb in p.callbacks:
        cb.on_train_end(state["step"])
    history["state"] = state
    history["stopped_early"] = stop
    return history


def resume_state(p: LoopParts, s: LoopSettings) -> dict:
    """The data cursor to start from: a fresh run's, or the last checkpoint's (weights, optimizer,
    scheduler and every callback's state restored in place)."""
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0}
    if s.resume and checkpoints(s.out_dir):
        last = checkpoints(s.out_dir)[-1]
        state = load_checkpoint(last, p.trainee.load, p.optimizer, p.scheduler)
        saved = state.pop("callbacks", {})
        for cb in p.callbacks:
            cb.load_state_dict(saved.get(cb.name, {}))
        p.accelerator.print(f"resumed from {last} at step {state['step']}")
    return state


def accumulate_gradients(p: LoopParts, s: LoopSettings, step_batches: list, window: MetricAccumulator):
    """Forward and backward over one optimizer step's micro-batches (this process's slice of each).
    Returns the step's loss (on the device, unsynced), its real token count, the positions the model
    computed, and how many of those were padding."""
    acc, trainee = p.accelerator, p.trainee
    rank, examples_per_step = acc.process_index, s.batch_size * s.accumulation
    step_loss, tokens, padded, padding = torch.zeros((), device=acc.device), 0, 0, 0
    for i, global_idx in enumerate(step_batches):
        idx = global_idx[rank * s.batch_size:(rank + 1) * s.batch_size]
        batch = trainee.make_batch(p.train_set, idx, "train")
        # a policy's Batch or a reward model's dict batch
        mask = batch["attention_mask"] if isinstance(batch, dict) else batch.attention_mask
        tokens += int(mask.sum())  # counted on the host, before the copy
        # positions the model computes (padded or packed rows) and how many of them hold no token
        computed, placed = batch.computed_positions() if hasattr(batch, "computed_positions") else \
            (mask.numel(), int(mask.sum()))
        padded, padding = padded + computed, padding + computed - placed
        batch = to_device(batch, acc.device)
        sync = i == s.accumulation - 1
        with (contextlib.nullcontext() if sync else acc.no_sync(trainee.module)), acc.autocast():
            per_example, metrics = trainee.loss(batch)
            loss = reduce_loss(per_example, examples_per_step)
        acc.backward(loss)
        step_loss = step_loss + loss.detach()
        window.add(metrics)
    return step_loss, tokens, padded, padding


def window_stats(p: LoopParts, window: MetricAccumulator, counts: list[int], elapsed: float, steps: int) -> dict:
    """The logging window's metrics reduced over processes, with throughput and learning rate.
    counts: real tokens, positions computed (padded or packed rows), padding among those."""
    acc = p.accelerator
    stats = window.reduce(acc)
    counts = acc.reduce(torch.tensor(counts, device=acc.device, dtype=torch.float64),
                        reduction="sum").tolist() if acc.num_processes > 1 else counts
    stats.update({"learning_rate": p.scheduler.get_last_lr()[0], "tokens_per_s": counts[0] / elapsed,
                  "padded_tokens_per_s": counts[1] / elapsed, "tokens": counts[0], "padded_tokens": counts[1],
                  "tokens/padding_share": counts[2] / max(counts[1], 1), "step_time_s": elapsed / steps})
    return stats


def save_step_checkpoint(p: LoopParts, s: LoopSettings, state: dict) -> None:
    acc = p.accelerator
    acc.wait_for_everyone()
    if acc.is_main_process:
        saved = {**state, "callbacks": {cb.name: cb.state_dict() for cb in p.callbacks}}
        save_checkpoint(s.out_dir, state["step"], p.trainee.save, p.optimizer, p.scheduler, saved, s.keep_last)
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
