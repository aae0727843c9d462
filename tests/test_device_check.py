"""benchmarks/device_check.py (the one-call GPU check) on the CPU: its quick mode end to end, and a failing part.

The GPU mode differs only in the benchmark's flags and the number of task
presets; what runs there is this code path.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_check.sh"


def _run(args, env_extra=None, timeout=900):
    env = dict(os.environ, PYTHON=sys.executable, **(env_extra or {}))
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _toy_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel, to see the install part put it in the scratch folder's site/."""
    folder.mkdir(parents=True)
    files = {
        "dc_toy/__init__.py": b"VALUE = 7\n",
        "dc_toy-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: dc-toy\nVersion: 0.1\n",
        "dc_toy-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("dc_toy-0.1.dist-info/RECORD,,")
    path = folder / "dc_toy-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("dc_toy-0.1.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def test_a_failing_part_is_recorded_and_the_next_parts_still_run(tmp_path):
    _toy_wheel(tmp_path / "wheels")
    out, work = tmp_path / "out", tmp_path / "work"
    # The benchmark cannot finish in 1 s (stopped, with its worker processes),
    # and the task name does not exist; the install part still succeeds.
    proc = _run([out, "--quick", "--parts", "install", "bench_steps", "tasks", "--timeout", "bench_steps=1",
                 "--tasks", "no_such_task", "--wheels", tmp_path / "wheels", "--work", work], timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "device_check.json").read_text())
    parts = summary["parts"]
    assert list(parts) == ["install", "bench_steps", "tasks"]
    assert parts["install"]["status"] == "ok" and parts["install"]["wheels"] == ["dc_toy-0.1-py3-none-any.whl"]
    assert (work / "site" / "dc_toy" / "__init__.py").read_text() == "VALUE = 7\n"
    assert parts["bench_steps"]["status"] == "timeout" and parts["bench_steps"]["returncode"] is None
    assert parts["tasks"]["status"] == "failed"
    assert summary["tasks"][0]["name"] == "no_such_task" and "unknown task" in summary["tasks"][0]["error"]
    assert summary["ok"] is False and summary["failed_parts"] == ["bench_steps", "tasks"]
    log = (out / "device_check.log").read_text()
    assert "## install" in log and "## tasks" in log and "unknown task 'no_such_task'" in log
    assert "FAILED: bench_steps, tasks" in log


def test_tasks_out_of_time_are_reported_not_run(tmp_path):
    # 3 s: the tasks process is stopped, or finds its deadline too close, before any fit.
    proc = _run([tmp_path / "out", "--quick", "--parts", "tasks", "--tasks", "denoising", "sr_x4",
                 "--timeout", "tasks=3", "--work", tmp_path / "work"], timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "device_check.json").read_text())
    assert summary["parts"]["tasks"]["status"] in ("failed", "timeout")
    assert [t["name"] for t in summary["tasks"]] == ["denoising", "sr_x4"]
    assert all(t["status"] in ("skipped", "not run") for t in summary["tasks"]), summary["tasks"]


def test_bad_arguments_are_one_line_with_exit_2(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("device_check", ROOT / "benchmarks" / "device_check.py")
    device_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(device_check)
    for argv, message in [([], "give the output folder"),
                          ([str(tmp_path), "--timeout", "tasks"], "PART=SECONDS"),
                          ([str(tmp_path), "--timeout", "tasks=-1"], "must be positive"),
                          ([str(tmp_path), "--task-steps", "0"], "--task-steps must be >= 1")]:
        assert device_check.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("device_check: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "device_check.json").exists()


@pytest.mark.slow
def test_quick_check_runs_every_part_and_writes_json_and_log(tmp_path, shared_xla_cache):
    out = tmp_path / "out"
    proc = _run([out, "--quick", "--work", tmp_path / "work"],
                env_extra={"JAX_COMPILATION_CACHE_DIR": str(shared_xla_cache)})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads((out / "device_check.json").read_text())
    assert summary["mode"] == "quick" and summary["ok"] is True and summary["failed_parts"] == []
    assert list(summary["parts"]) == ["install", "env", "bench_steps", "bench_restarts", "bench_memory", "tasks"]
    for name, part in summary["parts"].items():
        assert part["status"] == "ok" and part["returncode"] == 0, (name, part)
    env = summary["parts"]["env"]["result"]
    assert env["jax_backend"] == "cpu" and all(v is not None for v in env["dependencies"].values())
    assert "dm-pix" in env["dependencies"]
    bench = summary["benchmark"]
    assert bench["step_s_32_dip_jax"] > 0 and bench["images_per_s_R2"] > 0 and bench["peak_rss_mb_32_dip_jax"] > 0
    assert [t["name"] for t in summary["tasks"]] == ["denoising", "sr_x4"]
    for t in summary["tasks"]:
        assert t["status"] == "ok" and t["finite"] is True and t["steps"] == 2 and t["seconds"] > 0, t
    log = (out / "device_check.log").read_text()
    for name in summary["parts"]:
        assert f"## {name}" in log and f"{name}: ok" in log
    assert "| size | dip_jax s/step |" in log and "all parts ok" in log
    assert sorted(p.name for p in out.iterdir()) == ["device_check.json", "device_check.log"]
