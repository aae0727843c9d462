"""Flash / no-flash (flash-no-flash.ipynb): the flash photo is the net's input, the no-flash photo its target.

    python experiments/flash_no_flash.py
    python experiments/flash_no_flash.py --image noflash.jpg --guide flash.jpg
"""

import sys

from dip_jax import experiment


def main(argv=None) -> int:
    return experiment.main(argv, variants={"cave": "flash_no_flash"}, default_variant="cave", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
