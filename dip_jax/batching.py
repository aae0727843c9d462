"""Moved to `dip_jax.runtime.batching`; this name stays importable (the same module object) while callers move."""

import sys

from dip_jax.runtime import batching as _module

sys.modules[__name__] = _module
