"""Fault test: a real `dip-jax` fit killed with SIGKILL at random points, then resumed.

SIGKILL cannot be caught, so nothing of the Ctrl-C path helps here: what
survives is only what the checkpoint writes (`.tmp`, fsync, rename, previous
kept) and the outputs left on disk. After each kill the last checkpoint must
load with its checksum intact (and so must `ckpt.prev.npz`), outputs already
written must be those of an uninterrupted run, and `--resume` must finish
with exactly the uninterrupted run's result: the 16-bit output image and the
float32 images and history of the final checkpoint, bit for bit (CPU).

The kill times come from a seeded RNG: once the run's checkpoint reaches a
random step, the time to its next checkpoint is measured and the kill comes
a random fraction of that interval after it (so it lands anywhere in the
following steps, checkpoint writes included, whatever the machine's speed).
The subprocesses share the session's XLA compilation cache (conftest), so
only the first run of each problem compiles.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dip_jax import io
from dip_jax.runtime import checkpoint

ROOT = Path(__file__).resolve().parents[1]
STEPS = 120
EVERY = 10


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return io.load_image(ROOT / "data" / "chelsea_64.png").image


def _start(args, env, log: Path) -> subprocess.Popen:
    script = Path(sys.executable).parent / "dip-jax"  # the installed console script, as a user runs it
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "dip_jax.app.cli"]
    with open(log, "w") as f:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd + [str(a) for a in args], env=env, stdout=f, stderr=subprocess.STDOUT)


def _finish(args, env, log: Path, timeout: float = 600) -> str:
    proc = _start(args, env, log)
    assert proc.wait(timeout) == 0, log.read_text()
    return log.read_text()


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 300) -> bool:
    """Poll until `condition()` holds (True) or the process has exited (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return condition()
        time.sleep(0.01)
    raise AssertionError("timed out waiting for the fit to make progress")


def _step(path: Path) -> int:
    try:
        return int(checkpoint.read_meta(path)["step"])
    except (checkpoint.CheckpointError, KeyError):
        return -1


def _kill(proc: subprocess.Popen) -> bool:
    """SIGKILL `proc`; False when it had finished already."""
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    return proc.wait(60) == -signal.SIGKILL


def _kill_in_interval(proc: subprocess.Popen, path: Path, step: int, fraction: float) -> bool:
    """Once `path` reaches `step`, time the next checkpoint interval, and kill `fraction` of one later."""
    if not _wait_for(lambda: _step(path) >= step, proc):
        return False
    reached, t0 = _step(path), time.monotonic()
    if not _wait_for(lambda: _step(path) > reached, proc):
        return False
    time.sleep(fraction * (time.monotonic() - t0))
    return _kill(proc)


def _intact(directory: Path, name: str = "ckpt") -> int:
    """The last good checkpoint (and the previous one, if kept) load and verify; returns its step."""
    last = checkpoint.load_checkpoint(directory / f"{name}.npz")
    assert last.step % EVERY == 0 or last.step == STEPS, last.step
    previous = directory / f"{name}.prev.npz"
    if previous.exists():
        # Equal steps: killed after the previous was kept (a link to the current file) but before the rename.
        assert checkpoint.load_checkpoint(previous).step <= last.step
    return last.step


def _same_final_checkpoint(path: Path, reference: Path) -> None:
    got, want = checkpoint.load_checkpoint(path), checkpoint.load_checkpoint(reference)
    assert got.step == want.step == STEPS
    assert set(got.images) == set(want.images) and set(got.history) == set(want.history)
    for name in want.images:
        np.testing.assert_array_equal(got.images[name], want.images[name], err_msg=name)
    for name in want.history:
        np.testing.assert_array_equal(got.history[name], want.history[name], err_msg=name)
    for a, b in zip(got.state_leaves, want.state_leaves):
        np.testing.assert_array_equal(a, b)


def _denoise_case(tmp_path, env, photo, rng, kills: int) -> None:
    image = tmp_path / "cat.png"
    io.save_image(image, photo[16:48, 16:48], bit_depth=16)  # a 16-bit result shows small differences
    base = ["denoise", image, "--quick", "--add-noise", 25, "--steps", STEPS, "--checkpoint-every", EVERY,
            "--no-progress"]
    _finish(base + ["--out", tmp_path / "ref.png"], env, tmp_path / "ref.log")
    out = tmp_path / "out.png"
    ckpt_dir = tmp_path / "out.ckpt"
    run = base + ["--out", out]
    last_step, killed = 0, 0
    for k in range(kills):
        # A random checkpoint step of this kill's share of the run (past where it resumed), then a random
        # moment later.
        usable = STEPS // EVERY - 3
        low = max(last_step // EVERY + 1, 1 + k * usable // kills)
        if low > usable:
            break
        target = EVERY * int(rng.integers(low, max(low, (k + 1) * usable // kills) + 1))
        log = tmp_path / f"kill{k}.log"
        proc = _start(run + (["--resume"] if k else []), env, log)
        if not _kill_in_interval(proc, ckpt_dir / "ckpt.npz", target, rng.uniform()):
            assert proc.returncode == 0, log.read_text()
            break
        killed += 1
        step = _intact(ckpt_dir)
        assert step > last_step, (step, last_step)
        last_step = step
        # The result is written only after the last step: either absent or already complete.
        if out.exists():
            np.testing.assert_array_equal(io.load_image(out).image, io.load_image(tmp_path / "ref.png").image)
            break
    assert killed >= 1, "every run finished before its kill"
    if not out.exists():
        text = _finish(run + ["--resume"], env, tmp_path / "resume.log")
        assert f"resumed at step {last_step}:" in text, text
    assert io.load_image(out).image.dtype == np.float32 and io.load_image(out).bit_depth == 16
    np.testing.assert_array_equal(io.load_image(out).image, io.load_image(tmp_path / "ref.png").image)
    _same_final_checkpoint(ckpt_dir / "ckpt.npz", tmp_path / "ref.ckpt" / "ckpt.npz")


def test_denoise_killed_once_then_resumed_equals_an_uninterrupted_run(tmp_path, env, photo):
    _denoise_case(tmp_path, env, photo, np.random.default_rng(13), kills=1)


@pytest.mark.slow
def test_denoise_killed_repeatedly_then_resumed_equals_an_uninterrupted_run(tmp_path, env, photo):
    _denoise_case(tmp_path, env, photo, np.random.default_rng(2026), kills=4)


@pytest.mark.slow
def test_batch_killed_between_size_groups_keeps_the_first_and_resumes(tmp_path, env, photo):
    folder = tmp_path / "in"
    io.save_image(folder / "a.png", photo[:32, :32], bit_depth=16)
    io.save_image(folder / "b.png", photo[16:48, 8:56], bit_depth=16)  # another size: a second call
    base = ["batch", folder, "--quick", "--add-noise", 25, "--steps", STEPS, "--checkpoint-every", EVERY,
            "--no-progress"]
    _finish(base + ["--out", tmp_path / "ref"], env, tmp_path / "ref.log")
    out = tmp_path / "out"
    rng = np.random.default_rng(7)
    proc = _start(base + ["--out", out], env, tmp_path / "kill.log")
    # a.png is written when the first call ends; the kill lands as the second call sets up (or begins).
    assert _wait_for(lambda: (out / "a.png").exists(), proc)
    time.sleep(rng.uniform(0.0, 0.5))
    assert _kill(proc), "finished before the kill"
    assert _intact(out, "ckpt-0") == STEPS
    if (out / "ckpt-1.npz").exists():
        _intact(out, "ckpt-1")
    np.testing.assert_array_equal(io.load_image(out / "a.png").image, io.load_image(tmp_path / "ref" / "a.png").image)
    assert not (out / "b.png").exists() and not (out / "batch.json").exists()

    # Killed again, now inside the second call's fit: its checkpoint is intact, a.png untouched.
    proc = _start(base + ["--out", out, "--resume"], env, tmp_path / "kill2.log")
    target = EVERY * int(rng.integers(1, STEPS // EVERY - 2))
    if _kill_in_interval(proc, out / "ckpt-1.npz", target, rng.uniform()):
        resumed_at = _intact(out, "ckpt-1")
        np.testing.assert_array_equal(io.load_image(out / "a.png").image,
                                      io.load_image(tmp_path / "ref" / "a.png").image)
        text = _finish(base + ["--out", out, "--resume"], env, tmp_path / "resume.log")
        assert "a.png (finished earlier, kept)" in text, text
        assert f"resumed at step {resumed_at}:" in text, text
    else:
        text = (tmp_path / "kill2.log").read_text()
        assert proc.returncode == 0, text
    for name in ("a.png", "b.png"):
        np.testing.assert_array_equal(io.load_image(out / name).image,
                                      io.load_image(tmp_path / "ref" / name).image, err_msg=name)
    for name in ("ckpt-0.npz", "ckpt-1.npz"):
        _same_final_checkpoint(out / name, tmp_path / "ref" / name)
