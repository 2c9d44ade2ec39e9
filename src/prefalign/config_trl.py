"""`prefalign train --from-trl CONFIG.yaml`: a TRL DPO / CPO / ORPO / KTO config as `trl dpo --config`
reads it (TrainingArguments, the trainer's config, ModelConfig and ScriptArguments in one flat YAML),
mapped key by key onto a prefalign TrainConfig tree.

Every key ends in one of three places: mapped (it says where), not mapped with the reason (printed, the
run goes on: what it controls does not change the loss, or prefalign has no such switch), or refused
(it changes the loss in a way no registered objective computes: training anyway would train another
loss under TRL's name). Keys the YAML leaves out take TRL's defaults where they differ from prefalign's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from prefalign.config import ConfigError, TrainConfig, build, field_types, parse_key_values, set_dotted, validate
from prefalign.losses import get_objective
from prefalign.losses.trl_names import TRL_LOSS_TYPES

TRAINERS = ("dpo", "cpo", "orpo", "kto")

# TRL keys copied as they are, TRL name -> prefalign key (dotted: nested)
DIRECT = {
    "model_name_or_path": "model", "model_revision": "model_revision", "trust_remote_code": "trust_remote_code",
    "dataset_name": "data.train", "dataset_config": "data.dataset_config", "dataset_train_split": "data.split",
    "per_device_train_batch_size": "batch_size", "per_device_eval_batch_size": "eval_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps", "learning_rate": "learning_rate",
    "weight_decay": "weight_decay", "max_grad_norm": "max_grad_norm", "warmup_ratio": "warmup_ratio",
    "max_length": "max_length", "max_prompt_length": "max_prompt_length", "output_dir": "output_dir",
    "seed": "seed", "logging_steps": "logging_steps", "gradient_checkpointing": "gradient_checkpointing",
    "save_total_limit": "keep_last", "use_peft": "lora", "lora_r": "lora_r", "lora_alpha": "lora_alpha",
    "precompute_ref_log_probs": "precompute_ref", "load_best_model_at_end": "load_best_model_at_end",
    "greater_is_better": "greater_is_better",
}
# TRL's and transformers' defaults that differ from prefalign's, for keys the YAML leaves out
# (DPOConfig, CPOConfig, ORPOConfig and KTOConfig share these; TrainingArguments for the schedule)
TRL_DEFAULTS = {"learning_rate": 1e-6, "max_length": 1024, "max_prompt_length": 512, "lr_scheduler_type": "linear",
                "warmup_ratio": 0.0, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8,
                "logging_steps": 10, "num_train_epochs": 3.0, "beta": 0.1}
SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant", "constant_with_warmup": "constant"}
DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16", "float32": "float32"}
TRACKERS = ("tensorboard", "wandb", "trackio")
# keys that only steer TRL's or transformers' machinery: the loss and the updates do not depend on them
NO_EFFECT = {
    "hub_model_id": "prefalign pushes with `prefalign push RUN --repo ID`",
    "push_to_hub": "prefalign pushes with `prefalign push RUN --repo ID`",
    "hub_strategy": "prefalign pushes with `prefalign push RUN --repo ID`",
    "hub_private_repo": "prefalign pushes with `prefalign push RUN --repo ID --private`",
    "run_name": "prefalign names a tracker's run after output_dir",
    "logging_dir": "TensorBoard files go to output_dir/tensorboard",
    "logging_strategy": "prefalign logs every logging_steps",
    "logging_first_step": "prefalign logs every logging_steps",
    "overwrite_output_dir": "prefalign refuses a folder holding a run unless overwrite=true (set it as an override)",
    "do_train": "`prefalign train` always trains", "do_eval": "prefalign always evaluates at the start and end",
    "eval_on_start": "prefalign always evaluates at the start",
    "dataset_num_proc": "rows are read in one process", "dataloader_num_workers": "batches are built in-process",
    "dataloader_pin_memory": "batches are built in-process", "remove_unused_columns": "rows are validated instead",
    "attn_implementation": "transformers' default attention is used", "use_liger_kernel": "no Liger kernels",
    "torch_compile": "no torch.compile", "tf32": "matmul precision is left to PyTorch",
    "bf16_full_eval": "evaluation runs as training does", "fp16_full_eval": "evaluation runs as training does",
    "log_level": "prefalign logs through its progress bar and metrics.jsonl",
    "disable_dropout": "prefalign runs the model in train mode as loaded (the tiny and most chat models have no dropout)",
    "generate_during_eval": "prefalign diagnose generates and judges after training",
    "padding_free": "batches are padded; padding is masked, so the loss is the same",
    "use_logits_to_keep": "logps_impl=lean already skips the full-vocabulary logits",
    "model_init_kwargs": "the model is loaded by prefalign (dtype, trust_remote_code)",
    "ref_model_init_kwargs": "the reference is loaded like the model",
    "ddp_find_unused_parameters": "multi-process runs go through accelerate launch",
    "save_only_model": "checkpoints always hold what exact resume needs",
}
# keys whose non-default values change the loss or the updates in ways no objective here computes
LOSS_CHANGING = {
    "rpo_alpha": None, "ld_alpha": None, "use_weighting": False, "reference_free": False, "sync_ref_model": False,
    "f_divergence_type": "reverse_kl", "loss_weights": None, "ref_adapter_name": None, "force_use_ref_model": False,
    "truncation_mode": "keep_end", "load_in_4bit": False, "load_in_8bit": False, "use_bnb_nested_quant": False,
}


@dataclass
class TrlMapping:
    trainer: str
    tree: dict  # the prefalign config tree (TrainConfig keys)
    mapped: list = field(default_factory=list)  # (TRL key, value, where it went)
    unmapped: list = field(default_factory=list)  # (TRL key, value, why not)
    epochs: float | None = None  # num_train_epochs, when max_steps comes from the data size
    warmup_steps: int | None = None  # warmup_steps: a ratio once max_steps is known
    per_epoch: set = field(default_factory=set)  # eval_steps / save_steps that are "one epoch" (eval_strategy epoch)
    steps_note: str = ""


def read_trl_yaml(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        tree = yaml.safe_load(f) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a TRL config is a mapping of keys")
    return tree


def detect_trainer(trl: dict) -> str:
    """The TRL trainer a config is for, from the keys only one trainer has; dpo otherwise (orpo has no own key)."""
    if {"cpo_alpha", "simpo_gamma"} & set(trl):
        return "cpo"
    if {"desirable_weight", "undesirable_weight"} & set(trl):
        return "kto"
    return "dpo"


def loss_type(trl: dict, default: str) -> str:
    value = trl.get("loss_type", default)
    if isinstance(value, list):  # TRL >= 0.20 takes a list of losses summed with loss_weights
        if len(value) != 1:
            raise ConfigError(f"loss_type {value}: a weighted sum of several TRL losses has no single prefalign "
                              "objective; train one loss_type")
        value = value[0]
    return str(value)


def dpo_objective(trl: dict) -> tuple[str, dict, list]:
    """(objective, its arguments incl. beta, TRL keys consumed) for TRL's DPOTrainer."""
    name = loss_type(trl, "sigmoid")
    if name not in TRL_LOSS_TYPES:
        raise ConfigError(f"loss_type {name!r} has no prefalign objective yet; mapped: {', '.join(TRL_LOSS_TYPES)}")
    objective = TRL_LOSS_TYPES[name]
    params = get_objective(objective).params
    beta, smoothing = float(trl.get("beta", TRL_DEFAULTS["beta"])), float(trl.get("label_smoothing", 0.0))
    args: dict = {}
    if objective == "sppo_hard":
        args["eta"] = 1.0 / beta  # TRL's targets (h_w - 1/(2 beta))^2 + (h_l + 1/(2 beta))^2: eta/2 = 1/(2 beta)
    elif "beta" in params:
        args["beta"] = beta
    if objective == "ipo":
        args["length_normalize"] = True  # TRL divides ipo's log-probs by the completion length
    if objective == "robust_dpo":
        args["epsilon"] = smoothing  # rDPO's flip rate is TRL's label_smoothing (0: DPO exactly)
    elif smoothing and "label_smoothing" in params:
        args["label_smoothing"] = smoothing
    elif smoothing:
        raise ConfigError(f"label_smoothing {smoothing} with loss_type {name!r}: {objective} has no label smoothing")
    consumed = ["loss_type", "beta", "label_smoothing"]
    for key in sorted(set(trl) & {"discopop_tau", "exo_epsilon"}):  # later TRL loss parameters, by name
        short = key.split("_", 1)[1]
        if short in params or key in params:
            args[short if short in params else key] = trl[key]
            consumed.append(key)
    return objective, args, consumed


