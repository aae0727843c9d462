"""Long runs from the command line: --checkpoint-every, --resume, --overwrite, Ctrl-C (dip_jax.app.cli).

In-process (`cli.main`), so that a wrapper around `dj.fit` can send this
process SIGINT after a chosen step, as a user's Ctrl-C would; tiny images,
--quick nets and a handful of steps keep it to seconds on a CPU.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

import dip_jax as dj
from dip_jax import io
from dip_jax.app import batch, cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_disk_cache(monkeypatch):
    monkeypatch.setenv("DIP_JAX_COMPILE_CACHE", "0")


@pytest.fixture
def interrupt(monkeypatch):
    """`interrupt(call=k, step=s)`: SIGINT once the k-th dj.fit call (from 0) has done s steps."""
    real_fit = dj.fit

    def arm(*, call: int = 0, step: int):
        calls = [0]

        def fit(*args, callback=None, **kwargs):
            this_call, seen = calls[0], [0]
            calls[0] += 1

            def send(state, records):
                seen[0] += len(records["loss"])
                if this_call == call and seen[0] == step:
                    os.kill(os.getpid(), signal.SIGINT)

            return real_fit(*args, callback=send, **kwargs)

        monkeypatch.setattr(dj, "fit", fit)

    arm.disarm = lambda: monkeypatch.setattr(dj, "fit", real_fit)
    return arm


@pytest.fixture(scope="module")
def small_image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "cat.png"
    io.save_image(path, io.load_image(ROOT / "data" / "chelsea_64.png").image[16:48, 16:48])
    return path


def _one_line_error(capsys, argv) -> str:
    assert cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dip-jax: error: "), err
    return lines[0]


def test_denoise_interrupted_and_resumed_equals_an_uninterrupted_run(tmp_path, capsys, interrupt, small_image):
    base = ["denoise", small_image, "--quick", "--add-noise", 25, "--steps", 60, "--no-progress"]
    assert cli.main([str(a) for a in base + ["--out", tmp_path / "ref.png"]]) == 0
    out = tmp_path / "out.png"
    run = [str(a) for a in base + ["--out", out, "--checkpoint-every", 20]]

    interrupt(call=0, step=40)
    assert cli.main(run) == 130
    interrupt.disarm()
    err = capsys.readouterr().err
    assert "interrupted after step 40 of 60" in err and "--resume" in err, err
    partial = io.load_image(tmp_path / "out.partial.png").image
    assert np.all(np.isfinite(partial)) and partial.shape == (32, 32, 3)
    assert not out.exists(), "an interrupted run must not look finished"
    ckpt = tmp_path / "out.ckpt" / "ckpt.npz"
    assert ckpt.is_file()

    # Starting over on an unfinished run's checkpoint needs --resume or --overwrite.
    assert "--resume" in _one_line_error(capsys, run)
    # Another seed is another run (other noise, other initial keys): refused, not resumed.
    assert "different run" in _one_line_error(capsys, run[:-2] + ["--seed", "1", "--resume"])
    # A damaged checkpoint is reported in one line, never resumed.
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[: len(good) // 2])
    assert "damaged" in _one_line_error(capsys, run + ["--resume"])
    ckpt.write_bytes(good)

    assert cli.main(run + ["--resume"]) == 0
    np.testing.assert_array_equal(io.load_image(out).image, io.load_image(tmp_path / "ref.png").image)
    assert not (tmp_path / "out.partial.png").exists()

    # The finished result is never replaced silently, the check comes before any fitting.
    assert "--overwrite" in _one_line_error(capsys, run)
    assert "--overwrite" in _one_line_error(capsys, run + ["--resume"])
    out.write_bytes(b"stale")
    assert cli.main(run + ["--overwrite"]) == 0
    np.testing.assert_array_equal(io.load_image(out).image, io.load_image(tmp_path / "ref.png").image)


def test_batch_resumes_the_interrupted_call_and_keeps_the_finished_one(tmp_path, capsys, interrupt):
    folder = tmp_path / "in"
    photo = io.load_image(ROOT / "data" / "chelsea_64.png").image
    io.save_image(folder / "a.png", photo[:32, :32])
    io.save_image(folder / "b.png", photo[32:, 32:])
    # One image per compiled call: two calls (two checkpoint files) of one compiled program.
    base = ["batch", folder, "--quick", "--add-noise", 25, "--steps", 60, "--batch-size", 1, "--no-progress"]
    assert cli.main([str(a) for a in base + ["--out", tmp_path / "ref"]]) == 0
    out = tmp_path / "out"
    run = [str(a) for a in base + ["--out", out, "--checkpoint-every", 20]]

    interrupt(call=1, step=20)
    assert cli.main(run) == 130
    interrupt.disarm()
    assert "interrupted after step 20 of 60" in capsys.readouterr().err
    assert (out / "a.png").is_file() and (out / "b.partial.png").is_file() and not (out / "b.png").exists()
    assert not (out / batch.BATCH_MARKER).exists()
    assert (out / "ckpt-0.npz").is_file() and (out / "ckpt-1.npz").is_file()

    assert "already exists" in _one_line_error(capsys, run)
    assert cli.main(run + ["--resume"]) == 0
    assert "a.png (finished earlier, kept)" in capsys.readouterr().out
    for name in ("a.png", "b.png"):
        np.testing.assert_array_equal(io.load_image(out / name).image, io.load_image(tmp_path / "ref" / name).image)
    summary = json.loads((out / batch.BATCH_MARKER).read_text())
    assert [e["image"] for e in summary["images"]] == ["a.png", "b.png"]
    assert summary["images"][1]["num_rollbacks"] == [0]
    assert "finished run" in _one_line_error(capsys, run + ["--resume"])


def test_demo_refuses_finished_and_unfinished_folders_before_fitting(tmp_path, capsys, monkeypatch):
    from dip_jax.app import fitting

    def no_fit(*args, **kwargs):
        raise AssertionError("the refusal must come before any fitting")

    monkeypatch.setattr(fitting, "fit_samples", no_fit)
    finished, unfinished = tmp_path / "finished", tmp_path / "unfinished"
    finished.mkdir()
    (finished / "metrics.json").write_text("{}")
    unfinished.mkdir()
    (unfinished / "ckpt.npz").write_bytes(b"not a checkpoint")
    assert "--overwrite" in _one_line_error(capsys, ["demo", "--quick", "--out", finished])
    assert "--resume" in _one_line_error(capsys, ["demo", "--quick", "--out", unfinished, "--checkpoint-every", "5"])
    assert (finished / "metrics.json").is_file() and (unfinished / "ckpt.npz").is_file()


def test_demo_resume_reports_a_damaged_checkpoint_in_one_line(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "ckpt.npz").write_bytes(b"not a checkpoint")
    assert "damaged" in _one_line_error(capsys, ["demo", "--quick", "--steps", "2", "--out", out, "--resume",
                                                 "--no-progress"])


def test_resume_and_overwrite_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["denoise", "x.png", "--resume", "--overwrite"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_experiment_scripts_guard_unfinished_checkpoints(tmp_path, capsys):
    def run(*extra):
        # The exit status, whether argparse exits (a bad option value) or main returns it.
        try:
            return cli.experiment_main(["--quick", "--data", "none", "--out", str(tmp_path), *extra],
                                       variants={"x": "denoising"}, default_variant="x", description="", prog="exp")
        except SystemExit as exit_info:
            return exit_info.code

    assert run("--checkpoint-every", "0") == 2
    assert "--checkpoint-every" in capsys.readouterr().err
    (tmp_path / "denoising").mkdir()
    (tmp_path / "denoising" / "ckpt.npz").write_bytes(b"junk")
    assert run("--checkpoint-every", "5") == 2
    assert "--resume" in capsys.readouterr().err


def test_resume_says_when_it_starts_fresh_and_may_extend_the_steps(tmp_path, capsys, interrupt, small_image):
    base = ["denoise", small_image, "--quick", "--add-noise", 25, "--no-progress"]
    assert cli.main([str(a) for a in base + ["--steps", 100, "--out", tmp_path / "ref.png"]]) == 0
    assert "(100 steps, " in capsys.readouterr().out
    out = tmp_path / "out.png"
    run = [str(a) for a in base + ["--out", out, "--checkpoint-every", 20]]

    # --resume with nothing to resume: one line says so, then the fit runs (here until a Ctrl-C at step 20).
    interrupt(call=0, step=20)
    assert cli.main(run + ["--steps", "60", "--resume"]) == 130
    interrupt.disarm()
    err = capsys.readouterr().err
    assert f"dip-jax denoise: no checkpoint ckpt.npz in '{tmp_path / 'out.ckpt'}'; starting fresh" in err.splitlines()
    assert "interrupted after step 20 of 60" in err

    # Fewer steps than the checkpoint has done cannot be resumed: one line that says what to do.
    refused = _one_line_error(capsys, run + ["--steps", "10", "--resume"])
    assert "past --steps 10" in refused and "--steps 20 or more" in refused and "num_steps" not in refused, refused
    # More steps than the interrupted run asked for: it continues to the new total, equal to one run of it.
    assert cli.main(run + ["--steps", "100", "--resume"]) == 0
    captured = capsys.readouterr()
    assert "starting fresh" not in captured.err
    assert "(100 steps, resumed at step 20: 80 run now, " in captured.out, captured.out
    np.testing.assert_array_equal(io.load_image(out).image, io.load_image(tmp_path / "ref.png").image)


def test_batch_resume_to_more_steps_continues_the_finished_call_too(tmp_path, capsys, interrupt):
    folder = tmp_path / "in"
    photo = io.load_image(ROOT / "data" / "chelsea_64.png").image
    io.save_image(folder / "a.png", photo[:32, :32])
    io.save_image(folder / "b.png", photo[32:, 32:])
    base = ["batch", folder, "--quick", "--add-noise", 25, "--batch-size", 1, "--no-progress"]
    assert cli.main([str(a) for a in base + ["--steps", 80, "--out", tmp_path / "ref"]]) == 0
    out = tmp_path / "out"
    run = [str(a) for a in base + ["--out", out, "--checkpoint-every", 20]]
    interrupt(call=1, step=20)
    assert cli.main(run + ["--steps", "60"]) == 130
    interrupt.disarm()
    capsys.readouterr()
    # a.png was finished at 60 steps; resuming to 80 continues it from its checkpoint instead of keeping it.
    assert cli.main(run + ["--steps", "80", "--resume"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("a.png" in line and "80 steps, resumed at step 60: 20 run now" in line for line in lines), lines
    assert any("b.png" in line and "80 steps, resumed at step 20: 60 run now" in line for line in lines), lines
    assert not any("finished earlier" in line for line in lines)
    for name in ("a.png", "b.png"):
        np.testing.assert_array_equal(io.load_image(out / name).image, io.load_image(tmp_path / "ref" / name).image)
