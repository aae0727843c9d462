"""Large-hole inpainting (inpainting.ipynb): the vase (meshgrid input), the library with the depth-6 skip net,
the UNet or the ResNet.

    python experiments/large_hole.py                          # vase
    python experiments/large_hole.py --variant library        # depth-6 skip net
    python experiments/large_hole.py --variant library_unet
    python experiments/large_hole.py --variant library_resnet
"""

import sys

from dip_jax import experiment

VARIANTS = {
    "vase": "large_hole_vase",
    "library": "large_hole_library",
    "library_unet": "large_hole_library_unet",
    "library_resnet": "large_hole_library_resnet",
}


def main(argv=None) -> int:
    return experiment.main(argv, variants=VARIANTS, default_variant="vase", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
