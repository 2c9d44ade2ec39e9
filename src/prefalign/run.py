"""The training recipe: build every component from a TrainConfig, then call the one loop.

This is the only module below the CLI that reads a config object; everything it calls takes
explicit arguments.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from prefalign.activations import check_supported
from prefalign.config import TrainConfig, prompt_length, save_config, to_dict
from prefalign.data.readers import load_examples, seeded_split
from prefalign.data.builders import pairs_from_lists
from prefalign.data.pipeline import BuildContext, run_builder, run_builders
from prefalign.data.records import DATA_FEATURES, PROMPT_FIELDS, RESPONSE_FIELDS
from prefalign.data.tokenize import TokenizeStats, tokenize_examples
from prefalign.losses import get_objective
from prefalign.losses.registry import Objective, unknown_params_message
from prefalign.models import (model_args, AdapterOffReference, FrozenReference, MaskHead, PolicyLogps, add_lora, load_model,
                              load_or_compute_reference, load_tokenizer, reference_cache_path, sequence_sums)
from prefalign.train.loop import Components, LoopSettings, cosine_or_linear, make_batch, train_loop
from prefalign.train.step import REFERENCE_EXTRAS, batch_to_device

# Which example kinds can feed which objective kind, and how lists are narrowed to pairs.
ACCEPTS = {"pairwise": {"pair"}, "multi_objective": {"pair"}, "token_level": {"pair"},
           "sft": {"pair", "list", "triple", "sft"}, "listwise": {"list", "pair", "triple"}, "unpaired": {"unpaired"}}
# Features the data pipeline and trainer know how to supply today: computed by the trainer
# (lengths, token_logps, kl_logratio, contrast_token_rewards; with a live reference, token_kl,
# mask_logits and activation_mask; long_chosen_nll from an extra policy row), read from the
# examples' structure (scores, samples as list entries, gold, unpaired labels) or read from row
# fields (DATA_FEATURES, RESPONSE_FIELDS scored as extra rows, PROMPT_FIELDS the reference reads).
SUPPLIED = ({"lengths", "token_logps", "kl_logratio", "scores", "samples", "unpaired", "gold",
             "contrast_token_rewards", "long_chosen_nll"} | set(REFERENCE_EXTRAS) | set(DATA_FEATURES)
            | set(RESPONSE_FIELDS) | set(PROMPT_FIELDS))
# Features the step computes with the reference model itself; a precomputed cache holds only
# sequence sums (of the K responses and of any ref_sample), so these need a live reference.
LIVE_REFERENCE = {"kl_logratio": "its KL reference point from mismatched pairs of each batch",
                  "token_logps": "per-token reference log-probs",
                  "contrast_token_rewards": "per-token reference log-probs under T-REG's contrastive prompts"}


def objective_params(obj: Objective, beta: float | None, args: dict) -> dict:
    """The objective's keyword arguments: its own defaults, then `beta`, then objective_args."""
    unknown = sorted(set(args) - set(obj.params))
    if unknown:
        raise ValueError(unknown_params_message(obj, unknown))
    if beta is not None and "beta" not in obj.params:
        raise ValueError(f"objective {obj.name!r} has no beta; remove it from the config")
    params = dict(obj.params)
    if beta is not None:
        params["beta"] = beta
    params.update(args)
    return params


def prepare_examples(obj: Objective, examples: list, list_to_pairs: str, label: str, min_gap: float = 0.0,
                     report: dict | None = None) -> list:
    """Check that the data can feed the objective; turn lists into pairs where it needs pairs
    (the pairing counts go into `report`)."""
    kinds = {e.kind for e in examples}
    accepted = ACCEPTS.get(obj.kind, set())
    if kinds <= accepted:
        pass
    elif kinds <= {"list", "pair"} and "pair" in accepted:
        examples, pairing = pairs_from_lists(examples, list_to_pairs, min_gap)
        if report is not None:
            report["pairing"] = {"rule": list_to_pairs, **pairing.as_dict()}
        if not examples:
            raise ValueError(f"{label}: data.list_to_pairs={list_to_pairs!r} left no pairs ({pairing.as_dict()})")
    else:
        raise ValueError(f"objective {obj.name!r} ({obj.kind}) needs {sorted(accepted)} examples but {label} "
                         f"holds {sorted(kinds)}")
    missing = [f for f in obj.features if f not in SUPPLIED]
    if missing:
        raise ValueError(f"objective {obj.name!r} needs {missing}, which prefalign cannot supply from {label} yet; "
                         "see the objective's docstring for what it expects")
    if "gold" in obj.features and kinds != {"triple"}:
        raise ValueError(f"objective {obj.name!r} needs gold/chosen/rejected triples; {label} holds {sorted(kinds)}")
    for name in (f for f in obj.features if f in DATA_FEATURES or f in RESPONSE_FIELDS or f in PROMPT_FIELDS):
        lacking = next((e for e in examples if name not in e.extra and name not in e.extra.get("features", {})),
                       None)
        if lacking is not None:
            raise ValueError(f"objective {obj.name!r} needs the field {name!r} on every row; {lacking.source} has none")
    return examples


