"""`prefalign train-rm` and `prefalign eval-rm`: thin subcommands over recipes.reward_model and recipes.eval_reward_model."""

from __future__ import annotations


from prefalign.cli.common import add_config_command


def options_table() -> str:
    from prefalign.config import help_rows
    from prefalign.recipes.reward_model import RewardTrainConfig

    rows = help_rows(RewardTrainConfig)
    width = max(len(k) for k, _, _ in rows)
    return "\n".join(f"  {k:<{width}}  {h} (default {d})" for k, d, h in rows)


def cmd_train_rm(args) -> int:
    from prefalign.config import split_config_arg
    from prefalign.logging import print_summary
    from prefalign.recipes.reward_model import load_reward_config, train_reward_model

    config, overrides = split_config_arg(args.config, args.overrides)
    cfg = load_reward_config(config, overrides + (["resume=true"] if args.resume else []))
    print_summary(train_reward_model(cfg))
    return 0


def parse_direction(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError as err:
        raise ValueError(f"--direction must be comma-separated numbers, e.g. 0.8,0.2; got {text!r}") from err


def cmd_eval_rm(args) -> int:
    from pathlib import Path

    from prefalign.recipes.eval_reward_model import evaluate_pairs, load_eval_pairs, write_report
    from prefalign.rewards.model import load_reward_model

    model = load_reward_model(args.model_dir)
    # a per-user model (PAL) needs each pair's user; any model gets per-user accuracy when asked
    user_field = args.user_field or ("user_id" if getattr(model.head, "per_user", False) else None)
    examples, subsets, report = load_eval_pairs(args.data, args.subset_field, args.on_bad_row, user_field)
    valid = load_eval_pairs(args.calibrate, None, args.on_bad_row, user_field)[0] if args.calibrate else None
    result = evaluate_pairs(model, examples, subsets, valid, args.batch_size, parse_direction(args.direction),
                            args.bins, not args.no_progress)
    result["data"] = report
    files = write_report(result, Path(args.out), args.model_dir, args.data)
    line = f"accuracy {result['accuracy']:.4f}  ECE {result['ece']:.4f}  ({result['pairs']} pairs)"
    if "temperature" in result:
        t = result["temperature"]
        line += f"  temperature {t['value']:.3f}: ECE {t['ece_before']:.4f} -> {t['ece_after']:.4f}"
    print(line)
    for name, value in result.get("subsets", {}).items():
        print(f"  {name:<28} {value['accuracy']:.4f}  ({value['pairs']} pairs)")
    for name, value in result.get("users", {}).items():
        print(f"  user {name:<23} {value['accuracy']:.4f}  ({value['pairs']} pairs)")
    if report["skipped"]:
        print(f"{report['skipped']} bad rows skipped: {report['skipped_by_reason']}")
    print(f"wrote {files['json']}, {files['markdown']}, {files['plot']}")
    return 0


def add_commands(sub) -> None:
    add_config_command(sub, "train-rm", "train a reward model (bt, multi_objective, pearl, prm, gpm, pal)",
                       "Train a reward model with CONFIG.yaml; override any key with key=value.",
                       options_table(), "kind=pearl data.train=pairs.jsonl", cmd_train_rm)
    p = sub.add_parser("eval-rm", help="pairwise accuracy, per-subset accuracy and calibration of a reward model")
    p.add_argument("model_dir", help="a saved reward model folder (train-rm's output_dir/final)")
    p.add_argument("data", help="preference pairs (any format prefalign reads)")
    p.add_argument("--subset-field", default=None, help="row field naming each pair's category, e.g. subset")
    p.add_argument("--user-field", default=None,
                   help="row field naming each pair's user: per-user accuracy (pal models default to user_id)")
    p.add_argument("--calibrate", default=None, help="validation pairs to fit a temperature on")
    p.add_argument("--direction", default=None, help="multi-objective models: v as comma-separated weights")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--bins", type=int, default=10, help="reliability bins on [0.5, 1]")
    p.add_argument("--on-bad-row", choices=("error", "skip"), default="error",
                   help="skip: leave out rows that fail validation (counted and printed)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True, help="folder for eval.json, eval.md and reliability.png")
    p.set_defaults(fn=cmd_eval_rm)
