"""JPEG artifact removal (denoising.ipynb, snail.jpg): no ground truth; stop early.

    python experiments/jpeg.py
    python experiments/jpeg.py --image compressed.jpg --steps 2400
"""

import sys

from dip_jax import experiment


def main(argv=None) -> int:
    return experiment.main(argv, variants={"snail": "jpeg"}, default_variant="snail", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
