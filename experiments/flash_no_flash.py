"""Flash / no-flash (flash-no-flash.ipynb): the flash photo is the net's input, the no-flash photo its target.

    python experiments/flash_no_flash.py
    python experiments/flash_no_flash.py --image noflash.jpg --guide flash.jpg
"""

import sys

from dip_jax.app import cli, experiments

VARIANTS, DEFAULT_VARIANT = experiments.EXPERIMENTS["flash_no_flash"]


def main(argv=None) -> int:
    return cli.script_main("flash_no_flash", argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
