"""The training recipe: build every component from a TrainConfig, then call the one loop.

This is the only module below the CLI that reads a config object; everything it calls takes
explicit arguments.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from prefalign.config import TrainConfig, prompt_length, to_dict
from prefalign.data.formats.readers import load_examples, seeded_split
from prefalign.data.builders.pairs import pairs_from_lists
from prefalign.data.builders.pipeline import BuildContext, run_builder, run_builders
from prefalign.data.collate import to_device
from prefalign.packing import choose_packing
from prefalign.data.tokenize import TokenizeStats
from prefalign.features import SUPPLIERS, for_features, get_supplier, tokenize, unsupplied
from prefalign.losses import get_objective
from prefalign.losses.registry import Objective, no_beta_message, unknown_params_message
from prefalign.models.hub import resolve_model
from prefalign.models.causal_lm import (model_args, AdapterOffReference, FrozenReference, MaskHead, PolicyLogps, add_lora, load_model,
                              load_tokenizer, reference_cache_path, sequence_sums)
from prefalign.models.lean_mlp import install_lean_mlp
from prefalign.models.reference_cache import ReferenceCache, ReferencedExamples, complete, write_reference_cache
from prefalign.recipes.setup import (end_run, keep_best, loop_settings, metric_sinks, open_run_folder,
                              optimizer_and_scheduler, run_loop, start_run, summary_fields)
from prefalign.recipes.model_card import model_card
from prefalign.recipes.run_folders import CURRICULUM_MARKERS, CURRICULUM_OUTPUTS, claim_run_dir, remove
from prefalign.train.checkpoint import write_atomic
from prefalign.train.loop import LoopParts, make_batch
from prefalign.train.trainee import PolicyTrainee

# Which example kinds can feed which objective kind, and how lists are narrowed to pairs.
ACCEPTS = {"pairwise": {"pair"}, "multi_objective": {"pair"}, "token_level": {"pair"},
           "sft": {"pair", "list", "triple", "sft"}, "listwise": {"list", "pair", "triple"}, "unpaired": {"unpaired"}}
# Objective kinds no data file can feed, with why: the online loop builds their examples.
ONLINE_ONLY = {"self_supervised": "its data is built from samples under constitutions"}
# Features prefalign can supply: the names its feature suppliers are registered under.
SUPPLIED = frozenset(SUPPLIERS)


def objective_params(obj: Objective, beta: float | None, args: dict) -> dict:
    """The objective's keyword arguments: its own defaults, then `beta`, then objective_args."""
    unknown = sorted(set(args) - set(obj.params))
    if unknown:
        raise ValueError(unknown_params_message(obj, unknown))
    if beta is not None and "beta" not in obj.params:
        raise ValueError(no_beta_message(obj) + "; remove beta from the config")
    params = dict(obj.params)
    if beta is not None:
        params["beta"] = beta
    params.update(args)
    return params


def prepare_examples(obj: Objective, examples: list, list_to_pairs: str, label: str, min_gap: float = 0.0,
                     report: dict | None = None) -> list:
    """Check that the data can feed the objective; turn lists into pairs where it needs pairs
    (the pairing counts go into `report`)."""
    if obj.kind in ONLINE_ONLY:
        raise ValueError(f"objective {obj.name!r} is trained online only (prefalign online): {ONLINE_ONLY[obj.kind]}")
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
    missing = unsupplied(obj.features)
    if missing:
        raise ValueError(f"objective {obj.name!r} needs {missing}, which prefalign cannot supply from {label} yet; "
                         "see the objective's docstring for what it expects")
    for name in obj.features:
        get_supplier(name).check(obj, examples, label)
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
    live = [s.name for s in for_features(obj.features) if s.reference_output]
    if mode == "precomputed" and live:
        raise ValueError(f"objective {obj.name!r} needs {live}, computed from the reference model's forward on each "
                         "batch (full-vocabulary distributions, hidden states, activations), which precompute_ref "
                         "cannot cache: use reference=frozen (or adapter_off with lora=true)")
    for supplier in for_features(obj.features):
        if mode == "precomputed" and supplier.live_reference:
            raise ValueError(f"objective {obj.name!r} needs {supplier.live_reference}, which the step computes with a "
                             "live reference; precompute_ref caches sequence sums only: use reference=frozen")
    return mode


