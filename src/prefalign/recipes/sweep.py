"""`prefalign sweep`: one training config run over a grid of values, then one comparison report.

Every cell of the grid is an ordinary run folder, OUTPUT_DIR/cells/<cell-name>/, trained by the
same `train()` as `prefalign train`. Rerunning the same command continues the sweep: a finished
cell (summary.json and final/) is skipped, one interrupted after a checkpoint is resumed, one
interrupted before its first checkpoint is started again; a cell folder holding a run with a
different config is refused, never replaced. Every cell's config is built and checked (an
objective without beta, an unknown key, ...) before any cell trains, and a bad one is named.

After training, each cell's final policy samples one response per held-out prompt and is scored
(diagnostics/sweep_report.py): sampled KL to the reference, the judge's score (sweep.judge, e.g.
the vader_sentiment gold reward), length; the held-out reward and ranking accuracy come from the
run's own summary. The untouched model (the config's `model`) samples the same prompts with the
same seed once: each cell's win rate against it (by the judge's score), its length change and a
few sample pairs go into the report. The measurements are cached in the cell folder (sweep_eval.json), keyed by the
settings that produced them.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import yaml

from prefalign.config import ConfigError, TrainConfig, build, opt, parse_key_values, read_tree, to_dict, validate
from prefalign.recipes.run_folders import RUN_MARKERS, matching
from prefalign.train.checkpoint import checkpoints


@dataclass
class SweepOptions:
    grid: dict = opt({}, "the grid: {key: [values]} (dotted keys for nesting); `--grid key=v1,v2` adds axes")
    workers: int = opt(1, "cells trained at once, each in its own process (torch threads split between them)")
    judge: str = opt("", "judge that scores each cell's held-out samples (e.g. vader_sentiment); unset: no score, "
                         "the frontier reads the held-out reward accuracy")
    judge_args: dict = opt({}, "constructor arguments of sweep.judge")
    objective_overrides: dict = opt({}, "keys set only in the cells of one objective, e.g. {kto: {data.builders: "
                                        "[{name: pairs_to_unpaired}]}} (KTO trains on unpaired rows)")
    eval_prompts: int = opt(64, "held-out prompts each cell's policy samples for KL, score and length")
    max_new_tokens: int = opt(48, "tokens sampled per held-out prompt")
    eval_seed: int = opt(0, "seed of the held-out sampling (the same stream for every cell)")
    bootstrap: int = opt(2000, "bootstrap resamples for the intervals")


@dataclass
class Cell:
    name: str
    values: dict  # the grid's value for each axis
    cfg: TrainConfig


# what a cell's config.yaml may differ in from the requested config and still be the same run
IGNORED_KEYS = ("resume", "overwrite", "model_revision", "reference_model_revision")


def parse_grid(items: list[str]) -> dict[str, list]:
    """['key=v1,v2', ...] -> {key: [v1, v2]}: values split on commas and read as YAML (a YAML list
    `key=[a, b]` is taken whole, for values that contain commas)."""
    grid = {}
    for key, raw in parse_key_values(items, "--grid", "key=v1,v2,...").items():
        if isinstance(raw, list):
            values = raw
        else:
            values = [yaml.safe_load(v) for v in str(raw).split(",")] if isinstance(raw, str) else [raw]
        if not values or any(v is None for v in values):
            raise ConfigError(f"--grid {key}: give one or more comma-separated values, got {raw!r}")
        grid[key] = values
    return grid


def cell_name(values: dict) -> str:
    """A folder name from the axes' values, e.g. objective-dpo_beta-0.1."""
    parts = [f"{k.rsplit('.', 1)[-1]}-{v}" for k, v in values.items()]
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", "_".join(parts)) or "base"