def resolve_reference(cfg: TrainConfig, obj: Objective) -> str:
    if cfg.reference != "auto":
        mode = cfg.reference
    elif not obj.needs_reference:
        mode = "none"
    elif cfg.precompute_ref:
        mode = "precomputed"
    elif cfg.lora and not cfg.reference_model:
        mode = "adapter_off"
    else:
        mode = "frozen"
    if obj.needs_reference and mode == "none":
        raise ValueError(f"objective {obj.name!r} needs a reference policy; reference=none is not possible")
    if mode == "adapter_off" and not cfg.lora:
        raise ValueError("reference=adapter_off needs lora=true")
    if mode == "adapter_off" and cfg.reference_model:
        raise ValueError("reference_model names another model; adapter_off uses the policy's base weights: "
                         "use reference=frozen or precomputed with reference_model")
    live = [f for f in obj.features if f in REFERENCE_EXTRAS]
    if mode == "precomputed" and live:
        raise ValueError(f"objective {obj.name!r} needs {live}, computed from the reference model's forward on each "
                         "batch (full-vocabulary distributions, hidden states, activations), which precompute_ref "
                         "cannot cache: use reference=frozen (or adapter_off with lora=true)")
    for name, what in LIVE_REFERENCE.items():
        if mode == "precomputed" and name in obj.features:
            raise ValueError(f"objective {obj.name!r} needs {what}, which the step computes with a live reference; "
                             "precompute_ref caches sequence sums only: use reference=frozen")
    return mode


@torch.no_grad()
def compute_reference_logps(policy: PolicyLogps, examples: list, pad_id: int, device, batch_size: int):
    """[N, K] summed log-probs of every response under the (not yet trained) policy, plus a last
    column with each example's ref_sample where the examples carry one (loop.make_batch reads it).
    Examples with short-context rows (LongPO) are scored on those rows: the reference's context."""
    k = max(len(e.sequences) for e in examples)
    out = torch.zeros(len(examples), k + (examples[0].ref_sample is not None))
    policy.eval()
    for s in range(0, len(examples), batch_size):
        idx = list(range(s, min(s + batch_size, len(examples))))
        batch = batch_to_device(make_batch(examples, idx, pad_id, None), device)
        rows = batch.get("short", batch)
        tok = policy(*model_args(rows))
        sums, _ = sequence_sums(tok, rows)
        out[idx, : sums.shape[1]] = sums.float().cpu()
        if "ref_sample_index" in batch:
            out[idx, -1] = tok[batch["ref_sample_index"]].sum(1).float().cpu()
    policy.train()
    return out


def builder_context(cfg: TrainConfig) -> BuildContext:
    """What data.builders may use: a judge, an encoder and a generator, built only when configured."""
    context = BuildContext(seed=cfg.seed)
    if cfg.data.builder_judge:
        from prefalign.judges import make_judge

        context.judge = make_judge(cfg.data.builder_judge, **cfg.data.builder_judge_args)
    if cfg.data.builder_encoder:
        from prefalign.encoders import SentenceEncoder

        context.encoder = SentenceEncoder(None if cfg.data.builder_encoder == "minilm" else cfg.data.builder_encoder)
    if cfg.data.builder_generator:
        from prefalign.data.synth import LocalModel

        context.generator = LocalModel(load_model(cfg.data.builder_generator).eval(),
                                       load_tokenizer(cfg.data.builder_generator))
    return context


