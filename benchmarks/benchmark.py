"""dip_jax against a PyTorch reference of the same default skip net, side by side.

Run from the repository root:

    python benchmarks/benchmark.py            # CPU: 128/256/512 px, restarts 1/2/4/8, memory
    python benchmarks/benchmark.py --quick    # tiny sizes, a few steps (what CI runs)
    python benchmarks/benchmark.py --gpu      # 512 px, restarts 1/4/16/64, torch on CUDA

It prints a table and, as its last line, one JSON object with (at least)
`cpu_step_ratio_vs_torch_256` (dip_jax seconds per step / torch's; lower is
better), `restart_step_ratio_R4` (seconds per restart-step fitting 4 restarts
in one call / fitting 1), `compile_s_256` (compiling the first chunk; the
`dj.prepare` before it, which compiles the initialiser, is
`prepare_s_256`) and `peak_rss_ratio_vs_torch_512` (peak resident memory of a process fitting one
512 px image, dip_jax / torch). With `--gpu` the step ratio is
`gpu_step_ratio_vs_torch_512`, and `images_per_s_ratio_R16` (images per
second fitting 16 restarts in one call / fitting 1) and
`peak_device_mem_ratio_vs_torch_512` (peak GPU memory) are added; `--gpu`
stops at once unless JAX runs on a GPU, and runs without torch when torch
sees no CUDA device. A restart count whose fit cannot be set up (refused by
the memory check, out of device memory) is reported as `restart_error_R<R>`
and the others still run; under 'vmap' the engine fits restarts that do not
all fit in memory in groups that do (`restart_batching_R<R>` says how). In
`--quick` mode the same keys are measured at the tiny sizes listed under
`sizes_used` (their numbers say nothing about performance).

How it measures (the machine may be shared, so only ratios taken in the same
run mean anything):
- dip_jax steps are the engine's own (`dj.prepare` + `dj.run`, one
  chunk per timing call): input noise, forward, loss, gradients, Adam, output
  averaging, PSNR and whatever else the engine does per step.
- torch steps are `torch_skip.TorchFit.step` (the original notebook's
  closure: the same work).
- dip_jax and torch run in two worker processes that take turns, round after
  round, so both see the same background load; a ratio is the median of the
  per-round ratios.
- Peak memory: a fresh process per framework fits one 512 px image (setup,
  compile, two steps) and reports its peak RSS (`ru_maxrss`) and, on a GPU,
  the device's peak allocation.
- Before timing it proves the reference is the same net: parameter counts
  equal (2,217,831 for the default net), the reference reproduces the golden
  fixture of the original, and with the reference's weights converted by
  `dip_jax.convert.from_torch_state_dict` both give the same output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GOLDEN = ROOT / "tests" / "golden" / "skip_default_small.npz"
PARTS = ("steps", "restarts", "memory")
DENOISING = dict(learning_rate=0.01, reg_noise_std=1.0 / 30.0, ema_decay=0.99)


def _net_config(quick: bool):
    from dip_jax import nets

    cfg = nets.preset("default")
    # Quick mode: 3 scales of 16 channels, so CI compiles in seconds.
    return nets.narrow(cfg, width=16, scales=3) if quick else cfg


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------
# Workers: one process per framework, driven over stdin/stdout (JSON lines).


class _JaxSide:
    """Fits held by name; `time` advances one by `steps` engine steps."""

    def __init__(self, quick: bool):
        import jax
        import jax.numpy as jnp

        self.jax = jax
        jnp.zeros(()).block_until_ready()  # backend start-up is not compile time
        self.quick = quick
        self.fits: dict = {}

    def setup(self, name, size, restarts, steps, seed=0):
        import numpy as np
        import dip_jax as dj

        cfg = _net_config(self.quick)
        fit_config = dj.FitConfig(num_steps=steps, chunk_size=steps, **DENOISING)
        y = np.random.default_rng(seed).uniform(0, 1, (1, size, size, 3)).astype(np.float32)
        t0 = time.perf_counter()
        problem, state, data = dj.prepare(self.jax.random.key(seed), cfg, fit_config, y, restarts=restarts)
        self.jax.block_until_ready(state)
        prepare = time.perf_counter() - t0
        # The first call compiles the chunk; one active step of it is subtracted below.
        t0 = time.perf_counter()
        state, _ = dj.run(problem, state, data, num_steps=1)
        self.jax.block_until_ready(state)
        first = time.perf_counter() - t0
        self.fits[name] = [problem, state, data]
        step = self.time(name, steps) / steps
        return {"compile_s": max(first - step, 0.0), "step_s": step, "prepare_s": prepare,
                "batch_mode": problem.batch_mode, "vmap_group_size": problem.vmap_group_size}

    def time(self, name, steps):
        import dip_jax as dj

        problem, state, data = self.fits[name]
        t0 = time.perf_counter()
        state, _ = dj.run(problem, state, data, num_steps=steps)
        self.jax.block_until_ready(state)
        elapsed = time.perf_counter() - t0
        self.fits[name][1] = state
        return elapsed

    def drop(self, name):
        self.fits.pop(name, None)
        return {}


class _TorchSide:
    def __init__(self, quick: bool, device: str):
        import torch

        self.torch = torch
        self.quick = quick
        self.device = device
        self.fits: dict = {}
        if device.startswith("cuda"):
            # As the original notebooks set it: cuDNN picks its fastest conv algorithms.
            torch.backends.cudnn.benchmark = True

    def _sync(self):
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()

    def setup(self, name, size, restarts, steps, seed=0):
        from benchmarks import torch_skip

        torch = self.torch
        if restarts != 1:
            raise ValueError("the torch reference fits one net at a time (the original's loop)")
        cfg = _net_config(self.quick)
        gen = torch.Generator().manual_seed(seed)
        net = torch_skip.build_skip(cfg)
        torch_skip.default_init_seeded(net, seed)
        net = net.to(self.device)
        z = (torch.rand(1, cfg.num_input_channels, size, size, generator=gen) * 0.1).to(self.device)
        target = torch.rand(1, 3, size, size, generator=gen).to(self.device)
        fit = torch_skip.TorchFit(net, z, target, lr=DENOISING["learning_rate"],
                                  reg_noise_std=DENOISING["reg_noise_std"], ema_decay=DENOISING["ema_decay"])
        self.fits[name] = fit
        t0 = time.perf_counter()
        fit.step()
        self._sync()
        first = time.perf_counter() - t0
        step = self.time(name, steps) / steps
        return {"compile_s": max(first - step, 0.0), "step_s": step}

    def time(self, name, steps):
        fit = self.fits[name]
        self._sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            fit.step()
        self._sync()
        return time.perf_counter() - t0

    def drop(self, name):
        self.fits.pop(name, None)
        if self.device.startswith("cuda"):
            self.torch.cuda.empty_cache()
        return {}


def _worker_main(kind: str, quick: bool, device: str) -> None:
    side = _JaxSide(quick) if kind == "jax" else _TorchSide(quick, device)
    out = sys.stdout
    sys.stdout = sys.stderr  # anything else a library prints must not break the protocol
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg.pop("cmd")
        if cmd == "exit":
            break
        try:
            result = {"ok": getattr(side, cmd)(**msg)}
        except Exception as err:  # reported to the coordinator, which stops with it
            result = {"error": f"{type(err).__name__}: {err}"}
        out.write(json.dumps(result) + "\n")
        out.flush()


class _Worker:
    def __init__(self, kind: str, quick: bool, device: str = "cpu"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--device", device]
        if quick:
            cmd.append("--quick")
        self.kind = kind
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
        self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.kind} worker exited (see its stderr above)")
        msg = json.loads(line)
        if "error" in msg:
            raise RuntimeError(f"{self.kind} worker: {msg['error']}")
        return msg.get("ok", msg)

    def call(self, cmd, **kwargs):
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
            self.proc.wait(timeout=60)


def _peak_main(kind: str, size: int, steps: int, quick: bool, device: str) -> None:
    """A fresh process: fit one image for `steps` steps, print its peak memory (MiB).

    Host: peak RSS. On a GPU also the device's peak (JAX: the allocator's
    `peak_bytes_in_use`; torch: `max_memory_allocated`), which is what a GPU
    fit is limited by.
    """
    side = _JaxSide(quick) if kind == "jax" else _TorchSide(quick, device)
    side.setup("peak", size, 1, steps)
    result = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.startswith("cuda"):
        if kind == "jax":
            import jax

            stats = jax.local_devices()[0].memory_stats() or {}
            peak = stats.get("peak_bytes_in_use")
        else:
            peak = side.torch.cuda.max_memory_allocated()
        result["peak_device_mb"] = None if peak is None else peak / 2**20
    print(json.dumps(result))


def _peak_mb(kind: str, size: int, steps: int, quick: bool, device: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peak", kind, str(size), str(steps), "--device", device]
    if quick:
        cmd.append("--quick")
    res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=str(ROOT), check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------
# Proof that the reference is the same net.


def check_same_net(quick: bool, size: int) -> dict:
    """Parameter counts, the golden fixture, and equal outputs with equal weights."""
    import jax.numpy as jnp
    import numpy as np
    import torch

    from benchmarks import torch_skip
    from dip_jax import convert, nets

    out: dict = {}
    g_cfg, g_sd, g_extras = convert.load_golden(GOLDEN)
    g_net = torch_skip.build_skip(g_cfg)
    torch_skip.load_by_position(g_net, g_sd)
    with torch.no_grad():
        g_out = g_net(torch.from_numpy(g_extras["input"]).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    out["golden_max_abs_diff"] = float(np.abs(g_out - g_extras["output"]).max())

    default = nets.preset("default")
    out["param_count_torch"] = torch_skip.param_count(torch_skip.build_skip(default))
    out["param_count_dip_jax"] = nets.count_params(default)

    cfg = _net_config(quick)
    ref = torch_skip.build_skip(cfg)
    torch_skip.default_init_seeded(ref, 1)
    variables = convert.from_torch_state_dict(cfg, torch_skip.state_dict_numpy(ref))
    z = np.random.default_rng(1).uniform(0, 0.1, (1, size, size, cfg.num_input_channels)).astype(np.float32)
    with torch.no_grad():
        t_out = ref(torch.from_numpy(z).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    j_out, _ = nets.build_generator(cfg).apply(variables, jnp.asarray(z), mutable=["batch_stats"])
    out["same_weights_max_abs_diff"] = float(np.abs(np.asarray(j_out) - t_out).max())
    out["same_weights_size"] = size
    ok = (
        out["golden_max_abs_diff"] < 1e-4
        and out["param_count_torch"] == out["param_count_dip_jax"] == 2_217_831
        and out["same_weights_max_abs_diff"] < 1e-4
    )
    if not ok:
        raise RuntimeError(f"the torch reference is not the same net as dip_jax's: {out}")
    return out


# ----------------------------------------------------------------------------
# The runs.


def _interleaved(workers: dict, names: dict, steps: int, rounds: int) -> dict:
    """Per-step seconds per round: {label: [s, ...]}; labels take turns each round."""
    times: dict = {label: [] for label in names}
    for r in range(rounds):
        order = list(names) if r % 2 == 0 else list(reversed(names))
        for label in order:
            worker, name, per = names[label]
            times[label].append(workers[worker].call("time", name=name, steps=steps) / (steps * per))
    return times


def _median_ratio(a: list, b: list) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def _fmt(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}"


def _run_steps(workers, sizes, steps, rounds, has_torch, result) -> dict:
    """Seconds per step per image size, dip_jax and torch taking turns."""
    print("\n| size | dip_jax s/step | torch s/step | dip_jax / torch | dip_jax compile s | dip_jax prepare s |",
          flush=True)
    print("| --- | --- | --- | --- | --- | --- |", flush=True)
    rows = {}
    for size in sizes:
        name = f"s{size}"
        labels = {"jax": ("jax", name, 1)}
        setup = workers["jax"].call("setup", name=name, size=size, restarts=1, steps=steps)
        if has_torch:
            workers["torch"].call("setup", name=name, size=size, restarts=1, steps=steps)
            labels["torch"] = ("torch", name, 1)
        times = _interleaved(workers, labels, steps, rounds)
        row = {"jax": statistics.median(times["jax"]), "compile_s": setup["compile_s"]}
        result[f"step_s_{size}_dip_jax"] = row["jax"]
        result[f"compile_s_{size}"] = row["compile_s"]
        result[f"prepare_s_{size}"] = setup["prepare_s"]
        if has_torch:
            row["torch"] = statistics.median(times["torch"])
            row["ratio"] = _median_ratio(times["jax"], times["torch"])
            result[f"step_s_{size}_torch"] = row["torch"]
            result[f"step_ratio_vs_torch_{size}"] = row["ratio"]
        rows[size] = row
        print(f"| {size} | {_fmt(row['jax'])} | {_fmt(row.get('torch'))} | {_fmt(row.get('ratio'), 2)} "
              f"| {row['compile_s']:.1f} | {setup['prepare_s']:.1f} |", flush=True)
        for w in workers.values():
            w.call("drop", name=name)
    return rows


def _run_restarts(workers, restarts, size, steps, rounds, result) -> None:
    """R restarts fitted in one call: seconds per restart-step, relative to the first R.

    An R that cannot be set up (refused by the memory check, or out of device
    memory) is reported with its error and left out; the others still run.
    """
    print(f"\n| restarts R ({size} px) | s per restart-step | vs R={restarts[0]} | images/s | batching |",
          flush=True)
    print("| --- | --- | --- | --- | --- |", flush=True)
    labels, how = {}, {}
    for r in restarts:
        try:
            setup = workers["jax"].call("setup", name=f"r{r}", size=size, restarts=r, steps=steps)
        except RuntimeError as err:
            result[f"restart_error_R{r}"] = str(err)
            print(f"| {r} | - | - | - | not run: {err} |", flush=True)
            continue
        labels[r] = ("jax", f"r{r}", r)
        group = setup.get("vmap_group_size")
        how[r] = setup.get("batch_mode", "?") + (f", groups of {group}" if group else "")
        result[f"restart_batching_R{r}"] = how[r]
    times = _interleaved(workers, labels, steps, rounds)
    base = next(iter(labels), None)
    for r in labels:
        per = statistics.median(times[r])
        # Relative to the first R asked for; none when that one could not run.
        rel = _median_ratio(times[r], times[base]) if base == restarts[0] else None
        result[f"restart_step_s_R{r}"] = per
        result[f"restart_step_ratio_R{r}"] = rel
        result[f"images_per_s_R{r}"] = 1.0 / per
        print(f"| {r} | {per:.3f} | {_fmt(rel, 2)} | {1.0 / per:.2f} | {how[r]} |", flush=True)
        workers["jax"].call("drop", name=f"r{r}")


def _run_memory(size, quick, device, has_torch, result) -> None:
    gpu = device.startswith("cuda")
    print(f"\n| peak memory, one {size} px fit | RSS MiB |{' device MiB |' if gpu else ''}", flush=True)
    print(f"| --- | --- |{' --- |' if gpu else ''}", flush=True)
    for kind, label in [("jax", "dip_jax"), ("torch", "torch")][: 2 if has_torch else 1]:
        peak = _peak_mb(kind, size, 2, quick, device)
        result[f"peak_rss_mb_{size}_{label}"] = peak["peak_rss_mb"]
        line = f"| {label} | {peak['peak_rss_mb']:.0f} |"
        if gpu:
            result[f"peak_device_mb_{size}_{label}"] = peak.get("peak_device_mb")
            line += f" {_fmt(peak.get('peak_device_mb'), 0)} |"
        print(line, flush=True)


def gpu_preflight(jax_backend: str, torch_cuda: bool | None) -> bool:
    """For `--gpu`: stop unless JAX runs on a GPU; whether torch can join (None: not installed).

    Without this a CPU-only JAX would time itself on the CPU under GPU labels.
    """
    if jax_backend not in ("gpu", "cuda", "rocm"):
        raise SystemExit(
            f"--gpu needs JAX with a GPU backend, but this JAX runs on {jax_backend!r}: install the CUDA "
            "build (pip install -U 'jax[cuda12]') or drop --gpu for the CPU benchmark"
        )
    if torch_cuda is False:
        print("torch sees no CUDA device (a CPU-only torch wheel?): dip_jax timings only", flush=True)
    return bool(torch_cuda)


def run(args) -> dict:
    import jax

    quick, gpu = args.quick, args.gpu
    has_torch = _torch_available() and not args.no_torch
    device = "cuda" if gpu else "cpu"
    if gpu:
        torch_cuda = None
        if has_torch:
            import torch

            torch_cuda = torch.cuda.is_available()
        has_torch = gpu_preflight(jax.default_backend(), torch_cuda)
    if quick:
        sizes, restarts, restart_size, peak_size, steps, rounds = [32], [1, 2, 4], 32, 32, 2, 2
    elif gpu:
        sizes, restarts, restart_size, peak_size, steps, rounds = [512], [1, 4, 16, 64], 512, 512, 10, 5
    else:
        sizes, restarts, restart_size, peak_size, steps, rounds = [128, 256, 512], [1, 2, 4, 8], 128, 512, 3, 5
    sizes = args.sizes or sizes
    restarts = args.restarts or restarts
    restart_size = args.restart_size or restart_size
    steps = args.steps or steps
    rounds = args.rounds or rounds
    compile_size = 256 if 256 in sizes else sizes[0]
    main_size = 512 if gpu else compile_size

    result: dict = {
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_avg_start": list(os.getloadavg()),
        "jax_version": jax.__version__,
        "jax_backend": jax.default_backend(),
        "quick": quick,
        "steps_per_timing": steps,
        "rounds": rounds,
    }
    print(f"# dip_jax benchmark ({'quick' if quick else 'gpu' if gpu else 'cpu'}): "
          f"{result['cpu_count']} CPUs, load {result['load_avg_start'][0]:.1f}, jax {jax.__version__}", flush=True)
    if has_torch:
        import torch

        result["torch_version"] = torch.__version__
        result["torch_threads"] = torch.get_num_threads()
        result.update(check_same_net(quick, 32 if quick else 64))
        print(f"same net: {result['param_count_torch']:,} parameters both; golden fixture max diff "
              f"{result['golden_max_abs_diff']:.1e}; same weights max diff {result['same_weights_max_abs_diff']:.1e}",
              flush=True)
    elif not _torch_available():
        print("torch is not installed (pip install -e .[torch]): dip_jax timings only", flush=True)

    parts = set(args.parts)
    step_rows: dict = {}
    workers = {}
    try:
        if parts & {"steps", "restarts"}:
            workers["jax"] = _Worker("jax", quick, device)
            if has_torch and "steps" in parts:
                workers["torch"] = _Worker("torch", quick, device)
        if "steps" in parts:
            step_rows = _run_steps(workers, sizes, steps, rounds, has_torch, result)
        if "restarts" in parts:
            _run_restarts(workers, restarts, restart_size, steps, rounds, result)
    finally:
        for w in workers.values():
            w.close()
    if "memory" in parts:
        _run_memory(peak_size, quick, device, has_torch, result)

    # The headline keys (null when their part was skipped or torch is missing).
    prefix = "gpu" if gpu else "cpu"
    step_key = f"{prefix}_step_ratio_vs_torch_{512 if gpu else 256}"
    result[step_key] = step_rows.get(main_size, {}).get("ratio")
    result["restart_step_ratio_R4"] = result.get("restart_step_ratio_R4")
    result["compile_s_256"] = step_rows.get(compile_size, {}).get("compile_s")
    peak_j = result.get(f"peak_rss_mb_{peak_size}_dip_jax")
    peak_t = result.get(f"peak_rss_mb_{peak_size}_torch")
    result["peak_rss_ratio_vs_torch_512"] = peak_j / peak_t if peak_j and peak_t else None
    if gpu:
        dev_j = result.get(f"peak_device_mb_{peak_size}_dip_jax")
        dev_t = result.get(f"peak_device_mb_{peak_size}_torch")
        result["peak_device_mem_ratio_vs_torch_512"] = dev_j / dev_t if dev_j and dev_t else None
    if "images_per_s_R16" in result and "images_per_s_R1" in result:
        result["images_per_s_ratio_R16"] = result["images_per_s_R16"] / result["images_per_s_R1"]
    result["sizes_used"] = {
        step_key: main_size,
        "restart_step_ratio_R4": restart_size,
        "compile_s_256": compile_size,
        "peak_rss_ratio_vs_torch_512": peak_size,
    }
    result["load_avg_end"] = list(os.getloadavg())
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny net and sizes, 2 steps (CI)")
    parser.add_argument("--gpu", action="store_true", help="512 px, restarts 1/4/16/64, torch on CUDA")
    parser.add_argument("--no-torch", action="store_true", help="time dip_jax only")
    parser.add_argument("--sizes", type=int, nargs="+", help="image sizes for seconds per step")
    parser.add_argument("--restarts", type=int, nargs="+", help="restart counts R (the first is the baseline)")
    parser.add_argument("--restart-size", type=int, help="image size for the restarts table")
    parser.add_argument("--steps", type=int, help="steps per timing call (one engine chunk)")
    parser.add_argument("--rounds", type=int, help="timing rounds (workers take turns each round)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="what to measure (default: all); headline keys of skipped parts are null")
    parser.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--peak", nargs=3, metavar=("KIND", "SIZE", "STEPS"), help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker_main(args.worker, args.quick, args.device)
        return
    if args.peak:
        kind, size, steps = args.peak
        _peak_main(kind, int(size), int(steps), args.quick, args.device)
        return
    result = run(args)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