def set_dotted_copy(tree: dict, key: str, value) -> dict:
    out = json.loads(json.dumps(tree))  # a deep copy of plain YAML data
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def check_cell_data(cfg: TrainConfig, obj, loaded: dict) -> None:
    """The objective can train on the cell's data (kinds, features), as train() checks after loading.

    Skipped when a builder needs a model or judge (context): those run only in the cell itself."""
    import inspect

    from prefalign.data.builders.pipeline import load_all_builders, run_builders
    from prefalign.data.formats.readers import load_examples
    from prefalign.recipes.policy import prepare_examples

    builders = load_all_builders()
    if any("context" in inspect.signature(builders[b["name"]].fn).parameters for b in cfg.data.builders):
        return
    key = json.dumps([cfg.data.train, cfg.data.format, cfg.data.split, cfg.data.dataset_config,
                      cfg.data.score_aspect, cfg.data.score_weights, cfg.data.on_bad_row])
    if key not in loaded:
        loaded[key] = load_examples(cfg.data.train, cfg.data.format, cfg.data.on_bad_row,
                                    cfg.data.score_weights or cfg.data.score_aspect, split=cfg.data.split,
                                    dataset_config=cfg.data.dataset_config)[0]
    examples, _ = run_builders(loaded[key], cfg.data.builders)
    prepare_examples(obj, examples, cfg.data.list_to_pairs, cfg.data.train, cfg.data.min_score_gap)


def plan_cells(tree: dict, grid: dict[str, list], output_dir: Path,
               objective_overrides: dict | None = None) -> list[Cell]:
    """Every cell's checked config; the first bad cell raises an error naming it (nothing has run)."""
    from prefalign.recipes.policy import setup_objective

    axes = {k: v for k, v in grid.items()}
    cells, names, loaded = [], set(), {}
    for combo in itertools.product(*axes.values()) if axes else [()]:
        values = dict(zip(axes, combo))
        # axes with one value are plain overrides: they do not name the cell
        name = cell_name({k: v for k, v in values.items() if len(axes[k]) > 1})
        cell_tree = tree
        for k, v in values.items():
            cell_tree = set_dotted_copy(cell_tree, k, v)
        for k, v in (objective_overrides or {}).get(cell_tree.get("objective", TrainConfig.objective), {}).items():
            cell_tree = set_dotted_copy(cell_tree, k, v)
        cell_tree = set_dotted_copy(cell_tree, "output_dir", str(output_dir / "cells" / name))
        try:
            cfg = build(TrainConfig, cell_tree)
            validate(cfg)
            obj, _, _ = setup_objective(cfg)  # objective known, beta allowed, reference possible
            check_cell_data(cfg, obj, loaded)
        except ValueError as err:
            raise ConfigError(f"sweep cell {name} ({values}): {err}") from None
        if name in names:
            raise ConfigError(f"two cells are both named {name}: give the grid distinct values")
        names.add(name)
        cells.append(Cell(name, values, cfg))
    return cells


def cell_state(cell: Cell) -> str:
    """done | resume | restart | new; refuses a folder holding a different run."""
    folder = Path(cell.cfg.output_dir)
    if not matching(folder, RUN_MARKERS):
        return "new"
    saved = folder / "config.yaml"
    if saved.is_file():
        theirs = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
        ours = to_dict(cell.cfg)
        differs = sorted(k for k in set(ours) | set(theirs) if k not in IGNORED_KEYS
                         and json.dumps(ours.get(k), default=str) != json.dumps(theirs.get(k), default=str))
        if differs:
            raise ConfigError(f"sweep cell {cell.name}: {folder} holds a run with a different config "
                              f"({', '.join(differs)}); choose another output_dir. Nothing was changed.")
    if (folder / "summary.json").is_file() and (folder / "final").is_dir():
        return "done"
    return "resume" if checkpoints(folder) else "restart"


def train_cell(tree: dict, threads: int | None = None) -> dict:
    """One cell; in a worker process (threads given) a plain dict crosses the process boundary."""
    import torch

    from prefalign.recipes.policy import train

    if threads:
        torch.set_num_threads(threads)
    cfg = build(TrainConfig, tree)
    validate(cfg)
    return train(cfg)