def load_data(cfg: TrainConfig, obj: Objective, tokenizer):
    aspect = cfg.data.score_weights or cfg.data.score_aspect
    train, train_report = load_examples(cfg.data.train, cfg.data.format, cfg.data.on_bad_row, aspect)
    if cfg.data.eval:
        held_out, eval_report = load_examples(cfg.data.eval, cfg.data.format, cfg.data.on_bad_row,
                                              aspect)
    else:
        train, held_out = seeded_split(train, cfg.data.eval_fraction, cfg.seed)
        eval_report = None
    if cfg.data.max_examples:
        train = train[: cfg.data.max_examples]
    built = {}
    if cfg.data.builders:
        context = builder_context(cfg)
        train, built["train"] = run_builders(train, cfg.data.builders, context)
        held_out, built["eval"] = run_builders(held_out, cfg.data.builders, context)
        if not train:
            raise ValueError(f"{cfg.data.train}: data.builders left no training examples ({built['train']})")
    pairing_train, pairing_eval = {}, {}
    train = prepare_examples(obj, train, cfg.data.list_to_pairs, cfg.data.train, cfg.data.min_score_gap, pairing_train)
    held_out = prepare_examples(obj, held_out, cfg.data.list_to_pairs, cfg.data.eval or "the held-out split",
                                cfg.data.min_score_gap, pairing_eval)
    augment = {}
    if cfg.data.reward_augment:  # sugar for the reward_augment builder, run after lists became pairs
        params = {"template": cfg.data.reward_template}
        train, augment["train"] = run_builder("reward_augment", train, params)
        held_out, augment["eval"] = run_builder("reward_augment", held_out, params)
        if not train:
            raise ValueError(f"{cfg.data.train}: reward_augment needs pairs with score_chosen > score_rejected; "
                             f"none left ({augment['train']})")
    stats = TokenizeStats()
    rows = {"ref_sample": "ref_sample" in obj.features,
            "contrast": (cfg.data.contrast_better, cfg.data.contrast_worse)
            if "contrast_token_rewards" in obj.features else None,
            "short_prompt": "short_prompt" in obj.features, "long_chosen_nll": "long_chosen_nll" in obj.features}
    train_tok = tokenize_examples(train, tokenizer, cfg.max_length, prompt_length(cfg), stats, **rows)
    eval_tok = tokenize_examples(held_out, tokenizer, cfg.max_length, prompt_length(cfg), **rows)
    report = {"train": train_report.as_dict(), "eval": eval_report.as_dict() if eval_report else "split",
              "train_examples": len(train_tok), "eval_examples": len(eval_tok), "tokenize": stats.as_dict()}
    if pairing_train:
        report["pairing"] = {"train": pairing_train["pairing"], "eval": pairing_eval.get("pairing")}
    if augment:
        report["reward_augment"] = augment
    if built:
        report["builders"] = built
    return train_tok, eval_tok, report


def overopt_monitor(cfg: TrainConfig, eval_set: list, tokenizer, acc, policy):
    """The likelihood over-optimisation monitor the loop calls (None when overopt_steps is 0)."""
    if not cfg.overopt_steps:
        return None
    from prefalign.diagnostics.overoptimization import OveroptMonitor
    from prefalign.train.checkpoint import save_model_atomic

    if not eval_set:
        raise ValueError("overopt_steps needs held-out prompts: set data.eval or data.eval_fraction > 0")
    # the held-out prompts as token ids, exactly as training tokenized them (no re-encoding)
    prompts = [e.sequences[0][:e.response_starts[0]] for e in eval_set[:cfg.overopt_prompts]]

    def save_best(step: int) -> None:
        if acc.is_main_process:
            unwrapped = acc.unwrap_model(policy)
            save_model_atomic(unwrapped.model, tokenizer, Path(cfg.output_dir) / "best", unwrapped.mask_head)

    return OveroptMonitor(prompts, tokenizer, cfg.overopt_steps, cfg.overopt_k, cfg.overopt_indicator,
                          cfg.overopt_stop, cfg.overopt_max_new_tokens, cfg.seed, cfg.eval_batch_size, save_best,
                          Path(cfg.output_dir) / "overopt.json", cfg.resume)