@torch.no_grad()
def reference_batches(policy: PolicyLogps, examples: list, pad_id: int, device, batch_size: int):
    """Reference values of the examples under the (not yet trained) policy, one batch at a time
    in data order: {"responses": [b, K] summed log-probs, plus [b] values under the name of each
    supplier whose extra rows the reference scores (reference samples)}. A supplier may put its
    own rows in the list rows' place for the reference (LongPO's short-context rows): those are
    scored then."""
    policy.eval()
    for s in range(0, len(examples), batch_size):
        idx = list(range(s, min(s + batch_size, len(examples))))
        batch = to_device(make_batch(examples, idx, pad_id), device)
        active = for_features(batch.extras)
        rows = next((r for sup in active if (r := sup.reference_rows(batch)) is not None), batch)
        tok = policy(*model_args(rows))
        sums, _ = sequence_sums(tok, rows)
        out = {"responses": sums.float().cpu()}
        for sup in active:
            values = sup.reference_values(tok, batch)
            if values is not None:
                out[sup.name] = values.float().cpu()
        yield out
    policy.train()


def compute_reference_logps(policy: PolicyLogps, examples: list, pad_id: int, device, batch_size: int
                            ) -> dict[str, torch.Tensor]:
    """reference_batches gathered in memory: "responses" [N, K] (K the widest example), [N] per supplier."""
    k = max(len(e.sequences) for e in examples)
    out = {"responses": torch.zeros(len(examples), k)}
    start = 0
    for values in reference_batches(policy, examples, pad_id, device, batch_size):
        b, width = values["responses"].shape
        out["responses"][start:start + b, :width] = values["responses"]
        for name, v in values.items():
            if name != "responses":
                out.setdefault(name, torch.zeros(len(examples)))[start:start + b] = v
        start += b
    return out


def builder_context(cfg: TrainConfig) -> BuildContext:
    """What data.builders may use: a judge, an encoder and a generator, built only when configured."""
    context = BuildContext(seed=cfg.seed)
    if cfg.data.builder_judge:
        from prefalign.judges import make_judge

        context.judge = make_judge(cfg.data.builder_judge, **cfg.data.builder_judge_args)
    if cfg.data.builder_encoder:
        from prefalign.models.encoders import SentenceEncoder

        context.encoder = SentenceEncoder(None if cfg.data.builder_encoder == "minilm" else cfg.data.builder_encoder,
                                          revision=cfg.data.builder_encoder_revision)
    if cfg.data.builder_generator:
        from prefalign.data.builders.synth import LocalModel

        name, revision, trust = cfg.data.builder_generator, cfg.data.builder_generator_revision, cfg.trust_remote_code
        context.generator = LocalModel(load_model(name, revision=revision, trust_remote_code=trust).eval(),
                                       load_tokenizer(name, revision, trust))
    return context


