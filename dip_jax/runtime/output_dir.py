"""The output-directory policy of a run: a finished run is never silently replaced.

Contract: `prepare_output_dir(path, overwrite=, resume=)` (also importable
from `dip_jax.runtime.checkpoint`) creates or checks a run's folder: a
finished run (its `metrics.json` exists) is only replaced with `overwrite`,
an unfinished one (dip_jax checkpoints, no marker) only continued with
`resume` or started over with `overwrite`; a file under a checkpoint's name
that dip_jax did not write is never deleted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from dip_jax.runtime.checkpoint import (
    FINISHED_MARKER,
    FORMAT,
    CheckpointError,
    OutputExistsError,
    read_meta,
)

_OWN_CHECKPOINT = re.compile(r"ckpt(-\d+)?(\.prev)?\.npz(\.tmp)?")


def _is_own_checkpoint(path: Path) -> bool:
    """Whether `path` is a checkpoint file dip_jax writes (by name, and by content when it reads as one).

    A damaged file with a checkpoint's name counts as one (`--overwrite` is
    how a damaged run is started over); a readable `.npz` that is not a
    dip_jax checkpoint does not.
    """
    if not path.is_file() or not _OWN_CHECKPOINT.fullmatch(path.name):
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            if "meta" not in z.files:
                return False
            meta = json.loads(z["meta"].tobytes().decode())
    except Exception:  # noqa: BLE001 - unreadable under our name: a damaged checkpoint of ours
        return True
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def prepare_output_dir(path, *, overwrite: bool = False, resume: bool = False,
                       marker: str | None = FINISHED_MARKER, checkpoint_glob: str = "ckpt*.npz") -> Path:
    """Create/check a run's output directory; never lets a finished run be silently replaced.

    - `marker` (default `metrics.json`, written last by a finished run; None:
      the folder has none, e.g. a checkpoint folder) exists: OutputExistsError
      unless `overwrite`.
    - dip_jax checkpoints (`checkpoint_glob`, default `ckpt*.npz`: `ckpt.npz`,
      or one per group such as `ckpt-0.npz`) exist but no marker (an
      unfinished run): OutputExistsError unless `resume` (continue it) or
      `overwrite`.
    - `overwrite`: the marker and the dip_jax checkpoints (with their
      `.prev`/`.tmp` files) are deleted, nothing else, so the new run starts
      from scratch and its files replace the old ones. A file under a
      checkpoint's name that dip_jax did not write is never deleted: it is
      refused (the run would replace it).
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output path {str(out)!r} is a file; give a directory")
    finished = None if marker is None else out / marker
    candidates = sorted(p for p in out.glob(checkpoint_glob + "*") if p.is_file()) if out.is_dir() else []
    foreign = [p for p in candidates if _OWN_CHECKPOINT.fullmatch(p.name) and not _is_own_checkpoint(p)]
    if foreign:
        raise OutputExistsError(
            f"{str(foreign[0])!r} is not a dip_jax checkpoint, but a run here would write its checkpoint under "
            "that name; move that file or choose another folder"
        )
    own = [p for p in candidates if _is_own_checkpoint(p)]
    checkpoints = [p for p in own if not p.name.endswith((".tmp", ".prev.npz"))]
    if overwrite:
        if finished is not None:
            finished.unlink(missing_ok=True)
        for stale in own:
            stale.unlink()
    elif finished is not None and finished.exists():
        raise OutputExistsError(
            f"{str(out)!r} holds a finished run ({marker} exists); choose another output directory or pass "
            "--overwrite (overwrite=True) to replace it"
        )
    elif checkpoints and not resume:
        try:
            where = f"a checkpoint at step {read_meta(checkpoints[0])['step']}"
        except (CheckpointError, KeyError):
            where = "a damaged checkpoint"
        raise OutputExistsError(
            f"{str(out)!r} holds an unfinished run with {where} ({checkpoints[0].name}); pass --resume "
            "(resume=True) to continue it or --overwrite (overwrite=True) to start over"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out
