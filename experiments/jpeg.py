"""JPEG artifact removal (denoising.ipynb, snail.jpg): no ground truth; stop early.

    python experiments/jpeg.py
    python experiments/jpeg.py --image compressed.jpg --steps 2400
"""

import sys

from dip_jax.app import cli, experiments

VARIANTS, DEFAULT_VARIANT = experiments.EXPERIMENTS["jpeg"]


def main(argv=None) -> int:
    return cli.script_main("jpeg", argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
