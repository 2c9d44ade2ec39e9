"""`prefalign train-rm`: a typed config, then the same loop, checkpoints and metrics as policy training.

The reward model is a Trainee (train/trainee.py) like the policy, so it gets accumulation,
clipping, warm-up + cosine, evaluation every N steps, the best model and early stopping, atomic
rotated checkpoints with exact resume, metrics.jsonl, the progress bar and the NaN stop unchanged.
"""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prefalign.config import ConfigError, LoopConfig, build, opt, read_tree, to_dict, validate_loop
from prefalign.data.formats.readers import seeded_split
from prefalign.models.hub import resolve_model
from prefalign.recipes.model_card import reward_model_card
from prefalign.rewards.backbone import RewardBackbone
from prefalign.rewards.data import MARGINS, build_batch, load_pairs, load_ratings, load_steps, rating_stats
from prefalign.rewards.heads import REWARD_KINDS, get_reward_kind
from prefalign.rewards.model import RewardModel, save_reward_model
from prefalign.recipes.setup import (end_run, keep_best, loop_settings, metric_sinks, open_run_folder,
                              optimizer_and_scheduler, run_loop, start_run, summary_fields)
from prefalign.train.loop import LoopParts


@dataclass
class RewardDataConfig:
    train: str = opt("", "training data (pairs/hh/ranked for bt and pearl; ratings; steps): a file, a datasets "
                         "save_to_disk folder, or a Hub dataset id owner/name (or owner/name:split)")
    eval: str | None = opt(None, "held-out data (file, folder or Hub id); if unset, a seeded split of each training "
                                 "file")
    split: str = opt("train", "split of data.train (and of data.datasets entries) when it is a Hub id or a "
                              "DatasetDict folder (id:split wins)")
    eval_split: str = opt("test", "split of data.eval when it is a Hub id or a DatasetDict folder (id:split wins)")
    dataset_config: str | None = opt(None, "Hub dataset config (subset) name for data.train, data.eval, data.datasets")
    datasets: list = opt([], "several preference files trained together: [{path, weight, split}] (replaces "
                             "data.train); weight multiplies that file's pair losses")
    more: bool = opt(False, "MORE (arXiv:2312.07401): weight the datasets of each batch by the min-norm "
                            "combination of their reward-head gradients")
    format: str = opt("auto", "pairs files: pairs | implicit | hh | ranked | auto")
    eval_fraction: float = opt(0.05, "share held out when data.eval is unset")
    on_bad_row: str = opt("error", "error | skip (skipped rows are counted in the summary)")
    list_to_pairs: str = opt("best_vs_worst", "ranked lists -> pairs: best_vs_worst | best_vs_each | all_pairs")
    min_score_gap: float = opt(0.0, "all_pairs/best_vs_each: skip pairs closer than this (counted)")
    margin: str = opt("none", "bt margin: none | score_gap (margin_scale * (score_chosen - score_rejected))")
    margin_scale: float = opt(1.0, "multiplies the score gap into the margin")
    attributes: list = opt([], "multi_objective: the rated attributes, e.g. [informativeness, naturalness, overall]")
    prompt_field: str = opt("prompt", "ratings files: the field holding the prompt (sf_nlg_multiaspect: mr)")
    step_delimiter: str = opt("\n\n", "prm: the string that separates reasoning steps")
    user_field: str = opt("user_id", "pal: the row field naming each pair's user (a string or integer id)")
    max_examples: int | None = opt(None, "use only the first N training examples (quick runs)")
    group_by_length: bool = opt(False, "batch examples of similar length together")


@dataclass
class RewardTrainConfig(LoopConfig):
    backbone: str = opt("", "local folder or Hugging Face Hub id (owner/name) of an encoder or decoder; a Hub id "
                            "resolves through the standard HF cache and honours HF_HUB_OFFLINE")
    backbone_revision: str | None = opt(None, "Hub branch, tag or commit that pins `backbone` (Hub ids only)")
    trust_remote_code: bool = opt(False, "run modelling code shipped with the backbone (a config's auto_map): only "
                                         "for repos you trust")
    kind: str = opt("bt", "reward-model kind: " + ", ".join(sorted(REWARD_KINDS)))
    data: RewardDataConfig = field(default_factory=RewardDataConfig, metadata={"help": "data options (data.*)"})
    head_args: dict = opt({}, "extra head parameters, e.g. {aggregate: mean} for prm, {min_std: 0.01} for pearl")
    loss_args: dict = opt({}, "loss parameters, e.g. {kl_weight: 0.01} for pearl")
    # the loop options are LoopConfig's; these four keep the reward model's own defaults
    output_dir: str = opt("runs/reward-model", "run folder: config, metrics.jsonl, checkpoints, final model")
    batch_size: int = opt(8, "pairs (or rated responses) per micro-batch")
    learning_rate: float = opt(2e-5, "peak learning rate (AdamW)")
    eval_batch_size: int = opt(16, "examples per evaluation batch")
    head_learning_rate: float | None = opt(None, "peak learning rate of the head alone (default: learning_rate); "
                                                 "PAL's per-user weights and small heads often need a larger one")
    max_response_length: int | None = opt(None, "maximum response tokens (default max_length / 2)")


