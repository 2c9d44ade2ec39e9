"""Typed run configuration. YAML and `key=value` overrides are thin layers over these dataclasses.

Each field's `help` is the single description used by `prefalign train --help` and the README.
Components never receive these objects: `train.run` unpacks them into explicit arguments.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prefalign.data.builders.pairs import REWARD_TEMPLATE

from prefalign.data.contrast import CONTRAST_BETTER, CONTRAST_WORSE, template_error
from prefalign.logging import trackers


def opt(default, help: str, **kw):
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class DataConfig:
    train: str = opt("", "training data: a .jsonl/.json/.parquet/.csv file (gzip allowed), a datasets "
                         "save_to_disk folder, or a Hub dataset id owner/name (or owner/name:split)")
    eval: str | None = opt(None, "held-out data (file, folder or Hub id); if unset, a seeded split of data.train")
    split: str = opt("train", "split of data.train when it is a Hub id or a DatasetDict folder (id:split wins)")
    eval_split: str = opt("test", "split of data.eval when it is a Hub id or a DatasetDict folder (id:split wins)")
    dataset_config: str | None = opt(None, "Hub dataset config (subset) name for data.train and data.eval")
    format: str = opt("auto", "pairs | implicit | hh | ranked | unpaired | sft | triples | auto (detected from the fields)")
    eval_fraction: float = opt(0.05, "share of data.train held out when data.eval is unset")
    on_bad_row: str = opt("error", "error: stop at the first bad row; skip: skip it and count it in the summary")
    score_aspect: str | None = opt(None, "which aspect score ranks multi-aspect responses (e.g. overall)")
    score_weights: dict = opt({}, "rank multi-aspect responses by a weighted sum of aspects, e.g. "
                                  "{informativeness: 0.5, naturalness: 0.5} (overrides score_aspect)")
    list_to_pairs: str = opt("best_vs_worst", "how ranked lists become pairs for pairwise objectives: "
                                              "best_vs_worst | best_vs_each | all_pairs")
    min_score_gap: float = opt(0.0, "all_pairs/best_vs_each: skip pairs whose scores differ by less (counted)")
    reward_augment: bool = opt(False, "reward-augmented relabeling (arXiv:2410.08067): each scored pair becomes "
                                      "two pairs conditioned on a target score written into the prompt")
    reward_template: str = opt(REWARD_TEMPLATE, "how the target score is written into the prompt ({prompt}, {score})")
    curriculum_stages: int = opt(0, "Curry-DPO: split ranked lists' pairs into N stages, easiest (largest score "
                                    "gap) first, trained in order (0: off)")
    curriculum_reference: str = opt("previous", "Curry-DPO reference of stage k: previous (stage k-1's model) | "
                                                "initial (the starting model)")
    builders: list = opt([], "data builders applied in order after loading, before tokenization, to the training "
                             "and held-out examples: a list of {name: ..., param: value} (`prefalign data list`), "
                             "e.g. [{name: to_pairs, rule: all_pairs, min_gap: 1}, {name: reward_augment}]; "
                             "each step's counts go into summary.json")
    builder_judge: str | None = opt(None, "the judge builders such as rso, deita_select or d2o_negatives use "
                                          "(a registered judge name, `prefalign judge --help`)")
    builder_judge_args: dict = opt({}, "constructor arguments of data.builder_judge, e.g. {path: runs/rm/final}")
    builder_encoder: str | None = opt(None, "sentence encoder for builders (deita diversity, dedup near='embedding'): "
                                            "minilm, a local encoder folder or a Hub id")
    builder_encoder_revision: str | None = opt(None, "Hub branch, tag or commit that pins data.builder_encoder")
    builder_generator: str | None = opt(None, "local model folder or Hub id that generates for builders (d2o_negatives "
                                              "samples, longpo_short_to_long, magpie, urial)")
    builder_generator_revision: str | None = opt(None, "Hub branch, tag or commit that pins data.builder_generator")
    max_examples: int | None = opt(None, "use only the first N training examples (quick runs)")
    group_by_length: bool = opt(False, "batch examples of similar length together (less padding)")
    contrast_better: str = opt(CONTRAST_BETTER, "T-REG: the 'revise to be better' prompt; {prompt} becomes the "
                                                "prompt (the last user message of a chat), {response} the scored reply")
    contrast_worse: str = opt(CONTRAST_WORSE, "T-REG: the 'revise to be worse' prompt, with the same placeholders")


@dataclass
class LoopConfig:
    """The training loop's options, shared by policy (`prefalign train`) and reward-model (`train-rm`) configs."""

    output_dir: str = opt("runs/prefalign", "run folder: config, metrics.jsonl, checkpoints, final model")
    max_steps: int = opt(100, "optimizer steps to train")
    batch_size: int = opt(4, "examples (prompts) per device per micro-batch")
    gradient_accumulation_steps: int = opt(1, "micro-batches per optimizer step")
    learning_rate: float = opt(1e-6, "peak learning rate (AdamW)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    warmup_ratio: float = opt(0.1, "share of max_steps spent warming the learning rate up linearly")
    lr_scheduler: str = opt("cosine", "cosine | linear | constant (after warm-up)")
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0 disables)")
    max_length: int = opt(512, "maximum tokens of prompt + response")
    seed: int = opt(42, "seed for initialisation, data order and splits")
    save_steps: int = opt(0, "save a checkpoint every N steps (0: only the final model)")
    keep_last: int = opt(2, "checkpoints to keep (older ones are deleted)")
    resume: bool = opt(False, "continue from the last checkpoint in output_dir")
    overwrite: bool = opt(False, "replace an earlier run's outputs in output_dir (without it, or resume, training "
                                 "into a folder that holds a run is refused)")
    eval_steps: int = opt(0, "evaluate on the held-out set every N steps (0: at the start and end only)")
    eval_batch_size: int = opt(8, "examples per evaluation batch")
    metric_for_best_model: str | None = opt(None, "keep the model with the best value of this held-out metric in "
                                                  "output_dir/best, e.g. loss or rewards/accuracy (needs eval_steps; "
                                                  "default: loss when early_stopping_patience or "
                                                  "load_best_model_at_end is set, else off)")
    greater_is_better: bool | None = opt(None, "whether a higher metric_for_best_model is better; unset: false for "
                                               "names containing 'loss', true otherwise")
    early_stopping_patience: int = opt(0, "stop after this many evaluations without improving metric_for_best_model "
                                          "(0: never stop early)")
    early_stopping_threshold: float = opt(0.0, "how much metric_for_best_model must improve to reset the patience")
    load_best_model_at_end: bool = opt(False, "save the best model (not the last) as output_dir/final")
    logging_steps: int = opt(10, "log metrics every N steps")
    mixed_precision: str = opt("no", "accelerate mixed precision: no | bf16 | fp16")
    tensorboard: bool = opt(False, "also write TensorBoard event files (the same as report_to: [jsonl, tensorboard])")
    report_to: list = opt(["jsonl"], "metric trackers: jsonl (metrics.jsonl, always written) | tensorboard "
                                     "(output_dir/tensorboard) | wandb | trackio (both: a run named after "
                                     "output_dir, with the config)")
    progress: bool = opt(True, "show a progress bar")
    malloc_mmap_threshold_mib: float = opt(0.0, "Linux (glibc): allocations of at least this many MiB get their own "
                                                "memory map, returned to the system when freed, instead of staying in "
                                                "the heap between steps. 1 cut SmolLM2-135M DPO's peak RSS by 6% but "
                                                "made the 7M-parameter fixture 33% slower (page faults): off by "
                                                "default (0: glibc's adaptive threshold); a set "
                                                "MALLOC_MMAP_THRESHOLD_ wins")


