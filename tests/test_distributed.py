"""Multi-process batches on JAX's distributed runtime, with real processes on 127.0.0.1 (issue 16).

Each process fits its share of the images on its own CPU device; process 0
gathers the summaries through the coordinator and writes batch.json. The
two-process runs compile in every process, so they are marked slow (CI's
slow step); the settings checks and the one-line errors of a lone process
run by default.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dip_jax import io
from dip_jax.app import multiprocess
from dip_jax.runtime import checkpoint, sharding
from dip_jax.runtime import distributed

ROOT = Path(__file__).resolve().parent.parent
STEPS = 1200  # long enough (several seconds) that a kill after the first checkpoint lands mid-fit
EVERY = 50
FIT = ["--quick", "--add-noise", "25", "--steps", str(STEPS), "--batch-size", "2", "--no-progress"]


def _cli(*argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dip_jax.app.cli", *map(str, argv)], capture_output=True,
                          text=True, cwd=ROOT, **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _error_line(run: subprocess.CompletedProcess) -> str:
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    assert len(lines) == 1 and lines[0].startswith("dip-jax: error: "), run.stderr
    return lines[0]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Four small images (one size group), sorted names im0..im3."""
    root = tmp_path_factory.mktemp("distributed")
    rng = np.random.default_rng(0)
    for k in range(4):
        io.save_image(root / "in" / f"im{k}.png", rng.random((24, 24, 3)).astype(np.float32))
    return root / "in"


@pytest.fixture(scope="module")
def reference(folder) -> Path:
    """The same batch fitted by one process."""
    out = folder.parent / "one"
    run = _cli("batch", folder, "--out", out, *FIT)
    assert run.returncode == 0, run.stderr
    return out


def _same_results(out: Path, ref: Path) -> dict:
    summary = json.loads((out / "batch.json").read_text())
    ref_summary = json.loads((ref / "batch.json").read_text())
    assert [e["image"] for e in summary["images"]] == [f"im{k}.png" for k in range(4)]
    for k in range(4):
        np.testing.assert_array_equal(io.load_image(out / f"im{k}.png").image, io.load_image(ref / f"im{k}.png").image)
    # The PSNRs are of the float results, before they were quantised to 8 bits.
    for mine, theirs in zip(summary["images"], ref_summary["images"]):
        if "psnr" in mine:
            assert abs(mine["psnr"] - theirs["psnr"]) < 1e-6, (mine, theirs)
    return summary


# --------------------------------------------------------------------------- settings, no processes


