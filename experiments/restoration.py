"""Restoration from a fraction of the pixels (restoration.ipynb): barbara with 50% missing (greyscale),
kate with 98% missing.

    python experiments/restoration.py                 # 50% missing
    python experiments/restoration.py --variant 98
"""

import sys

from dip_jax import experiment

VARIANTS = {"50": "restoration_50", "98": "restoration_98"}


def main(argv=None) -> int:
    return experiment.main(argv, variants=VARIANTS, default_variant="50", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
