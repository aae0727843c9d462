"""`PerImageKernel`: a kernel operator fed one kernel per image from the engine's stacked `op_args`."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from dip_jax.operators.image import input_size


def _kernel_2d(args):
    a = jnp.asarray(args)
    return a if a.ndim == 2 else a.reshape(a.shape[-2:])


@dataclasses.dataclass(frozen=True)
class PerImageKernel:
    """Wraps `op` (a `Downsample` or `Blur`) whose args are one 2-D kernel.

    The engine gives an operator each image's slice of `op_args` (with or
    without a leading length-1 axis); kernel operators want exactly (K, K).
    """

    op: Any

    @property
    def linear(self) -> bool:
        return self.op.linear

    @property
    def image_like(self) -> bool:
        return self.op.image_like

    def apply(self, x, args):
        return self.op.apply(x, _kernel_2d(args))

    def adjoint(self, y, args):
        return self.op.adjoint(y, _kernel_2d(args))

    def input_size(self, output_size) -> tuple[int, int]:
        return input_size(self.op, output_size)

    def output_shape(self, image_shape, args=None):
        return self.op.output_shape(image_shape, None if args is None else _kernel_2d(args))

    def validate(self, image_shape, args):
        self.op.validate(image_shape, _kernel_2d(args))
