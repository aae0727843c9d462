"""Generators: configs (data), Flax modules, presets and parameter counting.

Contract. A generator is a config and a Flax module, registered together:
`nets.register(MyConfig, MyNet)` (or `@nets.register(MyConfig)` above the
module class). The config is a frozen dataclass with
- `kind` (a class attribute naming the family: 'skip', 'unet', ...),
- `num_input_channels`, `num_output_channels` (fields),
- `size_multiple`: H and W of the output must be multiples of it;
and, optionally,
- `input_size(height, width)`: the spatial size of the net input `z` for an
  output of that size (ValueError when none gives it); without it `z` is at
  the output size. A decoder that grows a small tensor (dcgan, deep_decoder,
  convdecoder) defines it;
- `min_size`: the smallest output height/width (default `size_multiple`);
- `torch_param_count_extra()`: parameters the original PyTorch net counts
  that dip_jax keeps fixed (default 0).
The module is built as `Module(config)`; `init(key, z)` gives {'params'[,
'batch_stats']} and `apply(variables, z, mutable=['batch_stats'])` returns
`(image, updates)`. Parameters are plain pytrees, so
`jax.vmap(module.init)(keys, zs)` makes a stack of independent nets.

A generator written in one file of its own (library or user code) registers
itself when imported: every module of this package is imported with it, and
`add_preset(name, config)` names a config for `preset(name)` and the CLI's
`--net`. Loading the original's PyTorch weights (module order, constructor
arguments) is `dip_jax.convert`'s business, not the registry's.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

import flax.linen as nn
import jax
import jax.numpy as jnp

_REGISTRY: dict[str, tuple[type, type]] = {}


def register(config_cls: type, module_cls: type | None = None):
    """Make a generator family known: `register(MyConfig, MyNet)`, or `@register(MyConfig)` on `MyNet`.

    Returns the module class (so it works as a decorator). Registering a kind
    again replaces it only with a class of the same name from the same module
    (a re-import); another family under a taken kind is a ValueError.
    """

    def add(module: type) -> type:
        _check_generator(config_cls, module)
        kind = config_cls.kind
        if kind in _REGISTRY:
            old = _REGISTRY[kind][0]
            if (old.__module__, old.__qualname__) != (config_cls.__module__, config_cls.__qualname__):
                raise ValueError(
                    f"generator kind {kind!r} is already registered by {old.__module__}.{old.__qualname__}; "
                    f"give {config_cls.__qualname__} another `kind`"
                )
        _REGISTRY[kind] = (config_cls, module)
        return module

    return add if module_cls is None else add(module_cls)


def _check_generator(config_cls, module_cls) -> None:
    name = getattr(config_cls, "__qualname__", repr(config_cls))
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        raise ValueError(
            f"{name} must be a dataclass (the generator's config); decorate it with @dataclasses.dataclass(frozen=True)"
        )
    kind = getattr(config_cls, "kind", None)
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"{name} needs a class attribute `kind = 'name'` naming its generator family")
    fields = {f.name for f in dataclasses.fields(config_cls)}
    missing = [f for f in ("num_input_channels", "num_output_channels") if f not in fields]
    if missing:
        raise ValueError(f"{name} needs the fields {missing} (channels of the net input z and of the image)")
    if not hasattr(config_cls, "size_multiple"):
        raise ValueError(f"{name} needs `size_multiple` (H and W must be multiples of it; 1 for any size)")
    if not (isinstance(module_cls, type) and issubclass(module_cls, nn.Module)):
        raise ValueError(f"register {name} with a flax.linen.Module class built as Module(config), got {module_cls!r}")


def kinds() -> list[str]:
    """The registered generator families."""
    return sorted(_REGISTRY)


def _entry(config) -> tuple:
    kind = getattr(config, "kind", None)
    if kind not in _REGISTRY or not isinstance(config, _REGISTRY[kind][0]):
        raise ValueError(
            f"{type(config).__name__} is not a registered generator config; use one of {kinds()} "
            "or register it with dip_jax.nets.register(ConfigClass, ModuleClass)"
        )
    return _REGISTRY[kind]


def build_generator(config) -> nn.Module:
    return _entry(config)[1](config)


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
        extra = getattr(config, "torch_param_count_extra", None)
        n += int(extra()) if extra is not None else 0
    return n


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def config_from_kwargs(config_cls: type, original: str, kwargs: dict):
    """`config_cls(**kwargs)` from an original constructor's keyword arguments (`inp` = `num_input_channels`).

    `original` names that constructor in the error for an unknown argument.
    """
    kwargs = dict(kwargs)
    if "inp" in kwargs:
        if "num_input_channels" in kwargs:
            raise ValueError("give inp or num_input_channels, not both (they are the same argument)")
        kwargs["num_input_channels"] = kwargs.pop("inp")
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ValueError(f"unknown {original}() arguments {unknown}; valid ones are {sorted(names | {'inp'})}")
    return config_cls(**kwargs)


def check_net_input(config, z) -> None:
    """Refuse a network input that is not (N, h, w, num_input_channels) before the first layer sees it."""
    if z.ndim != 4 or z.shape[-1] != config.num_input_channels:
        raise ValueError(
            f"the net expects z of shape (N, H, W, {config.num_input_channels}) but got {z.shape}; "
            "make the input with input_depth equal to num_input_channels"
        )


def doubling_input_size(name: str, num_layers: int, height: int, width: int) -> tuple[int, int]:
    """The input size of a decoder whose `num_layers` layers double all but the last: (H, W) / 2**(n - 1)."""
    m = 2 ** (num_layers - 1)
    if height % m or width % m or height < m or width < m:
        raise ValueError(
            f"the image is {height}x{width}; a {name} with {num_layers} layers doubles its input "
            f"{num_layers - 1} times, so H and W must be multiples of {m}. Pad or crop the image, "
            "or use fewer layers"
        )
    return height // m, width // m


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
    "DCGANConfig",
    "PRESETS",
    "ResNetConfig",
    "Skip",
    "SkipConfig",
    "TextureNetsConfig",
    "UNetConfig",
    "add_preset",
    "build_generator",
    "check_input_size",
    "count_params",
    "init_shapes",
    "input_size",
    "kinds",
    "min_size",
    "narrow",
    "preset",
    "register",
    "skip_config",
]

from dip_jax.nets.presets import PRESETS, add_preset, narrow, preset  # noqa: E402


def _import_generators() -> None:
    """Import every module of this package: each generator file registers itself (and its presets)."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_generators()

from dip_jax.nets.dcgan import DCGANConfig  # noqa: E402
from dip_jax.nets.resnet import ResNetConfig  # noqa: E402
from dip_jax.nets.skip import Skip, SkipConfig, skip_config  # noqa: E402
from dip_jax.nets.texture_nets import TextureNetsConfig  # noqa: E402
from dip_jax.nets.unet import UNetConfig  # noqa: E402
