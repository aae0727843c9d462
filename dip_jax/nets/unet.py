"""The original's `UNet` generator (`models/unet.py`), as a Flax module.

Contract: `UNet(config).init(key, z)` / `.apply(variables, z, mutable=['batch_stats'])`
with `z` float32 of shape (N, H, W, num_input_channels); H and W multiples of
`config.size_multiple` (2**(4 + more_layers)); output (N, H, W,
num_output_channels), in (0, 1) when `need_sigmoid`. With
`norm_layer='BatchNorm2d'` the N images share BatchNorm statistics, so fit one
image per call and `vmap` over images/restarts; InstanceNorm is per image.

Architecture (filters `f = [64, 128, 256, 512, 1024] // feature_scale`):
- `start`: unetConv2(in -> f0); `down1..down4`, then `more_layers` extra
  `more_down{j}` (f4 -> f4): 2x2 max pool, then unetConv2.
- unetConv2 = (conv 3x3 -> norm -> ReLU) x 2; no norm inside the up blocks.
- `more_up{j}` (f4 -> f4), `up4..up1` (f_{i+1} -> f_i): upsample the deeper
  tensor (`deconv`: ConvTranspose2d(k=4, stride 2, padding 1), always with a
  bias; `nearest`/`bilinear`: x2 upsampling then conv 3x3), concatenate
  [upsampled, skip] (skip centre-cropped to the upsampled size), unetConv2.
- `final`: conv 1x1 (f0 -> out), then sigmoid if `need_sigmoid`.
- `concat_x`: every encoder output is concatenated with the input average-
  pooled to its scale; the encoder convs then produce `f_i - in` channels so
  the widths stay `f_i`.

Module names: encoder blocks `start`, `down{1..4}`, `more_down{j}` (each with
`conv1`, `norm1`, `conv2`, `norm2`); decoder blocks `more_up{j}`, `up{4..1}`
(each with `up`, the transposed conv or the conv after upsampling, and
`conv/conv1`, `conv/conv2`); `final`.
Loading the original's weights: `dip_jax.convert` (it knows the original's module order).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from dip_jax import layers

UNET_UPSAMPLE_MODES = ("deconv", "nearest", "bilinear")
UNET_NORM_LAYERS = ("BatchNorm2d", "InstanceNorm2d", None)
_BASE_FILTERS = (64, 128, 256, 512, 1024)
_DN = ("NHWC", "HWIO", "NHWC")


def norm_layer_name(value) -> str | None:
    """'BatchNorm2d' / 'InstanceNorm2d' / None from the spellings the original's configs use.

    Accepts a dotted path (`torch.nn.InstanceNorm2d`), a class with that name,
    and 'none'/None for no normalisation.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        value = getattr(value, "__name__", str(value))
    name = value.rsplit(".", 1)[-1]
    if name.lower() == "none":
        return None
    return name


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Constructor arguments of the original `UNet(...)`, by their original names and defaults.

    Faithfulness: the original crashes for `more_layers > 1` (its forward
    reads a nonexistent `self.more`); dip_jax runs the evident intent, each
    extra up block joining the matching extra down output.
    """

    num_input_channels: int = 3
    num_output_channels: int = 3
    feature_scale: int = 4
    more_layers: int = 0
    concat_x: bool = False
    upsample_mode: str = "deconv"
    pad: str = "zero"
    norm_layer: str | None = "InstanceNorm2d"
    need_sigmoid: bool = True
    need_bias: bool = True

    kind = "unet"

    def __post_init__(self):
        object.__setattr__(self, "norm_layer", norm_layer_name(self.norm_layer))
        for name in ("num_input_channels", "num_output_channels", "feature_scale", "more_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
        if self.num_input_channels < 1 or self.num_output_channels < 1:
            raise ValueError(
                f"num_input_channels and num_output_channels must be >= 1, got "
                f"{self.num_input_channels} and {self.num_output_channels}"
            )
        if not 1 <= self.feature_scale <= 64:
            raise ValueError(
                f"feature_scale={self.feature_scale} leaves no filters (widths are "
                "[64, 128, 256, 512, 1024] // feature_scale); use 1 <= feature_scale <= 64, e.g. 4 or 8"
            )
        if self.more_layers < 0:
            raise ValueError(f"more_layers must be >= 0 (extra scales below the 4 standard ones), got {self.more_layers}")
        if self.upsample_mode not in UNET_UPSAMPLE_MODES:
            raise ValueError(f"upsample_mode {self.upsample_mode!r} is not one of {UNET_UPSAMPLE_MODES}")
        if self.pad not in layers.PAD_MODES:
            raise ValueError(f"pad {self.pad!r} is not one of {layers.PAD_MODES}")
        if self.norm_layer not in UNET_NORM_LAYERS:
            raise ValueError(f"norm_layer {self.norm_layer!r} is not one of {UNET_NORM_LAYERS}")
        if self.concat_x and min(self.filters) <= self.num_input_channels:
            raise ValueError(
                f"concat_x needs every width {self.filters} to exceed num_input_channels="
                f"{self.num_input_channels} (the convs make width - num_input_channels channels); "
                "use a smaller feature_scale or concat_x=False"
            )

    @property
    def filters(self) -> tuple[int, ...]:
        return tuple(f // self.feature_scale for f in _BASE_FILTERS)

    @property
    def num_downsamplings(self) -> int:
        return 4 + self.more_layers

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this so every pooling halves exactly."""
        return 2**self.num_downsamplings

    def encoder_out_channels(self, level: int) -> int:
        """Channels the unetConv2 at encoder level `level` (0 = start) produces."""
        width = self.filters[min(level, 4)]
        return width - self.num_input_channels if self.concat_x else width

    def torch_param_count_extra(self) -> int:
        return 0