def cpo_objective(trl: dict) -> tuple[str, dict, list]:
    """TRL's CPOTrainer: sigmoid -> cpo (cpo_alpha is its NLL weight), simpo with cpo_alpha 0 -> simpo."""
    name, beta = loss_type(trl, "sigmoid"), float(trl.get("beta", TRL_DEFAULTS["beta"]))
    alpha, smoothing = float(trl.get("cpo_alpha", 1.0)), float(trl.get("label_smoothing", 0.0))
    if smoothing:
        raise ConfigError(f"label_smoothing {smoothing}: prefalign's cpo and simpo have no label smoothing")
    consumed = ["loss_type", "beta", "label_smoothing", "cpo_alpha", "simpo_gamma"]
    if name == "sigmoid":
        return "cpo", {"beta": beta, "lam": alpha}, consumed
    if name == "simpo":
        if alpha:
            raise ConfigError(f"loss_type simpo with cpo_alpha {alpha} (TRL's default is 1.0) is CPO-SimPO, SimPO plus "
                              "an NLL term, which no prefalign objective computes; set cpo_alpha: 0 for SimPO")
        # TRL: beta * (mean logp_w - mean logp_l - simpo_gamma / beta) = SimPO's beta * diff - gamma
        return "simpo", {"beta": beta, "gamma": float(trl.get("simpo_gamma", 0.5))}, consumed
    raise ConfigError(f"CPO loss_type {name!r}: prefalign maps sigmoid (cpo) and simpo (with cpo_alpha: 0); "
                      "reference-free hinge and IPO have no objective here")