def test_settings_from_arguments_and_environment():
    assert distributed.settings(environ={}) is None
    s = distributed.settings("10.0.0.2:1234", 4, 3, environ={})
    assert (s.coordinator, s.num_processes, s.process_id, s.port) == ("10.0.0.2:1234", 4, 3, 1234)
    env = {"JAX_COORDINATOR_ADDRESS": "[::1]:99", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert distributed.settings(environ=env) == distributed.Settings("[::1]:99", 2, 1)
    # An explicit value wins over the environment's.
    assert distributed.settings(process_id=0, environ=env).process_id == 0
    for args, named in [(("h:1", 2, 2), "--process-id"), (("h:1", 0, 0), "--num-processes"),
                        (("h", 2, 0), "--coordinator"), (("h:0", 2, 0), "port"), (("h:1", None, 0), "--num-processes"),
                        (("h:1", "two", 0), "--num-processes")]:
        with pytest.raises(ValueError, match=named):
            distributed.settings(*args, environ={})
    with pytest.raises(ValueError, match=r"\$JAX_PROCESS_ID"):
        distributed.settings(environ=dict(env, JAX_PROCESS_ID="5"))


def test_shares_cover_every_item_once_and_match_process_share():
    for n in range(0, 12):
        for count in range(1, 5):
            parts = distributed.shares(n, count)
            assert sum((list(range(n))[s] for s in parts), []) == list(range(n))
    assert distributed.shares(7, 1)[0] == sharding.process_share(7)  # this test runs as a single process


def test_launcher_drops_processes_from_the_command_line():
    argv = ["batch", "in", "--processes", "2", "--steps", "5", "--processes=3", "--processe", "4", "--out", "o"]
    assert multiprocess._child_argv(argv) == ["batch", "in", "--steps", "5", "--out", "o"]


# --------------------------------------------------------------------------- one-line errors of real processes


def test_an_unreachable_coordinator_is_one_line_after_the_timeout(folder, tmp_path):
    start = time.monotonic()
    run = _cli("batch", folder, "--out", tmp_path / "o", "--coordinator", f"127.0.0.1:{_free_port()}",
               "--num-processes", "2", "--process-id", "1", "--timeout", "2", timeout=120)
    line = _error_line(run)
    assert "could not reach the coordinator" in line and "--timeout" in line, line
    assert time.monotonic() - start < 60
    assert not (tmp_path / "o").exists()


def test_processes_started_with_different_settings_refuse_in_one_line(folder, tmp_path):
    port = _free_port()
    common = ["batch", folder, "--out", tmp_path / "o", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
              "--timeout", "60", "--quick"]
    procs = [subprocess.Popen([sys.executable, "-m", "dip_jax.app.cli", *map(str, common + extra)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for extra in (["--process-id", "0", "--steps", "5"], ["--process-id", "1", "--steps", "7"])]
    runs = [subprocess.CompletedProcess(p.args, p.wait(timeout=180), *p.communicate()) for p in procs]
    for run in runs:
        line = _error_line(run)
        assert "other settings" in line and "--steps" in line, line
    assert not list((tmp_path / "o").glob("*.png"))


# --------------------------------------------------------------------------- two processes (slow)


@pytest.mark.slow
def test_two_processes_fit_each_image_as_one_process_does(folder, reference):
    out = folder.parent / "two"
    start = time.perf_counter()
    run = _cli("batch", folder, "--out", out, *FIT, "--processes", "2", timeout=600)
    seconds = time.perf_counter() - start
    assert run.returncode == 0, run.stdout + run.stderr
    assert "[p0] " in run.stdout and "[p1] " in run.stdout
    summary = _same_results(out, reference)
    assert summary["processes"] == 2
    assert [e["process"] for e in summary["images"]] == [0, 0, 1, 1]
    print(f"2 processes: {seconds:.1f} s")


@pytest.mark.slow
def test_a_killed_process_is_resumed_and_no_image_is_fitted_twice_from_scratch(folder, reference):
    out = folder.parent / "killed"
    argv = ["batch", folder, "--out", out, *FIT, "--checkpoint-every", EVERY, "--processes", "2"]
    launcher = subprocess.Popen([sys.executable, "-m", "dip_jax.app.cli", *map(str, argv)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=ROOT)
    pids, lines, errors = {}, [], []

    def read():
        for line in launcher.stdout:
            lines.append(line)
            if " (pid " in line and line.startswith("dip-jax batch: process "):
                pids[int(line.split()[3])] = int(line.split("(pid ")[1].split(")")[0])

    threading.Thread(target=read, daemon=True).start()
    threading.Thread(target=lambda: errors.extend(launcher.stderr), daemon=True).start()
    # Process 0 fits im0, im1 (call 0, ckpt-0.npz), process 1 im2, im3 (call 1, ckpt-1.npz).
    deadline = time.monotonic() + 400
    while not ((out / "ckpt-0.npz").exists() and (out / "ckpt-1.npz").exists()) and launcher.poll() is None:
        assert time.monotonic() < deadline, "no checkpoints"
        time.sleep(0.02)
    os.kill(pids[1], signal.SIGKILL)
    assert launcher.wait(timeout=300) != 0
    time.sleep(0.5)
    assert not (out / "im3.png").exists(), "process 1 finished before it was killed: raise STEPS"
    assert not (out / "batch.json").exists()
    killed_at = checkpoint.read_meta(out / "ckpt-1.npz")["step"]
    assert 0 < killed_at < STEPS
    last = [e for e in errors if e.strip()][-1]
    assert last.startswith("dip-jax: error: process 1 of 2 was killed by SIGKILL") and "--resume" in last, errors

    run = _cli("batch", *argv[1:], "--resume", timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = _same_results(out, reference)
    by_name = {e["image"]: e for e in summary["images"]}
    for name in ("im2.png", "im3.png"):
        assert by_name[name]["resumed_from"] >= killed_at, by_name[name]
    # Process 0 either had finished (kept) or was stopped by the launcher and checkpointed (resumed).
    for name in ("im0.png", "im1.png"):
        e = by_name[name]
        assert e.get("kept_from_earlier_run") or e.get("resumed_from", 0) > 0, e