def load_reward_config(path: str | None, overrides: list[str] = ()) -> RewardTrainConfig:
    cfg = build(RewardTrainConfig, read_tree(path, overrides))
    validate(cfg)
    return cfg


def validate(cfg: RewardTrainConfig) -> None:
    if not cfg.backbone:
        raise ConfigError("backbone is required: a local folder or Hub id of a Hugging Face encoder or decoder")
    kind = get_reward_kind(cfg.kind)
    if not cfg.data.train and not cfg.data.datasets:
        raise ConfigError("data.train (or data.datasets) is required")
    if cfg.data.datasets and kind.data != "pairs":
        raise ConfigError(f"data.datasets trains several preference files together; kind {cfg.kind!r} reads {kind.data}")
    if cfg.data.more and cfg.kind != "bt":
        raise ConfigError("data.more applies to the bt kind")
    if cfg.data.margin not in MARGINS:
        raise ConfigError(f"data.margin must be one of {MARGINS}, got {cfg.data.margin!r}")
    if cfg.data.margin != "none" and cfg.kind != "bt":
        # only the Bradley-Terry loss has a margin term; refusing beats silently training without one
        raise ConfigError(f"data.margin applies to the bt kind; kind {cfg.kind!r} has no margin term")
    if kind.data == "ratings" and not cfg.data.attributes:
        raise ConfigError("multi_objective needs data.attributes, e.g. [informativeness, naturalness, overall]")
    validate_loop(cfg)
    if cfg.head_learning_rate is not None and cfg.head_learning_rate <= 0:
        raise ConfigError(f"head_learning_rate must be positive, got {cfg.head_learning_rate}")
    params = inspect.signature(kind.loss).parameters
    allowed = [n for n, p in params.items() if p.kind == p.KEYWORD_ONLY or p.default is not p.empty]
    unknown = sorted(set(cfg.loss_args) - set(allowed))
    if unknown:
        raise ConfigError(f"kind {cfg.kind!r} has no loss parameter {unknown}; it takes {allowed}")


def dataset_specs(cfg: RewardTrainConfig) -> list[dict]:
    if not cfg.data.datasets:
        return [{"path": cfg.data.train, "weight": 1.0, "split": cfg.data.split}]
    specs = []
    for i, d in enumerate(cfg.data.datasets):
        if isinstance(d, str):
            d = {"path": d}
        if not isinstance(d, dict) or "path" not in d or set(d) - {"path", "weight", "name", "split"}:
            raise ConfigError(f"data.datasets[{i}] must be a path or {{path, weight, split}}, got {d!r}")
        specs.append({"path": d["path"], "weight": float(d.get("weight", 1.0)), "name": d.get("name", d["path"]),
                      "split": d.get("split", cfg.data.split)})
    return specs


def load_file(cfg: RewardTrainConfig, path: str, dataset: int = 0, weight: float = 1.0, split: str = "train"):
    kind = get_reward_kind(cfg.kind)
    d, data = cfg.data, kind.data
    if data == "pairs":
        users = d.user_field if getattr(kind.head, "per_user", False) else None
        return load_pairs(path, d.format, d.on_bad_row, d.list_to_pairs, d.min_score_gap, d.margin, d.margin_scale,
                          dataset, weight, users, split, d.dataset_config)
    if data == "ratings":
        return load_ratings(path, list(d.attributes), d.prompt_field, d.on_bad_row, split, d.dataset_config)
    return load_steps(path, d.step_delimiter, d.on_bad_row, split, d.dataset_config)