class TransposedConv(nn.Module):
    """`nn.ConvTranspose2d(in, features, k, stride, padding)` of PyTorch.

    Stored as the HWIO kernel of the equivalent forward conv on the
    stride-dilated input (the window flipped), which is what
    `dip_jax.convert` produces from the original's (in, out, kh, kw) weight.
    Init as PyTorch: weight and bias uniform in +-1/sqrt(fan_in) with PyTorch's
    fan_in for this weight, `weight.size(1) * k * k = features * k * k`.
    """

    features: int
    kernel_size: int = 4
    stride: int = 2
    padding: int = 1
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        bound = 1.0 / math.sqrt(self.features * k * k)
        kernel = self.param("kernel", layers.torch_uniform(bound), (k, k, x.shape[-1], self.features))
        edge = k - 1 - self.padding
        y = lax.conv_general_dilated(
            x, kernel, (1, 1), [(edge, edge), (edge, edge)],
            lhs_dilation=(self.stride, self.stride), dimension_numbers=_DN,
        )
        if self.use_bias:
            y = y + self.param("bias", layers.torch_uniform(bound), (self.features,))
        return y


class UNetConv2(nn.Module):
    """`unetConv2`: (conv 3x3 -> norm -> ReLU) twice."""

    features: int
    norm_layer: str | None
    use_bias: bool
    pad: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in (1, 2):
            x = layers.Conv(self.features, 3, 1, self.use_bias, self.pad, name=f"conv{i}")(x)
            if self.norm_layer == "BatchNorm2d":
                x = layers.BatchNorm(name=f"norm{i}")(x)
            elif self.norm_layer == "InstanceNorm2d":
                x = layers.InstanceNorm(affine=False, name=f"norm{i}")(x)
            x = jax.nn.relu(x)
        return x


class UNetUp(nn.Module):
    """`unetUp`: upsample the deeper tensor, join it with the skip, unetConv2 (no norm)."""

    features: int
    upsample_mode: str
    use_bias: bool
    pad: str

    @nn.compact
    def __call__(self, deeper: jax.Array, skip: jax.Array) -> jax.Array:
        if self.upsample_mode == "deconv":
            # The original's ConvTranspose2d always has a bias, whatever need_bias says.
            up = TransposedConv(self.features, 4, 2, 1, True, name="up")(deeper)
        else:
            up = layers.upsample2x(deeper, self.upsample_mode)
            up = layers.Conv(self.features, 3, 1, self.use_bias, self.pad, name="up")(up)
        up, skip = layers.center_crop_to([up, skip])
        joined = jnp.concatenate([up, skip], axis=-1)
        return UNetConv2(self.features, None, self.use_bias, self.pad, name="conv")(joined)


def input_joiner(z: jax.Array, cfg):
    """`with_input(x, level)`: the encoder's features at `level`, joined with the input at that scale when
    `cfg.concat_x` (the input pyramid is average-pooled, while the encoder max-pools); `x` otherwise."""
    pyramid = [z]
    if cfg.concat_x:
        for _ in range(cfg.num_downsamplings):
            pyramid.append(layers.pool2x(pyramid[-1], "avg"))

    def with_input(x: jax.Array, level: int) -> jax.Array:
        return jnp.concatenate([x, pyramid[level]], axis=-1) if cfg.concat_x else x

    return with_input


class UNet(nn.Module):
    config: UNetConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg = self.config
        nets.check_net_input(cfg, z)
        f = cfg.filters
        encoder = lambda features, name: UNetConv2(  # noqa: E731
            features, cfg.norm_layer, cfg.need_bias, cfg.pad, name=name
        )
        decoder = lambda features, name: UNetUp(  # noqa: E731
            features, cfg.upsample_mode, cfg.need_bias, cfg.pad, name=name
        )

        with_input = input_joiner(z, cfg)

        names = ["start", "down1", "down2", "down3", "down4"] + [f"more_down{j}" for j in range(cfg.more_layers)]
        encoded = [with_input(encoder(cfg.encoder_out_channels(0), "start")(z), 0)]
        for level in range(1, cfg.num_downsamplings + 1):
            x = layers.pool2x(encoded[-1], "max")
            x = encoder(cfg.encoder_out_channels(level), names[level])(x)
            encoded.append(with_input(x, level))

        # Deepest first: more_up{m-1} joins the two deepest outputs, more_up{j} joins encoded[4 + j].
        y = encoded[-1]
        for j in reversed(range(cfg.more_layers)):
            y = decoder(f[4], f"more_up{j}")(y, encoded[4 + j])
        for i in (4, 3, 2, 1):
            y = decoder(f[i - 1], f"up{i}")(y, encoded[i - 1])

        y = layers.Conv(cfg.num_output_channels, 1, 1, cfg.need_bias, cfg.pad, name="final")(y)
        return jax.nn.sigmoid(y) if cfg.need_sigmoid else y


def unet_config(**kwargs) -> UNetConfig:
    """Build a UNetConfig from the original's keyword arguments (as in the golden `config` JSON)."""
    names = {f.name for f in dataclasses.fields(UNetConfig)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ValueError(f"unknown UNet() arguments {unknown}; valid ones are {sorted(names)}")
    return UNetConfig(**kwargs)


from dip_jax import nets  # noqa: E402  (dip_jax.nets imports this file and is ready to register it)

nets.register(UNetConfig, UNet)
