"""Several processes (hosts of a TPU pod, GPUs of one node) fitting one batch through `jax.distributed`.

Design: every process fits its own contiguous share of the items on its
local devices (`shares`, the same split as `sharding.process_share`). DIP
items never talk to each other, so nothing crosses hosts during a fit; the
coordination service only carries a few small messages: a hash of each
process's settings (`Group.agree`: a process started with other settings
stops with one error instead of fitting something else) and each process's
summary at the end (`Group.gather`: process 0 receives them all). Images and
checkpoints stay with the process that owns them.

Contract:
- `settings(coordinator=, num_processes=, process_id=, timeout=, environ=)`:
  the explicit values, else JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JAX_PROCESS_ID; None when none is given (a single-process run); a
  ValueError naming the option when one is missing, malformed or out of
  range.
- `initialize(settings, on_timeout=)` starts the runtime (on CPU with gloo
  collectives); when the processes are not all connected after
  `settings.timeout` seconds (unreachable coordinator, a process never
  started) it reports one message and exits with status 2, never a hang.
  Recoverability is switched on: a process that dies does not take the
  others down with a fatal log. Each process bumps a heartbeat counter in
  the key-value store; `Group.gather` raises `ProcessLost` for a process
  not heard of for `settings.timeout` seconds.
- `Group.agree(name, text)`: every process publishes `text` (e.g. the hash of
  its command line) and compares it with everyone's; `SettingsMismatch`
  names the first process that differs.
- `Group.gather(name, text)`: process 0 returns every process's `text` in
  process order (the others return None after publishing theirs).
- `Group.leave()` disconnects; process 0 last, once the others are gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
import tempfile
import threading
import time
from typing import Mapping

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
DEFAULT_TIMEOUT = 300.0  # seconds to connect / exchange settings (jax.distributed's own default)
_POLL_SECONDS = 0.2
HEARTBEAT_SECONDS = 2.0


class DistributedError(ValueError):
    """The processes could not be started or kept together (unreachable coordinator, lost process ...)."""


class SettingsMismatch(DistributedError):
    """Two processes of one run were started with different settings."""


class ProcessLost(DistributedError):
    """A process stopped (died, was killed) before publishing what the others wait for."""


@dataclasses.dataclass(frozen=True)
class Settings:
    coordinator: str  # HOST:PORT of process 0's coordination service
    num_processes: int
    process_id: int
    timeout: float = DEFAULT_TIMEOUT

    @property
    def port(self) -> int:
        return int(self.coordinator.rsplit(":", 1)[1])


def parse_address(text: str, *, option: str = "--coordinator") -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:PORT`) -> (host, port), or a ValueError saying what to give."""
    match = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\s\[\]]+):(\d+)", text.strip())
    if not match:
        raise ValueError(f"{option} {text!r} must be HOST:PORT (e.g. 10.0.0.2:1234, the address of process 0)")
    port = int(match.group(2))
    if not 1 <= port <= 65535:
        raise ValueError(f"{option} {text!r}: the port must be between 1 and 65535")
    return match.group(1), port


def _whole(value, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"{what} must be a whole number, got {value!r}") from None


def settings(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None, *,
             timeout: float = DEFAULT_TIMEOUT, environ: Mapping[str, str] | None = None) -> Settings | None:
    """The run's multi-process settings from the arguments or the environment; None for one process."""
    env = os.environ if environ is None else environ
    names = {"coordinator": ("--coordinator", ENV_COORDINATOR), "num_processes": ("--num-processes", ENV_NUM_PROCESSES),
             "process_id": ("--process-id", ENV_PROCESS_ID)}
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    what = {}
    for field, (option, var) in names.items():
        if given[field] is None and env.get(var, "").strip():
            given[field] = env[var].strip()
            what[field] = f"${var}"
        else:
            what[field] = option
    if all(v is None for v in given.values()):
        return None
    missing = [f"{names[f][0]} (or ${names[f][1]})" for f, v in given.items() if v is None]
    if missing:
        raise ValueError(f"a multi-process run needs {', '.join(missing)} as well; give all three of --coordinator "
                         "HOST:PORT, --num-processes N and --process-id I (or --processes N to start them here)")
    parse_address(str(given["coordinator"]), option=what["coordinator"])
    count = _whole(given["num_processes"], what["num_processes"])
    if count < 1:
        raise ValueError(f"{what['num_processes']} must be at least 1, got {count}")
    index = _whole(given["process_id"], what["process_id"])
    if not 0 <= index < count:
        raise ValueError(f"{what['process_id']} {index} is out of range: with {count} processes the ids are "
                         f"0 to {count - 1}")
    if not (isinstance(timeout, (int, float)) and timeout > 0 and timeout == timeout and timeout != float("inf")):
        raise ValueError(f"the timeout must be a positive number of seconds, got {timeout!r}")
    return Settings(str(given["coordinator"]).strip(), count, index, float(timeout))