@dataclass
class TrainConfig(LoopConfig):
    family: str = opt("causal_lm", "model family (`prefalign objectives` says which objectives each trains): "
                                   "causal_lm | diffusion | any family registered in prefalign.families")
    family_args: dict = opt({}, "the family's own options, e.g. diffusion: {inference_steps: 100}")
    model: str = opt("", "local folder or Hugging Face Hub id (owner/name) of a causal LM; a Hub id resolves "
                         "through the standard HF cache and honours HF_HUB_OFFLINE (other families: the "
                         "folder their own format reads, e.g. a diffusers UNet2DModel folder)")
    model_revision: str | None = opt(None, "Hub branch, tag or commit that pins `model` (Hub ids only); unset: main")
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "data options (data.*)"})
    objective: str = opt("dpo", "objective name from the registry (`prefalign objectives`)")
    beta: float | None = opt(None, "KL strength / inverse temperature; unset: the objective's own default "
                                   "(dpo 0.1, simpo 2.0, ...; see `prefalign objectives`)")
    objective_args: dict = opt({}, "other hyper-parameters of the objective, e.g. {label_smoothing: 0.1}")
    max_prompt_length: int | None = opt(None, "maximum prompt tokens (truncated from the left); unset: max_length // "
                                              "2, the ratio of TRL's defaults (512 of 1024)")
    reference: str = opt("auto", "frozen | adapter_off | precomputed | none | auto")
    reference_model: str | None = opt(None, "local folder or Hub id of the reference policy (frozen or "
                                            "precomputed); unset: the policy's own initial weights")
    reference_model_revision: str | None = opt(None, "Hub branch, tag or commit that pins `reference_model`")
    trust_remote_code: bool = opt(False, "run modelling code shipped with model, reference_model or "
                                         "data.builder_generator (a config's auto_map): only for repos you trust; "
                                         "off: transformers' own classes only")
    precompute_ref: bool = opt(False, "compute reference log-probs once before training and cache them on disk")
    ref_cache_dir: str = opt("~/.cache/prefalign/reference", "where precomputed reference log-probs are cached")
    dtype: str = opt("float32", "weights dtype: float32 | bfloat16 | float16")
    gradient_checkpointing: bool = opt(False, "recompute activations in backward to save memory")
    pad_to_multiple_of: int | None = opt(None, "pad batch lengths to a multiple of N; unset: 64 on CUDA (few "
                                               "distinct shapes for attention kernels), 1 on CPU")
    logps_impl: str = opt("lean", "lean: chunked output projection, no full-vocabulary logits; full: model logits")
    lean_mlp: bool = opt(True, "SwiGLU MLPs (Llama, Mistral, Qwen2/3) keep only gate and up for backward and "
                               "recompute silu(gate) * up there: about a third less activation memory, the same "
                               "gradients; off: the model's own forward")
    packing: str | bool = opt("auto", "pack each micro-batch's rows without padding (position ids restart per sequence, "
                               "attention confined to each): auto (where the model supports it) | true | false")
    share_prompt: str | bool = opt("auto", "in packed rows, compute each prompt once for all its responses (a tree-shaped "
                                    "mask): auto (where packing is on and supported) | true | false")
    lora: bool = opt(False, "train a LoRA adapter (needs peft); the reference is the adapter switched off")
    lora_r: int = opt(16, "LoRA rank")
    lora_alpha: int = opt(32, "LoRA alpha")
    mask_head: str = opt("common", "sparsepo's learned mask head: common (one mask for rewards and KL, "
                                   "mask_logits [B, K, T]) | independent (two, [B, K, T, 2])")
    mask_head_dropout: float = opt(0.01, "dropout inside sparsepo's mask head (the authors' default)")
    overopt_steps: int = opt(0, "measure likelihood over-optimisation (arXiv:2410.11677: top-k entropy and top-k "
                                "probability mass of the policy's next-token distributions along its samples for "
                                "held-out prompts) at step 0, every N steps and at the end (0: off)")
    overopt_prompts: int = opt(16, "how many held-out prompts the over-optimisation indicators are measured on")
    overopt_k: int = opt(10, "k of the top-k entropy and top-k mass")
    overopt_max_new_tokens: int = opt(32, "tokens sampled per prompt for the over-optimisation indicators")
    overopt_indicator: str = opt("topk_entropy", "which indicator early stopping watches: topk_entropy | topk_mass")
    overopt_stop: float = opt(0.0, "stop early when the indicator falls below (1 - overopt_stop) x its step-0 value, "
                                   "e.g. 0.2: a 20% drop; the last healthy model is saved to output_dir/best (to "
                                   "output_dir/last-healthy when a best model is kept by metric_for_best_model) "
                                   "and summary.json names it (0: never stop)")


