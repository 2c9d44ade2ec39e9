"""`prefalign online CONFIG.yaml [key=value ...]`: rounds of sample -> label -> train."""

from __future__ import annotations

import json
import sys

from prefalign.cli.common import add_config_command

DESCRIPTION = """Online and iterative alignment: each round samples from the policy, labels with a judge,
builds examples with a pairing rule and trains them with any registered objective.
online.method picks a paper's preset (`prefalign online --methods`); your keys override it.
Every phase is written under OUTPUT_DIR/rounds/round-N/; --resume continues after a kill."""


def online_options() -> str:
    from prefalign.config import OnlineConfig, help_rows

    rows = help_rows(OnlineConfig)
    width = max(len(k) for k, _, _ in rows)
    return "\n".join(f"  {k:<{width}}  {h} (default {d})" for k, d, h in rows)


def cmd_online(args) -> int:
    from prefalign.config import load_online_config, split_config_arg
    from prefalign.online.methods import methods_table

    if args.methods:
        print(methods_table())
        return 0
    config, overrides = split_config_arg(args.config, args.overrides)
    cfg = load_online_config(config, overrides + (["resume=true"] if args.resume else []))
    from prefalign.recipes.online import online

    summary = online(cfg)
    brief = {"initial": {k: v["mean"] for k, v in summary["initial_eval"].items()},
             "rounds": [{"round": r["round"], "examples": (r["labels"] or {}).get("examples"),
                         **{k: v["mean"] for k, v in r["eval"].items()}} for r in summary["rounds"]],
             "judge_score_change": summary.get("judge_score_change"), "final_model": summary["final_model"]}
    json.dump(brief, sys.stdout, indent=1, default=str)
    print()
    return 0


def add_commands(sub) -> None:
    p = add_config_command(sub, "online", "online / iterative alignment: sample, judge, train, in rounds",
                           DESCRIPTION, online_options(), "online.method=xpo online.rounds=3", cmd_online)
    p.add_argument("--methods", action="store_true", help="list the method presets and the papers behind them")
