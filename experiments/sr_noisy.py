"""Joint denoising + super-resolution x4 / x8 (not in the paper; its extension notes ask for it).

The given image is the high-resolution ground truth; its low-resolution
version is made as the original does (PIL Lanczos), then Gaussian noise of
sigma 25 (0..255 units) is added to it. One fit of the paper's x4 / x8
setting, with the denoising task's output averaging, restores the
high-resolution image; the baselines upsample the noisy low-resolution one.

    python experiments/sr_noisy.py                 # x4
    python experiments/sr_noisy.py --variant x8 --quick
"""

import sys

from dip_jax.app import cli, experiments

VARIANTS, DEFAULT_VARIANT = experiments.EXPERIMENTS["sr_noisy"]


def main(argv=None) -> int:
    return cli.script_main("sr_noisy", argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
