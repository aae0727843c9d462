"""Text inpainting (inpainting.ipynb, kate): fill the pixels under a text mask.

    python experiments/text_inpainting.py
    python experiments/text_inpainting.py --image photo.png --mask mask.png   # white = known pixel
"""

import sys

from dip_jax import experiment


def main(argv=None) -> int:
    return experiment.main(argv, variants={"kate": "text_inpainting"}, default_variant="kate", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
