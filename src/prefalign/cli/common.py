"""What the commands that train from a config share: CONFIG.yaml, key=value overrides, --resume."""

from __future__ import annotations

import argparse


def add_config_command(sub, name: str, help: str, description: str, options: str, example: str, fn):
    """A subcommand `prefalign NAME [CONFIG.yaml] [key=value ...] [--resume]` whose --help lists every key."""
    p = sub.add_parser(name, help=help, formatter_class=argparse.RawTextHelpFormatter, description=description,
                       epilog="options (YAML keys and key=value overrides):\n" + options)
    p.add_argument("config", nargs="?", help="YAML config file")
    p.add_argument("overrides", nargs="*", help=f"key=value overrides, e.g. {example}")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    p.set_defaults(fn=fn)
    return p
