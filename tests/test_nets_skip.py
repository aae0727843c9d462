"""Parity of the skip generator with the original (golden fixtures), counts, init, batching."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dip_jax import convert, inputs, nets
from conftest import GOLDEN

SKIP_FIXTURES = sorted(p.name for p in GOLDEN.glob("skip_*.npz"))


def _apply(cfg, variables, z):
    return jax.jit(lambda v, z: nets.build_generator(cfg).apply(v, z, mutable=["batch_stats"])[0])(variables, z)


def test_all_skip_fixtures_are_present():
    assert len(SKIP_FIXTURES) == 7


@pytest.mark.parametrize("name", SKIP_FIXTURES)
def test_skip_matches_original_output(name):
    cfg, sd, extras = convert.load_golden(GOLDEN / name)
    variables = convert.from_torch_state_dict(cfg, sd)
    out = _apply(cfg, variables, jnp.asarray(extras["input"]))
    assert out.shape == extras["output"].shape
    np.testing.assert_allclose(np.asarray(out), extras["output"], atol=1e-4, rtol=0)
    assert nets.count_params(cfg) == int(extras["num_params"])


def test_full_size_param_counts():
    counts = json.loads((GOLDEN / "param_counts.json").read_text())
    assert nets.count_params(nets.preset("default")) == counts["skip_default_32in"] == 2_217_831
    assert nets.count_params(nets.preset("default", num_output_channels=1)) == counts["skip_default_32in_1out"]
    assert nets.count_params(nets.preset("text_inpainting")) == counts["skip_text_inpainting_32in"]
    assert nets.count_params(nets.preset("jpeg")) == counts["skip_jpeg_snail_3in"]


def test_lanczos_downsampler_counted_like_original_but_fixed_by_default():
    cfg, _, extras = convert.load_golden(GOLDEN / "skip_swish_lanczos2.npz")
    fixed = nets.count_params(cfg, convention="dip_jax")
    assert fixed < int(extras["num_params"]) == nets.count_params(cfg)
    trainable = nets.replace(cfg, train_lanczos=True)
    assert nets.count_params(trainable, convention="dip_jax") == int(extras["num_params"])


def test_trainable_lanczos_conversion_matches_original():
    cfg, sd, extras = convert.load_golden(GOLDEN / "skip_swish_lanczos2.npz")
    cfg = nets.replace(cfg, train_lanczos=True)
    variables = convert.from_torch_state_dict(cfg, sd)
    out = _apply(cfg, variables, jnp.asarray(extras["input"]))
    np.testing.assert_allclose(np.asarray(out), extras["output"], atol=1e-4, rtol=0)


def test_init_follows_pytorch_defaults():
    cfg = nets.narrow(nets.preset("default", num_input_channels=4), width=8, scales=2)
    v = nets.build_generator(cfg).init(jax.random.key(0), jnp.zeros((1, 8, 8, 4)))
    conv = v["params"]["s0_down"]["conv"]
    bound = 1 / math.sqrt(4 * 3 * 3)
    for leaf in (conv["kernel"], conv["bias"]):
        assert float(jnp.max(jnp.abs(leaf))) <= bound
        assert float(jnp.max(jnp.abs(leaf))) > 0.8 * bound
    bn = v["params"]["s0_down_bn"]
    np.testing.assert_array_equal(bn["scale"], 1.0)
    np.testing.assert_array_equal(bn["bias"], 0.0)


def test_meshgrid_matches_original():
    want = np.load(GOLDEN / "inputs.npz")["meshgrid_4x6"]
    np.testing.assert_allclose(np.asarray(inputs.meshgrid((4, 6))), want, atol=1e-7)


def test_noise_input_is_uniform_times_tenth_and_keyed():
    z = inputs.noise(jax.random.key(1), 32, (16, 16))
    assert z.shape == (1, 16, 16, 32) and z.dtype == jnp.float32
    assert 0.0 <= float(z.min()) and float(z.max()) < 0.1
    np.testing.assert_array_equal(z, inputs.noise(jax.random.key(1), 32, (16, 16)))
    assert not np.array_equal(z, inputs.noise(jax.random.key(2), 32, (16, 16)))
    zn = inputs.noise(jax.random.key(1), 8, (16, 16), noise_type="n")
    assert float(zn.min()) < 0


def test_eager_jit_vmap_agree_and_batchnorm_is_per_image():
    cfg = nets.narrow(nets.preset("default", num_input_channels=4), width=8, scales=3)
    module = nets.build_generator(cfg)
    keys = jax.random.split(jax.random.key(0), 2)
    zs = jax.vmap(lambda k: inputs.noise(k, 4, (16, 16)))(keys)
    vs = jax.vmap(module.init)(keys, zs)
    apply = lambda v, z: module.apply(v, z, mutable=["batch_stats"])[0]  # noqa: E731
    batched = jax.jit(jax.vmap(apply))(vs, zs)
    for i in range(2):
        vi = jax.tree_util.tree_map(lambda a: a[i], vs)
        eager = apply(vi, zs[i])
        jitted = jax.jit(apply)(vi, zs[i])
        np.testing.assert_allclose(eager, jitted, atol=1e-6)
        np.testing.assert_allclose(batched[i], eager, atol=1e-5)
    # Two images in one N=2 call would share statistics: that is why we vmap.
    shared = apply(jax.tree_util.tree_map(lambda a: a[0], vs), jnp.concatenate([zs[0], zs[1]]))
    assert not np.allclose(shared[0], batched[0], atol=1e-4)


@pytest.mark.parametrize("name", sorted(nets.PRESETS))
def test_every_preset_builds(name):
    cfg = nets.preset(name)
    assert nets.count_params(cfg) > 0
    shapes = nets.init_shapes(cfg)
    assert "params" in shapes


def test_input_size_errors():
    cfg = nets.preset("default")
    with pytest.raises(ValueError, match="at least 32x32"):
        nets.check_input_size(cfg, 16, 64)
    with pytest.raises(ValueError, match="multiples of 32"):
        nets.check_input_size(cfg, 48, 64)
    nets.check_input_size(cfg, 64, 96)


def test_bad_config_errors():
    with pytest.raises(ValueError, match="equal length"):
        nets.SkipConfig(num_channels_down=(8, 8), num_channels_up=(8,), num_channels_skip=(4, 4))
    with pytest.raises(ValueError, match="upsample_mode"):
        nets.SkipConfig(upsample_mode="bicubic")
    with pytest.raises(ValueError, match="5 scales"):
        nets.SkipConfig(filter_size_down=(3, 3)).filter_sizes_down
    with pytest.raises(ValueError, match="unknown net preset"):
        nets.preset("nope")
    with pytest.raises(ValueError, match="input channels"):
        cfg = nets.narrow(nets.preset("default", num_input_channels=4), width=8, scales=2)
        nets.build_generator(cfg).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


def test_converter_rejects_mismatched_config():
    cfg, sd, _ = convert.load_golden(GOLDEN / "skip_default_small.npz")
    wrong = nets.replace(cfg, num_channels_skip=(0, 4, 4, 4, 4))
    with pytest.raises(ValueError, match="weight-carrying modules|shape"):
        convert.from_torch_state_dict(wrong, sd)
    wider = nets.replace(cfg, num_channels_down=(32, 16, 32, 32, 32))
    with pytest.raises(ValueError, match="shape"):
        convert.from_torch_state_dict(wider, sd)


def test_converter_reads_npz_state_dict(tmp_path):
    cfg, sd, extras = convert.load_golden(GOLDEN / "skip_elu_max_nosig.npz")
    path = tmp_path / "sd.npz"
    np.savez(path, **sd)
    variables = convert.from_torch_state_dict(cfg, convert.load_torch_file(str(path)))
    out = _apply(cfg, variables, jnp.asarray(extras["input"]))
    np.testing.assert_allclose(np.asarray(out), extras["output"], atol=1e-4)


def test_converter_reads_pth_when_torch_is_installed(tmp_path):
    torch = pytest.importorskip("torch")
    cfg, sd, extras = convert.load_golden(GOLDEN / "skip_elu_max_nosig.npz")
    path = tmp_path / "net.pth"
    state = {k: torch.from_numpy(v) for k, v in sd.items()}
    state["1.0.2.num_batches_tracked"] = torch.tensor(1)  # .pth files carry these; they are skipped
    torch.save(state, path)
    variables = convert.from_torch_state_dict(cfg, convert.load_torch_file(str(path)))
    out = _apply(cfg, variables, jnp.asarray(extras["input"]))
    np.testing.assert_allclose(np.asarray(out), extras["output"], atol=1e-4)
