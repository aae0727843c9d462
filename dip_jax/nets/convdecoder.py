"""ConvDecoder (Darestani & Heckel, "Accelerated MRI with Un-trained Neural Networks", 2021).

deepinv's default DIP generator.

Contract: `ConvDecoder(config).init(key, z)` / `.apply(variables, z, mutable=['batch_stats'])`
with `z` float32 (N, H / m, W / m, num_input_channels), m = `config.size_multiple` =
2**(num_layers - 1); output (N, H, W, num_output_channels), a sigmoid of it
with `need_sigmoid` (off by default, as in deepinv). `config.input_size(H, W)`
gives the small z size. The N images share BatchNorm statistics: fit one image
per call and `vmap` over images/restarts.

Architecture (C = channels, L = num_layers), as deepinv's `ConvDecoder`:
- `block{i}` for i < L - 1: x2 upsampling (`upsample_mode`, nearest by
  default), 3x3 conv to C channels (bias, zero padding), ReLU, BatchNorm
  (`bn{i}`); z has C channels too in deepinv (`num_input_channels`);
- `block{L-1}`: the same without upsampling;
- `out_conv`: 1x1 conv C -> num_output_channels (bias).
deepinv resizes to sizes growing geometrically from its `in_size` to the
output; dip_jax takes z at H / 2**(L-1), where every step is an exact x2 and
the two compute the same (deepinv's default, in_size 4x4 with 7 layers, is a
256 x 256 output). Parameters with a C-channel z: L (9 C^2 + C) + 2 L C + C c_out + c_out;
deepinv's default (L = 7, C = 256, RGB) has 4,134,915, the `convdecoder`
preset.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

from dip_jax import layers, nets


@dataclasses.dataclass(frozen=True)
class ConvDecoderConfig:
    """deepinv's `ConvDecoder(img_size, in_size, layers, channels)`; its z has `channels` channels too."""

    num_input_channels: int = 256
    num_output_channels: int = 3
    channels: int = 256
    num_layers: int = 7
    kernel_size: int = 3
    upsample_mode: str = "nearest"
    need_sigmoid: bool = False

    kind = "convdecoder"
    # Tasks cap their learning rate here (`TaskConfig.with_net`): at the paper's 0.01 Adam makes this
    # 256-channel net oscillate (docs/performance.md, "Learning-rate caps").
    learning_rate_cap = 1e-3

    def __post_init__(self):
        for name in ("num_input_channels", "num_output_channels", "channels", "num_layers", "kernel_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (the conv keeps the size), got {self.kernel_size}")
        if self.upsample_mode not in layers.UPSAMPLE_MODES:
            raise ValueError(f"upsample_mode {self.upsample_mode!r} is not one of {layers.UPSAMPLE_MODES}")

    @property
    def size_multiple(self) -> int:
        return 2 ** (self.num_layers - 1)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        return nets.doubling_input_size("convdecoder", self.num_layers, height, width)


@nets.register(ConvDecoderConfig)
class ConvDecoder(nn.Module):
    config: ConvDecoderConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg = self.config
        nets.check_net_input(cfg, z)
        x = z
        for i in range(cfg.num_layers):
            if i < cfg.num_layers - 1:
                x = layers.upsample2x(x, cfg.upsample_mode)
            x = layers.Conv(cfg.channels, cfg.kernel_size, 1, True, "zero", name=f"block{i}")(x)
            x = layers.BatchNorm(name=f"bn{i}")(jax.nn.relu(x))
        x = layers.Conv(cfg.num_output_channels, 1, 1, True, name="out_conv")(x)
        return jax.nn.sigmoid(x) if cfg.need_sigmoid else x


nets.add_preset("convdecoder", ConvDecoderConfig())
