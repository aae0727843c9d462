"""`python -m dip_jax.classifiers convert ...`: torch checkpoints -> weight files dip_jax loads."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from dip_jax.classifiers.model import ARCHITECTURES
from dip_jax.classifiers.weights import convert


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dip_jax.classifiers",
        description="Convert torchvision AlexNet / VGG weights to a file that dip_jax.classifiers loads.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    convert_parser = commands.add_parser("convert", help="torch checkpoint -> .safetensors / .npz")
    convert_parser.add_argument("--arch", required=True, choices=ARCHITECTURES)
    source = convert_parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pth", help="a torch state-dict file (torchvision's layout, or Caffe VGG names)")
    source.add_argument("--torchvision", action="store_true", help="torchvision's ImageNet weights (weights='DEFAULT')")
    convert_parser.add_argument("--out", required=True, help="output file, .safetensors or .npz")
    args = parser.parse_args(argv)
    try:
        written = convert(args.arch, args.out, pth=args.pth, use_torchvision=args.torchvision)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {written}")
    return 0