def orpo_objective(trl: dict) -> tuple[str, dict, list]:
    # ORPOConfig's beta is the paper's lambda, the weight of the odds-ratio term
    return "orpo", {"lam": float(trl.get("beta", TRL_DEFAULTS["beta"]))}, ["beta"]


def kto_objective(trl: dict) -> tuple[str, dict, list]:
    name = loss_type(trl, "kto")
    if name != "kto":
        raise ConfigError(f"KTO loss_type {name!r} has no prefalign objective; kto maps to kto")
    return "kto", {"beta": float(trl.get("beta", TRL_DEFAULTS["beta"])),
                   "desirable_weight": float(trl.get("desirable_weight", 1.0)),
                   "undesirable_weight": float(trl.get("undesirable_weight", 1.0))}, \
        ["loss_type", "beta", "desirable_weight", "undesirable_weight"]


OBJECTIVES = {"dpo": dpo_objective, "cpo": cpo_objective, "orpo": orpo_objective, "kto": kto_objective}


def map_trl(trl: dict, trainer: str | None = None) -> TrlMapping:
    """The prefalign config tree a TRL config maps to, with what went where and what did not."""
    trainer = trainer or detect_trainer(trl)
    if trainer not in TRAINERS:
        raise ConfigError(f"TRL trainer must be one of {TRAINERS}, got {trainer!r}")
    refused = {k: v for k, v in trl.items() if k in LOSS_CHANGING and v != LOSS_CHANGING[k]}
    if refused:
        raise ConfigError("these TRL keys change the loss or the model in ways prefalign does not compute: "
                          + ", ".join(f"{k}={v!r}" for k, v in refused.items()) + "; remove them (or set TRL's default) "
                          "to train the plain loss")
    out = TrlMapping(trainer, {})
    values = {**{k: v for k, v in TRL_DEFAULTS.items() if k not in ("beta",)}, **trl}
    if "max_prompt_length" not in trl and int(values["max_length"]) <= TRL_DEFAULTS["max_prompt_length"]:
        # TRL's 512 leaves a short max_length no response: prefalign's own default (max_length // 2) applies
        del values["max_prompt_length"]

    def put(key: str, value, where: str, how: str = "") -> None:
        set_dotted(out.tree, where, value)
        origin = "" if key in trl else " (TRL default)"
        out.mapped.append((key, value, f"{where}{origin}" + (f": {how}" if how else "")))

    objective, args, consumed = OBJECTIVES[trainer](trl)
    set_dotted(out.tree, "objective", objective)
    beta = args.pop("beta", None)
    if beta is not None:
        out.tree["beta"] = beta
    if args:
        out.tree["objective_args"] = args
    for key in consumed:
        if key in trl:
            out.mapped.append((key, trl[key], f"objective {objective} " + str({"beta": beta, **args})))
    handled = set(consumed)
    for key, where in DIRECT.items():
        if key in values and values[key] is not None:
            put(key, values[key], where)
            handled.add(key)
    handled |= map_schedule(values, trl, out, put) | map_eval_and_saves(values, trl, out, put)
    handled |= map_precision_and_lora(trl, out, put)
    for key in sorted(set(trl) - handled):
        if key in NO_EFFECT:
            out.unmapped.append((key, trl[key], NO_EFFECT[key]))
        elif key in LOSS_CHANGING:
            out.unmapped.append((key, trl[key], "TRL's default value: nothing to map"))
        else:
            out.unmapped.append((key, trl[key], f"not a key prefalign maps from a TRL {trainer} config; ignored"))
    return out


