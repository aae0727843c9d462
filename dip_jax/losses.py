"""Losses of the DIP fitting loop.

Contract: data terms and `total_variation` take float arrays of matching shape, images NHWC (N, H, W, C);
outputs are float32 scalars (sums/means over every element, batch included,
as the original). Fit one image per call and `vmap` for per-image losses.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def mse(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean of `(pred - target)**2` over all elements (the original's `torch.nn.MSELoss`).

    For inpainting pass `A(out) = out * mask` and `y * mask`: the mean stays
    over all elements, masked-out ones included, as in the original (so the
    loss scale depends on the fraction of observed pixels).
    """
    pred = jnp.asarray(pred)
    target = jnp.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} must have the same shape; "
                         f"apply the operator to the output before comparing with the observation")
    return jnp.mean(jnp.square(pred - target))


def total_variation(x: jax.Array, *, beta: float = 0.5) -> jax.Array:
    """`sum((dx**2 + dy**2) ** beta)` with forward differences (the original's `tv_loss`).

    `x` (N, H, W, C); per channel, on the common (H-1, W-1) region where both
    differences exist, summed over everything. At pixels where both
    differences are 0 the value is exactly 0 and the gradient is 0 (for
    beta < 1 the power is not differentiable there: the original's PyTorch
    backward gives NaN; we take the subgradient 0 instead, with a guarded
    power rather than an epsilon, so values equal the original's exactly).
    """
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be (N, H, W, C), got shape {x.shape}; add a batch axis with x[None]")
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta!r} (the original uses 0.5)")
    dx = x[:, :-1, 1:, :] - x[:, :-1, :-1, :]
    dy = x[:, 1:, :-1, :] - x[:, :-1, :-1, :]
    squared = jnp.square(dx) + jnp.square(dy)
    positive = squared > 0
    # Double `where`: the unused branch must not see 0 ** (beta - 1) either.
    powered = jnp.where(positive, jnp.where(positive, squared, 1.0) ** beta, 0.0)
    return jnp.sum(powered)


@dataclasses.dataclass(frozen=True)
class TotalVariation:
    """TV of the network output as a regulariser of an objective (`dip_jax.fit.objective`).

    A frozen dataclass rather than a closure: equal settings compare equal,
    so fits with the same regularisers share one compiled program.
    """

    beta: float = 0.5

    def __call__(self, terms) -> jax.Array:
        return total_variation(terms.out, beta=self.beta)
