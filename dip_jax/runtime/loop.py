"""The chunk loop: compiled chunks of steps, host work between them.

Contract: `run_chunks(chunk, state, data, shared, ...)` calls the compiled
`chunk(state, data, shared, n_active) -> (state, records)` (a `lax.scan` of
`chunk_size` steps, steps past `n_active` skipped) until `num_steps` steps
are done, and between chunks: collects the per-step records `(steps, B)` as
numpy, updates the progress bar, calls `callback(host_state, records)`
(True stops early), ends the run when `all_stopped(state)` (the device
state; given when items can stop on their own) says every item has stopped, writes checkpoints every `checkpointer.every` steps
(chunks are cut there), at the end and on SIGINT/SIGTERM, after which
`Interrupted` is raised. The first call compiles `chunk` with no active step
and hands the compiler's scratch memory back before any real work.
Nothing here depends on what a step computes.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dip_jax.runtime import memory
from dip_jax.runtime.signals import SignalGuard, signal_name


class Interrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped a run after finishing its current chunk.

    Attributes: `signum`, `step` (steps done in total), `state` and `history`
    (as `run` would have returned them), `checkpoint_path` (None when no
    checkpointer was given or writing failed), `error` (why writing failed),
    and `result`: the results so far, set by the layer that can make them
    (`fit` sets a `FitResult`; an application running several fits may set
    its own collection of them).
    """

    def __init__(self, signum: int, step: int, state, history: dict, checkpoint_path=None, error=None):
        msg = f"stopped by {signal_name(signum)} after step {step}"
        if checkpoint_path is not None:
            msg += f"; checkpoint written to {str(checkpoint_path)!r} (resume to continue)"
        elif error is not None:
            msg += f"; the checkpoint could not be written ({error})"
        super().__init__(msg)
        self.signum = signum
        self.step = step
        self.state = state
        self.history = history
        self.checkpoint_path = checkpoint_path
        self.error = error
        self.result: Any = None


class Placed(NamedTuple):
    """A run's state and data as they sit on the devices (padded when sharded)."""

    state: Any
    data: Any
    history: dict
    placement: Any


def run_chunks(chunk: Callable, placement, state_d, data_d, shared_d, *, num_steps: int, chunk_size: int,
               callback=None, progress=False, checkpointer=None, fingerprint=None, start_step=0, history=None,
               handle_signals=None, images: Callable | None = None, postfix: Callable | None = None,
               all_stopped: Callable | None = None) -> Placed:
    """Advance `num_steps` steps (see the module docstring); `images(state_d, data_d)` feeds checkpoints."""
    b = placement.batch_size
    if num_steps > 0:
        compile_then_release(chunk, state_d, data_d, shared_d)
    records_so_far: dict[str, list] = {k: [np.asarray(v)] for k, v in (history or {}).items()}
    done = 0
    last_saved = start_step if history is not None else None
    if handle_signals is None:
        handle_signals = checkpointer is not None

    def host_state():
        return placement.take(state_d)

    def concatenated():
        return {k: np.concatenate(v) for k, v in records_so_far.items()}

    def save(step):
        pictures = images(state_d, data_d) if images is not None else None
        return checkpointer.save(state=host_state(), step=step, history=concatenated(), images=pictures,
                                 fingerprint=fingerprint)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=start_step + num_steps, initial=start_step, unit="step", dynamic_ncols=True)
    try:
        with SignalGuard(handle_signals) as guard:
            while done < num_steps:
                step_now = start_step + done
                n_active = min(chunk_size, num_steps - done)
                if checkpointer is not None and checkpointer.every is not None:
                    n_active = min(n_active, checkpointer.steps_to_next(step_now))
                state_d, records = chunk(state_d, data_d, shared_d, jnp.int32(n_active))
                records = {k: np.asarray(v)[:n_active, :b] for k, v in records.items()}
                for k, v in records.items():
                    records_so_far.setdefault(k, []).append(v)
                done += n_active
                step_now += n_active
                if bar is not None:
                    bar.update(n_active)
                    if postfix is not None:
                        bar.set_postfix(postfix(records))
                stop = callback is not None and callback(host_state(), records)
                stop = stop or (all_stopped is not None and bool(all_stopped(state_d)))
                if guard.signum is not None:
                    path, error = None, None
                    if checkpointer is not None:
                        try:
                            path = save(step_now)
                        except OSError as err:
                            error = err
                    raise Interrupted(guard.signum, step_now, host_state(), concatenated(), path, error)
                if checkpointer is not None and checkpointer.every and step_now % checkpointer.every == 0:
                    _save_or_warn(save, step_now, checkpointer)
                    last_saved = step_now
                if stop:
                    break
            if checkpointer is not None and last_saved != start_step + done:
                _save_or_warn(save, start_step + done, checkpointer)
    finally:
        if bar is not None:
            bar.close()
    return Placed(state_d, data_d, concatenated(), placement)


def compile_then_release(chunk: Callable, state_d, data_d, shared_d) -> None:
    """Compile `chunk` for these arguments (if not yet), then give the compiler's scratch back.

    The compile happens in a call with no active step (every step of the
    chunk is skipped, so nothing is computed and the fit's large buffers are
    never touched); the compiler's freed memory is then returned to the OS
    before the first real chunk allocates its temporaries. Without this, on
    glibc the two add up in the process's peak memory.
    """
    args = (state_d, data_d, shared_d)
    leaves, treedef = jax.tree_util.tree_flatten(args)
    signature = (treedef, tuple((a.shape, str(a.dtype), getattr(a, "sharding", None)) for a in leaves))
    seen = _COMPILED_SIGNATURES.setdefault(chunk, set())
    if signature in seen:
        return
    jax.block_until_ready(chunk(*args, jnp.int32(0)))
    memory.release_freed_host_memory()
    seen.add(signature)


# Per chunk function, the argument structures `compile_then_release` compiled it
# for; weak, so a chunk dropped from its cache takes its entry along.
_COMPILED_SIGNATURES: weakref.WeakKeyDictionary[Callable, set] = weakref.WeakKeyDictionary()


def _save_or_warn(save: Callable, step: int, checkpointer) -> None:
    # A full disk must not end hours of fitting: warn, keep the last good checkpoint, go on.
    try:
        save(step)
    except OSError as err:
        warnings.warn(
            f"could not write checkpoint {str(checkpointer.path)!r} at step {step} ({err}); the fit goes on "
            "and the previous checkpoint (if any) is unchanged",
            RuntimeWarning,
            stacklevel=3,
        )
