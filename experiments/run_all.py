"""Run every experiment of the paper (or a selection) and write the report.

Each entry is SCRIPT or SCRIPT:VARIANT (see ALL_RUNS); the same as `dip-jax run-all`. Experiments that need
classifier weights are skipped without --weights unless --quick (random
weights). The summary goes to OUT/run_all.json, the report to OUT/report.md.

    python experiments/run_all.py --quick --out runs_quick      # every task, tiny (minutes on a CPU)
    python experiments/run_all.py --out runs --weights alexnet.safetensors
    python experiments/run_all.py --quick --only denoising:sigma25 --only sr_prior:all
"""

import sys

from dip_jax.app import cli, experiments

ALL_RUNS = experiments.ALL_RUNS


def main(argv=None) -> int:
    return cli.run_all_main(argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
