"""A generator written in one file outside the library: config, module, registration, then a fit.

Everything the library needs to know about the net is in this file: the
config (with its own input size: a small z grown 4x), the Flax module (plain
flax.linen layers, no dip_jax layer) and `nets.register`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

import dip_jax as dj
from dip_jax import convert, nets


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    num_input_channels: int = 4
    num_output_channels: int = 3
    width: int = 8

    kind = "test_tiny_upsampler"
    size_multiple = 4  # z is a quarter of the output on each side
    min_size = 8

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        if height % 4 or width % 4:
            raise ValueError(f"a tiny upsampler makes 4x its input; {height}x{width} is not a multiple of 4")
        return height // 4, width // 4


@nets.register(TinyConfig)
class TinyUpsampler(nn.Module):
    config: TinyConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg = self.config
        n, h, w, _ = z.shape
        x = jax.nn.relu(nn.Conv(cfg.width, (3, 3))(z))
        x = jax.image.resize(x, (n, 4 * h, 4 * w, cfg.width), "bilinear")
        return jax.nn.sigmoid(nn.Conv(cfg.num_output_channels, (1, 1))(x))


def _image(size: int = 24) -> np.ndarray:
    ramp = np.linspace(0.1, 0.9, size, dtype=np.float32)
    rows, cols = ramp[:, None] * np.ones(size), ramp[None, :] * np.ones((size, 1))
    return np.stack([rows * cols, rows, 1 - cols], -1)


def test_a_generator_from_one_file_fits_through_the_engine():
    config = TinyConfig()
    image = _image(24)
    fit = dj.FitConfig(num_steps=40, learning_rate=0.05, chunk_size=40)
    result = dj.fit(jax.random.key(0), config, fit, image, ground_truth=image)
    loss = np.asarray(result.history["loss"]).ravel()
    assert result.output.shape == (1, 1, 24, 24, 3)
    # The net input came from the config's own input_size, not from the image size.
    assert result.state.z.shape[-3:] == (6, 6, 4)
    assert np.isfinite(loss).all() and loss[-1] < 0.5 * loss[0]


def test_size_hooks_and_parameter_count_of_a_user_generator():
    config = TinyConfig(width=8)
    assert nets.input_size(config, 32, 16) == (8, 4)
    assert nets.min_size(config) == 8
    # 3x3 conv 4 -> 8 with bias, 1x1 conv 8 -> 3 with bias; no torch_param_count_extra needed.
    assert nets.count_params(config) == nets.count_params(config, convention="dip_jax") == (9 * 4 * 8 + 8) + (8 * 3 + 3)
    with pytest.raises(ValueError, match="multiples of 4"):
        nets.check_input_size(config, 24, 26)
    with pytest.raises(ValueError, match="at least 8x8"):
        nets.check_input_size(config, 4, 8)


def test_a_user_preset_is_selectable_by_name():
    nets.add_preset("test_tiny", TinyConfig(width=4))
    try:
        assert nets.preset("test_tiny", num_output_channels=1) == TinyConfig(width=4, num_output_channels=1)
        with pytest.raises(ValueError, match="already names"):
            nets.add_preset("test_tiny", TinyConfig(width=6))
        with pytest.raises(ValueError, match="already names"):
            nets.add_preset("default", TinyConfig())
    finally:
        del nets.PRESETS["test_tiny"]


def test_registration_says_what_a_generator_lacks():
    @dataclasses.dataclass(frozen=True)
    class NoKind:
        num_input_channels: int = 1
        num_output_channels: int = 1
        size_multiple = 1

    @dataclasses.dataclass(frozen=True)
    class NoChannels:
        num_output_channels: int = 1
        kind = "test_no_channels"
        size_multiple = 1

    @dataclasses.dataclass(frozen=True)
    class TakenKind:
        num_input_channels: int = 1
        num_output_channels: int = 1
        kind = "skip"
        size_multiple = 1

    with pytest.raises(ValueError, match="kind"):
        nets.register(NoKind, TinyUpsampler)
    with pytest.raises(ValueError, match="num_input_channels"):
        nets.register(NoChannels, TinyUpsampler)
    with pytest.raises(ValueError, match="already registered"):
        nets.register(TakenKind, TinyUpsampler)
    with pytest.raises(ValueError, match="flax.linen.Module"):
        nets.register(TinyConfig, object)
    with pytest.raises(ValueError, match="not a registered generator"):
        nets.build_generator(NoKind())


def test_pytorch_weights_convert_only_for_the_original_generators():
    with pytest.raises(ValueError, match="no PyTorch original"):
        convert.torch_module_order(TinyConfig())
    assert convert.torch_module_order(nets.preset("dcgan"))[0] == ("in_deconv", "deconv")
