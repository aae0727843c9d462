"""The prior's effect on super-resolution x4 (sr_prior_effect.ipynb): no prior (optimise the pixels),
a TV prior, and the deep image prior, on the same image.

    python experiments/sr_prior.py                 # all three
    python experiments/sr_prior.py --variant deep
"""

import sys

from dip_jax.app import cli, experiments

VARIANTS, DEFAULT_VARIANT = experiments.EXPERIMENTS["sr_prior"]


def main(argv=None) -> int:
    return cli.script_main("sr_prior", argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
