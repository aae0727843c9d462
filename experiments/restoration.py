"""Restoration from a fraction of the pixels (restoration.ipynb): barbara with 50% missing (greyscale),
kate with 98% missing.

    python experiments/restoration.py                 # 50% missing
    python experiments/restoration.py --variant 98
"""

import sys

from dip_jax.app import cli, experiments

VARIANTS, DEFAULT_VARIANT = experiments.EXPERIMENTS["restoration"]


def main(argv=None) -> int:
    return cli.script_main("restoration", argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
