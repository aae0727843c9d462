"""Compiling a fit's programs: `jit` with XLA:CPU options, probed once per jaxlib.

Contract: `jit(fn, mesh=None, *, run_once=False)` is `jax.jit(fn)` with
`CPU_COMPILER_OPTIONS` (plus `CPU_RUN_ONCE_OPTIONS` for code a fit runs once,
such as the initialiser) when the target platform is the CPU; other
platforms compile with XLA's defaults. An option also set in the `XLA_FLAGS`
environment variable is left to it, and one this jaxlib does not know is
dropped with a RuntimeWarning (an unknown option fails every compile). Set
`CPU_COMPILER_OPTIONS = {}` before the first fit to compile with XLA's
defaults. Why these options (measurements): docs/performance.md.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from typing import Callable

import jax
import numpy as np

# XLA:CPU compiles every fused kernel of a program separately and compiling is
# most of a fit's first-chunk wait: the older fusion emitters and LLVM level 1
# compile a chunk markedly faster at the same step time.
CPU_COMPILER_OPTIONS: dict = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1}
# For code a fit runs once (the initialiser): compiling it without LLVM
# optimisation saves more than the slower run costs.
CPU_RUN_ONCE_OPTIONS: dict = {"xla_backend_optimization_level": 0}


def jit(fn: Callable, mesh=None, *, run_once: bool = False) -> Callable:
    """`jax.jit(fn)`, with `CPU_COMPILER_OPTIONS` (and `CPU_RUN_ONCE_OPTIONS` if `run_once`) on CPU."""
    platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
    options = cpu_compiler_options(run_once=run_once) if platform == "cpu" else {}
    return jax.jit(fn, compiler_options=options or None)


def cpu_compiler_options(*, run_once: bool = False) -> dict:
    """`CPU_COMPILER_OPTIONS` (+ run-once ones) less those XLA_FLAGS sets and those this jaxlib lacks."""
    from_env = os.environ.get("XLA_FLAGS", "")
    options = {**CPU_COMPILER_OPTIONS, **(CPU_RUN_ONCE_OPTIONS if run_once else {})}
    wanted = tuple(sorted(
        (k, v) for k, v in options.items() if not re.search(rf"(^|\s)--{re.escape(k)}(=|\s|$)", from_env)
    ))
    return supported_options(wanted)


@functools.lru_cache(maxsize=None)
def supported_options(options: tuple) -> dict:
    """The options this jaxlib's XLA knows (an unknown one fails every compile)."""
    supported = {}
    probe = jax.device_put(np.zeros((), np.float32), jax.devices("cpu")[0])
    for name, value in options:
        try:
            jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(probe).compile()
        except Exception as err:  # noqa: BLE001 - XLA's runtime error type varies by version
            warnings.warn(f"this jaxlib's XLA rejects the compile option {name}={value!r} ({err}); compiling "
                          "without it", RuntimeWarning, stacklevel=3)
            continue
        supported[name] = value
    return supported