def map_schedule(values: dict, trl: dict, out: TrlMapping, put) -> set:
    scheduler = values["lr_scheduler_type"]
    if scheduler in SCHEDULERS:
        put("lr_scheduler_type", SCHEDULERS[scheduler], "lr_scheduler",
            "linear warm-up, then constant" if scheduler == "constant_with_warmup" else "")
    else:
        out.unmapped.append(("lr_scheduler_type", scheduler, f"prefalign schedules {sorted(set(SCHEDULERS.values()))}; "
                                                              "the run uses linear"))
        out.tree["lr_scheduler"] = "linear"
    if trl.get("warmup_steps"):  # transformers: warmup_steps > 0 wins over warmup_ratio
        out.warmup_steps = int(trl["warmup_steps"])
        out.mapped.append(("warmup_steps", trl["warmup_steps"], "warmup_ratio = warmup_steps / max_steps"))
    if trl.get("max_steps", -1) and int(trl.get("max_steps", -1)) > 0:  # max_steps > 0 wins over epochs
        put("max_steps", int(trl["max_steps"]), "max_steps")
        if "num_train_epochs" in trl:
            out.unmapped.append(("num_train_epochs", trl["num_train_epochs"], "max_steps is set and wins, as in TRL"))
    else:
        out.epochs = float(values["num_train_epochs"])
        origin = "" if "num_train_epochs" in trl else " (TRL default)"
        out.mapped.append(("num_train_epochs", out.epochs, f"max_steps{origin}: from the data size, see above"))
    for key in ("optim",):
        if key in trl and not str(trl[key]).startswith("adamw"):
            out.unmapped.append((key, trl[key], "prefalign trains with torch AdamW"))
        elif key in trl:
            out.mapped.append((key, trl[key], "AdamW (torch.optim.AdamW)"))
    for key, default in (("adam_beta1", 0.9), ("adam_beta2", 0.999), ("adam_epsilon", 1e-8)):
        if key in trl:
            reason = "AdamW's default, as prefalign uses" if float(trl[key]) == default else \
                f"prefalign's AdamW keeps {default}"
            out.unmapped.append((key, trl[key], reason))
    return {"lr_scheduler_type", "warmup_steps", "warmup_ratio", "max_steps", "num_train_epochs", "optim",
            "adam_beta1", "adam_beta2", "adam_epsilon"}


