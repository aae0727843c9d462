"""The paper's tasks (dip_jax.app.tasks), the experiment pipeline (dip_jax.app) and experiments/*.py.

Quick-mode experiments run through experiments/run_all.py in subprocesses,
one per group of experiments (one test each, so pytest-xdist runs them side
by side), with the stand-in images (DIP_DATA=none, so ../shared is not
needed) and a session-wide XLA compilation cache shared with test_cli.py.
Compiling each net dominates on a CPU (15-40 s per experiment on 2 cores), so
the default run takes one small group (denoising and text inpainting); the
other groups run with -m slow, which CI runs after the default suite.
Every task's inputs are prepared (no fitting) in fast tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from dip_jax import io, nets, operators
from dip_jax.app import observations, runs, tasks

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"

# run_all entry -> the task folders it writes, in groups (one subprocess each,
# so pytest-xdist spreads them over its workers): a small default group, and
# slow groups of about equal cost.
EXPERIMENT_GROUPS = {
    # The default run: identity and mask operators, output averaging,
    # backtracking, the report (CI runs the slow groups too, see .ci/run).
    "default": {
        "denoising:sigma25": ("denoising",),
        "text_inpainting": ("text_inpainting",),
    },
    # The rest (-m slow): about 2 minutes of compiling per group on 2 cores.
    "sr_holes": {
        "super_resolution:x4": ("sr_x4",),
        "super_resolution:x8": ("sr_x8",),
        "large_hole:vase": ("large_hole_vase",),
        "large_hole:library": ("large_hole_library",),
        "large_hole:library_resnet": ("large_hole_library_resnet",),
    },
    "classifiers_denoising": {
        "feature_inversion": ("feature_inversion",),
        "activation_maximization:conv4": ("activation_maximization",),
        "denoising:sigma50": ("denoising_sigma50",),
        "denoising:real": ("denoising_real",),
    },
    "restoration_jpeg_flash": {
        "restoration:50": ("restoration_50",),
        "restoration:98": ("restoration_98",),
        "jpeg": ("jpeg",),
        "flash_no_flash": ("flash_no_flash",),
    },
    "unet_fc8_prior": {
        "sr_prior:all": ("sr_prior_none", "sr_prior_tv", "sr_prior_deep"),
        "large_hole:library_unet": ("large_hole_library_unet",),
        "activation_maximization:fc8": ("activation_maximization_fc8",),
    },
}
DEFAULT_GROUP = "default"
ALL_ENTRIES = {entry: folders for group in EXPERIMENT_GROUPS.values() for entry, folders in group.items()}
# Super-resolution with a prior beats nearest upsampling even in a quick run; "no prior" need not.
BEAT_NEAREST = ("sr_x4", "sr_x8", "sr_prior_deep")
RUN_FILES = ("result.png", "comparison.png", "psnr.png", "config.json", "metrics.json", "history.npz")


def subprocess_env(cache_dir: Path) -> dict:
    """Environment for dip_jax subprocesses: stand-in images, one XLA cache for the whole session."""
    env = dict(os.environ)
    env["DIP_DATA"] = "none"
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    env.pop("DIP_JAX_COMPILE_CACHE", None)
    return env


def run_experiments(entries, out: Path, env: dict) -> dict:
    cmd = [sys.executable, str(EXPERIMENTS / "run_all.py"), "--quick", "--out", str(out)]
    for entry in entries:
        cmd += ["--only", entry]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    summary_file = out / "run_all.json"
    assert summary_file.is_file(), f"run_all.py wrote no summary:\n{proc.stdout}\n{proc.stderr}"
    return {"summary": json.loads(summary_file.read_text()), "stdout": proc.stdout, "stderr": proc.stderr,
            "returncode": proc.returncode}


def check_run_folder(run_dir: Path) -> dict:
    """Files exist and are sane; PSNR beats the observation / the nearest baseline where that makes sense."""
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), f"{run_dir} lacks {name}"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    assert config["task"]["name"] == metrics["task"]
    assert config["options"]["quick"] is True
    assert np.isfinite(metrics["final_loss"])
    result = io.load_image(run_dir / "result.png").image
    assert result.ndim == 3 and np.isfinite(result).all()
    assert result.std() > 0.01, "the result is flat"
    if (run_dir / "ground_truth.png").is_file():
        gt = io.load_image(run_dir / "ground_truth.png").image
        assert gt.shape == result.shape
        assert np.isfinite(metrics["psnr"])
    if "psnr_observation" in metrics:
        assert metrics["psnr"] > metrics["psnr_observation"] + 1.0, metrics
    if metrics["task"] in BEAT_NEAREST:
        assert metrics["psnr"] > metrics["baselines"]["nearest"]["psnr"], metrics
    if "loss_first" in metrics and metrics.get("layer") and metrics["task"].startswith("feature"):
        assert metrics["final_loss"] < metrics["loss_first"], metrics
    if "unit" in metrics:
        assert metrics["final_loss"] < metrics["loss_first"], metrics
    history = np.load(run_dir / "history.npz")
    assert history["loss"].shape == (metrics["steps"], metrics["restarts"])
    return metrics


def _failure_text(result: dict, entry: str) -> str:
    status = result["summary"].get(entry, {})
    return f"{entry}: {status}\n--- stdout\n{result['stdout'][-3000:]}\n--- stderr\n{result['stderr'][-6000:]}"


@pytest.mark.parametrize(
    "group", [g if g == DEFAULT_GROUP else pytest.param(g, marks=pytest.mark.slow) for g in EXPERIMENT_GROUPS]
)
def test_every_experiment_in_quick_mode_writes_a_sane_run_folder(group, tmp_path, shared_xla_cache):
    entries = EXPERIMENT_GROUPS[group]
    out = tmp_path / "runs"
    result = run_experiments(list(entries), out, subprocess_env(shared_xla_cache))
    for entry, folders in entries.items():
        assert result["summary"].get(entry, {}).get("status") == "ok", _failure_text(result, entry)
        for task_name in folders:
            runs = [p for p in (out / task_name).iterdir() if p.is_dir()]
            assert runs, f"no run folder under {out / task_name}"
            for run_dir in runs:
                check_run_folder(run_dir)
    if group == DEFAULT_GROUP:
        _check_report(out)


def test_the_groups_cover_every_experiment_once():
    run_all = _load_script("run_all")
    assert sorted(ALL_ENTRIES) == sorted(run_all.ALL_RUNS)
    assert sum(len(g) for g in EXPERIMENT_GROUPS.values()) == len(ALL_ENTRIES)


def _check_report(out: Path) -> None:
    text = (out / "report.md").read_text()
    assert "| task | image | steps |" in text
    assert "denoising (quick)" in text and "text_inpainting (quick)" in text
    assert "29.22" in text  # the paper's denoising number appears for the denoising run
    report_script = _load_script("report")
    target = out / "again.md"
    assert report_script.main([str(out), "--out", str(target)]) == 0
    assert target.read_text() == runs.report([out])


# --------------------------------------------------------------------------- fast: tasks and data, no fitting


def test_every_task_is_consistent_data():
    for name, task in tasks.TASKS.items():
        assert task.name == name
        for variant in (task, task.quick_variant()):
            json.dumps(variant.to_dict())
            assert variant.net.num_output_channels == variant.channels
            if variant.operator.kind in ("features", "unit"):
                size = variant.operator.net_size
                assert variant.operator.classifier_input <= size
            else:
                size = variant.quick.size
            nets.check_input_size(variant.net, size, size)
            # Parameter shapes only (no compilation): the net builds at that size.
            nets.init_shapes(variant.net, size, size)
        quick = task.quick_variant()
        assert quick.fit.num_steps == task.quick.num_steps
        assert quick.fit.num_steps < task.fit.num_steps


def test_task_lookup_error_lists_the_names():
    with pytest.raises(ValueError, match="unknown task 'nope'.*denoising"):
        tasks.task("nope")


def test_paper_settings_are_the_notebooks():
    t = tasks.TASKS
    assert (t["denoising"].fit.num_steps, t["denoising"].fit.reg_noise_std) == (3000, 1.0 / 30.0)
    assert t["denoising"].fit.ema_decay == 0.99 and t["denoising"].fit.backtrack
    assert t["denoising_sigma50"].fit.reg_noise_std == 1.0 / 20.0
    assert (t["sr_x4"].fit.num_steps, t["sr_x4"].fit.reg_noise_std, t["sr_x4"].operator.factor) == (2000, 0.03, 4)
    assert (t["sr_x8"].fit.num_steps, t["sr_x8"].fit.reg_noise_std, t["sr_x8"].operator.factor) == (4000, 0.05, 8)
    assert t["large_hole_vase"].fit.input_type == "meshgrid"
    assert t["large_hole_library_unet"].fit.learning_rate == 0.001
    assert t["restoration_50"].net.num_output_channels == 1 and t["restoration_50"].operator.keep_fraction == 0.5
    assert (t["restoration_98"].fit.num_steps, t["restoration_98"].operator.keep_fraction) == (1000, 0.02)
    assert (t["flash_no_flash"].fit.learning_rate, t["flash_no_flash"].fit.input_type) == (0.1, "image")
    assert t["sr_prior_tv"].fit.tv_weight == 1e-7 and t["sr_prior_none"].fit.tv_weight == 0
    assert nets.count_params(t["denoising"].net) == 2_217_831


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_quick_inputs_of_every_task_without_the_original_data(name, monkeypatch):
    monkeypatch.setenv("DIP_DATA", "none")
    task = tasks.task(name).quick_variant()
    (sample,) = observations.prepare_samples(jax.random.key(0), task, quick=True)
    size = task.quick.size
    if task.operator.kind == "unit":
        assert sample.observation is None and sample.unit == task.operator.unit
        return
    if task.operator.kind == "features":
        assert sample.observation.shape == (task.operator.classifier_input, task.operator.classifier_input, 3)
        return
    assert sample.source.startswith(("data:", "sample:"))
    obs, gt = sample.observation, sample.ground_truth
    assert obs.dtype == np.float32 and 0.0 <= obs.min() and obs.max() <= 1.0
    assert obs.shape[-1] == task.channels
    if task.operator.kind == "downsample":
        assert gt.shape == (size, size, task.channels)
        assert obs.shape == (size // task.operator.factor, size // task.operator.factor, task.channels)
        assert set(sample.baselines) == {"bicubic", "nearest", "sharpened_bicubic"}
        assert all(b.shape == gt.shape for b in sample.baselines.values())
    else:
        assert obs.shape == (size, size, task.channels)
    if task.operator.kind in ("mask", "random_mask"):
        assert sample.mask.shape == (size, size, 1)
        assert 0.0 < sample.mask.mean() < 1.0
        np.testing.assert_array_equal(obs, gt * sample.mask)
    if getattr(task.operator, "noise_sigma", None) is not None:
        # Noisy: the observation (or, for the noisy super-resolution tasks, its bicubic upsampling) is
        # a recognisable but degraded image.
        degraded = obs if obs.shape == gt.shape else sample.baselines["bicubic"]
        assert gt is not None and 10 < runs._psnr(degraded, gt) < 30
    if task.has_image_input:
        assert sample.guide.shape == (size, size, task.net.num_input_channels)


def test_default_images_come_from_the_original_data_folder(tmp_path):
    (tmp_path / "denoising").mkdir()
    io.save_image(tmp_path / "denoising" / "F16_GT.png", np.full((40, 36, 3), 0.5, np.float32))
    (sample,) = observations.prepare_samples(jax.random.key(0), tasks.task("denoising"), data=tmp_path)
    assert sample.source == "dip:denoising/F16_GT.png" and sample.name == "F16_GT"
    assert sample.ground_truth.shape == (40, 36, 3)


def test_a_missing_data_folder_is_an_error_not_a_silent_fallback(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        observations.data_dir(tmp_path / "missing")


def test_given_images_and_masks(tmp_path):
    image = np.random.default_rng(0).random((24, 20, 3)).astype(np.float32)
    mask = np.ones((24, 20, 1), np.float32)
    mask[5:10, 5:10] = 0
    io.save_image(tmp_path / "a.png", image)
    io.save_image(tmp_path / "m.png", mask)
    samples = observations.prepare_samples(jax.random.key(0), tasks.task("text_inpainting"),
                                         images=[str(tmp_path / "a.png")] * 2, masks=[str(tmp_path / "m.png")])
    assert [s.name for s in samples] == ["a", "a_2"]
    assert samples[0].mask[7, 7, 0] == 0 and samples[0].observation[7, 7].max() == 0
    with pytest.raises(ValueError, match="needs a mask"):
        observations.prepare_samples(jax.random.key(0), tasks.task("text_inpainting"), images=[str(tmp_path / "a.png")])
    io.save_image(tmp_path / "small.png", mask[:10])
    with pytest.raises(io.ImageIOError):
        observations.prepare_samples(jax.random.key(0), tasks.task("text_inpainting"),
                                   images=[str(tmp_path / "a.png")], masks=[str(tmp_path / "small.png")])


def test_super_resolution_pair_follows_the_original():
    hr = np.random.default_rng(1).random((35, 42, 3)).astype(np.float32)
    hr_c, lr, baselines = observations.super_resolution_pair(hr, 4)
    assert hr_c.shape == (32, 40, 3) and lr.shape == (8, 10, 3)
    # 8-bit values, as the original's PIL images.
    np.testing.assert_allclose(lr * 255, np.round(lr * 255), atol=1e-4)
    # Nearest upsampling repeats each LR pixel in a 4x4 block.
    np.testing.assert_allclose(baselines["nearest"][:4, :4], np.broadcast_to(lr[0, 0], (4, 4, 3)), atol=1e-6)
    with pytest.raises(ValueError, match="smaller than the super-resolution factor"):
        observations.super_resolution_pair(hr[:3], 4)


def test_report_needs_runs(tmp_path):
    with pytest.raises(ValueError, match="no run folders"):
        runs.report([tmp_path])
    with pytest.raises(ValueError, match="does not exist"):
        runs.report([tmp_path / "nope"])


def test_classifier_tasks_without_weights_say_where_to_get_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIP_DATA", "none")
    monkeypatch.setenv("DIP_JAX_COMPILE_CACHE", "0")
    script = _load_script("feature_inversion")
    assert script.main(["--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("feature_inversion.py: error: ") or "error: " in err
    assert "--weights" in err and "dip_jax.classifiers convert" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_experiment_scripts_reject_bad_options(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIP_JAX_COMPILE_CACHE", "0")
    script = _load_script("denoising")
    with pytest.raises(SystemExit) as exit_info:  # argparse's checked type refuses it
        script.main(["--restarts", "0", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "argument --restarts: must be a positive integer" in capsys.readouterr().err
    assert script.main(["--image", str(tmp_path / "missing.png"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--variant", "sigma99"])
    assert exit_info.value.code == 2


def test_every_run_all_entry_names_a_script_and_variant():
    run_all = _load_script("run_all")
    for entry in set(run_all.ALL_RUNS) | set(ALL_ENTRIES):
        script, _, variant = entry.partition(":")
        module = _load_script(script)
        if variant:
            assert variant in module.VARIANTS, entry


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_classifier_operators_trace_to_the_right_shapes():
    import jax.numpy as jnp

    from dip_jax import classifiers

    model = classifiers.TorchvisionClassifier(arch="alexnet")
    image = jax.ShapeDtypeStruct((1, 80, 80, 3), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), image)  # shapes only: no weights, no compiling
    fc6 = operators.ClassifierFeatures("alexnet", "fc6", 64)
    assert jax.eval_shape(fc6.apply, image, None, params).shape == (1, 1, 1, 4096)
    # The net's output is cropped to the classifier's input size before the classifier sees it.
    conv1 = operators.ClassifierFeatures("alexnet", "conv1", 70)
    assert jax.eval_shape(conv1.apply, image, None, params).shape == (1, 16, 16, 64)
    unit_index = jax.ShapeDtypeStruct((), jnp.int32)
    for layer in ("conv4", "fc8"):
        unit = operators.ClassifierUnit("alexnet", layer, 64)
        assert jax.eval_shape(unit.apply, image, unit_index, params).shape == (1, 1, 1, 1)
    value = jnp.full((1, 1, 1, 1), 3.0)
    assert float(operators.UnitLoss("maximize", 5.0)(value, jnp.zeros_like(value))) == -15.0
    assert float(operators.UnitLoss("match", 5.0)(value, jnp.full_like(value, 300.0))) == 5.0 * 297.0
    # Frozen dataclasses: equal settings give equal (hashable) engine problems, so nothing recompiles.
    assert hash(operators.UnitLoss("maximize", 5.0)) == hash(operators.UnitLoss("maximize", 5.0))


@pytest.mark.slow
def test_several_images_and_restarts_in_one_call(tmp_path, shared_xla_cache):
    from dip_jax import sample_images

    photo = sample_images.sample_image("astronaut")
    for name, (top, left) in {"a": (200, 200), "b": (300, 150)}.items():
        io.save_image(tmp_path / f"{name}.png", photo[top : top + 64, left : left + 64])
    out = tmp_path / "runs"
    cmd = [sys.executable, str(EXPERIMENTS / "denoising.py"), "--quick", "--restarts", "2", "--no-progress",
           "--image", str(tmp_path / "a.png"), "--image", str(tmp_path / "b.png"), "--out", str(out)]
    proc = subprocess.run(cmd, env=subprocess_env(shared_xla_cache), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    for name in ("a", "b"):
        run_dir = out / "denoising" / name
        metrics = check_run_folder(run_dir)
        assert metrics["images_in_call"] == 2 and metrics["restarts"] == 2
        assert len(metrics["psnr_restarts"]) == 2
        assert (run_dir / "restart_0.png").is_file() and (run_dir / "restart_1.png").is_file()
