"""Super-resolution x4 / x8 (super-resolution.ipynb), with bicubic, nearest and sharpened-bicubic baselines.

The given image is the high-resolution ground truth; its low-resolution
version is made as the original does (PIL Lanczos). PSNR and PSNR-Y (the
paper's protocol) are written to metrics.json.

    python experiments/super_resolution.py                 # zebra x4
    python experiments/super_resolution.py --variant x8
    python experiments/super_resolution.py --image a.png --image b.png --restarts 2
"""

import sys

from dip_jax.app import cli, experiments

VARIANTS, DEFAULT_VARIANT = experiments.EXPERIMENTS["super_resolution"]


def main(argv=None) -> int:
    return cli.script_main("super_resolution", argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
