"""Checkpoints of a fit: atomic, checksummed, resumable bit for bit.

Contract:
- A checkpoint is one `.npz` file (numpy's zip of `.npy` arrays; no pickles)
  holding the fit's whole `FitState` (parameters, BatchNorm statistics,
  optimiser state, input `z`, PRNG keys as their raw `uint32` key data plus
  the key implementation's name, step counters, every step transform's state),
  the per-step history so far `(steps, B)`, the images so far `(B, H, W, C)`
  (current output, averaged output, best output when a ground truth is
  known), and a `meta` entry: JSON with the format version, the step, the
  run's fingerprint, the state's leaf paths/shapes/dtypes and a SHA-256 over
  every other entry (name, dtype, shape and bytes).
- `save_checkpoint` writes `<name>.tmp` in the target directory, fsyncs it
  and renames it over `<name>` (`os.replace`, atomic on POSIX and Windows);
  before that the current file is kept as `ckpt.prev.npz` (`previous_path`;
  a hard link, or a copy where links are not supported), so a crash at any moment leaves the
  last good checkpoint readable under its own name.
- `load_checkpoint` verifies the zip structure and the checksum; a truncated,
  corrupted or foreign file raises `CheckpointError` (a ValueError) saying
  what is wrong and, when `ckpt.prev.npz` is intact, how to fall back to it.
- `fingerprint(problem, data)` describes what a run computes (net config,
  fit config minus the fields that do not change the numbers: `num_steps`,
  `chunk_size`, `batch_mode`, `vmap_group_size`, `check_memory`; operator, loss, data hashes,
  batch size; the engine adds the initial keys). Resuming under a different
  fingerprint raises `CheckpointMismatchError` naming every difference.
- Resuming may extend a run: `num_steps` is outside the fingerprint and no
  setting depends on the total (the L-BFGS switch counts steps from 0, the
  averaging is per step, histories grow by chunk), so a resume to more steps
  equals an uninterrupted run of the new total. A checkpoint past the run's
  `num_steps` cannot be undone: `resume_step` raises `CheckpointAheadError`
  (from the metadata alone, before anything is compiled). Resuming with no
  checkpoint starts at step 0 and warns `StartingFreshWarning`.
- `prepare_output_dir(path, overwrite=, resume=)` is the output-directory
  policy: a finished run (its `metrics.json` exists) is never silently
  overwritten, an unfinished one is only continued with `resume=True`.

Exactness: the state round-trips through float32/int32/uint32 arrays
unchanged and every step of the engine's scan is independent of where chunk
boundaries fall, so K steps + resume + K steps equals 2K steps bit for bit on
the same backend and device count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "dip_jax.checkpoint"
VERSION = 1
CHECKPOINT_NAME = "ckpt.npz"
PREVIOUS_NAME = "ckpt.prev.npz"
FINISHED_MARKER = "metrics.json"



def run_only_fields(config) -> tuple[str, ...]:
    """The config's fields that change how a run is executed but not its numbers.

    Marked on the config dataclass itself (`metadata={"run_only": True}`, see
    `dip_jax.fit.config`): chunks are position independent and batch modes
    agree to round-off, so those fields stay out of the fingerprint.
    """
    if not dataclasses.is_dataclass(config):
        return ()
    return tuple(f.name for f in dataclasses.fields(config) if f.metadata.get("run_only"))


def __getattr__(name):
    if name == "RUN_ONLY_FIELDS":  # FitConfig's, for callers that list them
        from dip_jax.fit.config import RUN_ONLY_FIELDS

        return RUN_ONLY_FIELDS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or used (the message says why and what to do)."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint belongs to a run with other settings or inputs."""


class CheckpointAheadError(CheckpointError):
    """A checkpoint has done more steps than the run resuming it asks for (`step` > `num_steps`)."""

    def __init__(self, path, step: int, num_steps: int):
        super().__init__(
            f"checkpoint {str(path)!r} is at step {step}, past this run's {num_steps} steps, and a fit cannot "
            f"go back; resume with num_steps of at least {step}, or start over (delete the checkpoint)"
        )
        self.path, self.step, self.num_steps = Path(path), step, num_steps
        # The same in the dip-jax command's terms (its error line prefers `cli_message`).
        self.cli_message = (
            f"checkpoint {str(path)!r} is at step {step}, past --steps {num_steps}, and a fit cannot go back; "
            f"resume with --steps {step} or more, or pass --overwrite to start over"
        )


