"""The `dip-jax` command (dip_jax.app.cli).

Commands that fit run as subprocesses of the installed console script, as a
user would, all in --quick mode and sharing one session-wide XLA compilation
cache (with test_experiments.py): `demo --quick`, `denoise --quick --add-noise`
on the 16-bit, RGBA and odd-sized files and the batch's odd-sized image are
the same compiled problem (64 x 64 RGB after padding, one image), so only the
first pays for compiling. Error handling runs in-process (nothing is fitted).
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dip_jax import io
from dip_jax.app import cli, commands

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict:
    """64 x 64 RGB 8-bit, RGB 16-bit and RGBA files, a 61 x 59 RGB one and a 61 x 59 16-bit RGBA one."""
    from dip_jax import sample_images

    folder = tmp_path_factory.mktemp("cli_images")
    paths = {
        "rgb": DATA / "chelsea_64.png",
        "rgb16": DATA / "coffee_64_16bit.png",
        "rgba": DATA / "rocket_64_rgba.png",
    }
    # Patches at the photo's own scale: smooth enough for a short fit to beat the noise clearly.
    photo = sample_images.sample_image("astronaut")
    paths["odd"] = folder / "odd_61x59.png"
    io.save_image(paths["odd"], photo[200:261, 220:279])
    alpha = np.linspace(0.2, 1.0, 61 * 59, dtype=np.float32).reshape(61, 59, 1)
    paths["odd16a"] = folder / "odd_16bit_rgba.png"
    io.save_image(paths["odd16a"], photo[260:321, 150:209], bit_depth=16, alpha=alpha)
    return paths


def dip_jax(args, *, env, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "dip-jax"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "dip_jax.app.cli"]
    return subprocess.run(cmd + [str(a) for a in args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc.stdout


def _psnrs(line: str) -> tuple[float, float]:
    """(result, input) PSNRs from a `dip-jax denoise` summary line."""
    after = line.split("PSNR ", 1)[1]
    result = float(after.split(" dB", 1)[0])
    given = float(after.split("input to the net: ", 1)[1].split(" dB", 1)[0])
    return result, given


def test_console_script_is_declared():
    scripts = importlib.metadata.entry_points(group="console_scripts")
    assert any(ep.name == "dip-jax" and ep.value == "dip_jax.app.cli:main" for ep in scripts)


def test_demo_quick_writes_its_folder_in_the_current_directory(tmp_path, env):
    out = _ok(dip_jax(["demo", "--quick", "--no-progress"], env=env, cwd=tmp_path))
    folder = tmp_path / "dip_jax_demo"
    for name in ("clean.png", "noisy.png", "restored.png", "comparison.png", "psnr.png", "metrics.json"):
        assert (folder / name).is_file(), name
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["psnr"] > metrics["psnr_observation"] + 1.0, metrics
    assert metrics["num_rollbacks"] == [0]  # divergence recoveries, per restart
    assert f"{metrics['psnr']:.2f}" in out and "PSNR noisy" in out
    assert io.load_image(folder / "restored.png").image.shape == (64, 64, 3)


def test_odd_sized_16_bit_rgba_keeps_size_depth_and_alpha(tmp_path, env, images):
    target = tmp_path / "out.png"
    out = _ok(dip_jax(["denoise", images["odd16a"], "--quick", "--add-noise", 25, "--steps", 150, "--out", target,
                       "--no-progress"], env=env))
    before, after = io.load_image(images["odd16a"]), io.load_image(target)
    assert after.image.shape == (61, 59, 3)  # padded for the net, cropped back: no border pixel lost
    assert after.bit_depth == 16
    levels = np.round(after.image * 65535).astype(np.int64)
    assert (levels % 257 != 0).any(), "the 16-bit result holds only 8-bit values"
    np.testing.assert_array_equal(after.alpha, before.alpha)
    restored, noisy = _psnrs(out)
    assert restored > noisy + 1.0, out


# Slow (~80 s on 2 cores, two compiles): CI runs it in .ci/run's second step.
@pytest.mark.slow
def test_batch_restores_a_folder_of_four_in_two_size_groups(tmp_path, env, images):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("rgb", "rgb16", "rgba", "odd"):
        (folder / Path(images[name]).name).write_bytes(Path(images[name]).read_bytes())
    (folder / "notes.txt").write_text("not an image")
    out_dir = tmp_path / "out"
    out = _ok(dip_jax(["batch", folder, "--quick", "--add-noise", 25, "--steps", 150, "--out", out_dir,
                       "--no-progress"], env=env))
    assert "4 images in 2 size group(s)" in out
    assert out.count("(64x64x3, 3 images in one call") == 3 and out.count("(61x59x3, 1 image in one call") == 1
    for name in ("rgb", "rgb16", "rgba", "odd"):
        source = io.load_image(images[name])
        result = io.load_image(out_dir / (Path(images[name]).stem + ".png"))
        assert result.image.shape == source.image.shape
        assert result.bit_depth == source.bit_depth
        if source.alpha is None:
            assert result.alpha is None
        else:
            np.testing.assert_array_equal(result.alpha, source.alpha)
    for line in out.splitlines()[:-1]:
        restored, given = (float(x.split(" dB")[0]) for x in line.split("PSNR ")[1].split("(input "))
        assert restored > given + 1.0, line


def test_batch_groups_by_size_and_tops_up_the_last_chunk(tmp_path, monkeypatch, capsys, no_cache):
    """How batch cuts a folder into compiled calls (the fit itself is replaced by the identity)."""
    from dip_jax.app import fitting

    folder = tmp_path / "in"
    rng = np.random.default_rng(0)
    for i in range(5):
        io.save_image(folder / f"a{i}.png", rng.random((32, 32, 3)).astype(np.float32))
    io.save_image(folder / "b.png", rng.random((20, 24, 1)).astype(np.float32), bit_depth=16)
    calls = []

    def fake_fit(key, task, samples, *, restarts=1, progress=False, **long_run_options):
        calls.append((task.net.num_output_channels, [s.name for s in samples]))
        return [fitting.SampleResult(restored=s.observation, per_restart=s.observation[None],
                                        outputs=s.observation[None], history={}, seconds=0.0,
                                        images_in_call=len(samples), num_backtracks=np.zeros(1))
                for s in samples]

    monkeypatch.setattr(fitting, "fit_samples", fake_fit)
    assert cli.main(["batch", str(folder), "--batch-size", "2", "--out", str(tmp_path / "out"), "--quick"]) == 0
    assert calls == [(3, ["a0", "a1"]), (3, ["a2", "a3"]), (3, ["a4", "a4"]), (1, ["b"])]
    assert "6 images in 2 size group(s)" in capsys.readouterr().out
    written = io.load_image(tmp_path / "out" / "b.png")
    assert written.bit_depth == 16 and written.image.shape == (20, 24, 1)
    np.testing.assert_allclose(io.load_image(tmp_path / "out" / "a4.png").image,
                               io.load_image(folder / "a4.png").image)


def test_inpaint_with_a_mask_file(tmp_path, env, images):
    image = io.load_image(images["rgb"]).image
    mask = np.ones((64, 64, 1), np.float32)
    mask[20:30, 10:50] = 0
    mask[40:44, :] = 0
    io.save_image(tmp_path / "mask.png", mask)
    target, run_dir = tmp_path / "filled.png", tmp_path / "run"
    out = _ok(dip_jax(["inpaint", images["rgb"], "--mask", tmp_path / "mask.png", "--ground-truth", images["rgb"],
                       "--quick", "--out", target, "--run-dir", run_dir, "--no-progress"], env=env))
    result = io.load_image(target).image
    assert result.shape == image.shape
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["psnr"] > metrics["psnr_observation"] + 3.0, metrics
    assert (run_dir / "comparison.png").is_file() and "PSNR" in out
    # The known pixels are reproduced, the hole is filled with something other than black.
    assert result[25, 10:50].mean() > 0.1


def test_errors_from_the_installed_command_are_one_line(tmp_path, env):
    proc = dip_jax(["denoise", tmp_path / "missing.png"], env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dip-jax: error: ") and "does not exist" in lines[0]
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- in-process: errors, no fitting


@pytest.fixture
def no_cache(monkeypatch):
    monkeypatch.setenv("DIP_JAX_COMPILE_CACHE", "0")


def _error(capsys, argv) -> str:
    assert cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dip-jax: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_user_errors_exit_2_with_one_line(tmp_path, capsys, no_cache, images):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.png").write_text("not a png")
    io.save_image(tmp_path / "small_mask.png", np.ones((10, 10, 1), np.float32))
    io.save_image(tmp_path / "black_mask.png", np.zeros((64, 64, 1), np.float32))
    assert "does not exist" in _error(capsys, ["denoise", tmp_path / "missing.png"])
    assert "not an image format" in _error(capsys, ["denoise", tmp_path / "junk.png"])
    assert "size" in _error(capsys, ["inpaint", images["rgb"], "--mask", tmp_path / "small_mask.png"])
    assert "every pixel as missing" in _error(capsys, ["inpaint", images["rgb"], "--mask", tmp_path / "black_mask.png"])
    assert "gauss:SIGMA" in _error(capsys, ["deblur", images["rgb"], "--kernel", "gauss:wide"])
    assert "neither gauss:SIGMA nor an existing file" in _error(capsys, ["deblur", images["rgb"], "--kernel", "k.npy"])
    assert "no images" in _error(capsys, ["batch", tmp_path / "empty"])
    assert "not a folder" in _error(capsys, ["batch", tmp_path / "missing"])
    assert "--keep-fraction" in _error(capsys, ["batch", tmp_path, "--task", "inpaint"])
    assert "--ground-truth" in _error(capsys, ["denoise", images["rgb"], "--ground-truth", images["odd"]])
    assert "aligned pair" in _error(capsys, ["flash", "--flash", images["rgb"], "--no-flash", images["odd"]])
    assert "no run folders" in _error(capsys, ["report", tmp_path / "empty"])


@pytest.mark.parametrize("argv", [
    ["inpaint", "x.png"],                                  # needs --mask or --keep-fraction
    ["inpaint", "x.png", "--mask", "m.png", "--keep-fraction", "0.5"],
    ["denoise", "x.png", "--steps", "0"],
    ["denoise", "x.png", "--net", "no_such_preset"],
    ["inpaint", "x.png", "--keep-fraction", "1.5"],
    ["frobnicate"],
])
def test_bad_command_lines_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "dip-jax" in capsys.readouterr().err


def test_report_command(tmp_path, capsys):
    run = tmp_path / "runs" / "denoising" / "x"
    run.mkdir(parents=True)
    metrics = {"task": "denoising", "image": "x", "steps": 10, "restarts": 1, "seconds": 1.0, "psnr": 25.0,
               "psnr_observation": 20.0, "options": {"quick": True}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert cli.main(["report", str(tmp_path / "runs")]) == 0
    text = capsys.readouterr().out
    assert "| denoising (quick) | x | 10 | 1 | 25.00 |" in text and "29.22" in text
    assert cli.main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "r.md")]) == 0
    assert (tmp_path / "r.md").read_text() == text


def test_demo_task_quick_is_the_denoise_quick_problem():
    from dip_jax.app import tasks

    quick = commands.demo_task(quick=True)
    assert quick.net == tasks.task("denoising").quick_variant().net
    assert quick.fit == tasks.task("denoising").quick_variant().fit
    assert commands.demo_task(steps=7).fit.num_steps == 7


# --------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_demo_full_takes_about_a_minute(tmp_path, env):
    import time

    t0 = time.perf_counter()
    _ok(dip_jax(["demo", "--out", tmp_path / "demo", "--no-progress"], env=env))
    seconds = time.perf_counter() - t0
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert metrics["psnr"] > metrics["psnr_observation"] + 1.5, metrics
    assert seconds < 240, f"the demo took {seconds:.0f} s"


@pytest.mark.slow
def test_super_resolve_deblur_and_flash(tmp_path, env, images):
    up = tmp_path / "up.png"
    _ok(dip_jax(["super-resolve", images["rgba"], "--factor", 2, "--quick", "--out", up, "--no-progress"], env=env))
    result = io.load_image(up)
    assert result.image.shape == (128, 128, 3) and result.alpha.shape == (128, 128, 1)
    out = _ok(dip_jax(["super-resolve", images["rgb"], "--factor", 4, "--simulate", "--quick", "--out",
                       tmp_path / "sr.png", "--no-progress"], env=env))
    assert "bicubic" in out
    sharp = tmp_path / "sharp.png"
    out = _ok(dip_jax(["deblur", images["rgb"], "--kernel", "gauss:1.5", "--simulate", "--quick", "--out", sharp,
                       "--no-progress"], env=env))
    restored, blurred = _psnrs(out)
    assert restored > blurred - 1.0
    np.save(tmp_path / "k.npy", np.ones((3, 3)))
    _ok(dip_jax(["deblur", images["rgb"], "--kernel", tmp_path / "k.npy", "--quick", "--steps", 20, "--out",
                 tmp_path / "k.png", "--no-progress"], env=env))
    flash = tmp_path / "flash.png"
    _ok(dip_jax(["flash", "--flash", images["rgb"], "--no-flash", images["rgb16"], "--quick", "--out", flash,
                 "--no-progress"], env=env))
    assert io.load_image(flash).bit_depth == 16
