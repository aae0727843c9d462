"""Text inpainting (inpainting.ipynb, kate): fill the pixels under a text mask.

    python experiments/text_inpainting.py
    python experiments/text_inpainting.py --image photo.png --mask mask.png   # white = known pixel
"""

import sys

from dip_jax.app import cli, experiments

VARIANTS, DEFAULT_VARIANT = experiments.EXPERIMENTS["text_inpainting"]


def main(argv=None) -> int:
    return cli.script_main("text_inpainting", argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
