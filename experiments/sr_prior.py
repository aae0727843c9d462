"""The prior's effect on super-resolution x4 (sr_prior_effect.ipynb): no prior (optimise the pixels),
a TV prior, and the deep image prior, on the same image.

    python experiments/sr_prior.py                 # all three
    python experiments/sr_prior.py --variant deep
"""

import sys

from dip_jax import experiment

VARIANTS = {
    "all": ("sr_prior_none", "sr_prior_tv", "sr_prior_deep"),
    "none": "sr_prior_none",
    "tv": "sr_prior_tv",
    "deep": "sr_prior_deep",
}


def main(argv=None) -> int:
    return experiment.main(argv, variants=VARIANTS, default_variant="all", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