class StartingFreshWarning(UserWarning):
    """`resume` was asked for but there is no checkpoint to resume from: the fit starts at step 0."""


class OutputExistsError(ValueError):
    """An output directory holds a run that must not be silently replaced."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A loaded, verified checkpoint (numpy arrays)."""

    path: Path
    step: int
    state_paths: tuple[str, ...]
    state_leaves: tuple[np.ndarray, ...]
    key_impls: dict  # leaf index -> PRNG implementation name
    history: dict
    images: dict
    fingerprint: dict
    meta: dict


# --------------------------------------------------------------------------- fingerprints


def _jsonable(value) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=repr))


def _config_dict(config) -> dict:
    if dataclasses.is_dataclass(config):
        return _jsonable(dataclasses.asdict(config))
    return {"repr": repr(config)}


def _callable_name(fn) -> str:
    """A stable description of a loss function: its dotted name, or a dataclass's repr."""
    if dataclasses.is_dataclass(fn) and not isinstance(fn, type):
        return f"{type(fn).__module__}.{fn!r}"
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None)
    if module and name and "<lambda>" not in name and "<locals>" not in name:
        return f"{module}.{name}"
    return f"{type(fn).__name__} (not comparable)"


def hash_arrays(tree) -> str:
    """SHA-256 (hex, first 16 chars) over a pytree's leaves: dtype, shape and bytes."""
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        if jnp.issubdtype(getattr(leaf, "dtype", np.float32), jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def fingerprint(problem, data, *, shared=None, **extra) -> dict:
    """What a run computes, as JSON-able data, for checking a resume (see module docstring)."""
    run_only = run_only_fields(problem.fit_config)
    fit_config = {k: v for k, v in _config_dict(problem.fit_config).items() if k not in run_only}
    out = {
        "net_config": _config_dict(problem.net_config),
        "fit_config": fit_config,
        "operator": repr(problem.op),
        "loss_fn": _callable_name(problem.loss_fn),
        "optimizer": "default" if problem.optimizer is None else "custom",
        "batch_items": int(np.shape(data.target)[0]),
        "data": hash_arrays(data),
        "shared": hash_arrays(shared),
    }
    # What a fit adds to its config's transforms and objective (absent when nothing is).
    if getattr(problem, "extra_transforms", ()):
        out["transforms"] = [t.name for t in problem.extra_transforms]
    if getattr(problem, "extra_regularisers", ()):
        out["regularisers"] = [[w, _callable_name(fn)] for w, fn in problem.extra_regularisers]
    out.update(_jsonable(extra))
    return out


def _differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    diffs = []
    for name in sorted(set(saved) | set(current)):
        a, b = saved.get(name, "<absent>"), current.get(name, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, f"{prefix}{name}.")
        elif a != b:
            diffs.append(f"{prefix}{name}: {a!r} in the checkpoint, {b!r} now")
    return diffs


def check_fingerprint(saved: dict, current: dict, *, path=None) -> None:
    """Raise CheckpointMismatchError listing what differs between a checkpoint's run and this one."""
    diffs = _differences(saved, current)
    if diffs:
        where = f"checkpoint {str(path)!r}" if path is not None else "the checkpoint"
        shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise CheckpointMismatchError(
            f"{where} belongs to a different run ({shown}). Resume with the same settings, inputs and seed, "
            "or start over in a new output directory (or delete the checkpoint; the CLI's --overwrite does that)"
        )


# --------------------------------------------------------------------------- save / load


def _checksum(entries: dict, meta: dict) -> str:
    """SHA-256 over the metadata (without its checksum) and every array's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(entries):
        a = np.ascontiguousarray(entries[name])
        h.update(name.encode())
        h.update(f"|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _flatten_state(state) -> tuple[list[str], list[np.ndarray], dict]:
    leaves_with_paths = jax.tree_util.tree_flatten_with_path(state)[0]
    paths, leaves, key_impls = [], [], {}
    for i, (path, leaf) in enumerate(leaves_with_paths):
        paths.append(jax.tree_util.keystr(path))
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            key_impls[i] = str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        leaves.append(np.asarray(jax.device_get(leaf)))
    return paths, leaves, key_impls


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not supported (e.g. Windows); the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def previous_path(path) -> Path:
    """Where the checkpoint before `path` is kept: `ckpt.npz` -> `ckpt.prev.npz`."""
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def _keep_previous(path: Path, previous: Path) -> None:
    staging = previous.with_name(previous.name + ".tmp")
    staging.unlink(missing_ok=True)
    try:
        os.link(path, staging)
    except OSError:
        shutil.copyfile(path, staging)
    os.replace(staging, previous)


def save_checkpoint(
    path,
    *,
    state,
    step: int,
    history: dict | None = None,
    images: dict | None = None,
    fingerprint: dict | None = None,
    keep_previous: bool = True,
) -> Path:
    """Write a checkpoint atomically (see module docstring); returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    paths, leaves, key_impls = _flatten_state(state)
    entries = {f"state/{i}": leaf for i, leaf in enumerate(leaves)}
    for name, values in (history or {}).items():
        entries[f"history/{name}"] = np.asarray(values)
    for name, values in (images or {}).items():
        if values is not None:
            entries[f"image/{name}"] = np.asarray(values)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(step),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "state_paths": paths,
        "state_shapes": [list(a.shape) for a in leaves],
        "state_dtypes": [a.dtype.str for a in leaves],
        "key_impls": {str(k): v for k, v in key_impls.items()},
        "fingerprint": _jsonable(fingerprint or {}),
    }
    meta["sha256"] = _checksum(entries, meta)
    entries["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **entries)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            _keep_previous(path, previous_path(path))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _damaged(path: Path, detail: str) -> CheckpointError:
    previous = previous_path(path)
    hint = "delete it to start over"
    if previous.exists() and previous != path:
        try:
            step = load_checkpoint(previous).step
            hint = (f"the previous checkpoint {str(previous)!r} (step {step}) is intact: move it to "
                    f"{str(path)!r} to resume from there, or delete both to start over")
        except CheckpointError:
            hint = "the previous checkpoint is damaged too; delete both to start over"
    return CheckpointError(f"checkpoint {str(path)!r} is damaged ({detail}); {hint}")


def _read_entries(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {name: z[name] for name in z.files}
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {str(path)!r}; start a new run (without resume)") from None
    except IsADirectoryError:
        raise CheckpointError(f"{str(path)!r} is a directory, not a checkpoint file") from None
    except Exception as err:  # noqa: BLE001 - a corrupt zip raises many kinds (flag bits: RuntimeError)
        raise _damaged(path, f"truncated or not a checkpoint: {type(err).__name__}: {err}") from None


def read_meta(path) -> dict:
    """The JSON metadata of a checkpoint, without verifying the arrays (cheap)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(z["meta"].tobytes().decode())
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {str(path)!r}") from None
    except Exception as err:  # noqa: BLE001 - see _read_entries
        raise _damaged(path, f"unreadable metadata: {type(err).__name__}: {err}") from None


def resume_step(path, num_steps: int) -> int | None:
    """The step a run of `num_steps` steps resumes `path` at; None when there is no checkpoint there.

    Reads only the metadata (cheap, before anything is compiled). A damaged
    file raises CheckpointError; a checkpoint past `num_steps` raises
    CheckpointAheadError. Extending a run (more steps than the checkpoint's)
    is allowed: no setting of the engine depends on the total step count.
    """
    path = Path(path)
    if not path.exists():
        return None
    meta = read_meta(path)
    try:
        step = int(meta["step"])
    except (KeyError, TypeError, ValueError) as err:
        raise _damaged(path, f"metadata without a step: {err!r}") from None
    if step > num_steps:
        raise CheckpointAheadError(path, step, num_steps)
    return step


def load_checkpoint(path) -> Checkpoint:
    """Read and verify a checkpoint; raises CheckpointError when it is missing or damaged."""
    path = Path(path)
    entries = _read_entries(path)
    raw_meta = entries.pop("meta", None)
    if raw_meta is None:
        raise _damaged(path, "no 'meta' entry: not a dip_jax checkpoint")
    try:
        meta = json.loads(raw_meta.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _damaged(path, f"unreadable metadata: {err}") from None
    if not isinstance(meta, dict):
        raise _damaged(path, "metadata is not a JSON object")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a dip_jax checkpoint (format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {meta.get('version')}, this dip_jax reads version "
            f"{VERSION}; resume it with the dip_jax version that wrote it, or start over"
        )
    if _checksum(entries, meta) != meta.get("sha256"):
        raise _damaged(path, "checksum mismatch: the contents changed after it was written")
    try:
        n = len(meta["state_paths"])
        leaves = tuple(entries[f"state/{i}"] for i in range(n))
    except (KeyError, TypeError) as err:
        raise _damaged(path, f"incomplete: {err}") from None
    return Checkpoint(
        path=path,
        step=int(meta["step"]),
        state_paths=tuple(meta["state_paths"]),
        state_leaves=leaves,
        key_impls={int(k): v for k, v in meta["key_impls"].items()},
        history={k[len("history/"):]: v for k, v in entries.items() if k.startswith("history/")},
        images={k[len("image/"):]: v for k, v in entries.items() if k.startswith("image/")},
        fingerprint=meta.get("fingerprint", {}),
        meta=meta,
    )


def restore_state(checkpoint: Checkpoint, template):
    """The checkpoint's state as a pytree shaped like `template` (e.g. a freshly prepared FitState)."""
    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    paths = [jax.tree_util.keystr(p) for p, _ in leaves_with_paths]
    where = f"checkpoint {str(checkpoint.path)!r}"
    if tuple(paths) != checkpoint.state_paths:
        missing = sorted(set(paths) - set(checkpoint.state_paths))[:3]
        extra = sorted(set(checkpoint.state_paths) - set(paths))[:3]
        raise CheckpointMismatchError(
            f"{where} holds a differently structured state (missing {missing}, unexpected {extra}); it was "
            "written for other settings or by another dip_jax version. Start over in a new output directory"
        )
    out = []
    for i, ((_, like), saved) in enumerate(zip(leaves_with_paths, checkpoint.state_leaves)):
        if i in checkpoint.key_impls:
            key = jax.random.wrap_key_data(jnp.asarray(saved), impl=checkpoint.key_impls[i])
            if key.shape != like.shape:
                raise CheckpointMismatchError(f"{where}: keys {paths[i]} are {key.shape}, expected {like.shape}")
            out.append(key)
            continue
        if tuple(saved.shape) != tuple(like.shape) or saved.dtype != like.dtype:
            raise CheckpointMismatchError(
                f"{where}: {paths[i]} is {saved.dtype}{tuple(saved.shape)} but this run needs "
                f"{like.dtype}{tuple(like.shape)}; the checkpoint was written for other settings"
            )
        out.append(jnp.asarray(saved))
    return jax.tree_util.tree_unflatten(treedef, out)


# --------------------------------------------------------------------------- policy objects


class Checkpointer:
    """Where and how often a fit checkpoints: `directory/ckpt.npz` every `every` steps.

    Pass it to `dj.fit(..., checkpointer=...)` or `dj.run(...)`. The
    engine also saves at the end of a run and when SIGINT/SIGTERM stops it.
    """

    def __init__(self, directory, *, every: int | None = None, keep_previous: bool = True,
                 filename: str = CHECKPOINT_NAME):
        if every is not None and (not isinstance(every, (int, np.integer)) or every < 1):
            raise ValueError(f"checkpoint every must be a positive number of steps or None, got {every!r}")
        if not filename or os.sep in filename:
            raise ValueError(f"filename must be a plain file name, got {filename!r}")
        self.directory = Path(directory)
        self.every = None if every is None else int(every)
        self.keep_previous = keep_previous
        self.filename = filename

    def __repr__(self) -> str:
        return f"Checkpointer({str(self.directory)!r}, every={self.every})"

    @property
    def path(self) -> Path:
        return self.directory / self.filename

    @property
    def previous_path(self) -> Path:
        return previous_path(self.path)

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> Checkpoint:
        return load_checkpoint(self.path)

    def steps_to_next(self, step: int) -> int | None:
        """Steps from `step` to the next scheduled checkpoint (None: no schedule)."""
        if self.every is None:
            return None
        return self.every - step % self.every

    def save(self, *, state, step: int, history=None, images=None, fingerprint=None) -> Path:
        return save_checkpoint(self.path, state=state, step=step, history=history, images=images,
                               fingerprint=fingerprint, keep_previous=self.keep_previous)


# The output-directory policy lives in its own module; its names stay importable from here.
from dip_jax.runtime.output_dir import prepare_output_dir  # noqa: E402,F401
