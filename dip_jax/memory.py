"""Moved to `dip_jax.runtime.memory`; this name stays importable (the same module object) while callers move."""

import sys

from dip_jax.runtime import memory as _module

sys.modules[__name__] = _module
