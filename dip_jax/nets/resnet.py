"""The original's `ResNet` generator (`models/resnet.py`), as a Flax module.

Contract: `ResNet(config).init(key, z)` / `.apply(variables, z, mutable=['batch_stats'])`
with `z` float32 of shape (N, H, W, num_input_channels), any H, W >= 2 (the net
never changes the spatial size, so `size_multiple` is 1); output (N, H, W,
num_output_channels) in (0, 1). With `norm_layer='BatchNorm2d'` the N images
share BatchNorm statistics, so fit one image per call and `vmap` over
images/restarts.

Architecture (C = num_channels):
- `head`: conv 3x3 (in -> C, bias, `pad`) -> act.
- `block{i}` for i < num_blocks: conv 3x3 (no bias, zero pad) -> norm -> act
  -> conv 3x3 (no bias, zero pad) -> norm, plus the block's input when
  `need_residual`.
- `tail_conv`: conv 3x3 (C -> C, bias, zero pad) -> `tail_norm`.
- `out_conv`: conv 3x3 (C -> out, bias, `pad`) -> sigmoid.
Norms are affine (`BatchNorm2d`, or `InstanceNorm2d(affine=True)`).
Loading the original's weights: `dip_jax.convert` (it knows the original's module order).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

from dip_jax import layers
from dip_jax.nets.unet import norm_layer_name

RESNET_NORM_LAYERS = ("BatchNorm2d", "InstanceNorm2d")


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """Constructor arguments of the original `ResNet(...)`, by their original names.

    The original requires the first four; the defaults here are its one use,
    the large-hole inpainting notebook (`ResNet(1, 3, 8, 32)` on the library).

    Faithfulness: the original accepts `need_sigmoid` but always ends with a
    sigmoid. dip_jax honours `need_sigmoid` (default True, so every original
    config that keeps the default computes the same thing); an original net
    built with `need_sigmoid=False` still had a sigmoid, so convert its
    weights with `need_sigmoid=True`.
    """

    num_input_channels: int = 1
    num_output_channels: int = 3
    num_blocks: int = 8
    num_channels: int = 32
    need_residual: bool = True
    act_fun: str = "LeakyReLU"
    need_sigmoid: bool = True
    norm_layer: str = "BatchNorm2d"
    pad: str = "reflection"

    kind = "resnet"

    def __post_init__(self):
        object.__setattr__(self, "norm_layer", norm_layer_name(self.norm_layer))
        for name in ("num_input_channels", "num_output_channels", "num_blocks", "num_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
        for name in ("num_input_channels", "num_output_channels", "num_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0 (number of residual blocks), got {self.num_blocks}")
        if self.act_fun not in layers.ACTIVATIONS:
            raise ValueError(f"act_fun {self.act_fun!r} is not one of {layers.ACTIVATIONS}")
        if self.norm_layer not in RESNET_NORM_LAYERS:
            raise ValueError(
                f"norm_layer {self.norm_layer!r} is not one of {RESNET_NORM_LAYERS} "
                "(the ResNet always normalises; the original cannot run without a norm layer)"
            )
        if self.pad not in layers.PAD_MODES:
            raise ValueError(f"pad {self.pad!r} is not one of {layers.PAD_MODES}")

    @property
    def size_multiple(self) -> int:
        """Every conv keeps the spatial size, so any size goes through."""
        return 1

    def torch_param_count_extra(self) -> int:
        return 0


class ResNet(nn.Module):
    config: ResNetConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg = self.config
        nets.check_net_input(cfg, z)
        c = cfg.num_channels

        def norm(x: jax.Array, name: str) -> jax.Array:
            if cfg.norm_layer == "BatchNorm2d":
                return layers.BatchNorm(name=name)(x)
            return layers.InstanceNorm(affine=True, name=name)(x)

        x = layers.Conv(c, 3, 1, True, cfg.pad, name="head")(z)
        x = layers.activation(cfg.act_fun, x)
        for i in range(cfg.num_blocks):
            # Inside the blocks and in the tail the original uses plain nn.Conv2d(padding=1):
            # zero padding whatever `pad` says.
            y = layers.Conv(c, 3, 1, False, "zero", name=f"block{i}_conv1")(x)
            y = layers.activation(cfg.act_fun, norm(y, f"block{i}_norm1"))
            y = layers.Conv(c, 3, 1, False, "zero", name=f"block{i}_conv2")(y)
            y = norm(y, f"block{i}_norm2")
            x = x + y if cfg.need_residual else y
        x = layers.Conv(c, 3, 1, True, "zero", name="tail_conv")(x)
        x = norm(x, "tail_norm")
        x = layers.Conv(cfg.num_output_channels, 3, 1, True, cfg.pad, name="out_conv")(x)
        return jax.nn.sigmoid(x) if cfg.need_sigmoid else x


def resnet_config(**kwargs) -> ResNetConfig:
    """Build a ResNetConfig from the original's keyword arguments (as in the golden `config` JSON)."""
    names = {f.name for f in dataclasses.fields(ResNetConfig)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ValueError(f"unknown ResNet() arguments {unknown}; valid ones are {sorted(names)}")
    return ResNetConfig(**kwargs)


from dip_jax import nets  # noqa: E402  (dip_jax.nets imports this file and is ready to register it)

nets.register(ResNetConfig, ResNet)
