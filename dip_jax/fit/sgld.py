"""SGLD for the Deep Image Prior: Langevin noise in the updates, the posterior mean of the outputs.

Cheng, Gadelha, Maji, Sheldon, "A Bayesian Perspective on the Deep Image
Prior", CVPR 2019 (reference notebooks: github.com/ZezhouCheng/GP-DIP).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dip_jax.fit.step import StepInfo
from dip_jax.fit.transforms import InitInfo, StepTransform

__all__ = ["SGLDState", "posterior_variance", "sgld"]

# Folded into the step's key: SGLD's noise is independent of the input and parameter noise.
_KEY_SALT = 0x5C1D


class SGLDState(NamedTuple):
    result: jax.Array  # the posterior mean of the samples so far (the current output before the first)
    m2: jax.Array  # sum of squared deviations from the running mean (Welford)
    count: jax.Array  # samples taken


def posterior_variance(state: SGLDState) -> jax.Array:
    """The per-pixel variance of the samples (population variance; 0 before two samples)."""
    count = jnp.asarray(state.count)
    return state.m2 / jnp.maximum(count, 1).astype(jnp.float32)[..., None, None, None, None]


@functools.lru_cache(maxsize=None)
def sgld(learning_rate: float, *, noise_scale: float = 2.0, burn_in: int = 7000, every: int = 50) -> StepTransform:
    """SGLD as a step transform (named 'sgld').

    After the optimiser's update, every 4-D (conv) weight gets N(0, 1) *
    `noise_scale` * `learning_rate` added, which is what the paper's
    reference code does (`add_noise`: std = param_noise_sigma * lr with
    param_noise_sigma = 2, after `optimizer.step()` of Adam), not the
    textbook SGLD step's N(0, 2 lr) variance: with Adam's normalised steps
    that would be noise of std 0.14 at lr 0.01, which the reference does not use.
    After `burn_in` steps, the output f(z) (this step's forward pass) of every
    `every`-th step is a posterior sample (the reference: i > burnin_iter and
    i % MCMC_iter == 0, with 7000 and 50); its running mean (Welford, in
    float32) is the item's result (`FitResult.output`) and
    `posterior_variance(state)` the per-pixel variance map. Steps that a
    divergence check found unhealthy are not sampled. Record: `sgld_samples`.
    """
    if not learning_rate > 0 or not noise_scale >= 0:
        raise ValueError(f"SGLD needs learning_rate > 0 and noise_scale >= 0, got {learning_rate}, {noise_scale}")
    if int(burn_in) < 0 or int(every) < 1:
        raise ValueError(f"SGLD needs burn_in >= 0 and every >= 1, got {burn_in}, {every}")
    std = float(noise_scale) * float(learning_rate)
    burn_in, every = int(burn_in), int(every)

    def init(ctx: InitInfo):
        zeros = jnp.zeros(ctx.out_shape, jnp.float32)
        return SGLDState(zeros, zeros, jnp.zeros((), jnp.int32))

    def update(info: StepInfo, state: SGLDState):
        new = info.state
        leaves, treedef = jax.tree_util.tree_flatten(new.params)
        keys = jax.random.split(jax.random.fold_in(info.before.key, _KEY_SALT), len(leaves))
        noisy = [w + std * jax.random.normal(k, w.shape, w.dtype) if w.ndim == 4 else w for w, k in zip(leaves, keys)]
        new = new._replace(params=jax.tree_util.tree_unflatten(treedef, noisy))
        step = new.step
        sample = (step > burn_in) & (step % every == 0) & info.healthy
        out = info.out.astype(jnp.float32)
        count = state.count + sample.astype(jnp.int32)
        delta = out - state.result
        mean = state.result + delta / jnp.maximum(count, 1).astype(jnp.float32)
        m2 = state.m2 + delta * (out - mean)
        state = SGLDState(
            result=jnp.where(sample, mean, jnp.where(state.count == 0, out, state.result)),
            m2=jnp.where(sample, m2, state.m2), count=count,
        )
        return info._replace(state=new, record={**info.record, "sgld_samples": count}), state

    return StepTransform("sgld", init, update)