def train(cfg: TrainConfig) -> dict:
    """Run one training job; returns the summary also written to output_dir/summary.json."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    started = time.time()
    acc = Accelerator(mixed_precision=cfg.mixed_precision)
    set_seed(cfg.seed)
    out_dir = Path(cfg.output_dir)
    if acc.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    obj = get_objective(cfg.objective)
    params = objective_params(obj, cfg.beta, cfg.objective_args)
    mode = resolve_reference(cfg, obj)
    if obj.couples_batch and cfg.batch_size < 2:
        raise ValueError(f"objective {obj.name!r} couples the examples of a micro-batch; batch_size must be >= 2")
    tokenizer = load_tokenizer(cfg.model)
    train_set, eval_set, data_report = load_data(cfg, obj, tokenizer)
    model = load_model(cfg.model, cfg.dtype, cfg.gradient_checkpointing)
    if "activation_mask" in obj.features:
        check_supported(model)  # an unsupported architecture fails here, before any training
    reference, train_ref, eval_ref, cache_hit, precompute_s = None, None, None, None, None
    # the reference is the policy's own initial weights unless reference_model names another folder
    ref_source = load_model(cfg.reference_model, cfg.dtype) if cfg.reference_model and mode in (
        "frozen", "precomputed") else model
    if mode == "frozen":
        reference = FrozenReference(ref_source, cfg.logps_impl, copy_model=ref_source is model).to(acc.device)
    if mode == "precomputed":
        # the untouched policy IS the reference: compute before the first update, no copy kept
        t_ref = time.time()
        probe = PolicyLogps(ref_source, cfg.logps_impl).to(acc.device)
        all_examples = train_set + eval_set
        path = reference_cache_path(cfg.ref_cache_dir, cfg.reference_model or cfg.model, all_examples,
                                    cfg.logps_impl, cfg.dtype)
        if acc.is_main_process:
            logps, cache_hit = load_or_compute_reference(
                path, lambda: compute_reference_logps(probe, all_examples, tokenizer.pad_token_id, acc.device,
                                                      cfg.eval_batch_size))
        acc.wait_for_everyone()
        if not acc.is_main_process:
            logps, cache_hit = load_or_compute_reference(path, lambda: None)
        train_ref, eval_ref = logps[: len(train_set)], logps[len(train_set):]
        precompute_s = round(time.time() - t_ref, 2)
    if cfg.lora:
        model = add_lora(model, cfg.lora_r, cfg.lora_alpha)
    mask_head = None
    if "mask_logits" in obj.features:
        # SparsePO's learned masks: a head on the reference's layer outputs, trained by the same optimizer
        mask_head = MaskHead(model.config.hidden_size, model.config.num_hidden_layers,
                             1 if cfg.mask_head == "common" else 2, cfg.mask_head_dropout)
    policy = PolicyLogps(model, cfg.logps_impl, mask_head)
    if mode == "adapter_off":
        reference = AdapterOffReference(policy)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup_ratio * cfg.max_steps)
    # The scheduler is stepped by us once per optimizer step; accelerate's prepared scheduler
    # would step once per process.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_or_linear(cfg.lr_scheduler, warmup, cfg.max_steps))
    policy, optimizer = acc.prepare(policy, optimizer)
    sinks = []
    if acc.is_main_process:
        from prefalign.logging import JsonlSink, TensorBoardSink

        sinks.append(JsonlSink(out_dir / "metrics.jsonl", append=cfg.resume))
        if cfg.tensorboard:
            sinks.append(TensorBoardSink(out_dir / "tensorboard"))
    pad_multiple = cfg.pad_to_multiple_of or (64 if acc.device.type == "cuda" else 1)
    components = Components(acc, policy, optimizer, scheduler, obj, params, reference, train_set, eval_set,
                            train_ref, eval_ref, tokenizer.pad_token_id, tokenizer, sinks, pad_multiple,
                            overopt_monitor(cfg, eval_set, tokenizer, acc, policy))
    settings = LoopSettings(out_dir, cfg.max_steps, cfg.batch_size, cfg.gradient_accumulation_steps,
                            cfg.max_grad_norm, cfg.seed, cfg.save_steps, cfg.keep_last, cfg.eval_steps,
                            cfg.eval_batch_size, cfg.logging_steps, cfg.data.group_by_length, cfg.resume, cfg.progress)
    try:
        history = train_loop(components, settings)
    finally:
        for sink in sinks:
            sink.close()
    summary = {"objective": obj.name, "objective_params": params, "reference": mode,
               "reference_cache_hit": cache_hit, "reference_precompute_s": precompute_s, "data": data_report, "steps": history["state"]["step"],
               "eval_start": history["eval_start"], "eval_end": history["eval_end"],
               "wall_time_s": round(time.time() - started, 2), "num_processes": acc.num_processes,
               "config": to_dict(cfg)}
    if components.overopt is not None:
        summary["overopt"] = components.overopt.summary(out_dir / "best")
    if acc.is_main_process:
        from prefalign.train.checkpoint import save_model_atomic

        unwrapped = acc.unwrap_model(policy)
        save_model_atomic(unwrapped.model, tokenizer, out_dir / "final", unwrapped.mask_head)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        summary["final_model"] = str(out_dir / "final")
    acc.wait_for_everyone()
    acc.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # a gloo group still alive at interpreter exit can abort a rank ("terminate called
        # without an active exception") after all work is done; close it while every rank is here
        torch.distributed.destroy_process_group()
    return summary


def clean_run_dir(out_dir: Path) -> None:
    """Remove a previous run's outputs (used by quickstart, which always starts fresh)."""
    if out_dir.exists():
        shutil.rmtree(out_dir)