class ConfigError(ValueError):
    pass


def field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Check/convert one value against its annotation (override strings arrive YAML-parsed)."""
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{key} cannot be null")
    if bool in args and str in args and isinstance(value, (bool, str)):
        return value  # a switch with an `auto` (packing: auto | true | false); YAML reads true as a bool
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif base is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif base is dict:
        if isinstance(value, dict):
            return value
    else:
        return value
    raise ConfigError(f"{key} must be {getattr(base, '__name__', base)}, got {value!r}")


def build(cls, values: dict, prefix: str = ""):
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping")
    types = field_types(cls)
    kwargs = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in types:
            close = difflib.get_close_matches(key, types, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key {name!r}{hint}")
        if dataclasses.is_dataclass(types[key]):
            kwargs[key] = build(types[key], value, f"{name}.")
        else:
            kwargs[key] = coerce(value, types[key], name)
    return cls(**kwargs)


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {part} is not a mapping")
    node[parts[-1]] = value


def load_config(path: str | None, overrides: list[str] = ()) -> TrainConfig:
    cfg = build(TrainConfig, read_tree(path, overrides))
    validate(cfg)
    return cfg


def read_tree(path: str | None, overrides: list[str] = ()) -> dict:
    """The YAML file's mapping (safe_load) with key=value overrides applied (dotted keys nest)."""
    tree: dict = {}
    if path:
        with open(path, encoding="utf-8") as f:
            tree = yaml.safe_load(f) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
    for key, value in parse_key_values(overrides, "override", "dotted keys for nesting").items():
        set_dotted(tree, key, value)
    return tree