def shares(num_items: int, num_processes: int) -> list[slice]:
    """Each process's contiguous share of `num_items` (`sharding.process_share`'s split, for every process)."""
    per = -(-num_items // num_processes)
    return [slice(min(p * per, num_items), min((p + 1) * per, num_items)) for p in range(num_processes)]


class Group:
    """The processes of one run, joined through process 0's coordination service."""

    def __init__(self, settings: Settings, client):
        self.settings = settings
        self.process_id = settings.process_id
        self.num_processes = settings.num_processes
        self._client = client
        self._stop = threading.Event()
        # Liveness is a counter each process bumps from a thread (XLA releases the GIL while it runs, so a
        # long fit keeps beating). The runtime's own live-node query is a barrier among the live processes,
        # so it cannot serve as a one-sided probe.
        self._beat = threading.Thread(target=self._heartbeat, name="dip_jax-heartbeat", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        key = f"dip_jax/alive/{self.process_id}"
        while not self._stop.is_set():
            try:
                self._client.key_value_increment(key, 1)
            except Exception:  # noqa: BLE001 - the coordinator is gone: whoever waits on it reports that
                return
            self._stop.wait(HEARTBEAT_SECONDS)

    def _key(self, name: str, process: int) -> str:
        return f"dip_jax/{name}/{process}"

    def _try_get(self, key: str) -> str | None:
        try:
            return self._client.key_value_try_get(key)
        except Exception as err:  # noqa: BLE001 - the runtime raises one error type for 'not there yet'
            if "NOT_FOUND" in str(err):
                return None
            raise DistributedError(f"lost the connection to the coordinator {self.settings.coordinator} "
                                   f"({_first_line(err)})") from None

    def _wait_for(self, name: str, process: int, timeout: float | None) -> str:
        """Process `process`'s value of `name`; a process not heard of for `settings.timeout` s is lost."""
        start = last_seen = time.monotonic()
        key, alive_key, beats = self._key(name, process), f"dip_jax/alive/{process}", None
        while True:
            value = self._try_get(key)
            if value is not None:
                return value
            now = time.monotonic()
            current = self._try_get(alive_key)
            if current != beats:
                beats, last_seen = current, now
            elif now - last_seen > self.settings.timeout:
                raise ProcessLost(f"process {process} of {self.num_processes} has not been heard of for "
                                  f"{self.settings.timeout:g} s (it died, was killed or hangs) before it sent its "
                                  f"{name}")
            if timeout is not None and now - start > timeout:
                raise DistributedError(f"process {process} did not send its {name} within {timeout:g} s; start "
                                       "every process (same command line, its own --process-id), or raise --timeout")
            time.sleep(_POLL_SECONDS)

    def agree(self, name: str, text: str, *, describe=None) -> None:
        """Publish `text` and check every process published the same (SettingsMismatch otherwise)."""
        self._client.key_value_set(self._key(name, self.process_id), text)
        for p in range(self.num_processes):
            theirs = self._wait_for(name, p, self.settings.timeout)
            if theirs != text:
                detail = describe(text, theirs) if describe else ""
                raise SettingsMismatch(f"process {p} was started with other settings than process {self.process_id}"
                                       f"{': ' + detail if detail else ''}; start every process with the same "
                                       "command line (only --process-id differs)")

    def gather(self, name: str, text: str) -> list[str] | None:
        """Process 0: every process's `text`, in order (waits as long as the others work); others: None."""
        self._client.key_value_set(self._key(name, self.process_id), text)
        if self.process_id != 0:
            return None
        return [self._wait_for(name, p, None) for p in range(self.num_processes)]

    def leave(self) -> None:
        """Disconnect; process 0 (which hosts the service) first waits until the others have disconnected."""
        self._stop.set()
        if self.process_id == 0 and self.num_processes > 1:
            # The live-node query returns once every live process has asked: the others never ask, so it
            # returns when they have left, and no process loses the service during its own shutdown.
            with contextlib.suppress(Exception):
                deadline = time.monotonic() + self.settings.timeout
                while len(self._client.get_live_nodes(list(range(self.num_processes)))) > 1:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(_POLL_SECONDS)
        shutdown()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def initialize(settings: Settings, *, error_prefix: str = "dip_jax: ") -> Group:
    """Join the run's processes (process 0 starts the coordination service); see the module docstring.

    The runtime aborts the whole process (a fatal log and a stack trace) when
    it cannot connect in time, so a watchdog gets there first: after
    `settings.timeout` seconds without every process connected it writes
    `error_prefix` + one line to stderr and exits with status 2. The
    runtime's note on recoverable mode (chosen here on purpose) is kept off
    stderr; anything else it writes while connecting is passed on.
    """
    import jax
    from jax._src import distributed as jax_distributed

    if jax_distributed.global_state.client is not None:
        raise DistributedError("jax.distributed is already initialized in this process; start a new process")
    # CPU collectives, only used if a program spans processes (a batch never does); no effect on GPU/TPU.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # A dead process is reported by Group.gather as one line, instead of the runtime aborting the others.
    jax.config.update("jax_enable_recoverability", True)
    # Its SIGTERM handler would swallow the signal that stops a fit (checkpoint, exit 130).
    jax.config.update("jax_enable_preemption_service", False)
    seconds = max(1, int(round(settings.timeout)))
    where = ("the other processes did not all connect" if settings.process_id == 0
             else f"could not reach the coordinator {settings.coordinator}")
    message = (f"{where} within {seconds} s (process {settings.process_id} of {settings.num_processes}); start "
               "every process with the same command line and its own --process-id, check the coordinator's address "
               "and port, or raise --timeout")
    connected = threading.Event()

    sys.stderr.flush()
    stderr = os.dup(2)
    captured = tempfile.TemporaryFile()
    os.dup2(captured.fileno(), 2)

    def watchdog():
        if not connected.wait(seconds):
            os.write(stderr, f"{error_prefix}{message}\n".encode())
            os._exit(2)

    threading.Thread(target=watchdog, name="dip_jax-distributed-watchdog", daemon=True).start()
    try:
        # The runtime's own deadline comes later than the watchdog's, which reports it as one line.
        jax.distributed.initialize(coordinator_address=settings.coordinator, num_processes=settings.num_processes,
                                   process_id=settings.process_id, initialization_timeout=seconds + 30,
                                   heartbeat_timeout_seconds=max(10, min(100, seconds)),
                                   shutdown_timeout_seconds=seconds)
    except Exception as err:  # noqa: BLE001 - the runtime raises XlaRuntimeError/RuntimeError with gRPC text
        connected.set()
        _restore_stderr(stderr, captured)
        text = str(err).lower()
        if "address already in use" in text or "bind" in text:
            raise DistributedError(f"process 0 could not listen on {settings.coordinator} (is the port in use?); "
                                   "choose another port for --coordinator") from None
        raise DistributedError(f"could not join the {settings.num_processes} processes at {settings.coordinator}: "
                               f"{_first_line(err)}") from None
    connected.set()
    _restore_stderr(stderr, captured)
    return Group(settings, jax_distributed.global_state.client)


RECOVERABLE_NOTE = "Using experimental recoverable task feature"


def _restore_stderr(saved: int, captured) -> None:
    os.dup2(saved, 2)
    os.close(saved)
    captured.seek(0)
    for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True):
        if RECOVERABLE_NOTE not in line:
            sys.stderr.write(line)
    sys.stderr.flush()
    captured.close()


def shutdown() -> None:
    """Leave the runtime (a no-op when it was never started)."""
    import jax
    from jax._src import distributed as jax_distributed

    if jax_distributed.global_state.client is not None:
        jax.distributed.shutdown()