def run_cells(cells: list[Cell], workers: int) -> dict[str, str]:
    """Train the cells that are not done; returns each cell's state before this call."""
    from dataclasses import replace

    states = {c.name: cell_state(c) for c in cells}  # every folder checked before anything trains
    todo = []
    for c in cells:
        state = states[c.name]
        if state == "done":
            continue
        cfg = replace(c.cfg, resume=state == "resume", overwrite=state == "restart")
        todo.append(to_dict(cfg))
    if not todo:
        return states
    if workers <= 1:
        for tree in todo:
            train_cell(tree)
        return states
    threads = max(1, (os.cpu_count() or 1) // workers)
    # spawn: a forked child would inherit torch's thread pool and any open accelerate state
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        for future in [pool.submit(train_cell, tree, threads) for tree in todo]:
            future.result()  # re-raises a cell's error here, after the other cells finished
    return states


def heldout_prompts(cfg: TrainConfig, n: int) -> list:
    """The first n distinct held-out prompts, from data.eval or the seeded split training used."""
    from prefalign.data.formats.readers import load_examples, seeded_split

    aspect = cfg.data.score_weights or cfg.data.score_aspect
    if cfg.data.eval:
        held, _ = load_examples(cfg.data.eval, cfg.data.format, cfg.data.on_bad_row, aspect, split=cfg.data.eval_split,
                                dataset_config=cfg.data.dataset_config)
    else:
        train, _ = load_examples(cfg.data.train, cfg.data.format, cfg.data.on_bad_row, aspect, split=cfg.data.split,
                                 dataset_config=cfg.data.dataset_config)
        _, held = seeded_split(train, cfg.data.eval_fraction, cfg.seed)
    prompts, seen = [], set()
    for e in held:
        key = json.dumps(e.prompt)
        if key not in seen:
            seen.add(key)
            prompts.append(e.prompt)
    if not prompts:
        raise ValueError("the sweep's evaluation needs held-out prompts: set data.eval or data.eval_fraction > 0")
    return prompts[:n]


def write_cache(path: Path, value) -> None:
    """A measurement cache replaced whole: written beside it, then renamed over it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1, default=str), encoding="utf-8")
    tmp.replace(path)


def evaluate_cell(cell: Cell, opts: SweepOptions, judge, prompts: list) -> dict:
    """The cell's measurements (cached in sweep_eval.json under the settings that made them)."""
    from prefalign.diagnostics.sweep_report import sample_and_score, summarize_samples
    from prefalign.models.causal_lm import load_model
    from prefalign.recipes.run_folders import load_run_policy

    folder = Path(cell.cfg.output_dir)
    settings = {"judge": opts.judge, "judge_args": opts.judge_args, "prompts": len(prompts),
                "max_new_tokens": opts.max_new_tokens, "eval_seed": opts.eval_seed, "bootstrap": opts.bootstrap}
    cache = folder / "sweep_eval.json"
    if cache.is_file():
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached.get("settings") == settings:
            return cached
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    policy, tokenizer = load_run_policy(folder, "final", cell.cfg.dtype)
    reference = load_model(cell.cfg.reference_model or cell.cfg.model, cell.cfg.dtype)
    per_prompt = sample_and_score(policy, reference, tokenizer, judge, prompts, opts.max_new_tokens, opts.eval_seed)
    result = {"name": cell.name, "values": cell.values, "objective": summary["objective"],
              "beta": summary["objective_params"].get("beta"), "steps": summary["steps"],
              "eval_end": summary.get("eval_end"), "samples": summarize_samples(per_prompt, opts.bootstrap),
              "examples": [{"prompt": p, "response": t} for p, t in zip(prompts[:3], per_prompt["text"][:3])],
              "per_prompt": {k: per_prompt[k] for k in ("kl", "score", "tokens")}, "settings": settings}
    write_cache(cache, result)
    return result


def evaluate_untouched(model: str, dtype: str, opts: SweepOptions, judge, prompts: list, output_dir: Path) -> dict:
    """The untouched model sampled on the same prompts with the same seed as every cell (its sampled
    KL is 0), cached in OUTPUT_DIR/untouched_eval.json per model and the settings that made it."""
    from prefalign.diagnostics.sweep_report import sample_and_score, summarize_samples
    from prefalign.models.causal_lm import load_model, load_tokenizer

    settings = {"model": model, "judge": opts.judge, "judge_args": opts.judge_args, "prompts": len(prompts),
                "max_new_tokens": opts.max_new_tokens, "eval_seed": opts.eval_seed, "bootstrap": opts.bootstrap}
    cache = output_dir / "untouched_eval.json"
    saved = json.loads(cache.read_text(encoding="utf-8")) if cache.is_file() else []
    for entry in saved:
        if entry.get("settings") == settings:
            return entry
    untouched = load_model(model, dtype)
    per_prompt = sample_and_score(untouched, untouched, load_tokenizer(model), judge, prompts,
                                  opts.max_new_tokens, opts.eval_seed)
    entry = {"settings": settings, "samples": summarize_samples(per_prompt, opts.bootstrap),
             "per_prompt": per_prompt}
    saved = [e for e in saved if e.get("settings", {}).get("model") != model] + [entry]
    write_cache(cache, saved)
    return entry


def compare_with_untouched(result: dict, base: dict, prompts: list, bootstrap: int, n_pairs: int = 3) -> dict:
    """The cell's result with its win rate / score / length change against the untouched model and a
    few sample pairs (prompt, the untouched model's response, the cell's)."""
    from prefalign.diagnostics.sweep_report import against_untouched

    theirs, mine = base["per_prompt"], result["per_prompt"]
    result["vs_untouched"] = against_untouched(result, base, bootstrap)
    result["pairs"] = [{"prompt": prompts[i], "untouched": theirs["text"][i], "untouched_score": theirs["score"][i],
                        "aligned": result["examples"][i]["response"], "aligned_score": mine["score"][i]}
                       for i in range(min(n_pairs, len(result["examples"])))]
    return result


def load_sweep(path: str | None, overrides: list[str], grid_items: list[str], workers: int | None
               ) -> tuple[dict, SweepOptions, dict]:
    """(train-config tree, sweep options, grid): the YAML's `sweep:` section is the options, the rest the config."""
    # `--grid` takes every word after it, so `sweep.KEY=value` written after the grid is a sweep
    # option, not an axis (an axis would hand the key to every cell's training config)
    overrides = list(overrides) + [item for item in grid_items if item.startswith("sweep.")]
    grid_items = [item for item in grid_items if not item.startswith("sweep.")]
    tree = read_tree(path, overrides)
    opts = build(SweepOptions, tree.pop("sweep", {}) or {}, "sweep.")
    grid = {k: list(v) if isinstance(v, list) else [v] for k, v in opts.grid.items()}
    grid.update(parse_grid(grid_items))
    if workers is not None:
        opts.workers = workers
    if opts.workers < 1 or opts.eval_prompts < 1 or opts.max_new_tokens < 1:
        raise ConfigError("sweep.workers, sweep.eval_prompts and sweep.max_new_tokens must be at least 1")
    return tree, opts, grid


def sweep(tree: dict, opts: SweepOptions, grid: dict[str, list]) -> dict:
    """Plan, train and evaluate every cell; write OUTPUT_DIR/report.{md,html,json} and frontier.png."""
    from prefalign.diagnostics.sweep_report import write_sweep_report

    output_dir = Path(tree.get("output_dir") or TrainConfig.output_dir)
    cells = plan_cells(tree, grid, output_dir, opts.objective_overrides)
    judge = None
    if opts.judge:
        from prefalign.judges import make_judge

        judge = make_judge(opts.judge, **opts.judge_args)  # a bad judge fails before any cell trains
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "sweep.yaml").write_text(yaml.safe_dump({"grid": grid, "cells": [c.name for c in cells]},
                                                          sort_keys=False), encoding="utf-8")
    states = run_cells(cells, opts.workers)
    prompts = heldout_prompts(cells[0].cfg, opts.eval_prompts)
    results = []
    for c in cells:
        base = evaluate_untouched(c.cfg.model, c.cfg.dtype, opts, judge, prompts, output_dir)
        results.append(compare_with_untouched(evaluate_cell(c, opts, judge, prompts), base, prompts, opts.bootstrap))
    report = write_sweep_report(results, output_dir, opts.judge or None,
                                {"grid": grid, "states_before": states, "eval_prompts": len(prompts)})
    report["output_dir"] = str(output_dir)
    return report