def parse_key_values(items, flag: str, hint: str = "") -> dict:
    """['key=value', ...] -> {key: value}: every command's key=value parser (config overrides,
    --param, --judge-arg). Values read as YAML (numbers, booleans, lists, mappings), kept as text
    where they are not valid YAML; a later key replaces an earlier one."""
    out = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {item!r} must look like key=value" + (f" ({hint})" if hint else ""))
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def split_config_arg(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """`prefalign CMD [CONFIG.yaml] [key=value ...]`: with no YAML file the first word is an override."""
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        return None, [config] + list(overrides)
    return config, list(overrides)


def prompt_length(cfg: TrainConfig) -> int:
    """The prompt budget in tokens: max_prompt_length if set, else half of max_length.

    Half mirrors TRL's defaults (max_prompt_length 512 of max_length 1024), so a config that sets
    only max_length works for any max_length. Every reader goes through here, never the raw field.
    """
    return cfg.max_prompt_length if cfg.max_prompt_length is not None else cfg.max_length // 2


def validate(cfg: TrainConfig) -> None:
    if not cfg.model:
        raise ConfigError("model is required: a local folder or Hugging Face Hub id of a causal LM")
    if not cfg.data.train:
        raise ConfigError("data.train is required")
    choices = {"reference": ("auto", "frozen", "adapter_off", "precomputed", "none"),
               "logps_impl": ("lean", "full"), "dtype": ("float32", "bfloat16", "float16"),
               "mask_head": ("common", "independent"), "overopt_indicator": ("topk_entropy", "topk_mass")}
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"{key} must be one of {allowed}, got {getattr(cfg, key)!r}")
    validate_loop(cfg)
    for key in ("packing", "share_prompt"):
        value = getattr(cfg, key)
        if isinstance(value, bool):
            setattr(cfg, key, "true" if value else "false")
        if getattr(cfg, key) not in ("auto", "true", "false"):
            raise ConfigError(f"{key} must be auto, true or false, got {value!r}")
    if cfg.share_prompt == "true" and cfg.packing == "false":
        raise ConfigError("share_prompt: true needs packed rows (packing: auto or true)")
    if not 0 <= cfg.overopt_stop < 1:
        raise ConfigError("overopt_stop is a relative drop in [0, 1)")
    if cfg.overopt_stop > 0 and cfg.overopt_steps < 1:
        raise ConfigError("overopt_stop needs overopt_steps >= 1 (the indicators are measured every N steps)")
    if cfg.overopt_steps and min(cfg.overopt_prompts, cfg.overopt_k, cfg.overopt_max_new_tokens) < 1:
        raise ConfigError("overopt_prompts, overopt_k and overopt_max_new_tokens must be at least 1")
    if not 0 <= cfg.mask_head_dropout < 1:
        raise ConfigError("mask_head_dropout must be in [0, 1)")
    if cfg.max_prompt_length is not None and not 1 <= cfg.max_prompt_length < cfg.max_length:
        # only a value the user set can be wrong: the derived one always leaves the response room
        raise ConfigError(f"max_prompt_length ({cfg.max_prompt_length}) must be at least 1 and below max_length "
                          f"({cfg.max_length}), so that every response keeps at least one token; or leave it unset "
                          f"(max_length // 2)")
    if cfg.max_prompt_length is None and cfg.max_length < 2:
        raise ConfigError(f"max_length ({cfg.max_length}) must be at least 2: one prompt and one response token")
    check_builders(cfg.data.builders)
    for key in ("contrast_better", "contrast_worse"):
        error = template_error(getattr(cfg.data, key))
        if error:
            raise ConfigError(f"data.{key} {error}")
    check_family(cfg)


