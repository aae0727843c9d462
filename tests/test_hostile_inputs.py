"""Hostile inputs at the engine: each works or stops with one clear ValueError before any allocation.

File decoding itself (truncated, empty, non-image, zero-sized, enormous,
16-bit, palette, LA, CMYK, EXIF) is tested in test_io.py; here the decoded
arrays and the user's arrays meet the engine.
"""

import dataclasses

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

import dip_jax as dj
from dip_jax import io, nets, operators
from dip_jax.runtime import memory
from dip_jax.fit import api
from dip_jax.fit import problem as problem_lib

# The same tiny problem as the other reliability tests: one compiled init.
TINY = nets.narrow(nets.preset("default", num_input_channels=4), width=8, scales=3)
CFG = dj.FitConfig(num_steps=7, learning_rate=0.01, reg_noise_std=1 / 30, chunk_size=2, ema_decay=0.9,
                   backtrack=True, batch_mode="map")
KEYS = jax.random.split(jax.random.key(3), 3)


def _images(n=1, size=16, channels=3):
    return np.random.default_rng(0).uniform(0, 1, (n, size, size, channels)).astype(np.float32)


class _Allocated(Exception):
    pass


@pytest.fixture
def no_allocation(monkeypatch):
    """Makes any attempt to build the fit's state fail loudly: validation must come first."""

    def refuse(*args, **kwargs):
        raise _Allocated("the state was allocated")

    monkeypatch.setattr(api, "_init_states", refuse)


def _prepare(observation, **kwargs):
    return dj.prepare(jax.random.key(0), TINY, CFG, observation, **kwargs)


# --------------------------------------------------------------------------- files through to the engine


def _hostile_files(tmp_path):
    rng = np.random.default_rng(1)
    sixteen = tmp_path / "rgb16.png"
    io.save_image(sixteen, rng.uniform(0, 1, (16, 16, 3)).astype(np.float32), bit_depth=16)
    palette = tmp_path / "palette.png"
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).convert("P").save(palette)
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(rng.integers(0, 255, (16, 16, 4), dtype=np.uint8), mode="CMYK").save(cmyk)
    return [sixteen, palette, cmyk]


def test_odd_but_valid_files_become_valid_engine_inputs(tmp_path):
    loaded = [io.load_image(p) for p in _hostile_files(tmp_path)]
    batch = io.to_batch([x.image for x in loaded])
    assert batch.dtype == np.float32 and batch.shape == (3, 16, 16, 3)
    problem, state, data = dj.prepare(KEYS, TINY, CFG, batch, ground_truth=batch)
    assert data.target.shape == (3, 1, 16, 16, 3)
    assert int(state.step.shape[0]) == 3


def test_grey_with_alpha_against_a_colour_net_names_the_channels(tmp_path, no_allocation):
    path = tmp_path / "la.png"
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(np.stack([grey, 255 - grey], axis=-1), mode="LA").save(path)
    loaded = io.load_image(path)
    with pytest.raises(ValueError, match="channels"):
        _prepare(loaded.image)


def test_a_truncated_file_stops_before_the_engine(tmp_path):
    path = tmp_path / "cut.png"
    io.save_image(path, _images()[0])
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(io.ImageIOError, match="cut.png"):
        io.load_image(path)


# --------------------------------------------------------------------------- arrays


@pytest.mark.parametrize(
    "observation, message",
    [
        (np.zeros((0, 16, 16, 3), np.float32), "empty"),
        (np.zeros((1, 0, 0, 3), np.float32), "empty"),
        (np.zeros((16, 16), np.float32), r"\(H, W, C\)"),
        (np.zeros((1, 1, 16, 16, 3), np.float32), r"\(H, W, C\)"),
        (np.full((16, 16, 3), 200, np.uint8), "integer array .* / 255"),
        (np.full((16, 16, 3), 200.0, np.float32), r"values span \[200, 200\].* / 255"),
        (np.full((16, 16, 3), "x"), "dtype <U1"),
        (np.zeros((16, 16, 3), np.complex64), "complex64"),
        (np.full((16, 16, 3), np.inf, np.float32), "infinite"),
    ],
)
def test_bad_observations_are_named(observation, message, no_allocation):
    with pytest.raises(ValueError, match=message):
        _prepare(observation)


def test_bool_and_float16_observations_work(no_allocation):
    for observation in (np.ones((16, 16, 3), bool), np.ones((16, 16, 3), np.float16)):
        with pytest.raises(_Allocated):
            _prepare(observation)


@pytest.mark.parametrize(
    "mask, message",
    [
        (np.ones((1, 8, 8, 1), np.float32), "mask is 8x8 but the image is 16x16"),
        (np.ones((1, 16, 16, 2), np.float32), "2 channels"),
        (np.full((1, 16, 16, 1), 255, np.uint8), r"\[0, 1\]"),
        (np.full((1, 16, 16, 1), np.nan, np.float32), "NaN"),
        (np.ones((2, 16, 16, 1), np.float32), "leading axis of 1"),
        ([[1.0, 0.0]], "must be arrays"),
        (np.ones((1, 16, 16), np.float32), r"\(N, H, W, C\)"),
    ],
)
def test_bad_masks_are_named(mask, message, no_allocation):
    with pytest.raises(ValueError, match=message):
        _prepare(_images(), op=operators.Mask(), op_args=mask)


