"""The original's DCGAN-style decoder (`models/dcgan.py`), as a Flax module.

Contract: `DCGAN(config).init(key, z)` / `.apply(variables, z, mutable=['batch_stats'])`
with `z` float32 (N, h, w, num_input_channels), a small spatial tensor; output
(N, (h + 2) * m, (w + 2) * m, num_output_channels) with m = 2**(num_ups - 2)
(`config.size_multiple`), in (0, 1) with `need_sigmoid`. Unlike the other
generators z is not at the output size: `config.input_size(H, W)` gives the z
size for an H x W output, which the engine uses. The N images share BatchNorm
statistics: fit one image per call and `vmap` over images/restarts.

Architecture (C = ndf), no conv has a bias:
- `in_deconv`: ConvTranspose2d(in -> C, 3x3, stride 1, no padding): +2 pixels;
  `in_bn`: BN -> LeakyReLU(negative_slope).
- `up{i}` for i < num_ups - 3, each x2: ConvTranspose2d(C -> C, 4x4, stride 2,
  padding 1) with `need_convT`, else x2 upsampling (`upsample_mode`) and a
  3x3 conv (zero padding 1); `up{i}_bn`: BN -> LeakyReLU(negative_slope).
- `out_conv`, x2: ConvTranspose2d(C -> out, 4x4, stride 2, padding 1), or
  bilinear x2 upsampling (whatever `upsample_mode` says) and a 3x3 conv;
  then sigmoid if `need_sigmoid`.
Loading the original's weights: `dip_jax.convert` (it knows the original's module order).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from dip_jax import layers
from dip_jax.nets.unet import TransposedConv


@dataclasses.dataclass(frozen=True)
class DCGANConfig:
    """Arguments of the original `dcgan(...)`; `inp` is `num_input_channels`. Defaults are its own.

    Faithfulness:
    - `negative_slope` (default 1.0): the original builds `nn.LeakyReLU(True)`,
      meant as `inplace=True`, but the first positional argument of LeakyReLU
      is the negative slope, so its "activation" is `True` = 1.0, the
      identity: the original net is linear up to its BatchNorms and sigmoid.
      dip_jax reproduces that by default (the golden fixtures pin it); 0.01
      (PyTorch's default slope) or 0.2 give a nonlinear decoder.
    - The original's `need_bias` and `pad` arguments change nothing (no layer
      has a bias, every conv zero-pads); `dcgan_config` accepts and drops them.
    - `num_output_channels` is an addition (the original always makes 3).
    """

    num_input_channels: int = 2
    num_output_channels: int = 3
    ndf: int = 32
    num_ups: int = 4
    need_sigmoid: bool = True
    upsample_mode: str = "nearest"
    need_convT: bool = True
    negative_slope: float = 1.0

    kind = "dcgan"

    def __post_init__(self):
        for name in ("num_input_channels", "num_output_channels", "ndf", "num_ups"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.num_ups < 3:
            raise ValueError(
                f"num_ups must be >= 3, got {self.num_ups} (the original builds the num_ups=3 net for "
                "any smaller value: one stride-1 and one x2 transposed conv)"
            )
        if self.upsample_mode not in layers.UPSAMPLE_MODES:
            raise ValueError(f"upsample_mode {self.upsample_mode!r} is not one of {layers.UPSAMPLE_MODES}")
        if isinstance(self.negative_slope, bool) or not isinstance(self.negative_slope, (int, float)):
            raise ValueError(f"negative_slope must be a number, got {self.negative_slope!r}")

    @property
    def size_multiple(self) -> int:
        """The net multiplies (input size + 2) by this."""
        return 2 ** (self.num_ups - 2)

    @property
    def min_size(self) -> int:
        """The smallest output: a 1x1 input."""
        return 3 * self.size_multiple

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The z size for an H x W output; ValueError when no input gives that size."""
        m = self.size_multiple
        if height % m or width % m or height < self.min_size or width < self.min_size:
            raise ValueError(
                f"the image is {height}x{width}; a dcgan net with num_ups={self.num_ups} makes "
                f"(h + 2) * {m} pixels from h, so H and W must be multiples of {m} and at least "
                f"{self.min_size}. Pad or crop the image, or change num_ups"
            )
        return height // m - 2, width // m - 2

    def torch_param_count_extra(self) -> int:
        return 0


class DCGAN(nn.Module):
    config: DCGANConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg = self.config
        nets.check_net_input(cfg, z)

        def bn_act(x: jax.Array, name: str) -> jax.Array:
            x = layers.BatchNorm(name=name)(x)
            if cfg.negative_slope == 1.0:  # the original's LeakyReLU(True): the identity
                return x
            return jnp.where(x >= 0, x, cfg.negative_slope * x)

        x = bn_act(TransposedConv(cfg.ndf, 3, 1, 0, False, name="in_deconv")(z), "in_bn")
        for i in range(cfg.num_ups - 3):
            if cfg.need_convT:
                x = TransposedConv(cfg.ndf, 4, 2, 1, False, name=f"up{i}")(x)
            else:
                x = layers.Conv(cfg.ndf, 3, 1, False, "zero", name=f"up{i}")(layers.upsample2x(x, cfg.upsample_mode))
            x = bn_act(x, f"up{i}_bn")
        if cfg.need_convT:
            x = TransposedConv(cfg.num_output_channels, 4, 2, 1, False, name="out_conv")(x)
        else:
            x = layers.Conv(cfg.num_output_channels, 3, 1, False, "zero", name="out_conv")(
                layers.upsample2x(x, "bilinear")
            )
        return jax.nn.sigmoid(x) if cfg.need_sigmoid else x


def dcgan_config(**kwargs) -> DCGANConfig:
    """A DCGANConfig from `dcgan`'s keyword arguments (`inp` or `num_input_channels`)."""
    kwargs = dict(kwargs)
    # Accepted by the original and used nowhere in it.
    kwargs.pop("need_bias", None)
    kwargs.pop("pad", None)
    return nets.config_from_kwargs(DCGANConfig, "dcgan", kwargs)


from dip_jax import nets  # noqa: E402  (dip_jax.nets imports this file and is ready to register it)

nets.register(DCGANConfig, DCGAN)
