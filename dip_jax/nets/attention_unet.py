"""Attention U-Net (Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018).

Built on the original's U-Net.

Contract: as `dip_jax.nets.unet` (same config fields and sizes: H and W
multiples of 2**(4 + more_layers), z at the output size), kind
'attention_unet'.

The net is the original's `UNet` (`nets.unet`'s blocks, the same module
names) with an additive attention gate on every skip connection: before
decoder block `up{i}` (`more_up{j}`) joins the encoder output x (F_x
channels) it is multiplied by `gate{i}` (`more_gate{j}`)'s coefficients
alpha = sigmoid(psi(relu(W_x x + up(W_g g)))), where g (F_g channels) is
the decoder tensor one level coarser, the gating signal. W_x (no bias), W_g
and psi (with biases) are 1x1 convs to F_int = F_x // 2, F_int and 1
channels; W_g runs at g's resolution and is upsampled x2 (bilinear) to x's,
as Oktay's grid gate resamples its coefficients. Parameters: the U-Net's plus
sum over gates of F_x F_int + F_g F_int + F_int + F_int + 1.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

from dip_jax import layers, nets
from dip_jax.nets.unet import UNetConfig, UNetConv2, UNetUp, input_joiner


@dataclasses.dataclass(frozen=True)
class AttentionUNetConfig(UNetConfig):
    """`UNetConfig`'s fields and defaults; the gates have no options."""

    kind = "attention_unet"
    # Tasks cap their learning rate here (`TaskConfig.with_net`): the original fits its UNet at 0.001
    # (large-hole inpainting); at denoising's 0.01 this BatchNorm U-Net does not converge
    # (docs/performance.md, "Learning-rate caps").
    learning_rate_cap = 1e-3

    def gate_channels(self) -> list[tuple[int, int, int]]:
        """(F_x, F_g, F_int) of each gate, deepest first."""
        f = self.filters
        out = [(f[4], f[4], f[4] // 2)] * self.more_layers
        return out + [(f[i - 1], f[i], max(f[i - 1] // 2, 1)) for i in (4, 3, 2, 1)]


class AttentionGate(nn.Module):
    """Additive attention gate: `x * sigmoid(psi(relu(W_x x + up2x(W_g g))))`, g at half x's resolution."""

    inter_channels: int

    @nn.compact
    def __call__(self, x: jax.Array, g: jax.Array) -> jax.Array:
        theta = layers.Conv(self.inter_channels, 1, 1, False, name="w_x")(x)
        phi = layers.upsample2x(layers.Conv(self.inter_channels, 1, 1, True, name="w_g")(g), "bilinear")
        theta, phi = layers.center_crop_to([theta, phi])
        alpha = jax.nn.sigmoid(layers.Conv(1, 1, 1, True, name="psi")(jax.nn.relu(theta + phi)))
        x, alpha = layers.center_crop_to([x, alpha])
        return x * alpha


@nets.register(AttentionUNetConfig)
class AttentionUNet(nn.Module):
    config: AttentionUNetConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg = self.config
        nets.check_net_input(cfg, z)
        f = cfg.filters
        with_input = input_joiner(z, cfg)

        names = ["start", "down1", "down2", "down3", "down4"] + [f"more_down{j}" for j in range(cfg.more_layers)]
        encoded = [with_input(UNetConv2(cfg.encoder_out_channels(0), cfg.norm_layer, cfg.need_bias, cfg.pad,
                                        name="start")(z), 0)]
        for level in range(1, cfg.num_downsamplings + 1):
            x = layers.pool2x(encoded[-1], "max")
            x = UNetConv2(
                cfg.encoder_out_channels(level), cfg.norm_layer, cfg.need_bias, cfg.pad, name=names[level]
            )(x)
            encoded.append(with_input(x, level))

        gates = iter(cfg.gate_channels())
        decoder = lambda features, name: UNetUp(features, cfg.upsample_mode, cfg.need_bias, cfg.pad, name=name)  # noqa: E731
        y = encoded[-1]
        for j in reversed(range(cfg.more_layers)):
            skip = AttentionGate(next(gates)[2], name=f"more_gate{j}")(encoded[4 + j], y)
            y = decoder(f[4], f"more_up{j}")(y, skip)
        for i in (4, 3, 2, 1):
            skip = AttentionGate(next(gates)[2], name=f"gate{i}")(encoded[i - 1], y)
            y = decoder(f[i - 1], f"up{i}")(y, skip)

        y = layers.Conv(cfg.num_output_channels, 1, 1, cfg.need_bias, cfg.pad, name="final")(y)
        return jax.nn.sigmoid(y) if cfg.need_sigmoid else y


# The original's get_net builds its UNet so (32-channel noise input, BatchNorm, bilinear, reflection).
nets.add_preset("attention_unet", AttentionUNetConfig(
    num_input_channels=32, feature_scale=4, upsample_mode="bilinear", pad="reflection", norm_layer="BatchNorm2d",
))
