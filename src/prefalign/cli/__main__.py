"""`python -m prefalign.cli`: the same entry point as the `prefalign` command."""

import sys

from prefalign.cli.main import main

if __name__ == "__main__":  # guarded: the architecture test imports every module
    sys.exit(main())
