"""Generators: configs (data), Flax modules, presets and parameter counting.

Contract: a generator config is a frozen dataclass with a `kind` ('skip',
'unet', 'resnet', 'texture_nets', 'dcgan'), `num_input_channels`,
`num_output_channels` and `size_multiple`. A generator whose input `z` is not
at the output size (dcgan grows a small tensor) also defines
`input_size(height, width)` (the z size for that output, ValueError when none
gives it) and `min_size`; `nets.input_size` / `nets.min_size` give the
defaults (the output size, `size_multiple`) for the others.
`build_generator(config)` returns a Flax module whose `init(key, z)` gives
{'params', 'batch_stats'} and whose `apply(variables, z,
mutable=['batch_stats'])` returns `(image, updates)`.
Parameters are plain pytrees, so `jax.vmap(module.init)(keys, zs)` makes a
stack of independent nets.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dip_jax.nets import skip as _skip
from dip_jax.nets.skip import Skip, SkipConfig, skip_config

_REGISTRY: dict[str, tuple[type, type, Any, Any]] = {
    "skip": (SkipConfig, Skip, _skip.torch_module_order, skip_config),
}


def register(kind: str, config_cls: type, module_cls: type, torch_order, from_kwargs) -> None:
    """Add a generator family (used by the UNet / ResNet modules)."""
    _REGISTRY[kind] = (config_cls, module_cls, torch_order, from_kwargs)


def _entry(config) -> tuple:
    kind = getattr(config, "kind", None)
    if kind not in _REGISTRY:
        raise ValueError(f"{type(config).__name__} is not a generator config; use one of {sorted(_REGISTRY)}")
    return _REGISTRY[kind]


def build_generator(config) -> nn.Module:
    return _entry(config)[1](config)


def torch_module_order(config) -> list[tuple[str, str]]:
    return _entry(config)[2](config)


def config_from_original(original: dict):
    """Config from the original's constructor arguments plus a 'kind' key."""
    original = dict(original)
    kind = original.pop("kind", "skip")
    if kind not in _REGISTRY:
        raise ValueError(f"unknown generator kind {kind!r}; use one of {sorted(_REGISTRY)}")
    return _REGISTRY[kind][3](**original)


def input_size(config, height: int, width: int) -> tuple[int, int]:
    """Spatial size of the net input `z` for an output of `height` x `width`."""
    own = getattr(config, "input_size", None)
    if own is None:
        return int(height), int(width)
    h, w = own(int(height), int(width))
    return int(h), int(w)


def min_size(config) -> int:
    """The smallest output height/width the net makes."""
    return int(getattr(config, "min_size", config.size_multiple))


def init_shapes(config, height: int | None = None, width: int | None = None) -> dict:
    """Variable shapes of a net (no computation), as a pytree of ShapeDtypeStruct.

    `height`, `width`: the output size (default: the smallest the net makes).
    """
    m = min_size(config)
    h, w = input_size(config, height or m, width or m)
    z = jax.ShapeDtypeStruct((1, h, w, config.num_input_channels), jnp.float32)
    shapes = jax.eval_shape(build_generator(config).init, jax.random.key(0), z)
    return {k: dict(v) for k, v in shapes.items()}


def count_params(config, *, convention: str = "original") -> int:
    """Number of trainable parameters.

    `convention='original'` counts what the original's `net.parameters()`
    holds, including in-net Lanczos filters that dip_jax keeps fixed (see
    `layers.DownConv`); `'dip_jax'` counts what dip_jax optimises.
    """
    if convention not in ("original", "dip_jax"):
        raise ValueError(f"convention must be 'original' or 'dip_jax', got {convention!r}")
    leaves = jax.tree_util.tree_leaves(init_shapes(config).get("params", {}))
    n = sum(_prod(leaf.shape) for leaf in leaves)
    if convention == "original":
        n += config.torch_param_count_extra()
    return n


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def check_input_size(config, height: int, width: int) -> None:
    """Raise ValueError when an image cannot go through the net unchanged."""
    m = config.size_multiple
    smallest = min_size(config)
    if height < smallest or width < smallest:
        raise ValueError(
            f"the image is {height}x{width} but a {config.kind} net of this depth needs at least "
            f"{smallest}x{smallest}; use a larger image or a net with fewer scales"
        )
    if height % m or width % m:
        raise ValueError(
            f"the image is {height}x{width}; this {config.kind} net needs H and W to be multiples of {m}. "
            f"Pad it with dip_jax.io.pad_to_multiple(image, {m}) and crop the result back "
            "(the CLI does this for you), or crop the image"
        )
    input_size(config, height, width)  # a config with its own input size checks it there


def replace(config, **changes):
    return dataclasses.replace(config, **changes)


__all__ = [
    "Skip",
    "SkipConfig",
    "build_generator",
    "check_input_size",
    "config_from_original",
    "count_params",
    "init_shapes",
    "input_size",
    "min_size",
    "register",
    "skip_config",
    "torch_module_order",
]

from dip_jax.nets.presets import PRESETS, narrow, preset  # noqa: E402
from dip_jax.nets import dcgan, resnet, texture_nets, unet  # noqa: E402,F401  (registers them)
from dip_jax.nets.dcgan import DCGANConfig  # noqa: E402
from dip_jax.nets.resnet import ResNetConfig  # noqa: E402
from dip_jax.nets.texture_nets import TextureNetsConfig  # noqa: E402
from dip_jax.nets.unet import UNetConfig  # noqa: E402
