"""`prefalign sweep CONFIG.yaml --grid objective=dpo,ipo beta=0.05,0.1 [key=value ...] [--workers N]`."""

from __future__ import annotations

import argparse

DESCRIPTION = """Train one config over a grid of values, then compare the cells in one report.
Every cell is an ordinary run folder OUTPUT_DIR/cells/<cell>/; running the command again skips finished
cells and resumes interrupted ones. The report (OUTPUT_DIR/report.md, .html, .json, frontier.png) gives
each cell's held-out reward and ranking accuracy, sampled KL, judge score with bootstrap intervals and
length, the score-vs-KL frontier (one curve per objective) and a table ranked by score at matched KL.
A `sweep:` section of the YAML holds the options below; every other key is a `prefalign train` key."""


def sweep_options() -> str:
    from prefalign.config import help_rows
    from prefalign.recipes.sweep import SweepOptions

    rows = help_rows(SweepOptions, "sweep.")
    width = max(len(k) for k, _, _ in rows)
    return "\n".join(f"  {k:<{width}}  {h} (default {d})" for k, d, h in rows)


def cmd_sweep(args) -> int:
    from prefalign.config import split_config_arg
    from prefalign.recipes.sweep import load_sweep, sweep

    config, overrides = split_config_arg(args.config, args.overrides)
    tree, opts, grid = load_sweep(config, overrides, args.grid or [], args.workers)
    report = sweep(tree, opts, grid)
    print(f"{len(report['cells'])} cells; report: {report['output_dir']}/report.md")
    for row in report["matched_kl"]["rows"]:
        value = row[f"{report['frontier_value']}_at_kl_star"]
        print(f"  {row['rank'] or '-'}. {row['objective']}: {report['frontier_value']} at KL* "
              f"{'-' if value is None else f'{value:.3f}'}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("sweep", help="train a grid of configs and compare them on a reward-vs-KL frontier",
                       formatter_class=argparse.RawTextHelpFormatter, description=DESCRIPTION,
                       epilog="sweep options (YAML section `sweep:`, or key=value overrides sweep.KEY=...):\n"
                              + sweep_options())
    p.add_argument("config", nargs="?", help="YAML training config (with an optional `sweep:` section)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the config, e.g. max_steps=50")
    p.add_argument("--grid", nargs="+", metavar="KEY=V1,V2", help="grid axes, e.g. objective=dpo,ipo beta=0.05,0.1")
    p.add_argument("--workers", type=int, default=None, help="cells trained at once in separate processes")
    p.set_defaults(fn=cmd_sweep)
