"""`python -m dip_jax.cli` and console scripts installed before the command moved to `dip_jax.app.cli`."""

import sys

from dip_jax.app.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
