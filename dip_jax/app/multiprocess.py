"""`dip-jax batch` over several processes: its options, checks, joining the group and the local launcher.

Each process fits its own share of the folder's images (`runtime.distributed`):
the same command on N hosts with `--coordinator HOST:PORT --num-processes N
--process-id I` (or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES,
$JAX_PROCESS_ID). `--processes N` starts N such processes on this machine
(`launch`): each bound to its own CPU cores, or its own GPUs when there are
GPUs, their output relayed line by line as `[pI] ...`; when one fails the
others are stopped (SIGTERM: they checkpoint, then SIGKILL after a grace
period) and the launcher prints one line and exits non-zero.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from dip_jax.app.checks import UsageError
from dip_jax.runtime import distributed

PROG = "dip-jax"
ERROR_PREFIX = f"{PROG}: error: "
STOP_GRACE_SECONDS = 60.0  # how long stopped processes may take to checkpoint before they are killed
# Options that may differ between the processes of one run (everything else must agree).
PER_PROCESS = ("process_id", "progress", "timeout", "argv", "processes", "coordinator")


def add_options(p: argparse.ArgumentParser) -> None:
    """The batch command's multi-process options."""
    g = p.add_argument_group(
        "several processes", "each process restores its share of the images (sorted by name) on its own devices; "
                             "process 0 writes batch.json. Resume with the same number of processes.")
    g.add_argument("--processes", type=int, metavar="N",
                   help="start N processes on this machine (each on its own CPU cores, or its own GPUs) and gather "
                        "them; their output is prefixed [p0], [p1] ...")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help="address of process 0 (it listens there), the same for every process (or "
                        "$JAX_COORDINATOR_ADDRESS)")
    g.add_argument("--num-processes", type=int, metavar="N",
                   help="how many processes the run has (or $JAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, metavar="I",
                   help="this process's id, 0 to N-1 (or $JAX_PROCESS_ID)")
    g.add_argument("--timeout", type=float, default=distributed.DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="how long to wait for every process to connect and agree on the settings "
                        f"(default {distributed.DEFAULT_TIMEOUT:g})")


def check(args) -> distributed.Settings | None:
    """The run's multi-process settings (None: one process), or one UsageError before anything starts."""
    if args.processes is not None:
        explicit = [o for o, v in (("--process-id", args.process_id), ("--num-processes", args.num_processes),
                                   ("--coordinator", args.coordinator)) if v is not None]
        if explicit:
            raise UsageError(f"--processes starts every process itself; leave out {', '.join(explicit)} (or leave "
                             "out --processes and start each process with its own --process-id)")
        if args.processes < 1:
            raise UsageError(f"--processes must be at least 1, got {args.processes}")
    if not (args.timeout > 0 and args.timeout != float("inf")):  # also refuses nan
        raise UsageError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    if args.processes is not None:
        return None
    try:
        return distributed.settings(args.coordinator, args.num_processes, args.process_id, timeout=args.timeout)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _settings_record(args, files) -> dict:
    record = {k: (str(v) if not isinstance(v, (int, float, bool, type(None))) else v)
              for k, v in sorted(vars(args).items()) if k not in PER_PROCESS}
    record["images"] = hashlib.sha256("\n".join(p.name for p in files).encode()).hexdigest()[:16]
    return record


def join(args, settings: distributed.Settings | None, files) -> distributed.Group | None:
    """Join the other processes and check they run the same command on the same file names (None: alone)."""
    if settings is None:
        return None
    group = distributed.initialize(settings, error_prefix=ERROR_PREFIX)
    mine = _settings_record(args, files)

    def describe(ours: str, theirs: str) -> str:
        a, b = json.loads(ours), json.loads(theirs)
        keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        if keys == ["images"]:
            return "its folder holds other image files"
        shown = ", ".join(f"{'--' + k.replace('_', '-') if k != 'folder' else 'FOLDER'} {b.get(k)!r} there, "
                          f"{a.get(k)!r} here" for k in keys if k != "images")
        return shown + (" and other image files" if "images" in keys else "")

    try:
        group.agree("settings", json.dumps(mine, sort_keys=True), describe=describe)
    except BaseException:
        # Leave in order even when refusing: process 0 hosts the coordinator, and a process that loses it
        # while still connected is aborted by JAX's runtime instead of printing its own one-line refusal.
        group.leave()
        raise
    return group


def own_items(group: distributed.Group | None, num_items: int) -> list[int]:
    """The items this process fits: all of them alone, else its `process_share`."""
    if group is None:
        return list(range(num_items))
    from dip_jax.runtime import sharding

    share = sharding.process_share(num_items)
    # The launcher and --resume rely on every process computing everyone's share the same way.
    assert share == distributed.shares(num_items, group.num_processes)[group.process_id]
    return list(range(num_items))[share]


def earlier_shares(group: distributed.Group | None, num_items: int) -> list[list[int]]:
    """The items of the processes before this one (their calls come first in the checkpoint numbering)."""
    if group is None:
        return []
    return [list(range(num_items))[s] for s in distributed.shares(num_items, group.num_processes)[:group.process_id]]


