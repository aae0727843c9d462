"""Named generator configs of the paper's notebooks (data, not code paths).

`preset(name, *, num_input_channels=None, num_output_channels=None)` returns the
config; channel counts default to the notebook's. `PRESETS` lists the names.
Each entry here cites the notebook whose `skip(...)` call it reproduces (or, for
the generators no notebook uses, the original call it builds). A generator
file adds its own presets with `add_preset(name, config)` (the CLI's `--net`
offers every name in `PRESETS`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dip_jax.nets.dcgan import DCGANConfig
from dip_jax.nets.skip import SkipConfig
from dip_jax.nets.texture_nets import TextureNetsConfig

_128x5 = (128, 128, 128, 128, 128)
_DEPTH6 = (16, 32, 64, 128, 128, 128)

PRESETS: dict[str, Any] = {
    # denoising.ipynb (F16), super-resolution.ipynb, restoration 50% (1 output channel there).
    "default": SkipConfig(),
    # denoising.ipynb, snail.jpg (JPEG artifacts): 3-channel noise input.
    "jpeg": SkipConfig(
        num_input_channels=3,
        num_channels_down=(8, 16, 32, 64, 128),
        num_channels_up=(8, 16, 32, 64, 128),
        num_channels_skip=(0, 0, 0, 4, 4),
    ),
    # inpainting.ipynb, kate (text inpainting).
    "text_inpainting": SkipConfig(
        num_channels_down=_128x5, num_channels_up=_128x5, num_channels_skip=_128x5, upsample_mode="nearest"
    ),
    # inpainting.ipynb, vase (large hole): meshgrid input, no skips.
    "large_hole": SkipConfig(
        num_input_channels=2,
        num_channels_skip=(0, 0, 0, 0, 0),
        upsample_mode="nearest",
    ),
    # inpainting.ipynb, library (large hole): depth 6, 1-channel noise input.
    "large_hole_depth6": SkipConfig(
        num_input_channels=1,
        num_channels_down=_DEPTH6,
        num_channels_up=_DEPTH6,
        num_channels_skip=(0,) * 6,
        filter_size_down=5,
        filter_size_up=3,
        upsample_mode="nearest",
        need1x1_up=False,
    ),
    # restoration.ipynb, kate with 98% of pixels missing.
    "restoration_sparse": SkipConfig(
        num_channels_down=(16, 32, 64, 128, 128),
        num_channels_up=(16, 32, 64, 128, 128),
        num_channels_skip=(0, 0, 0, 0, 0),
        downsample_mode="avg",
    ),
    # flash-no-flash.ipynb: the flash photo is the input.
    "flash": SkipConfig(
        num_input_channels=3,
        upsample_mode=("nearest", "nearest", "bilinear", "bilinear", "bilinear"),
    ),
    # feature_inversion.ipynb.
    "feature_inversion": SkipConfig(
        num_channels_down=_DEPTH6,
        num_channels_up=_DEPTH6,
        num_channels_skip=(4,) * 6,
        filter_size_down=(7, 7, 5, 5, 3, 3),
        filter_size_up=(7, 7, 5, 5, 3, 3),
        upsample_mode="nearest",
        downsample_mode="avg",
        pad="zero",
    ),
    # activation_maximization.ipynb.
    "activation_maximization": SkipConfig(
        num_channels_down=_DEPTH6,
        num_channels_up=_DEPTH6,
        num_channels_skip=(0, 4, 4, 4, 4, 4),
        filter_size_down=(5, 3, 5, 5, 3, 5),
        filter_size_up=(5, 3, 5, 3, 5, 3),
        upsample_mode="bilinear",
        downsample_mode="avg",
    ),
    # get_net(32, 'texture_nets', 'reflection', ...), as the notebooks call get_net (32-channel
    # noise input, reflection padding): ratios 32..1, 8 channels, no sigmoid. No notebook uses it.
    "texture_nets": TextureNetsConfig(num_input_channels=32, pad="reflection"),
    # models/dcgan.py's dcgan() with its own defaults (ndf 32, num_ups 4: z is H/4 - 2 pixels a side,
    # transposed convolutions, identity "activations", see DCGANConfig). No notebook uses it.
    "dcgan": DCGANConfig(),
}


def add_preset(name: str, config) -> None:
    """Name a generator config for `preset(name)` and the CLI's `--net` (a generator file calls it)."""
    from dip_jax import nets

    if not isinstance(name, str) or not name or name.strip() != name:
        raise ValueError(f"a preset name is a non-empty string without surrounding spaces, got {name!r}")
    nets.build_generator(config)  # ValueError unless its kind is registered
    if name in PRESETS and PRESETS[name] != config:
        raise ValueError(f"preset {name!r} already names {PRESETS[name]!r}; choose another name")
    PRESETS[name] = config


def preset(name: str, *, num_input_channels: int | None = None, num_output_channels: int | None = None):
    if name not in PRESETS:
        raise ValueError(f"unknown net preset {name!r}; choose one of {sorted(PRESETS)}")
    changes = {}
    if num_input_channels is not None:
        changes["num_input_channels"] = num_input_channels
    if num_output_channels is not None:
        changes["num_output_channels"] = num_output_channels
    return dataclasses.replace(PRESETS[name], **changes)


def narrow(config: SkipConfig, *, width: int = 16, scales: int | None = None) -> SkipConfig:
    """A small version of a net (for quick runs and tests): channels capped at `width`."""
    n = config.num_scales if scales is None else scales
    cap = lambda cs: tuple(min(c, width) for c in cs[:n])  # noqa: E731
    per_scale = lambda v: v[:n] if isinstance(v, tuple) else v  # noqa: E731
    return dataclasses.replace(
        config,
        num_channels_down=cap(config.num_channels_down),
        num_channels_up=cap(config.num_channels_up),
        num_channels_skip=tuple(min(c, width) for c in config.num_channels_skip[:n]),
        filter_size_down=per_scale(config.filter_size_down),
        filter_size_up=per_scale(config.filter_size_up),
        upsample_mode=per_scale(config.upsample_mode),
        downsample_mode=per_scale(config.downsample_mode),
    )
