"""Every command checks all of its inputs and outputs before any fit, refuses in one line, and never
replaces what the user did not ask for (issue "Nothing lost, nothing half-checked").

Everything here runs in-process with the fit replaced by a guard (or by the identity, where a test
needs a command to finish): a refusal must come before anything is fitted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat

import numpy as np
import pytest

from dip_jax import io, sample_images
from dip_jax.runtime import checkpoint, memory
from dip_jax.app import cli, fitting

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data")
RGB = os.path.join(DATA, "chelsea_64.png")
RGB16 = os.path.join(DATA, "coffee_64_16bit.png")
RGBA = os.path.join(DATA, "rocket_64_rgba.png")


class _Fitted(Exception):
    pass


@pytest.fixture
def no_fit(monkeypatch):
    """Any fit fails the test: the refusal must come first."""

    def refuse(*args, **kwargs):
        raise _Fitted("a fit was started before the command refused")

    monkeypatch.setattr(fitting, "fit_samples", refuse)
    monkeypatch.setenv("DIP_JAX_COMPILE_CACHE", "0")


def _identity_fit(key, task, samples, *, restarts=1, progress=False, **long_run_options):
    return [fitting.SampleResult(restored=s.observation, per_restart=s.observation[None],
                                    outputs=s.observation[None], history={"loss": np.zeros((1, 1))}, seconds=0.0,
                                    images_in_call=len(samples), num_backtracks=np.zeros(1))
            for s in samples]


@pytest.fixture
def identity_fit(monkeypatch):
    monkeypatch.setattr(fitting, "fit_samples", _identity_fit)
    monkeypatch.setenv("DIP_JAX_COMPILE_CACHE", "0")


@pytest.fixture
def files(tmp_path):
    """Hostile and ordinary files in tmp_path (the working folder of every command here)."""
    rng = np.random.default_rng(0)
    f = {}
    f["in"] = tmp_path / "in.png"
    io.save_image(f["in"], rng.random((32, 32, 3)).astype(np.float32))
    f["file"] = tmp_path / "afile"
    f["file"].write_text("not a folder")
    f["bad_npy"] = tmp_path / "bad.npy"
    f["bad_npy"].write_text("not numpy")
    f["k3d"] = tmp_path / "k3d.npy"
    np.save(f["k3d"], np.ones((3, 3, 3)))
    f["kbig"] = tmp_path / "kbig.npy"
    np.save(f["kbig"], np.ones((100, 100)))
    f["kstr"] = tmp_path / "kstr.npy"
    np.save(f["kstr"], np.array([["a", "b"], ["c", "d"]]))
    f["fifo"] = tmp_path / "fifo.png"
    os.mkfifo(f["fifo"])
    f["junk"] = tmp_path / "junk.png"
    f["junk"].write_text("not a png")
    f["mask_small"] = tmp_path / "mask_small.png"
    io.save_image(f["mask_small"], np.ones((8, 8, 1), np.float32))
    f["mask_black"] = tmp_path / "mask_black.png"
    io.save_image(f["mask_black"], np.zeros((32, 32, 1), np.float32))
    f["runs"] = tmp_path / "runs" / "denoising" / "x"
    f["runs"].mkdir(parents=True)
    (f["runs"] / "metrics.json").write_text(json.dumps({"task": "denoising", "image": "x", "restarts": 1}))
    f["runs_bad_json"] = tmp_path / "runs_bad" / "y"
    f["runs_bad_json"].mkdir(parents=True)
    (f["runs_bad_json"] / "metrics.json").write_text("{ not json")
    f["empty_dir"] = tmp_path / "empty"
    f["empty_dir"].mkdir()
    f["in_std"] = tmp_path / "in.std.png"  # where `--out in.png --restarts 2` writes its std map
    io.save_image(f["in_std"], rng.random((32, 32, 3)).astype(np.float32))
    f["folder"] = tmp_path / "folder"
    f["folder"].mkdir()
    io.save_image(f["folder"] / "a.png", rng.random((32, 32, 3)).astype(np.float32))
    (f["folder"] / "broken.png").write_text("broken")
    return f


def _one_error_line(capsys, argv) -> str:
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's own refusals
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, f"exit {code} for {argv}: {err}"
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(("dip-jax: error: ", "dip-jax ")) and "error: " in last, err
    if not last.startswith("dip-jax: error: "):  # argparse: usage lines, then one error line
        assert " error: argument " in last or "error: " in last, err
    return last


# (argv with {placeholders} for files, text the message must contain: the offending option or file)
BAD_COMMAND_LINES = [
    # numbers
    (["denoise", "{in}", "--seed", "99999999999999999999999"], "--seed"),
    (["denoise", "{in}", "--steps", "x"], "--steps"),
    (["denoise", "{in}", "--steps", "0"], "--steps"),
    (["denoise", "{in}", "--lr", "inf"], "--lr"),
    (["denoise", "{in}", "--lr", "nan"], "--lr"),
    (["denoise", "{in}", "--lr", "-1"], "--lr"),
    (["denoise", "{in}", "--add-noise", "inf"], "--add-noise"),
    (["denoise", "{in}", "--restarts", "two"], "--restarts"),
    (["denoise", "{in}", "--checkpoint-every", "-5"], "--checkpoint-every"),
    (["denoise", "{in}", "--auto-stop", "--auto-stop-window", "1"], "--auto-stop-window"),
    (["denoise", "{in}", "--auto-stop-window", "50"], "--auto-stop"),
    (["denoise", "{in}", "--auto-stop", "--auto-stop-patience", "0"], "--auto-stop-patience"),
    (["batch", "{folder}", "--auto-stop-patience", "10"], "--auto-stop"),
    (["denoise", "{in}", "--sgld-burn-in", "10"], "--sgld"),
    (["denoise", "{in}", "--tv-weight", "-1"], "--tv-weight"),
    (["inpaint", "{in}", "--keep-fraction", "0"], "--keep-fraction"),
    (["inpaint", "{in}", "--keep-fraction", "1e-9"], "--keep-fraction"),
    (["batch", "{folder}", "--batch-size", "0"], "--batch-size"),
    (["super-resolve", "{in}", "--factor", "3"], "--factor"),
    (["super-resolve", "{in}", "--factor", "100000"], "--factor"),
    (["super-resolve", "{in}", "--factor", "64", "--simulate"], "--factor"),
    (["super-resolve", "{in}", "--noise-sigma", "300", "--simulate"], "--noise-sigma"),
    (["super-resolve", "{in}", "--noise-sigma", "0"], "--noise-sigma"),
    (["super-resolve", "{in}", "--noise-sigma", "nan"], "--noise-sigma"),
    # blur kernels
    (["deblur", "{in}", "--kernel", "gauss:inf"], "--kernel"),
    (["deblur", "{in}", "--kernel", "gauss:1e12"], "--kernel"),
    (["deblur", "{in}", "--kernel", "gauss:-2"], "--kernel"),
    (["deblur", "{in}", "--kernel", "gauss:"], "--kernel"),
    (["deblur", "{in}", "--kernel", "{bad_npy}"], "bad.npy"),
    (["deblur", "{in}", "--kernel", "{k3d}"], "k3d.npy"),
    (["deblur", "{in}", "--kernel", "{kbig}"], "kbig.npy"),
    (["deblur", "{in}", "--kernel", "{kstr}"], "kstr.npy"),
    (["deblur", "{in}", "--kernel", "nothing.npy"], "nothing.npy"),
    # input files
    (["denoise", "{fifo}"], "fifo.png"),
    (["denoise", "{junk}"], "junk.png"),
    (["denoise", "{empty_dir}"], "empty"),
    (["inpaint", "{in}", "--mask", "{mask_small}"], "mask_small.png"),
    (["inpaint", "{in}", "--mask", "{mask_black}"], "--mask"),
    (["denoise", "{in}", "--ground-truth", "{mask_small}"], "--ground-truth"),
    # outputs: format, place, collisions
    (["denoise", "{in}", "--out", "x.gif"], "x.gif"),
    (["denoise", "{in}", "--out", "noext"], "noext"),
    (["denoise", RGBA, "--out", "x.jpg"], "alpha"),
    (["denoise", RGB16, "--out", "x.jpeg"], "16 bits"),
    (["denoise", "{in}", "--out", "{file}/x.png"], "afile"),
    (["denoise", "{in}", "--out", "{empty_dir}"], "empty"),
    (["denoise", "{in}", "--out", "{in}"], "input"),
    (["denoise", "{in}", "--out", "{in}", "--overwrite"], "input"),
    # --restarts R > 1 also writes OUT_STEM.std.png / .std.npy: never over an input
    (["denoise", "{in_std}", "--restarts", "2", "--out", "{in}"], "std map"),
    (["denoise", "{in_std}", "--restarts", "2", "--out", "{in}", "--overwrite"], "std map"),
    (["inpaint", "{in}", "--mask", "{mask_black}", "--out", "{mask_black}"], "--mask"),
    (["denoise", "{in}", "--run-dir", "{file}"], "--run-dir"),
    (["denoise", "{in}", "--run-dir", "{file}/sub"], "--run-dir"),
    (["denoise", "{in}", "--checkpoint-every", "5", "--checkpoint-dir", "{file}"], "--checkpoint-dir"),
    (["demo", "--out", "{file}"], "--out"),
    (["batch", "{folder}", "--out", "{file}", "--skip-bad"], "--out"),
    (["batch", "{folder}", "--out", "{folder}", "--skip-bad"], "a.png"),
    (["batch", "{folder}"], "--skip-bad"),
    (["batch", "{folder}", "--task", "inpaint"], "--keep-fraction"),
    (["batch", "{in}"], "in.png"),
    # several processes (checked before the runtime starts; tests/test_distributed.py runs real ones)
    (["batch", "{folder}", "--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"],
     "--process-id"),
    (["batch", "{folder}", "--coordinator", "127.0.0.1:1234", "--num-processes", "0", "--process-id", "0"],
     "--num-processes"),
    (["batch", "{folder}", "--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"], "--coordinator"),
    (["batch", "{folder}", "--coordinator", "127.0.0.1:1234"], "--num-processes"),
    (["batch", "{folder}", "--processes", "2", "--process-id", "1"], "--process-id"),
    (["batch", "{folder}", "--processes", "0"], "--processes"),
    (["batch", "{folder}", "--processes", "2", "--timeout", "nan"], "--timeout"),
    (["flash", "--flash", "{in}", "--no-flash", RGB], "no-flash"),
    # quality
    (["quality", "--seeds", "0"], "--seeds"),
    (["quality", "--variant", "nope"], "--variant"),
    (["quality", "--image", "{junk}"], "junk.png"),
    (["quality", "--out", "{file}/q.md"], "afile"),
    (["quality", "--image", "{in}", "--size", "33"], "--size"),
    # report
    (["report", "{empty_dir}"], "empty"),
    (["report", "{runs_bad_json}"], "metrics.json"),
    (["report", "{runs}"], "steps"),
    (["report", "{runs}", "--out", "{runs}/metrics.json"], "metrics.json"),
    (["report", "{runs}", "--out", "{file}/r.md"], "afile"),
    # the command line itself
    (["frobnicate"], "frobnicate"),
    (["denoise"], "image"),
    (["denoise", "{in}", "--net", "no_such_preset"], "--net"),
    (["denoise", "{in}", "--resume", "--overwrite"], "--overwrite"),
]


@pytest.mark.parametrize("argv,named", BAD_COMMAND_LINES, ids=[" ".join(a) for a, _ in BAD_COMMAND_LINES])
def test_bad_command_lines_give_one_line_exit_2_and_name_the_culprit(argv, named, files, tmp_path, capsys,
                                                                     monkeypatch, no_fit):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]
    line = _one_error_line(capsys, argv)
    assert named in line, line
    for internal in ("_positive_int", "_positive_float", "_fraction", "_seed", "check_memory", "FitConfig",
                     "max_pixels", "resume=True", "overwrite=True", "None"):
        assert internal not in line, line
    # Nothing was written next to the inputs either.
    assert not list(tmp_path.glob("*.partial.*")) and not list(tmp_path.glob("*_denoised.png"))


def test_version_and_help_show_real_defaults(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("dip-jax ")
    with pytest.raises(SystemExit):
        cli.main(["denoise", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "denoising: 3000 steps at lr 0.01" in text, text
    with pytest.raises(SystemExit):
        cli.main(["inpaint", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "text_inpainting:" in text and "restoration_50:" in text
    assert "thresholded at half brightness" in text


def test_a_folder_that_cannot_be_written_is_refused_before_fitting(tmp_path, capsys, no_fit):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        line = _one_error_line(capsys, ["denoise", RGB, "--out", locked / "x.png"])
    finally:
        locked.chmod(stat.S_IRWXU)
    assert "locked" in line and "not writable" in line


def test_a_batch_that_does_not_fit_is_refused_before_the_first_call_and_names_the_file(tmp_path, capsys,
                                                                                        monkeypatch):
    folder = tmp_path / "in"
    io.save_image(folder / "small.png", np.zeros((16, 16, 3), np.float32))
    io.save_image(folder / "huge.png", np.zeros((64, 64, 3), np.float32))
    calls = []
    monkeypatch.setattr(fitting, "fit_samples", lambda *a, **k: calls.append(a) or _identity_fit(*a, **k))
    monkeypatch.setenv("DIP_JAX_COMPILE_CACHE", "0")
    real = memory.estimate_fit

    def estimate(net, fit, size, *args, **kwargs):
        found = real(net, fit, size, *args, **kwargs)
        if size[0] >= 64:  # only the big image's call is too large for this "machine"
            found = dataclasses.replace(found, overhead_bytes=1 << 50)
        return found

    monkeypatch.setattr(memory, "estimate_fit", estimate)
    line = _one_error_line(capsys, ["batch", folder, "--out", tmp_path / "out", "--quick"])
    assert "huge.png" in line and "--restarts" in line and "check_memory" not in line
    assert calls == [] and not (tmp_path / "out" / "small.png").exists()


def test_batch_names_same_stem_outputs_apart_and_skip_bad_records_the_unreadable(tmp_path, capsys, identity_fit):
    folder = tmp_path / "in"
    rng = np.random.default_rng(1)
    first, second = rng.random((16, 16, 3)).astype(np.float32), rng.random((16, 16, 3)).astype(np.float32)
    io.save_image(folder / "a.png", first)
    io.save_image(folder / "a.tif", second)
    (folder / "c.png").write_text("unreadable")
    out = tmp_path / "out"
    assert cli.main(["batch", str(folder), "--out", str(out), "--quick", "--skip-bad", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "a.png -> a_png.png" in captured.out and "a.tif -> a_tif.png" in captured.out
    assert "skipping c.png" in captured.err
    np.testing.assert_allclose(io.load_image(out / "a_png.png").image, first, atol=1 / 255)
    np.testing.assert_allclose(io.load_image(out / "a_tif.png").image, second, atol=1 / 255)
    summary = json.loads((out / "batch.json").read_text())
    assert [e["output"] for e in summary["images"]] == [str(out / "a_png.png"), str(out / "a_tif.png")]
    assert summary["skipped"][0]["image"] == "c.png" and "c.png" in summary["skipped"][0]["error"]


def test_report_out_never_replaces_a_file_without_overwrite(tmp_path, capsys):
    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    metrics = {"task": "denoising", "image": "x", "steps": 10, "restarts": 1, "psnr": 25.0}
    (run / "metrics.json").write_text(json.dumps(metrics))
    target = tmp_path / "report.md"
    target.write_text("my notes")
    line = _one_error_line(capsys, ["report", tmp_path / "runs", "--out", target])
    assert "report.md" in line and "--overwrite" in line and target.read_text() == "my notes"
    assert cli.main(["report", str(tmp_path / "runs"), "--out", str(target), "--overwrite"]) == 0
    assert target.read_text().startswith("# dip_jax experiment report")
    assert json.loads((run / "metrics.json").read_text()) == metrics


def test_overwrite_deletes_only_what_dip_jax_wrote_in_a_checkpoint_folder(tmp_path, capsys, identity_fit):
    ckpt = tmp_path / "ckpts"
    ckpt.mkdir()
    mine = {"notes.txt": b"keep", "metrics.json": b"{}", "ckpt_notes.npz": b"keep", "ckpt.npz.bak": b"keep"}
    for name, content in mine.items():
        (ckpt / name).write_bytes(content)
    checkpoint.save_checkpoint(ckpt / "ckpt.npz", state={"a": np.zeros(2)}, step=3)
    out = tmp_path / "r.png"
    assert cli.main(["denoise", RGB, "--out", str(out), "--quick", "--checkpoint-dir", str(ckpt), "--overwrite",
                     "--no-progress"]) == 0
    for name, content in mine.items():
        assert (ckpt / name).read_bytes() == content, name
    assert not (ckpt / "ckpt.npz").exists()


def test_a_foreign_file_under_a_checkpoint_name_is_refused_not_deleted(tmp_path, capsys, no_fit):
    ckpt = tmp_path / "ckpts"
    ckpt.mkdir()
    np.savez(ckpt / "ckpt.npz", weights=np.ones(3))  # somebody else's archive
    line = _one_error_line(capsys, ["denoise", RGB, "--out", tmp_path / "r.png", "--checkpoint-every", "5",
                                    "--checkpoint-dir", ckpt, "--overwrite"])
    assert "ckpt.npz" in line and "not a dip_jax checkpoint" in line
    assert np.load(ckpt / "ckpt.npz")["weights"].sum() == 3


def test_grey_mask_pixels_are_reported(tmp_path, capsys, identity_fit):
    image = sample_images.sample_image("astronaut", size=32)
    io.save_image(tmp_path / "img.png", image)
    mask = np.ones((32, 32, 1), np.float32)
    mask[:4] = 0.3  # 128 grey pixels, below half: missing
    mask[4:6] = 0.7  # 64 grey pixels, above half: known
    io.save_image(tmp_path / "mask.png", mask)
    assert cli.main(["inpaint", str(tmp_path / "img.png"), "--mask", str(tmp_path / "mask.png"), "--quick",
                     "--out", str(tmp_path / "out.png"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "192 grey pixels" in err and "half brightness" in err


EXPERIMENT_BAD_LINES = [
    (["--out", "{file}", "--quick"], "--out"),
    (["--out", "{file}/sub", "--quick"], "afile"),
    (["--seed", "9" * 30], "--seed"),
    (["--lr", "inf"], "--lr"),
    (["--steps", "x"], "--steps"),
    (["--restarts", "0"], "--restarts"),
    (["--checkpoint-every", "0"], "--checkpoint-every"),
    (["--image", "{junk}", "--quick", "--out", "o"], "junk.png"),
]


@pytest.mark.parametrize("argv,named", EXPERIMENT_BAD_LINES, ids=[" ".join(a) for a, _ in EXPERIMENT_BAD_LINES])
def test_experiment_scripts_refuse_in_one_line(argv, named, files, tmp_path, capsys, monkeypatch, no_fit):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]
    try:
        code = cli.experiment_main(argv, variants={"default": "denoising"}, default_variant="default",
                               description="denoising", prog="denoising.py")
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("denoising.py: error: ") and named in last, err


def test_experiment_command_refuses_in_one_line(tmp_path, capsys, monkeypatch, no_fit):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["experiment", "denoising", "--variant", "sigma99", "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dip-jax: error: --variant 'sigma99'") and "sigma50" in err[0]
    assert cli.main(["experiment", "denoising", "--quick", "--data", "none", "--out", str(tmp_path / "f.txt/x"),
                     "--image", str(tmp_path / "missing.png")]) == 2
    assert capsys.readouterr().err.startswith("dip-jax: error: ")
    assert not any(tmp_path.iterdir())


def test_experiment_resume_without_a_checkpoint_says_it_starts_fresh_in_one_line(tmp_path, capsys, monkeypatch):
    import warnings

    def fresh_then_identity(key, task, samples, **kwargs):
        warnings.warn(checkpoint.StartingFreshWarning("no checkpoint ckpt.npz in 'x'; starting fresh"))
        return _identity_fit(key, task, samples, **kwargs)

    monkeypatch.setattr(fitting, "fit_samples", fresh_then_identity)
    monkeypatch.setenv("DIP_JAX_COMPILE_CACHE", "0")
    code = cli.experiment_main(["--quick", "--data", "none", "--out", str(tmp_path), "--resume", "--steps", "2"],
                               variants={"x": "denoising"}, default_variant="x", description="", prog="exp")
    err = capsys.readouterr().err
    assert code == 0, err
    assert "dip-jax experiment denoising: no checkpoint ckpt.npz in 'x'; starting fresh" in err
    assert "Warning" not in err


def test_batch_resume_reads_every_calls_checkpoint_before_the_first_fit(tmp_path, capsys, monkeypatch):
    folder, out = tmp_path / "in", tmp_path / "out"
    rng = np.random.default_rng(3)
    for name in ("a", "b"):
        io.save_image(folder / f"{name}.png", rng.random((16, 16, 3)).astype(np.float32))
    out.mkdir()
    checkpoint.save_checkpoint(out / "ckpt-0.npz", state={"a": np.zeros(2)}, step=1)
    (out / "ckpt-1.npz").write_bytes(b"PK\x03\x04 a truncated checkpoint")  # the second call's, damaged
    calls = []
    monkeypatch.setattr(fitting, "fit_samples", lambda *a, **k: calls.append(a) or _identity_fit(*a, **k))
    monkeypatch.setenv("DIP_JAX_COMPILE_CACHE", "0")
    line = _one_error_line(capsys, ["batch", folder, "--out", out, "--quick", "--batch-size", "1", "--resume",
                                    "--no-progress"])
    assert "ckpt-1.npz" in line and "damaged" in line
    assert calls == []