def load_data(cfg: TrainConfig, obj: Objective, tokenizer):
    aspect = cfg.data.score_weights or cfg.data.score_aspect
    train, train_report = load_examples(cfg.data.train, cfg.data.format, cfg.data.on_bad_row, aspect,
                                        split=cfg.data.split, dataset_config=cfg.data.dataset_config)
    if cfg.data.eval:
        held_out, eval_report = load_examples(cfg.data.eval, cfg.data.format, cfg.data.on_bad_row,
                                              aspect, split=cfg.data.eval_split,
                                              dataset_config=cfg.data.dataset_config)
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
    # the suppliers of the objective's features build its extra rows; a supplier reads the options it knows
    options = {"contrast": (cfg.data.contrast_better, cfg.data.contrast_worse)}
    train_tok = tokenize(train, tokenizer, cfg.max_length, prompt_length(cfg), stats, obj.features, **options)
    eval_tok = tokenize(held_out, tokenizer, cfg.max_length, prompt_length(cfg), None, obj.features, **options)
    report = {"train": train_report.as_dict(), "eval": eval_report.as_dict() if eval_report else "split",
              "train_examples": len(train_tok), "eval_examples": len(eval_tok), "tokenize": stats.as_dict()}
    if pairing_train:
        report["pairing"] = {"train": pairing_train["pairing"], "eval": pairing_eval.get("pairing")}
    if augment:
        report["reward_augment"] = augment
    if built:
        report["builders"] = built
    return train_tok, eval_tok, report


def overopt_callback(cfg: TrainConfig, eval_set: list, trainee: PolicyTrainee, log, best_by_metric: bool):
    """The likelihood over-optimisation monitor as a loop callback (None when overopt_steps is 0)."""
    if not cfg.overopt_steps:
        return None
    from prefalign.diagnostics.overoptimization import OveroptMonitor
    from prefalign.train.callbacks import OveroptCallback

    if not eval_set:
        raise ValueError("overopt_steps needs held-out prompts: set data.eval or data.eval_fraction > 0")
    acc = trainee.accelerator
    # the held-out prompts as token ids, exactly as training tokenized them (no re-encoding)
    prompts = [e.sequences[0][:e.response_starts[0]] for e in eval_set[:cfg.overopt_prompts]]
    healthy_dir = overopt_best_dir(cfg, best_by_metric)

    def save_best(step: int) -> None:
        if acc.is_main_process:
            write_atomic(healthy_dir, trainee.save)

    monitor = OveroptMonitor(prompts, trainee.tokenizer, cfg.overopt_steps, cfg.overopt_k, cfg.overopt_indicator,
                             cfg.overopt_stop, cfg.overopt_max_new_tokens, cfg.seed, cfg.eval_batch_size, save_best,
                             Path(cfg.output_dir) / "overopt.json", cfg.resume)
    return OveroptCallback(monitor, acc, lambda: acc.unwrap_model(trainee.module).model, log, cfg.max_steps)


def overopt_best_dir(cfg: TrainConfig, best_by_metric: bool) -> Path:
    """The monitor's last healthy model: output_dir/best, unless best/ holds the best model by a metric."""
    return Path(cfg.output_dir) / ("last-healthy" if best_by_metric else "best")


def setup_objective(cfg: TrainConfig):
    """(objective, its parameters, reference mode), checked against the config."""
    obj = get_objective(cfg.objective)
    params = objective_params(obj, cfg.beta, cfg.objective_args)
    # features a parameter value switches on (orpo nll_tokens=prompt_and_response) join the declared
    # ones, so their suppliers build rows and the step computes them like any other
    obj = replace(obj, features=obj.features_for(params))
    mode = resolve_reference(cfg, obj)
    if obj.couples_batch and cfg.batch_size < 2:
        raise ValueError(f"objective {obj.name!r} couples the examples of a micro-batch; batch_size must be >= 2")
    return obj, params, mode


