"""Gather run folders into a markdown report next to the paper's numbers.

    python experiments/report.py runs/                  # print it
    python experiments/report.py runs/ --out report.md
"""

import argparse
import sys
from pathlib import Path

from dip_jax import experiment


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="report.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders, or folders that contain them")
    parser.add_argument("--out", help="write the markdown here instead of printing it")
    args = parser.parse_args(argv)
    try:
        text = experiment.report(args.runs)
    except ValueError as err:
        print(f"report.py: error: {err}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
