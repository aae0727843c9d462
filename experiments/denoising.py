"""Denoising (denoising.ipynb): synthetic Gaussian noise sigma 25 / 50 with a ground truth, or a real noisy photo.

    python experiments/denoising.py                      # F16, sigma 25 (3000 steps, output averaging)
    python experiments/denoising.py --variant sigma50
    python experiments/denoising.py --variant real --image noisy_photo.png
    python experiments/denoising.py --quick              # a 64 px smoke test
"""

import sys

from dip_jax.app import cli, experiments

VARIANTS, DEFAULT_VARIANT = experiments.EXPERIMENTS["denoising"]


def main(argv=None) -> int:
    return cli.script_main("denoising", argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
