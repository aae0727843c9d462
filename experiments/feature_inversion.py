"""Feature inversion (feature_inversion.ipynb): an image whose AlexNet fc6 features match the target's.

Needs pretrained AlexNet weights (--weights FILE, torchvision layout); see
`python -m dip_jax.classifiers convert --help`. --quick uses random weights.

    python experiments/feature_inversion.py --weights alexnet.safetensors
    python experiments/feature_inversion.py --quick
"""

import sys

from dip_jax.app import cli, experiments

VARIANTS, DEFAULT_VARIANT = experiments.EXPERIMENTS["feature_inversion"]


def main(argv=None) -> int:
    return cli.script_main("feature_inversion", argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
