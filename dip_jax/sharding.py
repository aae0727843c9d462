"""Moved to `dip_jax.runtime.sharding`; this name stays importable (the same module object) while callers move."""

import sys

from dip_jax.runtime import sharding as _module

sys.modules[__name__] = _module
