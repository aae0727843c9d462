"""Deep Decoder (Heckel & Hand, ICLR 2019).

"Deep Decoder: Concise Image Representations from Untrained Non-convolutional Networks".

Contract: `DeepDecoder(config).init(key, z)` / `.apply(variables, z, mutable=['batch_stats'])`
with `z` float32 (N, H / m, W / m, num_input_channels), m = `config.size_multiple`
= 2**(len(num_channels) - 1); output (N, H, W, num_output_channels), in (0, 1)
with `need_sigmoid`. `config.input_size(H, W)` gives the small z size for an
H x W output. The N images share the normalisation statistics: fit one image
per call and `vmap` over images/restarts.

Architecture, as the reference code's `decodernw` (upsample_first=True,
bn_before_act=False) computes it: for each width c_i of `num_channels`,
- `layer{i}`: 1x1 conv (no bias) to c_i channels,
- x2 upsampling (`upsample_mode`, bilinear by default) except after the last,
- ReLU,
- `norm{i}`: channel normalisation, i.e. PyTorch's training-mode BatchNorm2d
  (per channel over the image, a learned scale and shift);
then `out_conv`: 1x1 conv (no bias) to num_output_channels, and a sigmoid.
The net has no spatial convolutions: the upsampling is what ties neighbouring
pixels together. Parameters (no biases): sum of in_i * c_i over the layers
+ 2 * sum(c_i) + c_last * num_output_channels; for d layers of k channels
and a k-channel z, d k^2 + 2 d k + k c_out.

The reference denoising notebook calls `decodernw(3, [k] * 5)`: with the
reference's two appended widths that is the paper's d = 6 layers of k = 128
channels, z of 128 channels at H/32 x W/32 (uniform noise x 0.1; 16 x 16 for
its 512 px astronaut), 5 upsamplings, Adam at lr 0.01 for 1,900 steps; the
`deep_decoder` preset is that net (100,224 parameters for RGB).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

from dip_jax import layers, nets


@dataclasses.dataclass(frozen=True)
class DeepDecoderConfig:
    """`num_channels`: the width of each 1x1 layer.

    The reference's `decodernw(num_channels_up=U)` is `num_input_channels=U[0]`,
    `num_channels=U[1:] + [U[-1], U[-1]]`.
    """

    num_input_channels: int = 128
    num_output_channels: int = 3
    num_channels: tuple[int, ...] = (128,) * 6
    upsample_mode: str = "bilinear"
    need_sigmoid: bool = True

    kind = "deep_decoder"

    def __post_init__(self):
        if isinstance(self.num_channels, list):
            object.__setattr__(self, "num_channels", tuple(self.num_channels))
        widths = self.num_channels
        if not isinstance(widths, tuple) or not widths or any(
            isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in widths
        ):
            raise ValueError(f"num_channels must be a non-empty tuple of positive ints (one per layer), got {widths!r}")
        for name in ("num_input_channels", "num_output_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.upsample_mode not in layers.UPSAMPLE_MODES:
            raise ValueError(f"upsample_mode {self.upsample_mode!r} is not one of {layers.UPSAMPLE_MODES}")

    @property
    def size_multiple(self) -> int:
        """Every layer but the last doubles the size."""
        return 2 ** (len(self.num_channels) - 1)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        return nets.doubling_input_size("deep decoder", len(self.num_channels), height, width)


@nets.register(DeepDecoderConfig)
class DeepDecoder(nn.Module):
    config: DeepDecoderConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg = self.config
        nets.check_net_input(cfg, z)
        x = z
        last = len(cfg.num_channels) - 1
        for i, width in enumerate(cfg.num_channels):
            x = layers.Conv(width, 1, 1, False, name=f"layer{i}")(x)
            if i < last:
                x = layers.upsample2x(x, cfg.upsample_mode)
            x = layers.BatchNorm(name=f"norm{i}")(jax.nn.relu(x))
        x = layers.Conv(cfg.num_output_channels, 1, 1, False, name="out_conv")(x)
        return jax.nn.sigmoid(x) if cfg.need_sigmoid else x


nets.add_preset("deep_decoder", DeepDecoderConfig())
