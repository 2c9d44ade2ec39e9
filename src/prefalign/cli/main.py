"""`prefalign` command line: thin subcommands that load a config, build, and call one function."""

from __future__ import annotations

import argparse
import sys

from prefalign.cli import data as cli_data
from prefalign.cli import diagnose as cli_diagnose
from prefalign.cli import rewards as cli_rewards
from prefalign.cli import judge as cli_judge
from prefalign.cli import online as cli_online
from prefalign.cli import sweep as cli_sweep
from prefalign.cli import reproduce as cli_reproduce
from prefalign.cli.common import add_config_command
from prefalign.logging import print_summary

EPILOG = "Run `prefalign COMMAND --help` for a command's options."


def options_table() -> str:
    from prefalign.config import help_rows

    rows = help_rows()
    width = max(len(k) for k, _, _ in rows)
    return "\n".join(f"  {k:<{width}}  {h} (default {d})" for k, d, h in rows)


def cmd_train(args) -> int:
    from prefalign.config import load_config, split_config_arg
    from prefalign.recipes.policy import train, train_curriculum

    config, overrides = split_config_arg(args.config, args.overrides)
    overrides += ["resume=true"] if args.resume else []
    if args.from_trl:
        from prefalign.config_trl import load_trl_config, render

        if config:
            raise ValueError(f"give either a prefalign config ({config}) or --from-trl {args.from_trl}, not both")
        cfg, mapping = load_trl_config(args.from_trl, overrides, args.trl_trainer)
        print(render(mapping, args.from_trl), flush=True)
    else:
        cfg = load_config(config, overrides)
    if cfg.family != "causal_lm":  # any other family: the shared family recipe (families/base.py)
        from prefalign.recipes.family import train_family

        summary = train_family(cfg)
    else:
        summary = (train_curriculum if cfg.data.curriculum_stages else train)(cfg)
    print_summary(summary)
    return 0


DATA_BY_KIND = {"pairwise": "pairs", "multi_objective": "pairs", "token_level": "pairs",
                "listwise": "ranked lists (or pairs)", "unpaired": "unpaired rows (prompt, completion, label)",
                "sft": "SFT rows or pairs", "self_supervised": "C x C samples under C constitutions"}


def yaml_value(value) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(list(value) if isinstance(value, tuple) else value)


def objective_rows() -> list[dict]:
    """One row per registered objective: the CLI table and the README table."""
    from prefalign.families.base import families_for
    from prefalign.features import SUPPLIERS
    from prefalign.losses import OBJECTIVES
    from prefalign.recipes.policy import ONLINE_ONLY, SUPPLIED

    rows = []
    for o in sorted(OBJECTIVES.values(), key=lambda o: o.name):
        data = "gold/chosen/rejected triples" if "gold" in o.features else DATA_BY_KIND[o.kind]
        fields = [SUPPLIERS[f].row_field for f in o.features if f in SUPPLIERS and SUPPLIERS[f].row_field]
        if fields:
            data += " + row field " + ", ".join(fields)
        pending = [f for f in o.features if f not in SUPPLIED]
        params = {k: v for k, v in o.params.items() if k != "beta"}
        example = f"objective: {o.name}" + (f", beta: {o.params['beta']}" if "beta" in o.params else "")
        if params:
            example += ", objective_args: {" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in params.items()) + "}"
        rows.append({"name": o.name, "paper": f"arXiv:{o.paper}" if o.paper else "-", "kind": o.kind,
                     "families": ", ".join(families_for(o)) or "-",
                     "reference": "yes" if o.needs_reference else "no", "data": data,
                     "trainer": "online only" if o.kind in ONLINE_ONLY else
                                "yes" if not pending else "loss only: needs " + ", ".join(pending),
                     "example": example, "summary": o.summary})
    return rows