def setup_reference(cfg: TrainConfig, mode: str, model, acc, tokenizer, train_set: list, eval_set: list):
    """(live reference or None, train and eval examples (carrying their precomputed reference
    log-probs in precomputed mode), cache hit, precompute seconds)."""
    reference, cache_hit, precompute_s = None, None, None
    # the reference is the policy's own initial weights unless reference_model names another folder
    ref_source = load_model(cfg.reference_model, cfg.dtype, revision=cfg.reference_model_revision,
                            trust_remote_code=cfg.trust_remote_code) \
        if cfg.reference_model and mode in (
        "frozen", "precomputed") else model
    if mode == "frozen":
        reference = FrozenReference(ref_source, cfg.logps_impl, copy_model=ref_source is model).to(acc.device)
    if mode == "precomputed":
        # the untouched policy IS the reference: compute before the first update, no copy kept
        t_ref = time.time()
        probe = PolicyLogps(ref_source, cfg.logps_impl).to(acc.device)
        all_examples = train_set + eval_set
        # keyed by the files of the resolved folder (a Hub id's snapshot), not by the name
        ref_folder = resolve_model(cfg.reference_model, cfg.reference_model_revision)[0] if cfg.reference_model \
            else resolve_model(cfg.model, cfg.model_revision)[0]
        path = reference_cache_path(cfg.ref_cache_dir, ref_folder, all_examples, cfg.logps_impl, cfg.dtype)
        # one shard per batch, written as computed and read back row by row when the loop takes an
        # example: memory stays flat in the data size on both sides
        folder = path.with_name(path.stem + ".shards")
        cache_hit = complete(folder)
        if acc.is_main_process and not cache_hit:
            write_reference_cache(folder, reference_batches(probe, all_examples, tokenizer.pad_token_id, acc.device,
                                                            cfg.eval_batch_size))
        acc.wait_for_everyone()
        cache = ReferenceCache(folder)
        # collate hands each example's values to the step as the batch's reference
        train_set, eval_set = (ReferencedExamples(train_set, cache, 0),
                               ReferencedExamples(eval_set, cache, len(train_set)))
        precompute_s = round(time.time() - t_ref, 2)
    return reference, train_set, eval_set, cache_hit, precompute_s


def setup_policy(cfg: TrainConfig, obj: Objective, model) -> PolicyLogps:
    """The trainable policy: LoRA when asked, SparsePO's mask head when the objective learns masks."""
    if cfg.lean_mlp:
        install_lean_mlp(model)  # a LoRA down_proj keeps the plain forward (lean_mlp.py says when)
    if cfg.lora:
        model = add_lora(model, cfg.lora_r, cfg.lora_alpha)
    mask_head = None
    if "mask_logits" in obj.features:
        # SparsePO's learned masks: a head on the reference's layer outputs, trained by the same optimizer
        mask_head = MaskHead(model.config.hidden_size, model.config.num_hidden_layers,
                             1 if cfg.mask_head == "common" else 2, cfg.mask_head_dropout)
    return PolicyLogps(model, cfg.logps_impl, mask_head)


def save_with_card(trainee: PolicyTrainee, folder: Path, summary: dict) -> None:
    """final/'s contents: the model, then its card (README.md), inside the same atomic write."""
    trainee.save(folder)
    (folder / "README.md").write_text(model_card(summary, summary["config"]))


