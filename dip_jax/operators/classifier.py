"""Operators through a classifier (feature inversion, activation maximisation) and the unit's loss.

Their observation is not an image (`image_like = False`). The classifier's
parameters arrive as the engine's `shared` argument, `apply(x, args, shared)`,
so they are an input of the compiled step rather than constants baked into it.
Both look at the top-left `crop` x `crop` of the image, as the original's
`[:imsize, :imsize]`. They define no `output_shape`: it depends on the
classifier's parameters, which `validate` and `output_shape` do not receive
(the engine checks an operator's output shape only where it is defined).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from dip_jax.operators.image import _check_image_shape


def _features(arch: str, layer: str, crop: int, style: str, x, params):
    from dip_jax import classifiers  # flax model code, only needed by these tasks

    model = classifiers.TorchvisionClassifier(arch=arch)
    return classifiers.features(model, params, x[:, :crop, :crop, :], layer, style=style)


def _check_crop(name: str, crop: int, image_shape) -> None:
    _, h, w, _ = _check_image_shape(image_shape)
    if crop > h or crop > w:
        raise ValueError(f"{name} looks at the top-left {crop}x{crop} pixels but the image is {h}x{w}; "
                         f"make the generator's output at least {crop}x{crop}")


@dataclasses.dataclass(frozen=True)
class ClassifierFeatures:
    """`A x` = a classifier layer's activations of the image's crop, as (1, h, w, C) or (1, 1, 1, F). `args`: None."""

    arch: str
    layer: str
    crop: int
    style: str = "torchvision"

    linear: ClassVar[bool] = False
    image_like: ClassVar[bool] = False

    def apply(self, x, args, params):
        f = _features(self.arch, self.layer, self.crop, self.style, x, params)
        return f if f.ndim == 4 else f[:, None, None, :]

    def validate(self, image_shape, args) -> None:
        _check_crop("ClassifierFeatures", self.crop, image_shape)


@dataclasses.dataclass(frozen=True)
class ClassifierUnit:
    """One unit of a classifier layer: `args` is the unit index; output (1, 1, 1, 1).

    Conv layers: the sum of the unit's channel over a window of +-`window`
    around the centre (the original's matcher); fc layers: the unit itself.
    Where the window starts before the first row the original's slice would
    wrap around; here it starts at 0.
    """

    arch: str
    layer: str
    crop: int
    window: int = 20
    style: str = "torchvision"

    linear: ClassVar[bool] = False
    image_like: ClassVar[bool] = False

    def apply(self, x, args, params):
        f = _features(self.arch, self.layer, self.crop, self.style, x, params)
        unit = jnp.reshape(jnp.asarray(args), (-1,))[0]
        if f.ndim == 2:
            value = jnp.take(f, unit, axis=-1)
        else:
            h, w = f.shape[1:3]
            ws = self.window
            region = f[:, max(h // 2 - ws, 0) : h // 2 + ws, max(w // 2 - ws, 0) : w // 2 + ws, :]
            value = jnp.take(region, unit, axis=-1).sum(axis=(1, 2))
        return value.reshape(1, 1, 1, 1)

    def validate(self, image_shape, args) -> None:
        _check_crop("ClassifierUnit", self.crop, image_shape)


@dataclasses.dataclass(frozen=True)
class UnitLoss:
    """The activation-maximisation loss: `-scale * a` ('maximize') or `scale * |target - a|` ('match')."""

    mode: str = "maximize"
    scale: float = 5.0

    def __call__(self, pred, target):
        if self.mode == "maximize":
            return -self.scale * jnp.sum(pred)
        return self.scale * jnp.sum(jnp.abs(target - pred))
