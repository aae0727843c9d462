"""Feature inversion (feature_inversion.ipynb): an image whose AlexNet fc6 features match the target's.

Needs pretrained AlexNet weights (--weights FILE, torchvision layout); see
`python -m dip_jax.classifiers convert --help`. --quick uses random weights.

    python experiments/feature_inversion.py --weights alexnet.safetensors
    python experiments/feature_inversion.py --quick
"""

import sys

from dip_jax import experiment


def main(argv=None) -> int:
    return experiment.main(argv, variants={"alexnet_fc6": "feature_inversion"}, default_variant="alexnet_fc6",
                           description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
