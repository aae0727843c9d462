"""Joint denoising + super-resolution (issue 15, item 6): the task entry, the noisy measurement, the
`super-resolve --noise-sigma` path, and composed operators (downsample, then mask) from the library."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dip_jax as dj
from dip_jax import io, metrics, nets, operators
from dip_jax.app import cli, observations, tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_noisy_sr_tasks_are_the_sr_settings_with_the_denoising_averaging():
    for noisy, plain in (("sr_x4_noisy", "sr_x4"), ("sr_x8_noisy", "sr_x8")):
        t, base = tasks.task(noisy), tasks.task(plain)
        assert t.fit.num_steps == base.fit.num_steps and t.fit.learning_rate == base.fit.learning_rate
        assert t.fit.reg_noise_std == base.fit.reg_noise_std
        assert t.fit.ema_decay == tasks.task("denoising").fit.ema_decay and t.fit.backtrack
        assert t.operator.factor == base.operator.factor and t.operator.noise_sigma == 25.0
        assert not t.in_paper


def test_the_noisy_measurement_adds_noise_to_the_low_resolution_image_and_upsamples_that():
    clean = observations.centre_crop(io.load_image(os.path.join(ROOT, "data", "astronaut_128.png")).image, 64, 64)
    task = tasks.task("sr_x4_noisy")
    sample = observations.Sample(name="a", observation=None)
    task.operator.observe(task, sample, clean, jax.random.key(0))
    hr, lr, clean_baselines = observations.super_resolution_pair(clean, 4)
    np.testing.assert_array_equal(sample.ground_truth, hr)
    assert sample.observation.shape == lr.shape == (16, 16, 3)
    residual = sample.observation - lr
    assert 15 / 255 < residual.std() < 30 / 255  # sigma 25, a little less where clipping bites
    bicubic = observations.upsampling_baselines(sample.observation, (64, 64))["bicubic"]
    np.testing.assert_array_equal(sample.baselines["bicubic"], bicubic)
    assert float(metrics.psnr(bicubic, hr)) < float(metrics.psnr(clean_baselines["bicubic"], hr))
    # The noise-free measurement is the paper's, untouched.
    again = observations.Sample(name="a", observation=None)
    tasks.task("sr_x4").operator.observe(tasks.task("sr_x4"), again, clean, jax.random.key(0))
    np.testing.assert_array_equal(again.observation, lr)


def test_compose_downsample_then_mask_fits_from_the_library():
    """SR + inpainting in one operator: `Compose((Downsample, Mask))`, per-image args as a tuple."""
    rng = np.random.default_rng(0)
    hr = rng.random((1, 4, 4, 3)).repeat(8, 1).repeat(8, 2).astype(np.float32)  # smooth enough for a prior
    down = operators.Downsample(4, "lanczos2")
    op = operators.Compose((down, operators.Mask()))
    kernel = np.asarray(down.make_args(), np.float32)
    mask = (rng.random((1, 8, 8, 1)) > 0.3).astype(np.float32)
    args = (kernel, mask[0])
    observation = np.asarray(op.apply(jnp.asarray(hr), args))
    assert observation.shape == (1, 8, 8, 3) and np.all(observation[0][mask[0, ..., 0] == 0] == 0)
    net = nets.narrow(nets.preset("default"), width=8, scales=3)
    config = dj.FitConfig(num_steps=40, chunk_size=40, learning_rate=0.01)
    result = dj.fit(jax.random.key(0), net, config, observation, op=op,
                    op_args=(kernel[None], mask), ground_truth=hr)
    assert result.output.shape == (1, 1, 32, 32, 3)  # the net makes the high-resolution image
    loss = np.asarray(result.history["loss"])[:, 0, 0]
    assert loss[-1] < 0.5 * loss[0], loss[[0, -1]]


def test_super_resolve_noise_sigma_simulates_and_switches_to_the_joint_task(tmp_path, capsys, monkeypatch):
    from dip_jax.app import fitting

    seen = {}

    def fake_fit(key, task, samples, *, restarts=1, **options):
        seen["task"], seen["sample"] = task, samples[0]
        s = samples[0]
        up = s.baselines["bicubic"] if s.baselines else s.observation.repeat(4, 0).repeat(4, 1)
        return [fitting.SampleResult(restored=up, per_restart=up[None], outputs=up[None],
                                     history={"loss": np.zeros((1, 1))}, seconds=0.0, images_in_call=1,
                                     num_backtracks=np.zeros(1))]

    monkeypatch.setattr(fitting, "fit_samples", fake_fit)
    monkeypatch.setenv("DIP_JAX_COMPILE_CACHE", "0")
    image = os.path.join(ROOT, "data", "chelsea_64.png")
    assert cli.main(["super-resolve", image, "--noise-sigma", "25", "--simulate", "--out", str(tmp_path / "u.png"),
                     "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 0
    task, sample = seen["task"], seen["sample"]
    assert task.name == "sr_x4_noisy" and task.fit.ema_decay == 0.99 and task.operator.noise_sigma == 25.0
    assert sample.observation.shape == (16, 16, 3)
    found = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert found["psnr"] == pytest.approx(found["baselines"]["bicubic"]["psnr"])  # the fake returned bicubic
    # Without --simulate the image is the noisy observation itself: nothing is added.
    assert cli.main(["super-resolve", image, "--noise-sigma", "25", "--out", str(tmp_path / "v.png"),
                     "--no-progress"]) == 0
    task, sample = seen["task"], seen["sample"]
    assert task.name == "sr_x4_noisy" and task.operator.noise_sigma is None
    np.testing.assert_array_equal(sample.observation, io.load_image(image).image)


@pytest.mark.slow
def test_quick_noisy_sr_beats_bicubic_of_the_noisy_image(tmp_path):
    """The quick experiment (128 px crop, x4: a 32 px observation, sigma 25, 200 steps of the narrow net)."""
    out = tmp_path / "runs"
    assert cli.main(["experiment", "sr_noisy", "--quick", "--data", "none", "--out", str(out), "--no-progress"]) == 0
    (metrics_file,) = (out / "sr_x4_noisy").glob("*/metrics.json")
    found = json.loads(metrics_file.read_text())
    assert found["psnr"] > found["baselines"]["bicubic"]["psnr"] + 0.3, found