# Options only the causal-LM recipe reads, with the value that means "off": another family refuses them
LM_ONLY = {"lora": False, "precompute_ref": False, "reference_model": None, "overopt_steps": 0,
           "gradient_checkpointing": False, "trust_remote_code": False}


def check_family(cfg: TrainConfig) -> None:
    from prefalign.families.base import get_family

    try:
        cls = get_family(cfg.family)
    except ValueError as err:
        raise ConfigError(f"family: {err}") from None
    if cfg.family == "causal_lm":
        return
    # trajectory and recommender families are driven from Python and their reproductions: they
    # build their models and data in code, so a config file has nothing to point them at yet
    missing = [name for name in ("init_model", "load_examples") if not hasattr(cls, name)]
    if missing:
        raise ConfigError(f"family {cfg.family!r} does not train from a config file (it has no {' / '.join(missing)}); "
                          f"use it from Python (prefalign.families.{cls.__module__.rsplit('.', 1)[-1]}) "
                          f"or through `prefalign reproduce`")
    used = [key for key, off in LM_ONLY.items() if getattr(cfg, key) != off]
    used += [f"data.{key}" for key in ("builders", "curriculum_stages") if getattr(cfg.data, key)]
    if used:
        raise ConfigError(f"family {cfg.family!r} is not a causal LM; {', '.join(used)} apply to family: causal_lm only")
    if cfg.reference not in ("auto", "frozen", "none"):
        raise ConfigError(f"family {cfg.family!r}: reference must be auto, frozen (a copy of the starting model) "
                          f"or none, got {cfg.reference!r}")


def validate_loop(cfg: LoopConfig) -> None:
    """The checks every training config shares (cfg.data has eval and eval_fraction in both kinds)."""
    choices = {"lr_scheduler": ("cosine", "linear", "constant"), "mixed_precision": ("no", "bf16", "fp16")}
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"{key} must be one of {allowed}, got {getattr(cfg, key)!r}")
    for key in ("max_steps", "batch_size", "gradient_accumulation_steps", "max_length", "eval_batch_size"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be at least 1")
    try:
        trackers(cfg.report_to, cfg.tensorboard)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.resume and cfg.overwrite:
        raise ConfigError("resume=true continues the run in output_dir and overwrite=true replaces it: choose one")
    if cfg.early_stopping_patience < 0 or cfg.early_stopping_threshold < 0:
        raise ConfigError("early_stopping_patience and early_stopping_threshold cannot be negative")
    if best_metric(cfg) is not None:
        keys = "metric_for_best_model, early_stopping_patience and load_best_model_at_end"
        if cfg.eval_steps < 1:
            raise ConfigError(f"{keys} compare held-out evaluations: set eval_steps > 0 (evaluate every N steps)")
        if not cfg.data.eval and cfg.data.eval_fraction <= 0:
            raise ConfigError(f"{keys} need held-out data: set data.eval or data.eval_fraction > 0")


def best_metric(cfg: LoopConfig) -> str | None:
    """The held-out metric the best model is chosen by (HF's rule: loss unless named), or None when off."""
    if cfg.metric_for_best_model:
        return cfg.metric_for_best_model
    return "loss" if cfg.early_stopping_patience or cfg.load_best_model_at_end else None


def check_builders(specs) -> None:
    """data.builders: a list of {name, params}, names and parameters known to the registry."""
    from prefalign.data.builders.pipeline import load_all_builders

    if not isinstance(specs, list):
        raise ConfigError(f"data.builders must be a list of {{name: ..., params}} mappings, got {specs!r}")
    known = load_all_builders()
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(f"data.builders[{i}] must be a mapping with a 'name' key, got {spec!r}")
        if spec["name"] not in known:
            close = difflib.get_close_matches(str(spec["name"]), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(known))}"
            raise ConfigError(f"data.builders[{i}]: unknown builder {spec['name']!r}{hint}")
        unknown = sorted(set(spec) - {"name"} - set(known[spec["name"]].params()))
        if unknown:
            raise ConfigError(f"data.builders[{i}] ({spec['name']}): unknown parameter(s) {unknown}; "
                              f"it takes {sorted(known[spec['name']].params())}")


