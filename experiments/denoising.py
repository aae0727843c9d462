"""Denoising (denoising.ipynb): synthetic Gaussian noise sigma 25 / 50 with a ground truth, or a real noisy photo.

    python experiments/denoising.py                      # F16, sigma 25 (3000 steps, output averaging)
    python experiments/denoising.py --variant sigma50
    python experiments/denoising.py --variant real --image noisy_photo.png
    python experiments/denoising.py --quick              # a 64 px smoke test
"""

import sys

from dip_jax import experiment

VARIANTS = {"sigma25": "denoising", "sigma50": "denoising_sigma50", "real": "denoising_real"}


def main(argv=None) -> int:
    return experiment.main(argv, variants=VARIANTS, default_variant="sigma25", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