def test_bool_and_shared_channel_masks_work(no_allocation):
    for mask in (np.ones((1, 16, 16, 1), bool), np.ones((1, 16, 16, 3), np.float32)):
        with pytest.raises(_Allocated):
            _prepare(_images(), op=operators.Mask(), op_args=mask)


def test_per_image_kernels_are_validated_as_kernels(no_allocation):
    # Per-image 2-D kernels (Blur, Downsample) and per-image masks both validate per item.
    kernels = np.stack([np.full((3, 3), 1 / 9, np.float32)] * 2)
    with pytest.raises(_Allocated):
        _prepare(_images(2), op=operators.Blur(), op_args=kernels)
    with pytest.raises(ValueError, match="bigger than the 16x16 image"):
        _prepare(_images(2), op=operators.Blur(), op_args=np.ones((2, 17, 17), np.float32))


_DTYPES = st.sampled_from([np.float32, np.float64, np.float16, np.uint8, np.int64, np.bool_, np.complex64])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.lists(st.integers(0, 24), min_size=0, max_size=5),
    dtype=_DTYPES,
    fill=st.sampled_from([0.0, 0.5, 1.0, -3.0, 300.0, np.nan, np.inf]),
)
def test_property_any_observation_is_accepted_or_one_value_error(shape, dtype, fill, no_allocation):
    with np.errstate(invalid="ignore", over="ignore"):
        observation = np.full(shape, fill).astype(dtype)
    try:
        _prepare(observation)
    except _Allocated:
        pass  # accepted: validation let it through to the allocation
    except ValueError as err:
        assert str(err) and "\n" not in str(err)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.lists(st.integers(0, 20), min_size=0, max_size=5),
    dtype=_DTYPES,
    fill=st.sampled_from([0.0, 1.0, 2.0, np.nan]),
)
def test_property_any_mask_is_accepted_or_one_value_error(shape, dtype, fill, no_allocation):
    with np.errstate(invalid="ignore", over="ignore"):
        mask = np.full(shape, fill).astype(dtype)
    try:
        _prepare(_images(), op=operators.Mask(), op_args=mask)
    except _Allocated:
        pass
    except ValueError as err:
        assert str(err) and "\n" not in str(err)


# --------------------------------------------------------------------------- memory


def test_a_fit_that_does_not_fit_in_memory_is_refused_before_allocating(monkeypatch, no_allocation):
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 64 * 2**20)
    with pytest.raises(ValueError) as err:
        dj.prepare(jax.random.key(0), TINY, CFG, _images(2), restarts=4)
    message = str(err.value)
    for hint in ("only 64 MiB is free", "smaller image", "tiles", "2 image(s) x 4 restart(s)", "check_memory=False"):
        assert hint in message, (hint, message)
    with pytest.raises(_Allocated):
        dj.prepare(jax.random.key(0), TINY, dataclasses.replace(CFG, check_memory=False), _images(2), restarts=4)


def test_an_enormous_image_exceeds_this_machine():
    net = nets.preset("default")
    estimate = memory.estimate_fit(net, dj.FitConfig(), (16384, 16384), 1)
    available = memory.available_bytes()
    assert available is not None and 0 < available
    assert estimate.total_bytes > available
    with pytest.raises(ValueError, match="GiB of activations"):
        memory.check_fits(estimate, jax.local_devices()[0])


def test_memory_estimate_scales_with_items_and_mode():
    one = memory.estimate_fit(TINY, CFG, (64, 64), 1, batch_mode="map")
    eight_map = memory.estimate_fit(TINY, CFG, (64, 64), 8, batch_mode="map")
    eight_vmap = memory.estimate_fit(TINY, CFG, (64, 64), 8, batch_mode="vmap")
    bigger = memory.estimate_fit(TINY, CFG, (128, 128), 1, batch_mode="map")
    assert eight_map.activation_bytes == one.activation_bytes  # 'map' runs one item at a time
    assert eight_vmap.activation_bytes == 8 * one.activation_bytes
    assert eight_map.state_bytes > 4 * one.state_bytes
    assert 3.5 * one.activation_bytes < bigger.activation_bytes <= 4 * one.activation_bytes
    sharded = memory.estimate_fit(TINY, CFG, (64, 64), 8, batch_mode="vmap", num_devices=4)
    assert sharded.items_per_device == 2 and sharded.activation_bytes == 2 * one.activation_bytes
    with pytest.raises(ValueError, match="batch_mode='map'"):
        memory.check_fits(eight_vmap, available=eight_vmap.total_bytes)


@pytest.mark.slow
def test_memory_estimate_covers_what_xla_allocates():
    """Calibration: the estimate is above XLA's own count for the compiled step, within 2x."""
    net = nets.preset("default")
    cfg = dj.FitConfig(chunk_size=1, batch_mode="map")
    y = _images(1, size=128)
    problem, state, data = dj.prepare(jax.random.key(0), net, cfg, y)
    analysis = problem_lib.chunk_fn(problem).lower(state, data, None, np.int32(1)).compile().memory_analysis()
    xla = analysis.temp_size_in_bytes + analysis.argument_size_in_bytes + analysis.output_size_in_bytes
    estimate = memory.estimate_fit(net, cfg, (128, 128), 1, tx=problem.tx)
    assert xla < estimate.total_bytes - estimate.overhead_bytes < 2 * xla
