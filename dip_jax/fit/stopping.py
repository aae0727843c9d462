"""Automatic stopping: ES-WMV, the windowed moving variance of the outputs.

Wang, Li, Zhuang, Chen, Sun, "Early Stopping for Deep Image Prior" (TMLR
2023; reference code: github.com/sun-umn/Early_Stopping_for_DIP, ES_WMV.ipynb).

The generic stop mechanism (any stopping rule gets it): a transform state
with a boolean field `stopped` marks its item stopped. From the step after
it is set, the item's step is skipped (`dip_jax.fit.step.item_step_or_skip`:
a `lax.cond`, so under 'map' a stopped item costs nothing; under 'vmap' it
is held), its state no longer changes (its `step` stays at the step it
stopped at, which `FitResult.stop_step` reports), its records read NaN
(False for flags) and the fit ends once every item has stopped (a host check
between chunks). A state may also carry `result` (and `result_avg`): the
image the fit returns for that item instead of the final read-out (and the
running average).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dip_jax.fit.step import StepInfo
from dip_jax.fit.transforms import InitInfo, StepTransform

__all__ = ["ESWMVState", "es_wmv", "window_variance"]


class ESWMVState(NamedTuple):
    buffer: jax.Array  # (W, 1, H, W, C): the last W outputs, a ring buffer
    count: jax.Array  # outputs pushed so far
    min_variance: jax.Array  # the smallest windowed variance so far (+inf before the window is full)
    result_step: jax.Array  # the step whose output `result` is
    wait: jax.Array  # consecutive full-window steps without a new minimum
    stopped: jax.Array
    result: jax.Array  # the output at the variance minimum
    result_avg: jax.Array  # the estimate (the running average when averaging is on) at that step


def window_variance(buffer: jax.Array) -> jax.Array:
    """mean over the window of MSE(x_i, mean of the window), from the W stored outputs.

    Computed from the buffer each step, not from running sums of x and x^2:
    in float32 those cancel catastrophically once the outputs settle (the
    variance is ~1e-6 of the mean square).
    """
    mean = jnp.mean(buffer, axis=0)
    return jnp.mean(jnp.square(buffer - mean))


@functools.lru_cache(maxsize=None)
def es_wmv(window: int = 100, patience: int = 1000) -> StepTransform:
    """ES-WMV as a step transform (named 'es_wmv'); defaults are the paper's W = 100, P = 1000.

    Each step the item's output f(z) (of this step's forward pass, as the
    reference uses `out`) enters a ring buffer of the last `window` outputs.
    Once the buffer is full, VAR_t = 1/W sum_i MSE(x_i, mean of the window);
    a new minimum records the step and the output (the newest output of the
    window, i.e. `out` at the minimum's step: the reference's choice, it
    reports the PSNR of `out` at `best_epoch`); `patience` consecutive full-window
    steps without a new minimum stop the item. The fit's result for the item
    is that recorded output (`FitResult.output`; with averaging,
    `FitResult.output_avg` is the running average at the same step, which the
    reference also keeps). Steps that a divergence check found unhealthy do
    not enter the window. Records: `es_variance` (NaN before the window is
    full) and `stopped`.

    Memory: the buffer holds `window` outputs per item (100 x 128 x 128 x 3
    float32 = 20 MB; 315 MB at 512 px).
    """
    if int(window) < 2:
        raise ValueError(f"the ES-WMV window must be >= 2 outputs, got {window}")
    if int(patience) < 1:
        raise ValueError(f"the ES-WMV patience must be >= 1 step, got {patience}")
    window, patience = int(window), int(patience)

    def init(ctx: InitInfo):
        zero = jnp.zeros((), jnp.int32)
        image = jnp.zeros(ctx.out_shape, jnp.float32)
        return ESWMVState(jnp.zeros((window,) + tuple(ctx.out_shape), jnp.float32), zero,
                          jnp.full((), jnp.inf, jnp.float32), zero, zero, jnp.zeros((), bool), image, image)

    def update(info: StepInfo, state: ESWMVState):
        out = info.out.astype(jnp.float32)
        buffer = jax.lax.dynamic_update_index_in_dim(state.buffer, out, state.count % window, 0)
        count = state.count + 1
        full = count >= window
        variance = jnp.where(full, window_variance(buffer), jnp.inf)
        better = full & (variance < state.min_variance)
        # Until the window is full the result follows the output (a fit shorter than the window returns its last).
        take = better | ~full
        step = info.state.step
        new = ESWMVState(
            buffer=buffer, count=count,
            min_variance=jnp.where(better, variance, state.min_variance),
            result_step=jnp.where(take, step, state.result_step),
            wait=jnp.where(better, 0, state.wait + full.astype(jnp.int32)),
            stopped=state.stopped,
            result=jnp.where(take, out, state.result),
            result_avg=jnp.where(take, info.estimate.astype(jnp.float32), state.result_avg),
        )
        new = new._replace(stopped=state.stopped | (new.wait >= patience))
        # An unhealthy (rolled-back) step leaves the window as it was.
        new = jax.tree_util.tree_map(lambda a, b: jnp.where(info.healthy, a, b), new, state)
        record = {**info.record, "es_variance": jnp.where(full, variance, jnp.nan), "stopped": new.stopped}
        return info._replace(record=record), new

    return StepTransform("es_wmv", init, update)
