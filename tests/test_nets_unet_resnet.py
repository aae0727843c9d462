"""UNet and ResNet generators: golden outputs of the original, counts, init, batching.

Compiling random initialisers dominates CPU time here, so only the init test
calls `init`; the other tests fill `init_shapes` with numpy noise.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dip_jax import convert, nets
from dip_jax.nets import resnet, unet
from dip_jax.nets.resnet import ResNetConfig
from dip_jax.nets.unet import UNetConfig

GOLDEN = Path(__file__).parent / "golden"

UNET_BN = UNetConfig(3, 3, feature_scale=16, upsample_mode="bilinear", norm_layer="BatchNorm2d")
UNET_DECONV_CONCAT = UNetConfig(
    2, 3, feature_scale=16, upsample_mode="deconv", norm_layer="InstanceNorm2d", concat_x=True
)
RESNET_SMALL = ResNetConfig(2, 3, 2, 8)


def _apply(config, variables, z):
    out, _ = nets.build_generator(config).apply(variables, z, mutable=["batch_stats"])
    return out


def _random_variables(config, seed: int, count: int | None = None) -> dict:
    """Variables of the right shapes, uniform in +-0.3; stacked along a new axis if `count`."""
    rng = np.random.default_rng(seed)
    lead = () if count is None else (count,)
    return jax.tree_util.tree_map(
        lambda s: jnp.asarray(rng.uniform(-0.3, 0.3, lead + s.shape), jnp.float32),
        nets.init_shapes(config),
    )


@pytest.mark.parametrize("name", ["unet_bilinear_bn", "unet_library", "resnet_library"])
def test_matches_original_output(name):
    # unet_bilinear_bn: bilinear up, BatchNorm; unet_library: transposed conv, InstanceNorm,
    # more_layers=1; resnet_library: residual blocks, reflection padding. With 2x2 average
    # pooling in the encoder instead of max pooling the UNets miss by ~2e-3.
    config, state_dict, extras = convert.load_golden(str(GOLDEN / f"{name}.npz"))
    variables = convert.from_torch_state_dict(config, state_dict)
    out = jax.jit(lambda v, z: _apply(config, v, z))(variables, jnp.asarray(extras["input"]))
    assert out.shape == extras["output"].shape
    np.testing.assert_allclose(np.asarray(out), extras["output"], rtol=0, atol=1e-4)
    assert nets.count_params(config) == int(extras["num_params"])


def test_golden_configs_are_parsed_from_original_arguments():
    config, _, _ = convert.load_golden(str(GOLDEN / "unet_library.npz"))
    assert config == UNetConfig(
        num_input_channels=1, num_output_channels=3, feature_scale=8, more_layers=1,
        upsample_mode="deconv", pad="zero", norm_layer="InstanceNorm2d",
    )
    assert config.size_multiple == 32
    config, _, _ = convert.load_golden(str(GOLDEN / "resnet_library.npz"))
    assert config == ResNetConfig(1, 3, 8, 32)
    assert config.size_multiple == 1


# Counted with a line-by-line PyTorch transcription of the original models/ (not shipped),
# whose outputs dip_jax matched for these configs (concat_x, nearest, reflection, no norm,
# no bias, more_layers=2, InstanceNorm ResNet, no residual).
@pytest.mark.parametrize(
    "config, expected",
    [
        (UNetConfig(2, 3, 16, 0, True, "nearest", "reflection", "BatchNorm2d", False, True), 130335),
        (UNetConfig(3, 1, 16, 2, False, "deconv", "zero", None, True, False), 653836),
        (UNetConfig(2, 3, 16, 1, True, "bilinear", "reflection", "InstanceNorm2d"), 347959),
        (ResNetConfig(3, 3, 2, 8, need_residual=False, act_fun="Swish", norm_layer="InstanceNorm2d", pad="zero"), 3411),
        (ResNetConfig(3, 1, 3, 8, act_fun="ELU"), 4449),
    ],
)
def test_param_counts_of_other_variants(config, expected):
    assert nets.count_params(config) == expected


def test_init_is_pytorch_like():
    # rbg keys compile several times faster on CPU than threefry; init does not depend on the impl.
    # The UNet is made of layers.Conv (as here) and TransposedConv (next test) only.
    config = ResNetConfig(2, 3, 2, 16)
    variables = nets.build_generator(config).init(jax.random.key(0, impl="rbg"), jnp.zeros((1, 8, 8, 2)))
    convs = norms = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables["params"])[0]:
        names = [p.key for p in path]
        module = variables["params"][names[0]]
        leaf = np.asarray(leaf)
        if "kernel" not in module:  # a norm: scale 1, offset 0
            np.testing.assert_array_equal(leaf, 1.0 if names[-1] == "scale" else 0.0)
            norms += 1
            continue
        kh, kw, cin, _ = module["kernel"].shape
        bound = 1.0 / math.sqrt(cin * kh * kw)
        assert np.abs(leaf).max() <= bound, names
        if leaf.size >= 64:
            assert np.abs(leaf).max() > 0.8 * bound, names
            assert abs(leaf.mean()) < 0.2 * bound, names
        convs += names[-1] == "kernel"
    assert convs == 7 and norms == 10
    assert "bias" not in variables["params"]["block0_conv1"] and "bias" in variables["params"]["tail_conv"]


def test_transposed_conv_init_uses_pytorch_fan_in():
    # PyTorch's fan_in for a ConvTranspose2d weight (in, out, k, k) is weight.size(1) * k * k.
    for cin, cout in ((16, 8), (8, 16)):
        x = jnp.zeros((1, 3, 3, cin))
        out, variables = unet.TransposedConv(cout).init_with_output(jax.random.key(cin, impl="rbg"), x)
        assert out.shape == (1, 6, 6, cout)
        bound = 1.0 / math.sqrt(cout * 16)
        kernel = np.asarray(variables["params"]["kernel"])
        bias = np.asarray(variables["params"]["bias"])
        assert kernel.shape == (4, 4, cin, cout)
        assert 0.95 * bound < np.abs(kernel).max() <= bound
        assert np.abs(bias).max() <= bound


@pytest.mark.parametrize("config, size", [(UNET_DECONV_CONCAT, 16), (RESNET_SMALL, 8)])
def test_eager_jit_vmap_over_parameter_sets(config, size):
    z = jax.random.uniform(jax.random.key(1), (1, size, size, config.num_input_channels)) * 0.1
    stacked = _random_variables(config, seed=2, count=2)
    apply = lambda v, z: _apply(config, v, z)  # noqa: E731
    batched = jax.jit(jax.vmap(apply, in_axes=(0, None)))(stacked, z)
    jitted = jax.jit(apply)
    for i in range(2):
        variables = jax.tree_util.tree_map(lambda a, i=i: a[i], stacked)
        eager = apply(variables, z)
        assert eager.shape == (1, size, size, config.num_output_channels)
        assert float(eager.min()) > 0 and float(eager.max()) < 1
        np.testing.assert_allclose(np.asarray(jitted(variables, z)), np.asarray(eager), atol=1e-5)
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(eager), atol=1e-5)
    assert np.abs(np.asarray(batched[0] - batched[1])).max() > 1e-3


@pytest.mark.parametrize("config, size", [(UNET_BN, 16), (RESNET_SMALL, 8)])
def test_batchnorm_statistics_stay_per_image_under_vmap(config, size):
    zs = jax.random.uniform(jax.random.key(3), (2, 1, size, size, config.num_input_channels)) * 0.1
    zs = zs.at[1].multiply(5.0)
    variables = _random_variables(config, seed=4)
    # Eager application is covered above; jit keeps this test cheap.
    apply = jax.jit(lambda z: _apply(config, variables, z))
    batched = jax.jit(jax.vmap(apply))(zs)
    for i in range(2):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(apply(zs[i])), atol=1e-5)
    if isinstance(config, ResNetConfig):  # one more compile is enough to show it
        # Sharing the statistics (one N=2 batch) is observably different: the check above can fail.
        shared = apply(zs[:, 0])
        assert np.abs(np.asarray(shared) - np.asarray(batched[:, 0])).max() > 1e-4


def test_batchnorm_running_stats_are_updated():
    variables = _random_variables(RESNET_SMALL, seed=5)
    z = jax.random.uniform(jax.random.key(6), (1, 6, 6, 2))
    _, updates = nets.build_generator(RESNET_SMALL).apply(variables, z, mutable=["batch_stats"])
    assert set(updates["batch_stats"]) == {f"block{i}_norm{j}" for i in (0, 1) for j in (1, 2)} | {"tail_norm"}
    before = np.asarray(variables["batch_stats"]["tail_norm"]["mean"])
    assert np.abs(np.asarray(updates["batch_stats"]["tail_norm"]["mean"]) - before).max() > 0


def test_unet_beyond_the_original_more_layers_and_cropped_skips():
    # The original crashes for more_layers > 1; dip_jax runs it.
    config = UNetConfig(1, 2, feature_scale=32, more_layers=2, upsample_mode="nearest", norm_layer=None)
    assert config.size_multiple == 64
    variables = _random_variables(config, seed=7)
    out = jax.eval_shape(lambda z: _apply(config, variables, z), jax.ShapeDtypeStruct((1, 64, 64, 1), jnp.float32))
    assert out.shape == (1, 64, 64, 2)
    # Sizes that do not halve evenly lose pixels in the pooling, and the skips are
    # centre-cropped, as in the original.
    config = UNetConfig(1, 1, feature_scale=32, upsample_mode="bilinear", norm_layer=None)
    variables = _random_variables(config, seed=8)
    out = jax.eval_shape(lambda z: _apply(config, variables, z), jax.ShapeDtypeStruct((1, 48, 40, 1), jnp.float32))
    assert out.shape == (1, 48, 32, 1)
    with pytest.raises(ValueError, match="multiples of 16"):
        nets.check_input_size(config, 48, 40)


def test_norm_layer_spellings():
    assert unet.unet_config(norm_layer="torch.nn.InstanceNorm2d").norm_layer == "InstanceNorm2d"
    assert unet.unet_config(norm_layer="none").norm_layer is None
    assert resnet.resnet_config(norm_layer="nn.BatchNorm2d").norm_layer == "BatchNorm2d"
    assert convert.config_from_original({"kind": "resnet", "num_blocks": 2}) == ResNetConfig(num_blocks=2)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: UNetConfig(upsample_mode="bicubic"), "upsample_mode"),
        (lambda: UNetConfig(pad="replication"), "pad"),
        (lambda: UNetConfig(norm_layer="GroupNorm"), "norm_layer"),
        (lambda: UNetConfig(feature_scale=128), "feature_scale"),
        (lambda: UNetConfig(more_layers=-1), "more_layers"),
        (lambda: UNetConfig(num_input_channels=4, feature_scale=16, concat_x=True), "concat_x"),
        (lambda: unet.unet_config(filters=3), "unknown UNet"),
        (lambda: ResNetConfig(norm_layer=None), "norm_layer"),
        (lambda: ResNetConfig(act_fun="relu6"), "act_fun"),
        (lambda: ResNetConfig(num_channels=0), "num_channels"),
        (lambda: ResNetConfig(num_blocks=2.5), "num_blocks"),
        (lambda: resnet.resnet_config(factor=2), "unknown ResNet"),
    ],
)
def test_bad_arguments_raise_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_wrong_input_channels_raise_value_error():
    for config in (UNET_BN, RESNET_SMALL):
        with pytest.raises(ValueError, match="input_depth"):
            nets.build_generator(config).init(jax.random.key(0), jnp.zeros((1, 16, 16, 5)))
