"""The original's texture network (`models/texture_nets.py`, `get_net(..., 'texture_nets')`), as a Flax module.

Contract: `TextureNets(config).init(key, z)` / `.apply(variables, z, mutable=['batch_stats'])`
with `z` float32 (N, H, W, num_input_channels), H and W multiples of
`config.size_multiple` (the largest ratio); output (N, H, W,
num_output_channels), in (0, 1) only with `need_sigmoid` (the original's
default and `get_net` have no sigmoid). The N images share BatchNorm
statistics: fit one image per call and `vmap` over images/restarts.

Architecture (c = conv_num, ratios r_0 > r_1 > ... > r_{n-1} = 1, each half
the previous), a multi-scale network that sees the input at every scale:
- `branch{i}`: average-pool z by r_i, then (conv 3x3 -> BN -> LeakyReLU(0.2)),
  (conv 3x3 -> BN -> act), (conv 1x1 -> BN -> act), c channels.
- The coarsest branch is the running path. At each finer scale i the path is
  upsampled x2 (`upsample_mode`) and batch-normalised (`carry{i}_merge_bn`),
  the new branch too (`branch{i}_merge_bn`), both are concatenated [path,
  branch] (c * (i + 1) channels) and go through `join{i}`: the same three
  conv/BN/act layers at that width.
- `out_conv`: conv 1x1 to num_output_channels, then sigmoid if `need_sigmoid`.
Every conv has a bias and uses `pad` (a 1x1 conv pads by 0).
Loading the original's weights: `dip_jax.convert` (it knows the original's module order).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from dip_jax import layers

# get_net's ratios for 'texture_nets'.
DEFAULT_RATIOS = (32, 16, 8, 4, 2, 1)


@dataclasses.dataclass(frozen=True)
class TextureNetsConfig:
    """Arguments of the original `get_texture_nets(...)`; `inp` is `num_input_channels`.

    Defaults are the original function's (`get_net` passes its `input_depth`
    and `pad`). Faithfulness:
    - The original computes its padding as `(kernel_size - 1) / 2`, a float
      that PyTorch rejects under Python 3, so it cannot run as written;
      dip_jax pads by `(kernel_size - 1) // 2`, the evident intent (the golden
      fixtures were made with that one-character fix).
    - `num_output_channels` is an addition (the original always makes 3).
    - `fill_noise=True` (the original's `GenNoise`: every branch ignores `z`
      and draws fresh normal noise on each forward pass) is not supported;
      `get_net` never uses it.
    - `ratios` must halve from scale to scale and end at 1, so the output has
      the input's size; other ratios make the original crop or shrink its output.
    """

    num_input_channels: int = 3
    num_output_channels: int = 3
    ratios: tuple[int, ...] = DEFAULT_RATIOS
    fill_noise: bool = False
    pad: str = "zero"
    need_sigmoid: bool = False
    conv_num: int = 8
    upsample_mode: str = "nearest"

    kind = "texture_nets"

    def __post_init__(self):
        if isinstance(self.ratios, (list, tuple)):
            object.__setattr__(self, "ratios", tuple(self.ratios))
        for name in ("num_input_channels", "num_output_channels", "conv_num"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        r = self.ratios
        if (
            not isinstance(r, tuple) or len(r) < 2
            or any(isinstance(v, bool) or not isinstance(v, int) for v in r)
            or r[-1] != 1 or any(a != 2 * b for a, b in zip(r, r[1:]))
        ):
            raise ValueError(
                f"ratios must be at least two ints, each half the previous, ending at 1 "
                f"(e.g. {DEFAULT_RATIOS}) so the output has the input's size; got {self.ratios!r}"
            )
        if self.fill_noise:
            raise ValueError(
                "fill_noise=True (fresh noise inside every branch on each pass) is not supported; "
                "use fill_noise=False, as the original's get_net does"
            )
        if self.pad not in layers.PAD_MODES:
            raise ValueError(f"pad {self.pad!r} is not one of {layers.PAD_MODES}")
        if self.upsample_mode not in layers.UPSAMPLE_MODES:
            raise ValueError(f"upsample_mode {self.upsample_mode!r} is not one of {layers.UPSAMPLE_MODES}")

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of the coarsest ratio so every pooling is exact."""
        return self.ratios[0]

    def torch_param_count_extra(self) -> int:
        return 0


def _avg_pool(x: jax.Array, r: int) -> jax.Array:
    """`nn.AvgPool2d(r, r)`."""
    if r == 1:
        return x
    window = (1, r, r, 1)
    return lax.reduce_window(x, 0.0, lax.add, window, window, "VALID") / (r * r)


class _Block(nn.Module):
    """(conv 3x3 -> BN -> act), (conv 3x3 -> BN -> act), (conv 1x1 -> BN -> act)."""

    features: int
    pad: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, k in enumerate((3, 3, 1), start=1):
            x = layers.Conv(self.features, k, 1, True, self.pad, name=f"conv{i}")(x)
            x = layers.BatchNorm(act="LeakyReLU", name=f"bn{i}")(x)
        return x


class TextureNets(nn.Module):
    config: TextureNetsConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg = self.config
        nets.check_net_input(cfg, z)
        c = cfg.conv_num
        path = _Block(c, cfg.pad, name="branch0")(_avg_pool(z, cfg.ratios[0]))
        for i in range(1, len(cfg.ratios)):
            path = layers.BatchNorm(name=f"carry{i}_merge_bn")(layers.upsample2x(path, cfg.upsample_mode))
            branch = _Block(c, cfg.pad, name=f"branch{i}")(_avg_pool(z, cfg.ratios[i]))
            branch = layers.BatchNorm(name=f"branch{i}_merge_bn")(branch)
            path = _Block(c * (i + 1), cfg.pad, name=f"join{i}")(jnp.concatenate([path, branch], axis=-1))
        out = layers.Conv(cfg.num_output_channels, 1, 1, True, cfg.pad, name="out_conv")(path)
        return jax.nn.sigmoid(out) if cfg.need_sigmoid else out


def texture_nets_config(**kwargs) -> TextureNetsConfig:
    """A TextureNetsConfig from `get_texture_nets`' keyword arguments (`inp` or `num_input_channels`)."""
    return nets.config_from_kwargs(TextureNetsConfig, "get_texture_nets", kwargs)


from dip_jax import nets  # noqa: E402  (dip_jax.nets imports this file and is ready to register it)

nets.register(TextureNetsConfig, TextureNets)
