"""Large-hole inpainting (inpainting.ipynb): the vase (meshgrid input), the library with the depth-6 skip net,
the UNet or the ResNet.

    python experiments/large_hole.py                          # vase
    python experiments/large_hole.py --variant library        # depth-6 skip net
    python experiments/large_hole.py --variant library_unet
    python experiments/large_hole.py --variant library_resnet
"""

import sys

from dip_jax.app import cli, experiments

VARIANTS, DEFAULT_VARIANT = experiments.EXPERIMENTS["large_hole"]


def main(argv=None) -> int:
    return cli.script_main("large_hole", argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
