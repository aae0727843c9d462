"""Gather run folders into a markdown report next to the paper's numbers (`dip-jax report`).

    python experiments/report.py runs/                  # print it
    python experiments/report.py runs/ --out report.md
"""

import sys

from dip_jax.app import cli


def main(argv=None) -> int:
    return cli.main(["report", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
