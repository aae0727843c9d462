"""texture_nets and the DCGAN-style decoder: golden outputs of the original, counts, sizes, fitting."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dip_jax as dj
from dip_jax import convert, nets
from dip_jax.runtime import memory
from dip_jax.nets import dcgan, texture_nets
from dip_jax.nets.dcgan import DCGANConfig
from dip_jax.nets.texture_nets import TextureNetsConfig
from dip_jax.runtime import compile as runtime_compile

GOLDEN = Path(__file__).parent / "golden"
FIXTURES = ["texture_nets_default", "texture_nets_reflection_sigmoid", "dcgan_convT", "dcgan_upsample"]


def _apply(config, variables, z):
    out, _ = nets.build_generator(config).apply(variables, z, mutable=["batch_stats"])
    return out


def _run_once(fn):
    # Each of these forward passes runs once: unoptimised CPU code compiles ~2x faster.
    return runtime_compile.jit(fn, run_once=True)


@pytest.mark.parametrize("name", FIXTURES)
def test_matches_original_output(name):
    # texture_nets_default: get_net's texture net (6 scales, zero padding, no sigmoid);
    # texture_nets_reflection_sigmoid: 4 scales, reflection; dcgan_convT: transposed convs and
    # the original's LeakyReLU(True) (identity); dcgan_upsample: nearest x2 + convs, bilinear last.
    config, state_dict, extras = convert.load_golden(str(GOLDEN / f"{name}.npz"))
    variables = convert.from_torch_state_dict(config, state_dict)
    out = _run_once(lambda v, z: _apply(config, v, z))(variables, jnp.asarray(extras["input"]))
    assert out.shape == extras["output"].shape
    np.testing.assert_allclose(np.asarray(out), extras["output"], rtol=0, atol=1e-4)
    assert nets.count_params(config) == int(extras["num_params"])


def test_golden_configs_are_parsed_from_original_arguments():
    config, _, extras = convert.load_golden(str(GOLDEN / "texture_nets_default.npz"))
    assert config == TextureNetsConfig(num_input_channels=3)  # get_texture_nets' own defaults
    assert config.size_multiple == 32 and extras["input"].shape == (1, 64, 64, 3)
    config, _, extras = convert.load_golden(str(GOLDEN / "dcgan_upsample.npz"))
    assert config == DCGANConfig(2, 3, ndf=16, num_ups=5, need_convT=False)
    assert config.negative_slope == 1.0
    assert nets.input_size(config, 48, 48) == extras["input"].shape[1:3] == (4, 4)
    # The original's unused need_bias / pad are accepted and change nothing.
    assert dcgan.dcgan_config(inp=2, need_bias=False, pad="reflection") == DCGANConfig()


def test_dcgan_negative_slope_is_live():
    # The fixtures pin the identity; a real leaky slope computes something else on the same weights.
    config, state_dict, extras = convert.load_golden(str(GOLDEN / "dcgan_convT.npz"))
    leaky = nets.replace(config, negative_slope=0.2)
    variables = convert.from_torch_state_dict(leaky, state_dict)
    out = _run_once(lambda v, z: _apply(leaky, v, z))(variables, jnp.asarray(extras["input"]))
    assert np.abs(np.asarray(out) - extras["output"]).max() > 1e-3


def test_output_and_input_sizes():
    shape = lambda cfg, z: jax.eval_shape(  # noqa: E731
        lambda v, z: _apply(cfg, v, z), nets.init_shapes(cfg), jax.ShapeDtypeStruct(z, jnp.float32)
    ).shape
    tex = TextureNetsConfig(num_input_channels=2, ratios=(8, 4, 2, 1), conv_num=4, num_output_channels=1)
    assert shape(tex, (1, 32, 64, 2)) == (1, 32, 64, 1)
    assert nets.input_size(tex, 32, 64) == (32, 64)
    with pytest.raises(ValueError, match="multiples of 8"):
        nets.check_input_size(tex, 36, 64)
    # dcgan grows (h + 2) * 2**(num_ups - 2): z is a small tensor, not the image size.
    gan = DCGANConfig(num_ups=5, ndf=8)
    assert shape(gan, (1, 6, 10, 2)) == (1, 64, 96, 3)
    assert nets.input_size(gan, 64, 96) == (6, 10)
    assert nets.min_size(gan) == 24
    nets.check_input_size(gan, 24, 64)
    with pytest.raises(ValueError, match="multiples of 8"):
        nets.check_input_size(gan, 44, 64)
    with pytest.raises(ValueError, match="at least 24"):
        nets.check_input_size(gan, 16, 64)
    image = np.zeros((24, 24, 3), np.float32)
    with pytest.raises(ValueError, match=r"net_input is \(1, 24, 24, 2\) but the net needs \(1, 1, 1, 2\)"):
        dj.prepare(jax.random.key(0), gan, dj.FitConfig(), image, net_input=np.zeros((1, 24, 24, 2)))
    # Memory is estimated by running the net on the small z: its four transposed convs output
    # 8x12, 16x24, 32x48 (8 channels) and 64x96 (3 channels) float32 pixels.
    conv_bytes = memory.net_footprint(gan, 64, 96)[2]
    assert conv_bytes == 4 * (8 * (8 * 12 + 16 * 24 + 32 * 48) + 3 * 64 * 96)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: TextureNetsConfig(ratios=(4, 2)), "ratios"),
        (lambda: TextureNetsConfig(ratios=(8, 2, 1)), "ratios"),
        (lambda: TextureNetsConfig(ratios=(1,)), "ratios"),
        (lambda: TextureNetsConfig(fill_noise=True), "fill_noise"),
        (lambda: TextureNetsConfig(pad="replication"), "pad"),
        (lambda: TextureNetsConfig(upsample_mode="bicubic"), "upsample_mode"),
        (lambda: TextureNetsConfig(conv_num=0), "conv_num"),
        (lambda: texture_nets.texture_nets_config(inp=3, num_input_channels=3), "not both"),
        (lambda: texture_nets.texture_nets_config(act_fun="ELU"), "unknown get_texture_nets"),
        (lambda: DCGANConfig(num_ups=2), "num_ups"),
        (lambda: DCGANConfig(ndf=0), "ndf"),
        (lambda: DCGANConfig(upsample_mode="bicubic"), "upsample_mode"),
        (lambda: DCGANConfig(negative_slope="0.2"), "negative_slope"),
        (lambda: dcgan.dcgan_config(ngf=8), "unknown dcgan"),
    ],
)
def test_bad_arguments_raise_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_presets_and_original_names():
    assert isinstance(nets.preset("texture_nets"), TextureNetsConfig)
    assert nets.preset("texture_nets").num_input_channels == 32
    assert nets.preset("dcgan", num_output_channels=1) == DCGANConfig(num_output_channels=1)
    assert convert.config_from_original({"kind": "texture_nets", "inp": 4}).num_input_channels == 4
    assert convert.config_from_original({"kind": "dcgan", "inp": 3}) == DCGANConfig(num_input_channels=3)


def test_dcgan_init_is_pytorch_like():
    # ConvTranspose2d's fan_in is out_channels * k * k; BatchNorm starts at scale 1, offset 0.
    cfg = DCGANConfig(num_ups=4, ndf=8)
    variables = nets.build_generator(cfg).init(jax.random.key(0, impl="rbg"), jnp.zeros((1, 2, 2, 2)))
    params = variables["params"]
    assert set(params) == {"in_deconv", "in_bn", "up0", "up0_bn", "out_conv"}
    for name, (k, out) in {"in_deconv": (3, 8), "up0": (4, 8), "out_conv": (4, 3)}.items():
        kernel = np.asarray(params[name]["kernel"])
        assert set(params[name]) == {"kernel"}  # no biases
        bound = 1.0 / math.sqrt(out * k * k)
        assert 0.8 * bound < np.abs(kernel).max() <= bound, name
    np.testing.assert_array_equal(np.asarray(params["in_bn"]["scale"]), 1.0)


@pytest.mark.parametrize(
    "config",
    [
        DCGANConfig(ndf=8, num_ups=4),  # z is 4x4 for the 24x24 image
        TextureNetsConfig(num_input_channels=4, ratios=(2, 1), conv_num=4, need_sigmoid=True, pad="reflection"),
    ],
    ids=["dcgan", "texture_nets"],
)
def test_fits_an_image_through_the_engine(config):
    rng = np.random.default_rng(0)
    ramp = np.linspace(0.1, 0.8, 24, dtype=np.float32)
    image = np.clip(ramp[:, None, None] + 0.1 * rng.random((24, 24, 3)), 0, 1).astype(np.float32)
    fit = dj.FitConfig(num_steps=30, learning_rate=0.01, chunk_size=30)
    result = dj.fit(jax.random.key(0), config, fit, image, ground_truth=image)
    loss = np.asarray(result.history["loss"]).ravel()
    assert result.output.shape == (1, 1, 24, 24, 3)
    assert np.isfinite(loss).all()
    assert loss[-1] < 0.5 * loss[0]
