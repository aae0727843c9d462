"""benchmarks/benchmark.py --quick: it runs end to end and its last line is the JSON summary.

Shape only: no timing assertions (timings on a shared 2-core machine mean
nothing). Slow (it compiles several tiny fits and starts four processes); CI
runs it after the default suite (.ci/run).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEADLINE = ("cpu_step_ratio_vs_torch_256", "restart_step_ratio_R4", "compile_s_256", "peak_rss_ratio_vs_torch_512")


@pytest.mark.slow
def test_quick_benchmark_ends_with_the_json_line(shared_xla_cache):
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(shared_xla_cache))
    # A million restarts cannot be set up (the memory check refuses them):
    # reported, and the other counts still run.
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "benchmark.py"), "--quick",
                           "--restarts", "1", "2", "4", "1000000"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    for key in HEADLINE:
        assert key in result, key
    assert result["quick"] is True
    assert result["restart_step_ratio_R4"] > 0 and result["compile_s_256"] >= 0
    assert result["images_per_s_R4"] > 0
    assert "this fit needs" in result["restart_error_R1000000"] and "images_per_s_R1000000" not in result
    assert result["restart_batching_R4"] == "map"
    try:
        import torch  # noqa: F401
    except ImportError:
        assert result["cpu_step_ratio_vs_torch_256"] is None
    else:
        assert result["param_count_torch"] == result["param_count_dip_jax"] == 2_217_831
        assert result["golden_max_abs_diff"] < 1e-4 and result["same_weights_max_abs_diff"] < 1e-4
        assert result["cpu_step_ratio_vs_torch_256"] > 0 and result["peak_rss_ratio_vs_torch_512"] > 0
    assert "| size | dip_jax s/step |" in proc.stdout


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("dip_jax_benchmark", ROOT / "benchmarks" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_mode_stops_on_a_cpu_only_jax_and_runs_without_a_cpu_only_torch(capsys):
    bench = _load_benchmark()
    with pytest.raises(SystemExit, match=r"jax\[cuda12\]"):
        bench.gpu_preflight("cpu", True)
    assert bench.gpu_preflight("gpu", True) is True
    assert bench.gpu_preflight("gpu", None) is False  # torch not installed
    assert bench.gpu_preflight("gpu", False) is False
    assert "no CUDA device" in capsys.readouterr().out
