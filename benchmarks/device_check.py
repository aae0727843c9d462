"""One call on a lent GPU machine: install the carried wheels, record the device, run the GPU benchmark and a short fit of every task preset.

The GPU machine cannot reach a package registry and is lent for minutes, so
everything it needs travels with the working tree and one command does the
rest. From the repository root:

    python benchmarks/device_check.py --fetch-wheels     # here, online: fill benchmarks/wheels/
    bash benchmarks/device_check.sh OUT_DIR              # there: about 8 minutes
    bash benchmarks/device_check.sh OUT_DIR --quick      # any CPU: tiny, 2-3 minutes on 2 cores (the test)

Parts, in this order, each in its own process group with its own time limit
(`--timeout PART=SECONDS`), all within `--budget` seconds; a part that fails
or runs out of time is recorded and the next one still runs:

- install: `pip install --no-index --no-deps --target WORK/site` of the
  wheels in `--wheels` (default benchmarks/wheels/), put first on PYTHONPATH
  for the other parts, so the machine's own jax and torch are left as they are;
- env: Python, the CPU model (lscpu), nvidia-smi, jax's backend and devices,
  torch and CUDA, the version of every dependency in pyproject.toml (fails
  if one does not import, or if jax is not on a GPU outside --quick);
- bench_steps, bench_restarts, bench_memory: `benchmarks/benchmark.py --gpu
  --parts steps|restarts|memory` (three runs, so a hang in one keeps the
  others' numbers); in --quick mode `--quick --no-torch` on the CPU;
- tasks: every preset of `dip_jax.app.tasks` in its quick form (small image,
  narrow net, its own few hundred steps; `--task-steps N` to change), on the
  stand-in images, one process; each fit's time, PSNR or loss, and whether
  its output is finite. --quick fits two presets for 2 steps.

Writes OUT_DIR/device_check.json (rewritten after every part, so a run
stopped from outside keeps what finished) and OUT_DIR/device_check.log (every
part's output). Exit status 0 when every part succeeded, 1 otherwise, 2 for
bad arguments.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARK = ROOT / "benchmarks" / "benchmark.py"
DEFAULT_WHEELS = ROOT / "benchmarks" / "wheels"
PARTS = ("install", "env", "bench_steps", "bench_restarts", "bench_memory", "tasks")
# Seconds per part on the GPU machine; the budget cuts the last ones short if
# the earlier ones run long, and the tasks part stops starting fits in time.
GPU_TIMEOUTS = {"install": 60, "env": 60, "bench_steps": 120, "bench_restarts": 180, "bench_memory": 60,
                "tasks": 150}
GPU_BUDGET = 480.0
QUICK_TIMEOUTS = {"install": 60, "env": 60, "bench_steps": 150, "bench_restarts": 150, "bench_memory": 120,
                  "tasks": 150}
QUICK_BUDGET = 600.0
QUICK_TASKS = ("denoising", "sr_x4")
QUICK_TASK_STEPS = 2
# A part is not started with less than this left of the budget.
MIN_PART_SECONDS = 10.0

# What the GPU machine's image lacks of pyproject.toml's dependencies (its
# package list, read 2026-11-17, holds all the others); the env part checks
# every dependency there, so a change of image shows up in its report.
DEVICE_MISSING = ("dm-pix",)
DEVICE_PYTHON = "3.12"
DEVICE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                    "manylinux2014_x86_64", "manylinux1_x86_64")
# The whole working tree that travels is limited to 64 MiB; the wheels must leave room for it.
WHEELS_LIMIT_BYTES = 16 * 2**20
# Distribution name -> import name where they differ.
IMPORT_NAMES = {"dm-pix": "dm_pix", "scikit-image": "skimage", "pillow": "PIL"}


class UsageError(ValueError):
    pass


# --------------------------------------------------------------------------- here: fetch the wheels


def _dist_key(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def fetch_wheels(dest: Path, *, python: str = sys.executable) -> list[Path]:
    """Download the wheels of DEVICE_MISSING (the versions installed here, which the tests ran) into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for dist in DEVICE_MISSING:
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            raise UsageError(f"{dist} is not installed here; install the project first (pip install -e .)") from None
        # One version of each: pip refuses an install with two.
        for old in dest.glob(f"{_dist_key(dist)}-*.whl"):
            old.unlink()
        cmd = [python, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", DEVICE_PYTHON, "--implementation", "cp", "--dest", str(dest)]
        for plat in DEVICE_PLATFORMS:
            cmd += ["--platform", plat]
        subprocess.run(cmd + [f"{dist}=={version}"], check=True)
    wheels = sorted(dest.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    for w in wheels:
        print(f"{w.name}: {w.stat().st_size / 1024:.0f} KiB")
    print(f"{len(wheels)} wheels, {total / 2**20:.2f} MiB in {dest}")
    if total > WHEELS_LIMIT_BYTES:
        raise UsageError(f"the wheels in {dest} take {total / 2**20:.1f} MiB, over the "
                         f"{WHEELS_LIMIT_BYTES / 2**20:.0f} MiB that leaves room for the working tree; remove old ones")
    return wheels


# --------------------------------------------------------------------------- children: env and tasks


def _lscpu_model() -> str | None:
    if shutil.which("lscpu") is None:
        return None
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    models = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name:")]
    return "; ".join(models) or None


def _nvidia_smi() -> list[str] | None:
    if shutil.which("nvidia-smi") is None:
        return None
    res = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                          "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    return res.stdout.strip().splitlines() if res.returncode == 0 else [f"nvidia-smi failed: {res.stderr.strip()}"]


def _project_dependencies() -> list[str]:
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as handle:
        deps = tomllib.load(handle)["project"]["dependencies"]
    return [re.match(r"[A-Za-z0-9_.-]+", d).group(0) for d in deps]


def child_env(*, gpu: bool) -> dict:
    import importlib

    out: dict = {"python": sys.version.split()[0], "executable": sys.executable, "machine": platform.machine(),
                 "cpu_model": _lscpu_model(), "cpu_count": os.cpu_count(), "nvidia_smi": _nvidia_smi()}
    print(f"python {out['python']} ({out['executable']}); CPU {out['cpu_model']} x {out['cpu_count']}", flush=True)
    print(f"nvidia-smi: {out['nvidia_smi']}", flush=True)
    errors = []
    deps = {}
    for dist in _project_dependencies():
        try:
            importlib.import_module(IMPORT_NAMES.get(dist, dist.replace("-", "_")))
            deps[dist] = importlib.metadata.version(dist)
        except Exception as err:  # noqa: BLE001  (every reason a dependency is unusable is reported)
            deps[dist] = None
            errors.append(f"dependency {dist} does not import: {type(err).__name__}: {err}")
    out["dependencies"] = deps
    print("dependencies: " + ", ".join(f"{k} {v}" for k, v in deps.items()), flush=True)
    import jax

    out["jax_backend"] = jax.default_backend()
    out["jax_devices"] = [f"{d.platform}:{d.device_kind}" for d in jax.devices()]
    print(f"jax {jax.__version__}: backend {out['jax_backend']}, devices {out['jax_devices']}", flush=True)
    if gpu and out["jax_backend"] not in ("gpu", "cuda", "rocm"):
        errors.append(f"jax runs on {out['jax_backend']!r}, not a GPU: the GPU benchmark will refuse to run")
    try:
        import torch

        out["torch"] = torch.__version__
        out["torch_cuda"] = torch.cuda.is_available()
        out["torch_device"] = torch.cuda.get_device_name(0) if out["torch_cuda"] else None
        print(f"torch {out['torch']}: CUDA {out['torch_cuda']} {out['torch_device'] or ''}", flush=True)
    except ImportError:
        out["torch"] = None
    try:
        import dip_jax  # noqa: F401

        out["dip_jax"] = str(Path(dip_jax.__file__).parent)
    except Exception as err:  # noqa: BLE001
        errors.append(f"dip_jax does not import: {type(err).__name__}: {err}")
    out["errors"] = errors
    return out


def child_tasks(result_path: Path, names: list[str] | None, *, steps: int | None, deadline: float,
                work: Path) -> int:
    """Fit each task's quick form on its stand-in image (`names` None: every preset).

    Writes to `result_path` one JSON line with the planned names, then one per task as it ends.
    """
    import jax
    import numpy as np

    from dip_jax.app import fitting, observations, runs, tasks

    names = list(tasks.TASKS) if not names else names
    failed = 0
    key = jax.random.key(0)
    with open(result_path, "a") as out:
        out.write(json.dumps({"planned": names}) + "\n")
        out.flush()
        for t, name in enumerate(names):
            record: dict = {"name": name}
            if time.time() > deadline - 5:
                record.update(status="skipped", error="out of time before it started")
            else:
                t0 = time.perf_counter()
                try:
                    task = tasks.task(name).quick_variant().with_steps(steps)
                    k_data, k_fit = jax.random.split(jax.random.fold_in(key, t))
                    samples = observations.prepare_samples(k_data, task, data="none", quick=True)
                    classifier = None
                    if task.classifier is not None:
                        model, params, _ = fitting.classifier_for(task, None, quick=True, workdir=work)
                        classifier = (model, params)
                    results = fitting.fit_samples(k_fit, task, samples, classifier=classifier)
                    metrics = runs.sample_metrics(task, samples[0], results[0])
                    finite = bool(np.all(np.isfinite(results[0].restored)) and np.isfinite(metrics["final_loss"]))
                    record.update(
                        status="ok" if finite else "failed",
                        seconds=round(time.perf_counter() - t0, 2), fit_seconds=metrics["seconds"],
                        steps=metrics["steps"], shape=list(results[0].restored.shape),
                        final_loss=metrics["final_loss"], psnr=metrics.get("psnr"), finite=finite,
                    )
                    if not finite:
                        record["error"] = "the output or the loss is not finite"
                except Exception as err:  # noqa: BLE001  (one broken preset must not hide the others)
                    traceback.print_exc()
                    record.update(status="failed", seconds=round(time.perf_counter() - t0, 2),
                                  error=f"{type(err).__name__}: {err}")
            failed += record["status"] != "ok"
            print(f"task {name}: {record['status']} "
                  + (f"({record['seconds']} s, loss {record['final_loss']:.4g}"
                     + (f", PSNR {record['psnr']:.2f} dB)" if record.get("psnr") is not None else ")")
                     if record["status"] == "ok" else record.get("error", "")), flush=True)
            out.write(json.dumps(record) + "\n")
            out.flush()
    return 1 if failed else 0


# --------------------------------------------------------------------------- the driver


class _Log:
    """Everything the parts print, to the log file and to stdout."""

    def __init__(self, path: Path):
        self.handle = open(path, "a", encoding="utf-8", errors="replace")
        self.lock = threading.Lock()

    def write(self, text: str) -> None:
        with self.lock:
            self.handle.write(text)
            self.handle.flush()
            sys.stdout.write(text)
            sys.stdout.flush()


def _run_part(cmd: list[str], *, env: dict, timeout: float, log: _Log) -> tuple[int | None, list[str]]:
    """Run `cmd` in its own process group; (exit status or None on timeout, its output lines)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            env=env, cwd=str(ROOT), start_new_session=True)
    lines: list[str] = []

    def pump():
        for line in proc.stdout:
            lines.append(line)
            log.write(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        code = None
    # The whole group, also after a normal exit: a worker process left behind
    # would hold the GPU's memory during the next part.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    reader.join(timeout=10)
    return code, lines


def _last_json(lines: list[str]) -> dict | None:
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def _bench_command(part: str, *, quick: bool) -> list[str]:
    which = part.removeprefix("bench_")
    if quick:
        cmd = [sys.executable, str(BENCHMARK), "--quick", "--no-torch", "--rounds", "1", "--parts", which]
        if which == "restarts":
            cmd += ["--restarts", "1", "2"]
        return cmd
    return [sys.executable, str(BENCHMARK), "--gpu", "--parts", which]


def _write_json(path: Path, summary: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, path)


def _parse_timeouts(items: list[str] | None, defaults: dict) -> dict:
    timeouts = dict(defaults)
    for item in items or []:
        part, sep, value = item.partition("=")
        if not sep or part not in PARTS:
            raise UsageError(f"--timeout takes PART=SECONDS with PART one of {', '.join(PARTS)}; got {item!r}")
        try:
            timeouts[part] = float(value)
        except ValueError:
            raise UsageError(f"--timeout {item!r}: SECONDS must be a number") from None
        if timeouts[part] <= 0:
            raise UsageError(f"--timeout {item!r}: SECONDS must be positive")
    return timeouts


def _json_lines(path: Path) -> list[dict]:
    """The records of a result file; a last line cut short by a stopped process is dropped."""
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return records


def _part_command(part: str, *, quick: bool, wheels: Path, site: Path, result_file: Path, work: Path,
                  deadline: float, task_names: list[str] | None, task_steps: int | None,
                  info: dict, log: _Log) -> list[str] | None:
    me = [sys.executable, str(Path(__file__).resolve())]
    if part == "install":
        found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
        info["wheels"] = [w.name for w in found]
        if not found:
            log.write(f"no wheels in {wheels}: nothing to install\n")
            return None
        return [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
                "--upgrade", "--disable-pip-version-check", "--target", str(site)] + [str(w) for w in found]
    if part == "env":
        return me + ["--child", "env", "--result", str(result_file)] + (["--quick"] if quick else [])
    if part == "tasks":
        cmd = me + ["--child", "tasks", "--result", str(result_file), "--work", str(work), "--deadline", str(deadline)]
        if task_names:
            cmd += ["--tasks", *task_names]
        if task_steps is not None:
            cmd += ["--task-steps", str(task_steps)]
        return cmd
    return _bench_command(part, quick=quick)


def _one_part(part: str, info: dict, summary: dict, *, env: dict, log: _Log, work: Path, **options) -> None:
    """Run one part and fill `info` (status, seconds, returncode, error, result) and `summary`."""
    t0 = time.time()
    result_file = work / f"{part}.result"
    result_file.unlink(missing_ok=True)
    cmd = _part_command(part, result_file=result_file, work=work, deadline=t0 + info["timeout_s"], info=info,
                        log=log, **options)
    code, lines = (0, []) if cmd is None else _run_part(cmd, env=env, timeout=info["timeout_s"], log=log)
    info["seconds"] = round(time.time() - t0, 1)
    info["returncode"] = code
    errors = []
    if code is None:
        errors.append(f"did not finish within {info['timeout_s']:.0f} s (stopped)")
    elif code != 0:
        errors.append(f"exited with status {code} (see the log)")
    if part == "env" and result_file.is_file():
        info["result"] = json.loads(result_file.read_text())
        errors += info["result"].get("errors", [])
    elif part == "tasks":
        records = _json_lines(result_file)
        planned = next((r["planned"] for r in records if "planned" in r), options["task_names"] or [])
        done = [r for r in records if "name" in r]
        seen = {r["name"] for r in done}
        done += [{"name": n, "status": "not run", "error": "the part stopped before it"}
                 for n in planned if n not in seen]
        summary["tasks"] = done
        bad = [r["name"] for r in done if r["status"] != "ok"]
        if not done:
            errors.append("no task was fitted")
        elif bad:
            errors.append(f"{len(bad)} of {len(done)} tasks did not succeed: {', '.join(bad)}")
    elif part.startswith("bench_"):
        result = _last_json(lines)
        if result is not None:
            info["result"] = result
            summary["benchmark"].update({k: v for k, v in result.items() if v is not None})
        elif code is not None:
            errors.append("the benchmark printed no JSON result")
    info["status"] = "ok" if not errors else "timeout" if code is None else "failed"
    if errors:
        info["error"] = "; ".join(errors)


def check(out_dir: Path, *, quick: bool, parts: list[str], wheels: Path, work: Path, budget: float,
          timeouts: dict, task_names: list[str] | None, task_steps: int | None) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "device_check.json"
    log = _Log(out_dir / "device_check.log")
    site = work / "site"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # The carried wheels first, then this checkout (the project is used in place, not installed).
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    start = time.time()
    summary: dict = {
        "mode": "quick" if quick else "gpu",
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "budget_s": budget, "parts": {}, "benchmark": {}, "tasks": [],
    }
    log.write(f"# device_check ({summary['mode']}) {summary['started_utc']}: parts {', '.join(parts)}, "
              f"budget {budget:.0f} s\n")
    for part in parts:
        left = budget - (time.time() - start)
        info: dict = {"timeout_s": round(min(timeouts[part], max(left, 0)), 1)}
        summary["parts"][part] = info
        log.write(f"\n## {part} (limit {info['timeout_s']:.0f} s)\n")
        if left < MIN_PART_SECONDS:
            info.update(status="skipped", error=f"only {left:.0f} s of the {budget:.0f} s budget left")
        else:
            try:
                _one_part(part, info, summary, env=env, log=log, work=work, quick=quick, wheels=wheels, site=site,
                          task_names=task_names, task_steps=task_steps)
            except Exception as err:  # noqa: BLE001  (the next parts still run)
                log.write(traceback.format_exc())
                info.update(status="failed", error=f"device_check could not run it: {type(err).__name__}: {err}")
        log.write(f"{part}: {info['status']} ({info.get('seconds', 0)} s)"
                  f"{': ' + info['error'] if 'error' in info else ''}\n")
        _write_json(json_path, summary)
    summary["failed_parts"] = [p for p, i in summary["parts"].items() if i["status"] != "ok"]
    summary["ok"] = not summary["failed_parts"]
    summary["seconds"] = round(time.time() - start, 1)
    _write_json(json_path, summary)
    # The end of the output is what a remote call shows first: the parts and the numbers, once more.
    log.write("\n## summary\n" + "".join(f"{p}: {i['status']}\n" for p, i in summary["parts"].items()))
    if summary["benchmark"]:
        log.write("benchmark: " + json.dumps(summary["benchmark"], sort_keys=True) + "\n")
    for t in summary["tasks"]:
        log.write(f"task {t['name']}: {t['status']}, {t.get('seconds', '-')} s, loss {t.get('final_loss', '-')}, "
                  f"PSNR {t.get('psnr', '-')}\n")
    log.write(f"\n# device_check: {'all parts ok' if summary['ok'] else 'FAILED: ' + ', '.join(summary['failed_parts'])}"
              f" ({summary['seconds']} s); {json_path}\n")
    log.handle.close()
    return 0 if summary["ok"] else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="device_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", metavar="OUT_DIR", help="where device_check.json and .log go")
    parser.add_argument("--quick", action="store_true", help="tiny, on the CPU (benchmark --quick, 2 presets, 2 steps)")
    parser.add_argument("--fetch-wheels", action="store_true",
                        help=f"download the wheels the GPU machine lacks ({', '.join(DEVICE_MISSING)}) into --wheels")
    parser.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS, help="the carried wheels (default %(default)s)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a new temporary folder)")
    parser.add_argument("--budget", type=float, help=f"seconds for all parts (default {GPU_BUDGET:.0f}, "
                                                     f"--quick {QUICK_BUDGET:.0f})")
    parser.add_argument("--timeout", action="append", metavar="PART=SECONDS", help="one part's time limit")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which parts (default all)")
    parser.add_argument("--tasks", nargs="+", metavar="NAME", help="task presets to fit (default: all; --quick: "
                                                                   f"{' '.join(QUICK_TASKS)})")
    parser.add_argument("--task-steps", type=int, metavar="N", help="steps per preset (default: its quick form's; "
                                                                    f"--quick {QUICK_TASK_STEPS})")
    parser.add_argument("--child", choices=["env", "tasks"], help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "env":
        args.result.write_text(json.dumps(child_env(gpu=not args.quick), indent=2) + "\n")
        return 0
    if args.child == "tasks":
        return child_tasks(args.result, args.tasks, steps=args.task_steps, deadline=args.deadline, work=args.work)
    try:
        if args.fetch_wheels:
            fetch_wheels(args.wheels)
            return 0
        if not args.out_dir:
            raise UsageError("give the output folder: device_check.sh OUT_DIR [--quick] (or --fetch-wheels)")
        if args.task_steps is not None and args.task_steps < 1:
            raise UsageError(f"--task-steps must be >= 1, got {args.task_steps}")
        budget = args.budget if args.budget is not None else QUICK_BUDGET if args.quick else GPU_BUDGET
        if budget <= 0:
            raise UsageError(f"--budget must be a positive number of seconds, got {budget}")
        timeouts = _parse_timeouts(args.timeout, QUICK_TIMEOUTS if args.quick else GPU_TIMEOUTS)
        # None: every preset, listed by the tasks part (importing dip_jax here would need the wheels first).
        task_names = args.tasks or (list(QUICK_TASKS) if args.quick else None)
        task_steps = args.task_steps if args.task_steps is not None else QUICK_TASK_STEPS if args.quick else None
    except UsageError as err:
        print(f"device_check: error: {err}", file=sys.stderr)
        return 2
    parts = [p for p in PARTS if p in args.parts]
    with tempfile.TemporaryDirectory(prefix="device_check_") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        return check(Path(args.out_dir), quick=args.quick, parts=parts, wheels=args.wheels, work=work,
                     budget=budget, timeouts=timeouts, task_names=task_names, task_steps=task_steps)


if __name__ == "__main__":
    sys.exit(main())