def map_eval_and_saves(values: dict, trl: dict, out: TrlMapping, put) -> set:
    evaluate = trl.get("eval_strategy", trl.get("evaluation_strategy", "no"))
    test_split = trl.get("dataset_test_split")
    if "dataset_name" in trl and (test_split or evaluate != "no"):
        # TRL's script evaluates on dataset[dataset_test_split] (default "test") when eval_strategy is not "no"
        put("dataset_test_split", trl["dataset_name"], "data.eval")
        put("dataset_test_split", test_split or "test", "data.eval_split")
    if evaluate == "steps":
        put("eval_steps", int(trl.get("eval_steps") or values["logging_steps"]), "eval_steps")
    elif evaluate == "epoch":
        out.per_epoch.add("eval_steps")
        out.mapped.append(("eval_strategy", "epoch", "eval_steps = the steps of one epoch"))
    elif "eval_steps" in trl:
        out.unmapped.append(("eval_steps", trl["eval_steps"], "eval_strategy is 'no': evaluation only at start and end"))
    saves = trl.get("save_strategy", "steps" if "save_steps" in trl else "no")
    if saves == "steps":
        put("save_steps", int(trl.get("save_steps", 500)), "save_steps")
    elif saves == "epoch":
        out.per_epoch.add("save_steps")
        out.mapped.append(("save_strategy", "epoch", "save_steps = the steps of one epoch"))
    elif saves != "no":
        out.unmapped.append(("save_strategy", saves, "prefalign saves every save_steps (and the best model by "
                                                     "metric_for_best_model)"))
    if "metric_for_best_model" in trl:
        put("metric_for_best_model", str(trl["metric_for_best_model"]).removeprefix("eval_"), "metric_for_best_model",
            "held-out metric names carry no eval_ prefix")
    if "report_to" in trl:
        names = [trl["report_to"]] if isinstance(trl["report_to"], str) else list(trl["report_to"] or [])
        kept = [n for n in names if n in TRACKERS]
        put("report_to", ["jsonl", *kept], "report_to")
        for name in (n for n in names if n not in TRACKERS and n not in ("none", "all")):
            out.unmapped.append(("report_to", name, f"prefalign writes to jsonl, {', '.join(TRACKERS)}"))
        if "all" in names:
            out.unmapped.append(("report_to", "all", "name the trackers: 'all' depends on what is installed"))
    return {"eval_strategy", "evaluation_strategy", "eval_steps", "dataset_test_split", "save_strategy", "save_steps",
            "metric_for_best_model", "report_to"}


def map_precision_and_lora(trl: dict, out: TrlMapping, put) -> set:
    if trl.get("bf16"):
        put("bf16", "bf16", "mixed_precision")
    elif trl.get("fp16"):
        put("fp16", "fp16", "mixed_precision")
    dtype = trl.get("dtype", trl.get("torch_dtype"))
    if dtype is not None:
        key = "dtype" if "dtype" in trl else "torch_dtype"
        if str(dtype) in DTYPES:
            put(key, DTYPES[str(dtype)], "dtype")
        else:
            out.unmapped.append((key, dtype, "prefalign loads float32 unless dtype is bfloat16/float16/float32"))
    if trl.get("lora_dropout"):
        out.unmapped.append(("lora_dropout", trl["lora_dropout"], "prefalign's LoRA adapters have no dropout"))
    if trl.get("lora_target_modules"):
        out.unmapped.append(("lora_target_modules", trl["lora_target_modules"], "prefalign's LoRA targets every "
                                                                                "linear layer (all-linear)"))
    return {"bf16", "fp16", "dtype", "torch_dtype", "lora_dropout", "lora_target_modules"}