def gather_entries(group: distributed.Group, entries: dict[int, dict]) -> dict[int, dict] | None:
    """Process 0: every process's batch.json entries by image index (waits for them); the others: None."""
    texts = group.gather("results", json.dumps(sorted(entries.items())))
    if texts is None:
        return None
    merged: dict[int, dict] = {}
    for text in texts:
        merged.update({int(i): e for i, e in json.loads(text)})
    return merged


# --------------------------------------------------------------------------- the local launcher


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_argv(argv: list[str]) -> list[str]:
    """The command line without --processes N / --processes=N."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a.startswith("--processe") and "--processes".startswith(a):  # argparse takes "--processe"
            skip = True
        elif not (a.startswith("--processe") and "--processes".startswith(a.split("=", 1)[0])):
            out.append(a)
    return out


def _gpus() -> list[str]:
    """GPU ids this machine offers: $CUDA_VISIBLE_DEVICES, else nvidia-smi's list, else none."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    if shutil.which("nvidia-smi"):
        try:
            listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]
    return []


def _split(items: list, n: int, i: int) -> list:
    """Process i's part of `items` split n ways (round-robin when there are fewer items than processes)."""
    if len(items) >= n:
        per = len(items) // n
        return items[i * per:(i + 1) * per]
    return [items[i % len(items)]]


def _relay(stream, prefix: str, sink, errors: list) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line.startswith(ERROR_PREFIX):
            errors.append(line[len(ERROR_PREFIX):])  # said once, by the launcher
            continue
        sink.write(f"{prefix}{line}\n")
        sink.flush()


def _status(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def launch(args) -> int:
    """`--processes N`: run the same batch as N local processes; 0 when all of them finished."""
    n = args.processes
    port = _free_port()
    base = [sys.executable, "-m", "dip_jax.app.cli"] + _child_argv([str(a) for a in args.argv])
    gpus = _gpus()
    if gpus and n > len(gpus):
        raise UsageError(f"--processes {n} is more than the {len(gpus)} GPUs here; give at most {len(gpus)}")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    children, errors, relays = [], [], []
    started = time.perf_counter()
    for i in range(n):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for var in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
            env.pop(var, None)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(_split(gpus, n, i))
        argv = base + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n), "--process-id", str(i),
                       "--no-progress"]  # N progress bars in one terminal are unreadable
        child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if cores and not gpus:
            try:
                os.sched_setaffinity(child.pid, _split(cores, n, i))
            except OSError:
                pass  # the process exited already; its status says why
        where = f"GPU {env['CUDA_VISIBLE_DEVICES']}" if gpus else (
            f"CPU cores {','.join(map(str, _split(cores, n, i)))}" if cores else "this machine")
        print(f"{PROG} batch: process {i} of {n} (pid {child.pid}) on {where}", flush=True)
        errors.append([])
        children.append(child)
        for stream, sink in ((child.stdout, sys.stdout), (child.stderr, sys.stderr)):
            t = threading.Thread(target=_relay, args=(stream, f"[p{i}] ", sink, errors[i]), daemon=True)
            t.start()
            relays.append(t)
    first_failure = None
    stop_deadline = None
    try:
        while None in [c.poll() for c in children]:  # a list: every child is polled, each time
            for i, c in enumerate(children):
                if c.returncode not in (None, 0) and first_failure is None:
                    first_failure = i
                    for other in children:
                        if other.poll() is None:
                            other.send_signal(signal.SIGTERM)  # it checkpoints its current call, then exits
                    stop_deadline = time.monotonic() + STOP_GRACE_SECONDS
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                for other in children:
                    if other.poll() is None:
                        other.kill()
            time.sleep(0.1)
    except KeyboardInterrupt:
        # Ctrl-C reached the children too (same process group): they checkpoint and exit with 130.
        for c in children:
            try:
                c.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                c.kill()
                c.wait()
    for t in relays:
        t.join(timeout=5)
    codes = [c.returncode for c in children]
    if first_failure is None:
        failed = [i for i, code in enumerate(codes) if code != 0]
        first_failure = failed[0] if failed else None
    if first_failure is None:
        print(f"{PROG} batch: {n} processes finished in {time.perf_counter() - started:.1f} s", flush=True)
        return 0
    said = [e[0] for e in errors if e]
    code = codes[first_failure]
    if code == 2 and said and all(s == said[0] for s in said) and all(c == 2 for c in codes):
        raise UsageError(said[0])  # the same complaint from every process: one line, as for one process
    what = f"process {first_failure} of {n} {_status(code)}"
    if errors[first_failure]:
        what += f" ({errors[first_failure][0]})"
    stopped = [i for i, c in enumerate(codes) if i != first_failure and c != 0]
    tail = f"; processes {', '.join(map(str, stopped))} were stopped" if stopped else ""
    print(f"{ERROR_PREFIX}{what}{tail}; run the same command with --resume to continue (finished images are kept)",
          file=sys.stderr, flush=True)
    return 130 if code == 130 else (2 if code == 2 else 1)
