"""The original's `skip` encoder-decoder generator, as a Flax module.

Contract: `Skip(config).init(key, z)` / `.apply(variables, z, mutable=['batch_stats'])`
with `z` of shape (N, H, W, num_input_channels), H and W divisible by
2**num_scales; output (N, H, W, num_output_channels), in (0, 1) with the
sigmoid. `N` images share BatchNorm statistics, so fit one image per call and
`vmap` over images/restarts.

Module names follow the scale index `i`: `s{i}_skip_conv`, `s{i}_skip_bn` (the
skip branch), `s{i}_down` (+ `_bn`), `s{i}_conv2` (+ `_bn`), `s{i}_join_bn`,
`s{i}_up_conv` (+ `_bn`), `s{i}_up1x1` (+ `_bn`), and `out_conv`.
`dip_jax.convert` knows their order in the original's `state_dict()`.
"""

from __future__ import annotations

import dataclasses
import flax.linen as nn
import jax
import jax.numpy as jnp

from dip_jax import layers


def _per_scale(value, n: int, name: str) -> tuple:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(
                f"{name} has {len(value)} entries but the net has {n} scales; "
                f"give one value or a list of {n}"
            )
        return tuple(value)
    return (value,) * n


@dataclasses.dataclass(frozen=True)
class SkipConfig:
    """Constructor arguments of the original `skip(...)`, by their original names.

    Defaults are the paper's default net (denoising, super-resolution):
    5 scales of 128 channels, skips of 4, 3x3 filters, stride downsampling,
    bilinear upsampling, reflection padding, LeakyReLU, sigmoid.
    """

    num_input_channels: int = 32
    num_output_channels: int = 3
    num_channels_down: tuple[int, ...] = (128, 128, 128, 128, 128)
    num_channels_up: tuple[int, ...] = (128, 128, 128, 128, 128)
    num_channels_skip: tuple[int, ...] = (4, 4, 4, 4, 4)
    filter_size_down: int | tuple[int, ...] = 3
    filter_size_up: int | tuple[int, ...] = 3
    filter_skip_size: int = 1
    need_sigmoid: bool = True
    need_bias: bool = True
    pad: str = "reflection"
    upsample_mode: str | tuple[str, ...] = "bilinear"
    downsample_mode: str | tuple[str, ...] = "stride"
    act_fun: str = "LeakyReLU"
    need1x1_up: bool = True
    # Faithfulness: see layers.DownConv; False keeps in-net Lanczos filters fixed.
    train_lanczos: bool = False

    kind = "skip"

    def __post_init__(self):
        for name in ("num_channels_down", "num_channels_up", "num_channels_skip"):
            object.__setattr__(self, name, tuple(int(c) for c in getattr(self, name)))
        n = len(self.num_channels_down)
        if n == 0 or not (len(self.num_channels_up) == len(self.num_channels_skip) == n):
            raise ValueError(
                "num_channels_down, num_channels_up and num_channels_skip must be non-empty "
                f"and of equal length (one entry per scale); got {len(self.num_channels_down)}, "
                f"{len(self.num_channels_up)}, {len(self.num_channels_skip)}"
            )
        for name in ("filter_size_down", "filter_size_up", "upsample_mode", "downsample_mode"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        for mode in self.upsample_modes:
            if mode not in layers.UPSAMPLE_MODES:
                raise ValueError(f"upsample_mode {mode!r} is not one of {layers.UPSAMPLE_MODES}")
        for mode in self.downsample_modes:
            if mode not in layers.DOWNSAMPLE_MODES:
                raise ValueError(f"downsample_mode {mode!r} is not one of {layers.DOWNSAMPLE_MODES}")
        if self.pad not in layers.PAD_MODES:
            raise ValueError(f"pad {self.pad!r} is not one of {layers.PAD_MODES}")
        if self.act_fun not in layers.ACTIVATIONS:
            raise ValueError(f"act_fun {self.act_fun!r} is not one of {layers.ACTIVATIONS}")
        for k in self.filter_sizes_down + self.filter_sizes_up + (self.filter_skip_size,):
            if k < 1 or k % 2 == 0:
                raise ValueError(f"filter sizes must be odd and positive (got {k}); use 1, 3, 5, 7, ...")

    @property
    def num_scales(self) -> int:
        return len(self.num_channels_down)

    @property
    def filter_sizes_down(self) -> tuple[int, ...]:
        return _per_scale(self.filter_size_down, self.num_scales, "filter_size_down")

    @property
    def filter_sizes_up(self) -> tuple[int, ...]:
        return _per_scale(self.filter_size_up, self.num_scales, "filter_size_up")

    @property
    def upsample_modes(self) -> tuple[str, ...]:
        return _per_scale(self.upsample_mode, self.num_scales, "upsample_mode")

    @property
    def downsample_modes(self) -> tuple[str, ...]:
        return _per_scale(self.downsample_mode, self.num_scales, "downsample_mode")

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this so every scale halves exactly."""
        return 2**self.num_scales

    def torch_param_count_extra(self) -> int:
        """Parameters the original counts that dip_jax holds as fixed filters."""
        if self.train_lanczos:
            return 0
        return sum(
            layers.lanczos_param_count(mode, c)
            for mode, c in zip(self.downsample_modes, self.num_channels_down)
        )


class Skip(nn.Module):
    config: SkipConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg = self.config
        if z.shape[-1] != cfg.num_input_channels:
            raise ValueError(
                f"the net expects {cfg.num_input_channels} input channels but z has {z.shape[-1]}; "
                "make the input with input_depth equal to num_input_channels"
            )
        conv = lambda f, k, name: layers.Conv(f, k, 1, cfg.need_bias, cfg.pad, name=name)  # noqa: E731
        norm = lambda name, act=cfg.act_fun: layers.BatchNorm(act=act, name=name)  # noqa: E731
        k_down, k_up, up_modes, down_modes = (
            cfg.filter_sizes_down, cfg.filter_sizes_up, cfg.upsample_modes, cfg.downsample_modes,
        )

        def scale(x: jax.Array, i: int, then: tuple = ()) -> jax.Array:
            """Scale `i` and the deeper ones; `then`: the layers after its output (as in the original's Sequential)."""
            branches = []
            if cfg.num_channels_skip[i] > 0:
                skip = layers.chain(
                    conv(cfg.num_channels_skip[i], cfg.filter_skip_size, f"s{i}_skip_conv"), norm(f"s{i}_skip_bn"),
                )
                branches.append(skip(x))
            down = layers.chain(
                layers.DownConv(
                    cfg.num_channels_down[i], k_down[i], cfg.need_bias, cfg.pad, down_modes[i],
                    cfg.train_lanczos, name=f"s{i}_down",
                ),
                norm(f"s{i}_down_bn"),
                conv(cfg.num_channels_down[i], k_down[i], f"s{i}_conv2"),
                norm(f"s{i}_conv2_bn"),
            )
            d = down(x)
            if i + 1 < cfg.num_scales:
                d = scale(d, i + 1)
            branches.append(layers.upsample2x(d, up_modes[i]))
            y = jnp.concatenate(layers.center_crop_to(branches), axis=-1) if len(branches) > 1 else branches[0]
            up = [norm(f"s{i}_join_bn", act="none"), conv(cfg.num_channels_up[i], k_up[i], f"s{i}_up_conv"),
                  norm(f"s{i}_up_conv_bn")]
            if cfg.need1x1_up:
                up += [conv(cfg.num_channels_up[i], 1, f"s{i}_up1x1"), norm(f"s{i}_up1x1_bn")]
            return layers.chain(*up, *then)(y)

        # The original appends the output conv to scale 0's Sequential.
        y = scale(z, 0, then=(conv(cfg.num_output_channels, 1, "out_conv"),))
        return jax.nn.sigmoid(y) if cfg.need_sigmoid else y


def skip_config(**kwargs) -> SkipConfig:
    """Build a SkipConfig from the original's keyword arguments (lists accepted)."""
    names = {f.name for f in dataclasses.fields(SkipConfig)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ValueError(f"unknown skip() arguments {unknown}; valid ones are {sorted(names)}")
    return SkipConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})


from dip_jax import nets  # noqa: E402  (dip_jax.nets imports this file and is ready to register it)

nets.register(SkipConfig, Skip)