def write_pairs(examples: list, path: Path) -> Path:
    """Pairs as prompt/chosen/rejected rows (text or chat messages), the `pairs` format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps({"prompt": e.prompt, "chosen": e.responses[0], "rejected": e.responses[1]},
                               ensure_ascii=False) + "\n")
    return path


def train_curriculum(cfg: TrainConfig) -> dict:
    """Curry-DPO (arXiv:2403.07230): the pairs of ranked lists in stages, easiest first.

    Held-out lists are split off first (no prompt is in both), then each prompt's pairs are
    ordered by score gap and dealt into `data.curriculum_stages` stages. Stage k trains from
    stage k-1's final model; its reference is that same model (curriculum_reference: previous,
    as in the paper's iterative setting) or the starting model (initial). Every stage is an
    ordinary run folder (stage-k/run) with its own data file, metrics and summary.
    """
    from dataclasses import replace

    from prefalign.data.builders import curriculum_stages

    if cfg.data.curriculum_reference not in ("previous", "initial"):
        raise ValueError(f"data.curriculum_reference must be previous or initial, got {cfg.data.curriculum_reference!r}")
    out = Path(cfg.output_dir)
    aspect = cfg.data.score_weights or cfg.data.score_aspect
    lists, report = load_examples(cfg.data.train, cfg.data.format, cfg.data.on_bad_row, aspect)
    lists, built = run_builders(lists, cfg.data.builders, builder_context(cfg))
    if cfg.data.eval:
        eval_path = cfg.data.eval
    else:
        lists, held_lists = seeded_split(lists, cfg.data.eval_fraction, cfg.seed)
        held_pairs, _ = pairs_from_lists(held_lists, cfg.data.list_to_pairs, cfg.data.min_score_gap)
        eval_path = str(write_pairs(held_pairs, out / "heldout.jsonl"))
    stages = curriculum_stages(lists, cfg.data.curriculum_stages)
    model, stage_summaries = cfg.model, []
    for k, pairs in enumerate(stages, start=1):
        if not pairs:
            stage_summaries.append({"stage": k, "pairs": 0, "skipped": "no prompt has this many pairs"})
            continue
        stage_dir = out / f"stage-{k}"
        reference = None if cfg.data.curriculum_reference == "previous" or model == cfg.model else cfg.model
        stage_cfg = replace(cfg, model=model, reference_model=reference, output_dir=str(stage_dir / "run"),
                            data=replace(cfg.data, train=str(write_pairs(pairs, stage_dir / "train.jsonl")),
                                         eval=eval_path, format="pairs", curriculum_stages=0,
                                         builders=[]))
        summary = train(stage_cfg)
        stage_summaries.append({"stage": k, "pairs": len(pairs), "model": model, "reference": reference or model,
                                "eval_start": summary["eval_start"], "eval_end": summary["eval_end"]})
        model = str(stage_dir / "run" / "final")
    ran = [s for s in stage_summaries if "eval_end" in s]
    result = {"objective": cfg.objective, "curriculum": stage_summaries, "steps": cfg.max_steps * len(ran),
              "eval_start": ran[0]["eval_start"], "eval_end": ran[-1]["eval_end"], "final_model": model,
              "data": {"train": report.as_dict(), **({"builders": {"train": built}} if built else {})}}
    (out / "summary.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def resolve_run_dir(path: str | Path) -> Path:
    """A run folder (it holds config.yaml), or a folder holding exactly one, such as quickstart's.

    `prefalign quickstart` writes its data and plot beside the run (OUT/run), so `diagnose OUT` and
    `generate --run OUT` mean the one run inside; two or more runs are ambiguous and named.
    """
    folder = Path(path)
    if (folder / "config.yaml").is_file():
        return folder
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a run folder: no such folder")
    runs = sorted(p for p in folder.iterdir() if (p / "config.yaml").is_file())
    if len(runs) == 1:
        return runs[0]
    if not runs:
        raise FileNotFoundError(f"{folder} is not a run folder: no config.yaml in it or in a folder inside it")
    raise ValueError(f"{folder} holds {len(runs)} runs ({', '.join(p.name for p in runs)}): give one of them")
