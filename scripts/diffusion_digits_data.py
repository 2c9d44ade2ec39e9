"""Pre-train the small UNet of the diffusion-digits reproduction and write its preference pairs.

    python scripts/diffusion_digits_data.py OUT [--quick]

OUT/base is a diffusion-family model folder, OUT/pairs.safetensors the pairs (two samples of the
model, the one a LogisticRegression on load_digits finds likelier to be a 0 is chosen): the inputs
of examples/diffusion_dpo_digits.yaml.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefalign.reproduce.diffusion_digits import QUICK, Setting, classifier, make_pairs, pretrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--quick", action="store_true", help="the test's tiny setting")
    args = parser.parse_args()
    setting = QUICK if args.quick else Setting()
    base = pretrain(args.out / "base", setting)
    print(make_pairs(base, args.out / "pairs.safetensors", setting, classifier()))
    print(f"model: {base}\npairs: {args.out / 'pairs.safetensors'}")


if __name__ == "__main__":
    main()
