"""How the batch axis (images x restarts) is mapped onto the per-item step.

Contract: `batched(mode, fn)` turns `fn(state, data, shared) -> out` for one
item into a function of stacked states and data (leading batch axis), with
`shared` broadcast. Every mode computes each item exactly as if alone (each
item keeps its own BatchNorm statistics); they differ only in speed and in
floating-point summation order.
- 'vmap': `jax.vmap`; on GPU/TPU one batched kernel per layer. With a
  `group_size` k, items are vmapped k at a time and the groups run one after
  another (`lax.map(..., batch_size=k)`): activation memory for k items
  instead of all of them.
- 'map': `lax.map`, items one after another inside the compiled step. On CPU
  a vmapped conv over per-item weights becomes a grouped convolution, which
  XLA's CPU backend runs poorly.
- 'auto': picked per backend by `resolve_batch_mode`.
"""

from __future__ import annotations

from typing import Callable

import jax

BATCH_MODES = ("auto", "vmap", "map")


def resolve_batch_mode(mode: str) -> str:
    if mode not in BATCH_MODES:
        raise ValueError(f"batch_mode must be one of {BATCH_MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    return "map" if jax.default_backend() == "cpu" else "vmap"


def batched(mode: str, fn: Callable, group_size: int | None = None) -> Callable:
    if mode == "vmap" and group_size is None:
        return jax.vmap(fn, in_axes=(0, 0, None))
    if mode in ("vmap", "map"):
        # 'map': one item at a time; vmap groups: `group_size` items at a time.
        size = group_size if mode == "vmap" else None
        return lambda state, data, shared: jax.lax.map(
            lambda sd: fn(sd[0], sd[1], shared), (state, data), batch_size=size
        )
    raise ValueError(f"batch mode must be 'vmap' or 'map' here, got {mode!r}; resolve 'auto' first")