def cmd_objectives(args) -> int:
    rows = objective_rows()
    if args.markdown:
        print("| objective | paper | reference | data | trains end to end | families | config |\n"
              "|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| `{r['name']}` | {r['paper']} | {r['reference']} | {r['data']} | {r['trainer']} | "
                  f"{r['families']} | `{r['example']}` |")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(rows)} objectives")
    for col in ("objective", "paper", "reference", "data", "trains", "families", "summary"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["paper"], r["reference"], r["data"], r["trainer"], r["families"], r["summary"])
    Console(width=220, markup=False).print(table)
    return 0


def cmd_quickstart(args) -> int:
    from prefalign.recipes.quickstart import run_quickstart

    run_quickstart(model=args.model, output_dir=args.output_dir, steps=args.steps)
    return 0


def cmd_push(args) -> int:
    from prefalign.recipes.push import push

    print(push(args.run, args.repo, args.private, args.revision, args.dry_run))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefalign", description="Preference alignment for local causal LMs.",
                                     epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = add_config_command(sub, "train", "train a policy on preference data",
                           "Train with CONFIG.yaml; override any key with key=value (dotted for nesting).",
                           options_table(), "beta=0.2 data.train=pairs.jsonl", cmd_train)
    p.add_argument("--from-trl", metavar="TRL.yaml", help="train a TRL DPO/CPO/ORPO/KTO config (as `trl dpo --config` "
                   "reads it): prints the prefalign config it maps to and every TRL key it cannot map, then trains; "
                   "key=value overrides apply on top")
    p.add_argument("--trl-trainer", choices=("dpo", "cpo", "orpo", "kto"), default=None,
                   help="which TRL trainer the --from-trl config is for (default: cpo with cpo_alpha/simpo_gamma, "
                        "kto with desirable/undesirable_weight, else dpo; orpo must be named)")
    p = sub.add_parser("objectives", help="list the registered objectives")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table (the README's)")
    p.set_defaults(fn=cmd_objectives)
    p = sub.add_parser("quickstart", help="align the embedded tiny model on real HH-RLHF pairs, offline")
    p.add_argument("--model", choices=("tiny", "smollm2"), default="tiny",
                   help="tiny: the shipped toy base model; smollm2: SmolLM2-135M-Instruct with LoRA")
    p.add_argument("--output-dir", default="runs/quickstart")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the preset's)")
    p.set_defaults(fn=cmd_quickstart)
    p = sub.add_parser("push", help="upload a run's final model and its card to the Hugging Face Hub")
    p.add_argument("run", metavar="RUN", help="run folder (or a folder holding exactly one run)")
    p.add_argument("--repo", required=True, help="Hub model repo id, e.g. you/my-dpo-model")
    p.add_argument("--dry-run", action="store_true", help="list the files and sizes it would upload; no network")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", default=None, help="branch to upload to (created if missing; default main)")
    p.set_defaults(fn=cmd_push)
    cli_data.add_commands(sub)
    cli_diagnose.add_commands(sub)
    cli_rewards.add_commands(sub)
    cli_judge.add_commands(sub)
    cli_online.add_commands(sub)
    cli_sweep.add_commands(sub)
    cli_reproduce.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may follow an option (`train cfg.yaml --resume beta=0.2`): argparse leaves those
    # unparsed, so they join the overrides; anything else unknown is still an error
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "fn", None):
        parser.print_help()
        return 2
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # the CLI's contract: one clear message on stderr, non-zero exit
        print(f"prefalign {args.command}: error: {err}", file=sys.stderr)
        hint = bad_row_hint(args, err)
        if hint:
            print(hint, file=sys.stderr)
        return 1


def bad_row_hint(args, err) -> str | None:
    """For a bad data row, the switch that skips such rows (skips are counted, never silent)."""
    from prefalign.data.records import DataError

    if not isinstance(err, DataError):
        return None
    if hasattr(args, "overrides"):
        return "  to skip bad rows instead (each one counted in summary.json), add data.on_bad_row=skip"
    if hasattr(args, "on_bad_row"):
        return "  to skip bad rows instead (each one counted in the report), add --on-bad-row skip"
    return None


if __name__ == "__main__":
    sys.exit(main())
