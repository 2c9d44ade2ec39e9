"""`prefalign train` for a model family other than causal_lm (family: diffusion, ...).

The same run folder, optimizer, scheduler, loop, checkpoints, exact resume, metrics and
summary.json as the LM recipe (recipes/policy.py); only the model, the data and the score come
from the family (families/base.py). The reference is a frozen copy of the starting weights.
"""

from __future__ import annotations

import copy
import json
import time

from prefalign.config import TrainConfig, to_dict
from prefalign.families.base import FamilyTrainee, check_trainable, get_family
from prefalign.losses import get_objective
from prefalign.recipes.policy import objective_params
from prefalign.recipes.setup import (end_run, keep_best, loop_settings, metric_sinks, open_run_folder,
                                     optimizer_and_scheduler, run_loop, start_run, summary_fields)
from prefalign.train.checkpoint import write_atomic
from prefalign.train.loop import LoopParts


def train_family(cfg: TrainConfig) -> dict:
    """Run one training job of a non-LM family; returns the summary also written to summary.json."""
    started = time.time()
    fam = get_family(cfg.family)(**cfg.family_args)
    obj = get_objective(cfg.objective)
    check_trainable(fam, obj)
    params = objective_params(obj, cfg.beta, cfg.objective_args)
    if obj.needs_reference and cfg.reference == "none":
        raise ValueError(f"objective {obj.name!r} needs a reference model; reference=none is not possible")
    acc, out_dir, earlier = start_run(cfg, "train")
    train_set, eval_set, data_report = fam.load_examples(cfg.data.train, cfg.data.eval, cfg.data.eval_fraction,
                                                         cfg.seed)
    if cfg.data.max_examples:
        train_set = train_set[: cfg.data.max_examples]
    module = fam.init_model(cfg.model)
    # the reference is the starting weights, frozen (a family scores it with the policy's noise draw)
    reference = copy.deepcopy(module).eval().requires_grad_(False).to(acc.device) if obj.needs_reference else None
    optimizer, scheduler = optimizer_and_scheduler([p for p in module.parameters() if p.requires_grad], cfg)
    module, optimizer = acc.prepare(module, optimizer)
    trainee = FamilyTrainee(acc, fam, module, reference, obj, params)
    open_run_folder(acc, cfg, out_dir, earlier)
    sinks = metric_sinks(acc, out_dir, cfg)
    best = keep_best(cfg, trainee, acc, out_dir)
    parts = LoopParts(acc, trainee, optimizer, scheduler, train_set, eval_set, sinks, [best] if best else [])
    history = run_loop(parts, loop_settings(cfg, out_dir, False))
    summary = {"family": fam.name, "objective": obj.name, "objective_params": params,
               "reference": "frozen" if reference is not None else "none", "data": data_report,
               **summary_fields(history, best), "wall_time_s": round(time.time() - started, 2),
               "num_processes": acc.num_processes, "config": to_dict(cfg)}
    if acc.is_main_process:
        write_atomic(out_dir / "final", trainee.save)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        summary["final_model"] = str(out_dir / "final")
    end_run(acc)
    return summary