def train(cfg: TrainConfig) -> dict:
    """Run one training job; returns the summary also written to output_dir/summary.json."""
    started = time.time()
    # resolved first: a Hub id missing offline fails before a run folder exists, and the commit is recorded
    trust = cfg.trust_remote_code
    commits = {"model_commit": resolve_model(cfg.model, cfg.model_revision, trust)[1],
               "reference_model_commit": resolve_model(cfg.reference_model, cfg.reference_model_revision, trust)[1]
               if cfg.reference_model else None}
    if cfg.data.builder_generator:  # a generator id missing offline fails here too, before the run folder
        resolve_model(cfg.data.builder_generator, cfg.data.builder_generator_revision, trust)
    acc, out_dir, earlier = start_run(cfg, "train")
    obj, params, mode = setup_objective(cfg)
    tokenizer = load_tokenizer(cfg.model, cfg.model_revision, cfg.trust_remote_code)
    train_set, eval_set, data_report = load_data(cfg, obj, tokenizer)
    model = load_model(cfg.model, cfg.dtype, cfg.gradient_checkpointing, revision=cfg.model_revision,
                       trust_remote_code=cfg.trust_remote_code)
    for supplier in for_features(obj.features):
        supplier.check_model(model)  # e.g. activation masks hook the Llama layout only: fail before training
    reference, train_set, eval_set, cache_hit, precompute_s = setup_reference(cfg, mode, model, acc, tokenizer,
                                                                              train_set, eval_set)
    policy = setup_policy(cfg, obj, model)
    if mode == "adapter_off":
        reference = AdapterOffReference(policy)
    optimizer, scheduler = optimizer_and_scheduler([p for p in policy.parameters() if p.requires_grad], cfg)
    policy, optimizer = acc.prepare(policy, optimizer)
    pad_multiple = cfg.pad_to_multiple_of or (64 if acc.device.type == "cuda" else 1)
    # every model that reads the batches must honour packed rows: the policy and a frozen reference
    readers = [model] + ([reference.model.model] if isinstance(reference, FrozenReference) else [])
    pack = choose_packing(readers, cfg.packing, cfg.share_prompt, cfg.max_length)
    trainee = PolicyTrainee(acc, policy, obj, params, reference, tokenizer, pad_multiple, pack=pack)
    open_run_folder(acc, cfg, out_dir, earlier, {"model_revision": commits["model_commit"],
                                                 "reference_model_revision": commits["reference_model_commit"]})
    sinks = metric_sinks(acc, out_dir, cfg)
    best = keep_best(cfg, trainee, acc, out_dir)
    overopt = overopt_callback(cfg, eval_set, trainee, lambda step, m: [s.log(step, m) for s in sinks], bool(best))
    parts = LoopParts(acc, trainee, optimizer, scheduler, train_set, eval_set, sinks,
                      [c for c in (best, overopt) if c is not None])
    history = run_loop(parts, loop_settings(cfg, out_dir, cfg.data.group_by_length))
    summary = {"objective": obj.name, "objective_params": params, "reference": mode,
               "reference_cache_hit": cache_hit, "reference_precompute_s": precompute_s, "data": data_report,
               **summary_fields(history, best), "wall_time_s": round(time.time() - started, 2),
               "num_processes": acc.num_processes, "packing": "off" if pack is None else
               "shared prompts" if pack.share_prompt else "packed", **commits, "config": to_dict(cfg)}
    if overopt is not None:
        summary["overopt"] = overopt.monitor.summary(overopt_best_dir(cfg, bool(best)))
    if acc.is_main_process:
        write_atomic(out_dir / "final", lambda tmp: save_with_card(trainee, tmp, summary))
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        summary["final_model"] = str(out_dir / "final")
    end_run(acc)
    return summary


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

    from prefalign.data.builders.pairs import curriculum_stages

    if cfg.data.curriculum_reference not in ("previous", "initial"):
        raise ValueError(f"data.curriculum_reference must be previous or initial, got {cfg.data.curriculum_reference!r}")
    out = Path(cfg.output_dir)
    earlier = claim_run_dir(out, cfg.resume, cfg.overwrite, CURRICULUM_OUTPUTS, CURRICULUM_MARKERS, "train")
    aspect = cfg.data.score_weights or cfg.data.score_aspect
    lists, report = load_examples(cfg.data.train, cfg.data.format, cfg.data.on_bad_row, aspect,
                                  split=cfg.data.split, dataset_config=cfg.data.dataset_config)
    lists, built = run_builders(lists, cfg.data.builders, builder_context(cfg))
    remove(earlier)  # overwrite=true, once the data loaded: the earlier curriculum's stages and summary
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
        # model_revision pins the starting Hub model only; later stages start from a local folder
        stage_cfg = replace(cfg, model=model, reference_model=reference, output_dir=str(stage_dir / "run"),
                            model_revision=cfg.model_revision if model == cfg.model else None,
                            reference_model_revision=cfg.model_revision if reference else None,
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