def load_data(cfg: RewardTrainConfig) -> tuple[list, list, dict]:
    train, held_out, report = [], [], {}
    for i, spec in enumerate(dataset_specs(cfg)):
        examples, info = load_file(cfg, spec["path"], i, spec["weight"], spec["split"])
        if not cfg.data.eval:
            examples, held = seeded_split(examples, cfg.data.eval_fraction, cfg.seed)
            held_out += held
        train += examples
        report[spec["path"]] = {**info, "train": len(examples), "weight": spec["weight"]}
    if cfg.data.eval:
        held_out, info = load_file(cfg, cfg.data.eval, split=cfg.data.eval_split)
        report["eval"] = info
    if cfg.data.max_examples:
        train = train[:cfg.data.max_examples]
    return train, held_out, report


class RewardTrainee:
    """A reward model as the loop's Trainee: its own batches and loss, its own folder layout."""

    def __init__(self, module: torch.nn.Module, model: RewardModel):
        self.module, self.model = module, model  # module: the prepared model (DDP-wrapped on several processes)

    def make_batch(self, examples: list, indices: list[int], split: str) -> dict:
        return build_batch(self.model, examples, indices)

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        return self.module(batch)

    def save(self, folder: Path) -> None:
        self.model.save_pretrained(folder)

    def load(self, folder: Path) -> None:
        self.model.restore_weights(folder)


def build_model(cfg: RewardTrainConfig, train: list, held_out: list = ()) -> RewardModel:
    kind = get_reward_kind(cfg.kind)
    backbone = RewardBackbone(cfg.backbone, cfg.max_length, cfg.max_response_length, revision=cfg.backbone_revision,
                              trust_remote_code=cfg.trust_remote_code)
    head = dict(cfg.head_args)
    if getattr(kind.head, "per_user", False):
        # held-out users too: one seen only there keeps the untrained, uniform weights (PAL's zero-shot start)
        users = sorted({e.user for e in list(train) + list(held_out)})
        head.update(users=users, n_users=len(users))
    if kind.data == "ratings":
        offset, scale = rating_stats(train, list(cfg.data.attributes))
        head.update(attributes=list(cfg.data.attributes), offset=offset, scale=scale)
    if kind.data == "steps":
        head["delimiter"] = cfg.data.step_delimiter
    loss = dict(cfg.loss_args)
    if cfg.data.more:
        loss["more"] = True
    return RewardModel(backbone, cfg.kind, head, loss)


def train_reward_model(cfg: RewardTrainConfig) -> dict:
    """Train one reward model; returns the summary also written to output_dir/summary.json."""
    started = time.time()
    # resolved first: a Hub id missing offline fails before a run folder exists, and the commit is recorded
    commit = resolve_model(cfg.backbone, cfg.backbone_revision, cfg.trust_remote_code)[1]
    acc, out_dir, earlier = start_run(cfg, "train-rm")
    train_set, eval_set, report = load_data(cfg)
    model = build_model(cfg, train_set, eval_set)
    head_lr = cfg.head_learning_rate if cfg.head_learning_rate is not None else cfg.learning_rate
    groups = [{"params": list(model.backbone.parameters()), "lr": cfg.learning_rate},
              {"params": list(model.head.parameters()), "lr": head_lr}]
    optimizer, scheduler = optimizer_and_scheduler(groups, cfg)
    module, optimizer = acc.prepare(model, optimizer)
    trainee = RewardTrainee(module, model)
    open_run_folder(acc, cfg, out_dir, earlier, {"backbone_revision": commit})
    sinks = metric_sinks(acc, out_dir, cfg)
    best = keep_best(cfg, trainee, acc, out_dir)
    parts = LoopParts(acc, trainee, optimizer, scheduler, train_set, eval_set, sinks, [best] if best else [])
    history = run_loop(parts, loop_settings(cfg, out_dir, cfg.data.group_by_length))
    summary = {"objective": f"reward model ({cfg.kind})", "kind": cfg.kind,
               "data": {"train": first_load_report(report), "files": report, "train_examples": len(train_set),
                        "eval_examples": len(eval_set)},
               **summary_fields(history, best), "wall_time_s": round(time.time() - started, 2),
               "backbone_commit": commit, "config": to_dict(cfg)}
    if acc.is_main_process:
        card = reward_model_card(summary, summary["config"])
        summary["final_model"] = str(save_reward_model(model, out_dir / "final", card))
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    end_run(acc)
    return summary


def first_load_report(report: dict) -> dict:
    """The skipped-row counts of all training files together (what the CLI summary prints)."""
    loads = [v["load"] for k, v in report.items() if k != "eval"]
    return {"skipped": sum(x["skipped"] for x in loads),
            "skipped_by_reason": {r: n for x in loads for r, n in x["skipped_by_reason"].items()}}
