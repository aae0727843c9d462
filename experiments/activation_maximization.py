"""Activation maximisation (activation_maximization.ipynb): an image that drives one AlexNet unit.

conv4 (default): maximise a channel's sum over a window around the centre;
fc8: drive a class logit to 300 (the original's matcher). Several --unit
values are fitted in one batched call. Needs --weights (see
`python -m dip_jax.classifiers convert --help`); --quick uses random weights.

    python experiments/activation_maximization.py --weights alexnet.safetensors --unit 2 --unit 7
    python experiments/activation_maximization.py --variant fc8 --unit 100 --weights alexnet.safetensors
"""

import sys

from dip_jax.app import cli, experiments

VARIANTS, DEFAULT_VARIANT = experiments.EXPERIMENTS["activation_maximization"]


def main(argv=None) -> int:
    return cli.script_main("activation_maximization", argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