def steps_per_epoch(cfg: TrainConfig) -> tuple[int, int]:
    """(optimizer steps in one epoch, training examples) as transformers counts them:
    ceil(ceil(N / batch_size) / gradient_accumulation_steps), N = examples after the held-out split."""
    from prefalign.data.formats.readers import load_examples

    examples, _ = load_examples(cfg.data.train, cfg.data.format, cfg.data.on_bad_row, split=cfg.data.split,
                                dataset_config=cfg.data.dataset_config)
    n = len(examples)
    if not cfg.data.eval and cfg.data.eval_fraction > 0:
        n -= max(1, int(round(n * cfg.data.eval_fraction)))  # seeded_split's held-out count
    if cfg.data.max_examples:
        n = min(n, cfg.data.max_examples)
    return max(1, math.ceil(math.ceil(n / cfg.batch_size) / cfg.gradient_accumulation_steps)), n


def load_trl_config(path: str, overrides: list[str] = (), trainer: str | None = None) -> tuple[TrainConfig, TrlMapping]:
    """The TrainConfig a TRL YAML maps to, key=value overrides applied on top; epochs become max_steps
    from the data size (after the overrides, so a changed batch size or data is counted). An override
    whose key is not a prefalign key is a TRL key (per_device_train_batch_size=8): it joins the TRL
    config before mapping, as `trl dpo --config X --per_device_train_batch_size 8` would."""
    prefalign_keys = set(field_types(TrainConfig))
    given = parse_key_values(overrides, "override", "dotted keys for nesting")
    trl_given = {k: v for k, v in given.items() if k.split(".")[0] not in prefalign_keys}
    given = {k: v for k, v in given.items() if k not in trl_given}
    mapping = map_trl({**read_trl_yaml(path), **trl_given}, trainer)
    tree = mapping.tree
    for key, value in given.items():
        set_dotted(tree, key, value)
    if mapping.epochs is not None and "max_steps" not in given:
        tree["max_steps"] = 1  # replaced below, once the data size is known
    cfg = build(TrainConfig, tree)
    if mapping.epochs is not None and "max_steps" not in given:
        per_epoch, n = steps_per_epoch(cfg)
        tree["max_steps"] = max(1, math.ceil(mapping.epochs * per_epoch))
        mapping.steps_note = (f"max_steps = ceil({mapping.epochs:g} epochs x ceil(ceil({n} training examples / batch_size "
                              f"{cfg.batch_size}) / gradient_accumulation_steps {cfg.gradient_accumulation_steps})) "
                              f"= {tree['max_steps']}")
    for key in mapping.per_epoch - set(given):
        tree[key] = steps_per_epoch(build(TrainConfig, tree))[0]
    if mapping.warmup_steps is not None and "warmup_ratio" not in given:
        tree["warmup_ratio"] = min(1.0, mapping.warmup_steps / tree.get("max_steps", cfg.max_steps))
    cfg = build(TrainConfig, tree)
    validate(cfg)
    return cfg, mapping


def render(mapping: TrlMapping, source: str) -> str:
    """What the CLI prints: the prefalign config (YAML) the TRL file maps to, then every TRL key it did not map."""
    lines = [f"# prefalign config mapped from the TRL {mapping.trainer} config {Path(source).name}"]
    if mapping.steps_note:
        lines.append(f"# {mapping.steps_note}")
    lines.append(yaml.safe_dump(mapping.tree, sort_keys=False).rstrip())
    lines.append("# TRL keys mapped:")
    lines += [f"#   {k}: {v!r} -> {how}" for k, v, how in mapping.mapped]
    lines.append("# TRL keys not mapped:" + ("" if mapping.unmapped else " none"))
    lines += [f"#   {k}: {v!r} ({why})" for k, v, why in mapping.unmapped]
    return "\n".join(lines) + "\n"