def ordered_fields(cls) -> list:
    """A config's own fields in declaration order, then those it inherits (LoopConfig's)."""
    own = list(vars(cls).get("__annotations__", {}))
    fields = dataclasses.fields(cls)
    return sorted(fields, key=lambda f: (f.name not in own, own.index(f.name) if f.name in own else 0))


def to_dict(cfg) -> dict:
    values = dataclasses.asdict(cfg)
    return {f.name: values[f.name] for f in ordered_fields(type(cfg))}


def save_config(cfg: TrainConfig, path: Path, header: str = "") -> None:
    """config.yaml; header: comment lines written above the keys (e.g. which commit a Hub id resolved to)."""
    path.write_text(header + yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


def help_rows(cls=TrainConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every option, nested ones dotted: the CLI's and README's table."""
    rows = []
    for f in ordered_fields(cls):
        if dataclasses.is_dataclass(field_types(cls)[f.name]):
            rows += help_rows(field_types(cls)[f.name], f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((f"{prefix}{f.name}", repr(default), f.metadata.get("help", "")))
    return rows


@dataclass
class OnlineOptions:
    """`prefalign online`: what one round samples, how it is labeled and paired, and how rounds chain."""

    method: str = opt("online_dpo", "a method preset (`prefalign online --methods`): online_dpo | iterative_dpo | xpo | "
                                    "selm | sppo | nash_md | ipo_md | apo | irepo | dpa_rft | self_rewarding | sami | "
                                    "ofs_dpo | cofs_dpo | custom (only your keys)")
    rounds: int = opt(2, "rounds of sample -> label -> train; each trains max_steps optimizer steps on its own "
                         "examples with a fresh optimizer")
    prompts_per_round: int = opt(64, "prompts sampled per round: consecutive slices of a seeded permutation of "
                                     "data.train's prompts (wrapping around)")
    samples_per_prompt: int = opt(2, "responses sampled per prompt (from each source: policy_vs_* pairings draw "
                                     "this many from the policy and as many from the other)")
    pairing: str = opt("two_samples", "how samples become examples: two_samples | best_vs_worst | "
                                      "policy_vs_reference | policy_vs_mixture | candidates_plus_data | all_k | "
                                      "best_of_n | constitutions")
    reference: str = opt("", "which policy the reference log-probs come from: fixed (the starting model) | "
                             "previous (the policy at the start of each round); unset: the method's stated choice "
                             "(iterative_dpo and custom have none and require it)")
    judge: str = opt("", "a registered judge (`prefalign judge --help`), or implicit_reward (the current policy's "
                         "beta * log pi/pi_ref)")
    judge_args: dict = opt({}, "constructor arguments of the judge, e.g. {path: runs/rm/final}")
    judge_on_policy: bool = opt(False, "build the judge on the current policy (model= and tokenizer= of an LM judge "
                                       "such as rubric: the policy as its own LLM judge, self-rewarding)")
    consistency_judge: str = opt("", "a second judge (e.g. implicit_reward); a pair is kept only when both judges "
                                     "prefer the same response (SCIR's consistent pairs), else dropped and counted")
    consistency_judge_args: dict = opt({}, "constructor arguments of online.consistency_judge")
    judge_batch_size: int = opt(8, "questions per judge call; each answered call is on disk before the next, so "
                                   "a resumed run re-asks at most the one call a kill interrupted")
    label_draws: int = opt(0, "0: the judge's preferred response is chosen (P = 0.5 is a tie, dropped); M >= 1: M "
                              "seeded Bernoulli draws from the judge's P, the majority chosen, P_hat = wins / M as "
                              "the soft label (iREPO's M annotators)")
    chat_template: bool = opt(False, "wrap plain-text prompts as one user message rendered by the tokenizer's chat "
                                     "template (instruct models); message-list prompts always use it")
    max_new_tokens: int = opt(64, "tokens sampled per response (unfinished samples keep no EOS)")
    temperature: float = opt(0.9, "sampling temperature")
    top_p: float = opt(1.0, "nucleus sampling (the HF sampler only)")
    top_k: int = opt(0, "top-k sampling (the HF sampler only; 0: off)")
    sample_batch_size: int = opt(16, "prompts per generate call")
    shard_size: int = opt(64, "prompts per sampling shard: each shard is seeded by (seed, round, shard) and written "
                              "as soon as it is drawn, so a resumed run redraws only the missing shards")
    sampler: str = opt("policy", "what the responses are sampled from: policy (HF generate) | mixture (the geometric "
                                 "mixture pi^(1-b) mu^b of the policy and the reference, token by token) | vllm (the "
                                 "policy on a vLLM engine, extra prefalign[vllm]; its log-probs are checked against "
                                 "the policy's on a probe after every weight sync)")
    vllm_gpu_memory_utilization: float = opt(0.4, "sampler vllm: share of GPU memory the engine may take")
    vllm_probe_tolerance: float = opt(1e-2, "sampler vllm: largest log-prob difference on the probe accepted "
                                            "after a weight sync")
    mixture_weight: float = opt(0.5, "nash_md / ipo_md: b of the geometric mixture pi^(1-b) mu^b")
    apo_alpha: float = opt(0.3, "apo: extrapolation strength alpha of pi_t (pi_t / pi_(t-1))^alpha")
    apo_space: str = opt("weights", "apo: where the extrapolation is applied: weights (theta_t + alpha (theta_t - "
                                    "theta_(t-1)) after each round) | logits (the next round samples from the "
                                    "mixture (1 + alpha, -alpha) of the two iterates)")
    direction: list = opt([], "dpa_rft: the preference direction v (unit-normalised) written into every prompt and "
                              "given to a reward_model judge, which then scores v . r (DPA, arXiv 2402.18571)")
    direction_attributes: list = opt(["helpfulness", "verbosity"], "dpa_rft: the attribute names of the "
                                                                      "direction's components, as the prompt says them")
    direction_template: str = opt("Your response should maximize weighted rating = {weighted}.",
                                  "dpa_rft: the instruction written before each prompt (a system message for chat "
                                  "prompts); {weighted} becomes e.g. 'helpfulness*0.71 + verbosity*0.71'")
    constitutions: list = opt([], "sami: the constitutions (at least 2, e.g. a principle and its antithesis), each "
                                  "written before the prompt as direction_template writes a direction; one greedy "
                                  "response per constitution and query")
    eval_prompts: int = opt(32, "held-out prompts evaluated after every round (0: no evaluation)")
    eval_temperature: float = opt(1.0, "sampling temperature of the held-out evaluation (0: greedy); at 1 the "
                                       "reported KL is an unbiased Monte-Carlo estimate of KL(pi || pi_ref)")
    bootstrap: int = opt(2000, "bootstrap resamples for the per-round intervals")
    domains: list = opt([], "prompt files of the domains that follow data.train's, in the order they arrive: the "
                            "rounds are split evenly among data.train and these (a preference stream across "
                            "domains, OFS/COFS-DPO)")
    ofs_chase: float = opt(1.0, "ofs_dpo / cofs_dpo: weight of the regulariser -log sigmoid(m_fast - m_slow) that "
                                "keeps the fast LoRA module's preference log-odds ahead of the slow one's")
    ofs_lr_ratio: float = opt(4.0, "ofs_dpo / cofs_dpo: the fast module's learning rate over the slow module's "
                                   "(the fast one trains at learning_rate)")
    cofs_weights: list = opt([], "cofs_dpo: weights of the domains' fast modules in the combination made at the end "
                                 "of each domain (one per domain, the first ones renormalised); empty: uniform")


@dataclass
class OnlineConfig(TrainConfig):
    online: OnlineOptions = field(default_factory=OnlineOptions, metadata={"help": "online options (online.*)"})


PAIRINGS = ("two_samples", "best_vs_worst", "policy_vs_reference", "policy_vs_mixture", "candidates_plus_data",
            "all_k", "best_of_n", "constitutions")


def load_online_config(path: str | None, overrides: list[str] = ()) -> OnlineConfig:
    """An OnlineConfig: the method preset's values first, then the file, then key=value overrides."""
    from prefalign.online.methods import apply_method

    tree = read_tree(path, overrides)
    try:
        tree = apply_method(tree)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    cfg = build(OnlineConfig, tree)
    validate_online(cfg)
    return cfg


def validate_online(cfg: OnlineConfig) -> None:
    o = cfg.online
    if cfg.family != "causal_lm":
        raise ConfigError(f"prefalign online samples and trains causal LMs only (family: causal_lm), got {cfg.family!r}")
    if not cfg.model:
        raise ConfigError("model is required: a local folder or Hugging Face Hub id of a causal LM")
    if not cfg.data.train:
        raise ConfigError("data.train is required: the prompts sampled each round (any format with a prompt field)")
    validate_loop(cfg)
    if o.pairing not in PAIRINGS:
        raise ConfigError(f"online.pairing must be one of {PAIRINGS}, got {o.pairing!r}")
    if o.reference not in ("fixed", "previous") and needs_reference(cfg.objective):
        raise ConfigError(f"online.reference must be fixed (the starting model) or previous (the policy at the start "
                          f"of each round); method {o.method!r} states no default, so set it explicitly")
    if o.pairing == "constitutions":
        if len(o.constitutions) < 2 or not all(isinstance(c, str) and c.strip() for c in o.constitutions):
            raise ConfigError("online.constitutions must list at least 2 non-empty constitutions for SAMI")
    elif not o.judge:
        raise ConfigError("online.judge is required: a registered judge name (`prefalign judge --help`) or "
                          "implicit_reward")
    for key in ("rounds", "prompts_per_round", "samples_per_prompt", "max_new_tokens", "sample_batch_size",
                "shard_size", "judge_batch_size"):
        if getattr(o, key) < 1:
            raise ConfigError(f"online.{key} must be at least 1")
    if o.label_draws < 0 or o.eval_prompts < 0:
        raise ConfigError("online.label_draws and online.eval_prompts cannot be negative")
    if prompt_length(cfg) + o.max_new_tokens > cfg.max_length:
        raise ConfigError(f"max_length ({cfg.max_length}) must hold the prompt budget ({prompt_length(cfg)}: "
                          f"max_prompt_length or max_length // 2) plus online.max_new_tokens ({o.max_new_tokens}), "
                          "so that training scores every sampled token without cutting it")
    if o.sampler not in ("policy", "mixture", "vllm"):
        raise ConfigError(f"online.sampler must be policy, mixture or vllm, got {o.sampler!r}")
    if o.apo_space not in ("weights", "logits"):
        raise ConfigError(f"online.apo_space must be weights or logits, got {o.apo_space!r}")
    if not 0 <= o.mixture_weight <= 1:
        raise ConfigError("online.mixture_weight is b of pi^(1-b) mu^b, in [0, 1]")
    if o.direction and len(o.direction) != len(o.direction_attributes):
        raise ConfigError(f"online.direction has {len(o.direction)} components but online.direction_attributes names "
                          f"{len(o.direction_attributes)}")
    if o.direction and "{weighted}" not in o.direction_template:
        raise ConfigError("online.direction_template must contain {weighted}")
    if o.temperature <= 0:
        raise ConfigError("online.temperature must be > 0 (online methods sample)")
    validate_domains(cfg)


def validate_domains(cfg: OnlineConfig) -> None:
    o, n = cfg.online, 1 + len(cfg.online.domains)
    if o.rounds % n:
        raise ConfigError(f"online.rounds ({o.rounds}) must split evenly among the {n} domains (data.train and "
                          "online.domains)")
    if o.method in ("ofs_dpo", "cofs_dpo"):
        if not cfg.lora:
            raise ConfigError(f"online.method {o.method} trains a fast and a slow LoRA module: set lora=true")
        if o.ofs_lr_ratio <= 0 or o.ofs_chase < 0:
            raise ConfigError("online.ofs_lr_ratio must be > 0 and online.ofs_chase >= 0")
    if o.cofs_weights and (len(o.cofs_weights) != n or min(float(w) for w in o.cofs_weights) < 0
                           or sum(float(w) for w in o.cofs_weights) <= 0):
        raise ConfigError(f"online.cofs_weights needs {n} non-negative weights (one per domain), not all 0; got "
                          f"{o.cofs_weights}")


def needs_reference(objective: str) -> bool:
    from prefalign.losses import get_objective

    try:
        return get_objective(objective).needs_reference
    except ValueError as err:
        raise ConfigError(str(err)) from None
