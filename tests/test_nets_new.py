"""The newer generators: Deep Decoder, ConvDecoder, attention U-Net.

Parameter counts against their papers' formulas, sizes, the reference layers' arithmetic (PyTorch), fits.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dip_jax as dj
from dip_jax import convert, metrics, nets
from dip_jax.nets.attention_unet import AttentionGate, AttentionUNetConfig
from dip_jax.nets.convdecoder import ConvDecoderConfig
from dip_jax.nets.deep_decoder import DeepDecoderConfig
from dip_jax.nets.unet import UNetConfig


def _deep_decoder_formula(k: int, d: int, c_out: int) -> int:
    # Heckel & Hand: d layers of k channels, 1x1 convs without bias (k^2 each, the first from
    # a k-channel z), channel normalisation (scale and shift: 2k each), output conv k * c_out.
    return d * k * k + 2 * d * k + k * c_out


def _convdecoder_formula(c: int, layers: int, c_out: int, kernel: int = 3) -> int:
    # deepinv's ConvDecoder: `layers` k x k convs C -> C with bias, a BatchNorm (2C) after each,
    # then a 1x1 conv C -> c_out with bias.
    return layers * (kernel * kernel * c * c + c) + layers * 2 * c + c * c_out + c_out


def _gates_formula(config: AttentionUNetConfig) -> int:
    # Per gate: W_x (F_x -> F_int, no bias), W_g (F_g -> F_int, bias), psi (F_int -> 1, bias).
    f = config.filters
    pairs = [(f[4], f[4])] * config.more_layers + [(f[i - 1], f[i]) for i in (4, 3, 2, 1)]
    return sum(fx * (fx // 2) + fg * (fx // 2) + (fx // 2) + (fx // 2) + 1 for fx, fg in pairs)


def _as_unet(config: AttentionUNetConfig) -> UNetConfig:
    return UNetConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(UNetConfig)})


def test_parameter_counts_match_the_formulas():
    # The presets: the reference denoising notebook's decodernw(3, [128] * 5) is d = 6 layers of 128.
    assert nets.count_params(nets.preset("deep_decoder")) == _deep_decoder_formula(128, 6, 3) == 100_224
    five_layers = DeepDecoderConfig(num_channels=(128,) * 5)
    assert nets.count_params(five_layers) == _deep_decoder_formula(128, 5, 3) == 83_584
    grey = DeepDecoderConfig(num_input_channels=64, num_channels=(64,) * 3, num_output_channels=1)
    assert nets.count_params(grey) == _deep_decoder_formula(64, 3, 1)
    # deepinv's default ConvDecoder(img_size=(3, H, W), in_size=(4, 4), layers=7, channels=256).
    assert nets.count_params(nets.preset("convdecoder")) == _convdecoder_formula(256, 7, 3) == 4_134_915
    assert nets.count_params(ConvDecoderConfig(num_input_channels=16, channels=16, num_layers=4)) == (
        _convdecoder_formula(16, 4, 3)
    )
    for config in (
        nets.preset("attention_unet"),
        AttentionUNetConfig(num_input_channels=8, feature_scale=16, more_layers=1, norm_layer="BatchNorm2d"),
        AttentionUNetConfig(num_input_channels=2, feature_scale=8, concat_x=True, upsample_mode="deconv"),
    ):
        assert nets.count_params(config) == nets.count_params(_as_unet(config)) + _gates_formula(config)
    assert nets.count_params(nets.preset("attention_unet")) == 2_164_899 + 32_884


@pytest.mark.parametrize(
    "config, size, z_size",
    [
        (DeepDecoderConfig(num_input_channels=8, num_channels=(8, 8, 8)), (32, 32), (8, 8)),
        (DeepDecoderConfig(num_input_channels=8, num_channels=(8, 8, 8)), (16, 48), (4, 12)),
        (ConvDecoderConfig(num_input_channels=4, channels=8, num_layers=3), (32, 32), (8, 8)),
        (ConvDecoderConfig(num_input_channels=4, channels=8, num_layers=3), (16, 48), (4, 12)),
        (AttentionUNetConfig(num_input_channels=2, feature_scale=32), (32, 32), (32, 32)),
        (AttentionUNetConfig(num_input_channels=2, feature_scale=32, more_layers=1), (32, 64), (32, 64)),
    ],
    ids=["dd-32", "dd-16x48", "cd-32", "cd-16x48", "attention-32", "attention-more-32x64"],
)
def test_output_and_input_sizes(config, size, z_size):
    h, w = size
    nets.check_input_size(config, h, w)
    assert nets.input_size(config, h, w) == z_size
    z = jax.ShapeDtypeStruct((1, *z_size, config.num_input_channels), jnp.float32)
    module = nets.build_generator(config)
    variables = jax.eval_shape(module.init, jax.random.key(0), z)
    out, _ = jax.eval_shape(lambda v, z: module.apply(v, z, mutable=["batch_stats"]), variables, z)
    assert out.shape == (1, h, w, config.num_output_channels)


def test_size_errors_name_the_multiple():
    with pytest.raises(ValueError, match="multiples of 32"):
        nets.check_input_size(nets.preset("deep_decoder"), 48, 32)
    with pytest.raises(ValueError, match="at least 64x64"):
        nets.check_input_size(nets.preset("convdecoder"), 32, 64)
    with pytest.raises(ValueError, match="num_channels"):
        DeepDecoderConfig(num_channels=())
    with pytest.raises(ValueError, match="kernel_size"):
        ConvDecoderConfig(kernel_size=2)
    with pytest.raises(ValueError, match="no PyTorch original"):
        convert.torch_module_order(nets.preset("attention_unet"))


def _torch_conv(torch, kernel, bias=None):
    k = np.asarray(kernel)
    conv = torch.nn.Conv2d(k.shape[2], k.shape[3], k.shape[0], padding=(k.shape[0] - 1) // 2, bias=bias is not None)
    conv.weight.data = torch.from_numpy(k.transpose(3, 2, 0, 1).copy())
    if bias is not None:
        conv.bias.data = torch.from_numpy(np.asarray(bias).copy())
    return conv


def _torch_bn(torch, params):
    bn = torch.nn.BatchNorm2d(params["scale"].shape[0])
    bn.weight.data = torch.from_numpy(np.asarray(params["scale"]).copy())
    bn.bias.data = torch.from_numpy(np.asarray(params["bias"]).copy())
    return bn.train()


def _randomise_norms(params, key):
    """Non-trivial normalisation scales and shifts, so the comparison sees them."""
    out = dict(params)
    for i, name in enumerate(sorted(params)):
        if name.startswith(("norm", "bn")):
            k1, k2 = jax.random.split(jax.random.fold_in(key, i))
            shape = params[name]["scale"].shape
            out[name] = {"scale": 1 + 0.3 * jax.random.normal(k1, shape), "bias": 0.3 * jax.random.normal(k2, shape)}
    return out


def test_deep_decoder_computes_the_reference_layers():
    # The reference's decodernw: 1x1 conv (no bias) -> nn.Upsample(x2, bilinear) -> ReLU ->
    # BatchNorm2d (training mode), the last layer without upsampling, 1x1 conv, sigmoid.
    torch = pytest.importorskip("torch")
    config = DeepDecoderConfig(num_input_channels=6, num_channels=(5, 4, 7))
    z = jax.random.uniform(jax.random.key(2), (1, 4, 6, 6)) * 0.1
    module = nets.build_generator(config)
    variables = module.init(jax.random.key(0), z)
    params = _randomise_norms(variables["params"], jax.random.key(3))
    out, _ = module.apply({**variables, "params": params}, z, mutable=["batch_stats"])
    seq = []
    for i in range(3):
        seq.append(_torch_conv(torch, params[f"layer{i}"]["kernel"]))
        if i < 2:
            seq.append(torch.nn.Upsample(scale_factor=2, mode="bilinear"))
        seq += [torch.nn.ReLU(), _torch_bn(torch, params[f"norm{i}"])]
    seq += [_torch_conv(torch, params["out_conv"]["kernel"]), torch.nn.Sigmoid()]
    with torch.no_grad():
        ref = torch.nn.Sequential(*seq)(torch.from_numpy(np.asarray(z).transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(np.asarray(out), ref.numpy().transpose(0, 2, 3, 1), atol=1e-5)


def test_convdecoder_computes_deepinvs_layers():
    # deepinv's ConvDecoder: nearest resizes to sizes growing geometrically from in_size to the
    # output (here exact x2 steps), 3x3 conv with bias, ReLU, BatchNorm; then 1x1 conv.
    torch = pytest.importorskip("torch")
    config = ConvDecoderConfig(num_input_channels=5, channels=5, num_layers=4)
    in_size, out_size = (3, 2), (24, 16)
    z = jax.random.normal(jax.random.key(2), (1, *in_size, 5))
    module = nets.build_generator(config)
    assert nets.input_size(config, *out_size) == in_size
    variables = module.init(jax.random.key(0), z)
    params = _randomise_norms(variables["params"], jax.random.key(3))
    out, _ = module.apply({**variables, "params": params}, z, mutable=["batch_stats"])
    scale = [(o / i) ** (1 / (config.num_layers - 1)) for o, i in zip(out_size, in_size)]
    sizes = [tuple(int(math.ceil(s**n * i)) for s, i in zip(scale, in_size)) for n in range(1, config.num_layers - 1)]
    sizes.append(out_size)
    seq = []
    for i in range(config.num_layers):
        if i < config.num_layers - 1:
            seq.append(torch.nn.Upsample(size=sizes[i], mode="nearest"))
        seq += [
            _torch_conv(torch, params[f"block{i}"]["kernel"], params[f"block{i}"]["bias"]),
            torch.nn.ReLU(), _torch_bn(torch, params[f"bn{i}"]),
        ]
    seq.append(_torch_conv(torch, params["out_conv"]["kernel"], params["out_conv"]["bias"]))
    with torch.no_grad():
        ref = torch.nn.Sequential(*seq)(torch.from_numpy(np.asarray(z).transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(np.asarray(out), ref.numpy().transpose(0, 2, 3, 1), atol=1e-5)


def test_attention_gate_is_the_additive_gate():
    x = jax.random.normal(jax.random.key(0), (1, 8, 6, 4))
    g = jax.random.normal(jax.random.key(1), (1, 4, 3, 6))
    gate = AttentionGate(2)
    params = gate.init(jax.random.key(2), x, g)["params"]
    up = lambda a: np.repeat(np.repeat(a, 2, 1), 2, 2)  # noqa: E731
    wx = np.asarray(params["w_x"]["kernel"])[0, 0]
    wg, bg = np.asarray(params["w_g"]["kernel"])[0, 0], np.asarray(params["w_g"]["bias"])
    psi, bpsi = np.asarray(params["psi"]["kernel"])[0, 0], np.asarray(params["psi"]["bias"])
    # With g constant over space the bilinear upsampling is a plain repeat.
    g_const = jnp.broadcast_to(g[:, :1, :1], g.shape)
    q = np.maximum(np.asarray(x) @ wx + up(np.asarray(g_const) @ wg + bg), 0)
    alpha = 1 / (1 + np.exp(-(q @ psi + bpsi)))
    np.testing.assert_allclose(np.asarray(gate.apply({"params": params}, x, g_const)), np.asarray(x) * alpha, atol=1e-5)
    # A gate whose psi bias saturates the sigmoid passes the skip through unchanged.
    opened = jax.tree_util.tree_map(lambda a: a, params)
    opened["psi"]["bias"] = jnp.full((1,), 50.0)
    np.testing.assert_allclose(np.asarray(gate.apply({"params": opened}, x, g)), np.asarray(x), atol=1e-6)


def _clean_and_noisy(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    blob = np.exp(-((x - 0.4) ** 2 + (y - 0.6) ** 2) / 0.05)
    clean = np.clip(np.stack([0.2 + 0.6 * x, 0.3 + 0.5 * blob, 0.8 - 0.5 * y], -1), 0, 1).astype(np.float32)
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25 / 255, clean.shape), 0, 1).astype(np.float32)
    return clean, noisy


def _denoise(config, steps: int, lr: float) -> tuple[float, float, np.ndarray]:
    clean, noisy = _clean_and_noisy()
    fit = dj.FitConfig(num_steps=steps, learning_rate=lr, chunk_size=steps)
    result = dj.fit(jax.random.key(0), config, fit, noisy, ground_truth=clean)
    psnr = float(metrics.psnr(result.output[0, 0], clean))
    return psnr, float(metrics.psnr(noisy, clean)), np.asarray(result.history["loss"]).ravel()


@pytest.mark.parametrize(
    "config",
    [
        DeepDecoderConfig(num_input_channels=32, num_channels=(32,) * 4),  # z: 32 channels at 4x4
        ConvDecoderConfig(num_input_channels=16, channels=16, num_layers=4),  # z: 16 channels at 4x4
    ],
    ids=["deep_decoder", "convdecoder"],
)
def test_decoders_denoise_a_small_image(config):
    # 60 steps on a 32 px image with sigma-25 noise (20.2 dB): measured 31.6 dB (deep decoder),
    # 27.0 dB (convdecoder).
    psnr, noisy_psnr, loss = _denoise(config, 60, 0.01)
    assert np.isfinite(loss).all()
    assert psnr > noisy_psnr + 3.0


def test_attention_unet_fits_a_small_image():
    # Beating the noisy input takes a few hundred steps (the slow test below); 30 steps of the
    # narrowest net halve the loss (measured 0.066 -> 0.031).
    config = AttentionUNetConfig(num_input_channels=4, feature_scale=32, upsample_mode="bilinear", pad="reflection")
    _, _, loss = _denoise(config, 30, 0.005)
    assert np.isfinite(loss).all()
    assert loss[-1] < 0.6 * loss[0]


@pytest.mark.slow
def test_attention_unet_denoises_a_small_image():
    # The original's UNet layout (InstanceNorm), narrow; 300 steps: measured 22.4 dB vs 20.2 dB noisy.
    config = AttentionUNetConfig(num_input_channels=8, feature_scale=16, upsample_mode="bilinear", pad="reflection")
    psnr, noisy_psnr, loss = _denoise(config, 300, 0.005)
    assert np.isfinite(loss).all()
    assert psnr > noisy_psnr + 1.0


def test_tasks_cap_the_learning_rate_for_nets_unstable_at_the_papers():
    from dip_jax.app import tasks

    task = tasks.task("denoising")
    assert task.fit.learning_rate == 0.01
    for name in ("convdecoder", "attention_unet"):
        capped = task.with_net(nets.preset(name))
        assert capped.fit.learning_rate == 0.001 and capped.net == nets.preset(name)
        # An explicit rate (the CLI's --lr comes after the net) still wins; a lower task rate stays.
        assert capped.with_steps(None, 0.005).fit.learning_rate == 0.005
        slow = task.with_steps(None, 1e-4).with_net(nets.preset(name))
        assert slow.fit.learning_rate == 1e-4
    for name in ("default", "deep_decoder", "texture_nets", "dcgan"):
        assert task.with_net(nets.preset(name)).fit.learning_rate == 0.01


def test_the_cli_applies_the_cap_and_an_explicit_lr_overrides_it():
    from dip_jax.app import cli, commands, tasks

    parse = cli.build_parser().parse_args
    args = parse(["denoise", "x.png", "--net", "convdecoder"])
    assert commands.configure(tasks.task("denoising"), args, channels=3).fit.learning_rate == 0.001
    args = parse(["denoise", "x.png", "--net", "convdecoder", "--lr", "0.02"])
    assert commands.configure(tasks.task("denoising"), args, channels=3).fit.learning_rate == 0.02
    assert commands.demo_task(net="attention_unet").fit.learning_rate == 0.001
