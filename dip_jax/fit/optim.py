"""The built-in optimisers: Adam with PyTorch's defaults, or the original's Adam-then-L-BFGS.

Contract: `make_optimizer(cfg)` is an optax transformation; `over_flat_vector(tx)`
applies `tx` to the gradient pytree raveled into one vector, which is how the
built-in optimisers run (an optimiser passed to `fit` sees the pytree).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import optax


def make_optimizer(cfg) -> optax.GradientTransformation:
    """Adam with PyTorch's defaults, or the original's Adam-then-L-BFGS."""
    adam = optax.adam(cfg.learning_rate, b1=0.9, b2=0.999, eps=1e-8)
    if cfg.optimizer == "adam":
        return adam
    warmup = optax.adam(cfg.lbfgs_warmup_lr, b1=0.9, b2=0.999, eps=1e-8)
    # PyTorch's LBFGS as the original calls it has no line search and lr=LR.
    lbfgs = optax.lbfgs(learning_rate=cfg.learning_rate, linesearch=None)
    return switch_after(warmup, lbfgs, cfg.lbfgs_warmup_steps)


class FlatVectorState(NamedTuple):
    """The wrapped optimiser's state, over the trainable parameters raveled into one vector."""

    inner: Any


def over_flat_vector(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` applied to the gradient pytree raveled into one vector; updates come back as a pytree.

    For an elementwise optimiser (Adam) the numbers are those of `tx` on the
    pytree; for L-BFGS only the summation order of its inner products
    changes. Why: per leaf, Adam is a few fused kernels for each of the
    default net's ~140 parameter arrays, which XLA's CPU backend compiles one
    by one; on one vector they are a handful. The state's moments are then
    (num_params,) vectors.
    """

    def init(params):
        flat, _ = jax.flatten_util.ravel_pytree(params)
        return FlatVectorState(tx.init(flat))

    def update(grads, state, params=None):
        flat_grads, unravel = jax.flatten_util.ravel_pytree(grads)
        flat_params = None if params is None else jax.flatten_util.ravel_pytree(params)[0]
        flat_updates, inner = tx.update(flat_grads, state.inner, flat_params)
        return unravel(flat_updates), FlatVectorState(inner)

    return optax.GradientTransformation(init, update)


class SwitchState(NamedTuple):
    count: jax.Array
    first: Any
    second: Any


def switch_after(first: optax.GradientTransformation, second: optax.GradientTransformation, n: int):
    """`first` for n steps, then `second` (each keeps its own state)."""

    def init(params):
        return SwitchState(jnp.zeros((), jnp.int32), first.init(params), second.init(params))

    def update(grads, state, params=None):
        def run_first(_):
            u, s = first.update(grads, state.first, params)
            return u, s, state.second

        def run_second(_):
            u, s = second.update(grads, state.second, params)
            return u, state.first, s

        u, s1, s2 = jax.lax.cond(state.count < n, run_first, run_second, None)
        return u, SwitchState(state.count + 1, s1, s2)

    return optax.GradientTransformation(init, update)
