"""Fitting, the public entry points: `prepare`, `run`, `readout`, `fit` and `FitResult`.

Contract:
- `fit(key, net_config, fit_config, observation, *, op=Identity(), op_args=None, ...)`
  restores N images at once. `observation` is (N, h, w, c) float32 (or one
  (h, w, c) image), the corrupted data `y`; `op` maps the generator's output
  (N, H, W, C) to `y`'s space; `op_args` is a pytree of per-image arrays with a
  leading N axis (mask, kernel); inside a step each item sees its own slice,
  with image-like (H, W, C) leaves given a leading axis of 1 (a mask acts on
  the net's (1, H, W, C) output) and kernels left 2-D. `restarts=R` fits R
  independent nets per image. `transforms=[...]` adds step transforms
  (`dip_jax.fit.transforms`) after the ones FitConfig switches on;
  `regularisers=[(weight, fn), ...]` adds terms to the objective
  (`dip_jax.fit.objective`). Returns a `FitResult` with `output`
  (N, R, H, W, C) and a history.
- Every batch item (image x restart) has its own key, parameters, BatchNorm
  statistics, optimiser state, input `z` and transform states: fitting N
  items in one call gives the same result as N calls with the same per-item keys.
- Steps run in chunks of `fit_config.chunk_size` inside `lax.scan` under
  `jit` (`dip_jax.runtime.loop`); host work (history, progress, callbacks,
  checkpoints) happens between chunks, and the chunk function is compiled
  once per problem (a second chunk never recompiles). A step does not
  depend on its position in a chunk, so where chunks start and end never
  changes the numbers.
- Batch axis: `batch_mode='vmap'` maps it with `jax.vmap` (GPU/TPU: one big
  kernel per layer), `'map'` runs items one after another inside the compiled
  chunk, each item all its steps of the chunk in turn (on CPU a vmapped conv
  over per-item weights becomes a grouped convolution that XLA's CPU backend
  runs poorly). `'auto'` picks per backend. Under 'vmap', items that do not
  all fit in memory at once are vmapped in groups that do
  (`vmap_group_size`; chosen from the memory estimate when not set). With
  more than one local device the batch axis is also sharded over all of
  them (`dip_jax.runtime.sharding`); every item computes exactly what it
  computes on one device.
- Optimiser: Adam (or the original's Adam-then-L-BFGS) from the FitConfig
  acts on the trainable parameters raveled into one vector
  (`optim.over_flat_vector`); an optax transformation passed as `optimizer=`
  sees the trainable pytree ({'net': params} and/or {'input': z}) unchanged.
- Long runs: `fit(..., checkpoint_dir=, checkpoint_every=, resume=)` writes
  checkpoints (`dip_jax.runtime.checkpoint`) and continues from them bit for
  bit; on SIGINT/SIGTERM the current chunk finishes, a checkpoint is written
  and `Interrupted` (a KeyboardInterrupt carrying the state and a
  `FitResult`) is raised. Before allocating, `prepare` estimates the memory
  the fit needs (`dip_jax.runtime.memory`) and refuses with a ValueError
  when it will not fit. The readout falls back to the last healthy
  snapshot's output when divergence left the final one non-finite.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dip_jax import losses, operators
from dip_jax.fit import objective
from dip_jax.fit import transforms as transforms_lib
from dip_jax.fit.checks import as_item_keys, check_inputs
from dip_jax.fit.config import FitConfig
from dip_jax.fit.problem import FitData, Problem, init_fn, init_key, readout_fn
from dip_jax.fit.problem import chunk_fn as _chunk_fn
from dip_jax.fit.result import FitResult, fit_result
from dip_jax.fit.step import FitState, stop_flag
from dip_jax.runtime import checkpoint as checkpoint_lib
from dip_jax.runtime import memory, sharding
from dip_jax.runtime.batching import resolve_batch_mode
from dip_jax.runtime.loop import Interrupted, Placed, run_chunks


def prepare(
    key,
    net_config,
    fit_config: FitConfig,
    observation,
    *,
    op=None,
    op_args=None,
    shared=None,
    ground_truth=None,
    net_input=None,
    image_size: tuple[int, int] | None = None,
    restarts: int = 1,
    loss_fn: Callable = losses.mse,
    optimizer: optax.GradientTransformation | None = None,
    transforms=(),
    regularisers=(),
    variables=None,
    devices=None,
) -> tuple[Problem, FitState, FitData]:
    """Validate inputs and build the static problem, the initial state and the data.

    `image_size` is the generator's output size (default: the observation's
    size when the operator preserves it). `net_input` (N, H, W, Cin) replaces
    the config's input (e.g. the flash photo). `variables` starts from given
    weights (one set, broadcast to every item) instead of a random init.
    `devices` (default: all local devices) only sizes the memory check here.
    `transforms` and `regularisers` are added to FitConfig's (module docstring).
    Everything is checked, memory included, before any parameter is allocated.
    """
    op = operators.Identity() if op is None else op
    if not isinstance(restarts, (int, np.integer)) or restarts < 1:
        raise ValueError(f"restarts must be an integer >= 1, got {restarts!r}")
    y, gt, zin, (h, w) = check_inputs(net_config, op, observation, op_args=op_args, ground_truth=ground_truth,
                                      net_input=net_input, image_size=image_size)
    n = y.shape[0]
    batch_mode = resolve_batch_mode(fit_config.batch_mode)
    problem = Problem(net_config, fit_config, op, loss_fn, optimizer, gt is not None, batch_mode,
                      extra_transforms=transforms_lib.check_chain(transforms),
                      extra_regularisers=objective.check_regularisers(regularisers))
    transforms_lib.check_chain(problem.transforms)  # a user's name may clash with a built-in one

    b = n * restarts
    item_keys = as_item_keys(key, b)
    devs = sharding.local_devices(devices)
    items_per_device = -(-b // len(devs))
    group = fit_config.vmap_group_size if batch_mode == "vmap" else None

    def estimate(group_size):
        return memory.estimate_fit(
            net_config, fit_config, (h, w), b, batch_mode=batch_mode, tx=problem.tx,
            num_devices=len(devs), images=n, restarts=restarts, group_size=group_size,
        )

    keep_init_code = True
    if fit_config.check_memory:
        if batch_mode == "vmap" and group is None:
            group = memory.largest_fitting_group(estimate, items_per_device, memory.available_bytes(devs[0]))
        needed = estimate(group)
        memory.check_fits(needed, devs[0])
        keep_init_code = needed.activation_bytes < RELEASE_INIT_CODE_ABOVE_BYTES
    if group is not None and group >= items_per_device:
        group = None  # one group holding every item is a plain vmap
    problem = dataclasses.replace(problem, vmap_group_size=group)
    rep = lambda a: jnp.repeat(jnp.asarray(a), restarts, axis=0)  # noqa: E731
    data = FitData(
        target=rep(y)[:, None],
        op_args=None if op_args is None else jax.tree_util.tree_map(rep, op_args),
        ground_truth=None if gt is None else rep(gt)[:, None],
    )
    z_given = None if net_input is None else rep(zin)[:, None]
    state = _init_states(problem, item_keys, (h, w), z_given, variables, keep_code=keep_init_code)
    memory.release_freed_host_memory()  # the initialiser's compile scratch
    return problem, state, data


# A fit whose activations are estimated above this releases the initialiser's
# compiled code once it has run: for the default net that code is about 100 MB
# (one small kernel per parameter's random draw) and would otherwise stay
# resident through the whole fit. A later fit of the same problem then
# recompiles it, which is small next to a fit this large. 512 px with the
# default net is estimated at ~4 GiB, 256 px at ~1 GiB.
RELEASE_INIT_CODE_ABOVE_BYTES = 2 << 30


def _init_states(problem: Problem, item_keys, size, z_given, variables, *, keep_code: bool = True) -> FitState:
    fn = init_fn(init_key(problem), tuple(int(s) for s in size), z_given is not None, variables is not None)
    states = jax.block_until_ready(fn(item_keys, z_given, variables))
    if not keep_code:
        fn.clear_cache()
    return states


def run(
    problem: Problem,
    state: FitState,
    data: FitData,
    *,
    num_steps: int,
    shared=None,
    callback: Callable | None = None,
    progress: bool = False,
    checkpointer: checkpoint_lib.Checkpointer | None = None,
    fingerprint: dict | None = None,
    start_step: int = 0,
    history: dict | None = None,
    handle_signals: bool | None = None,
    devices=None,
) -> tuple[FitState, dict]:
    """Advance every item by `num_steps` steps, chunk by chunk.

    `callback(state, records)` runs on the host after each chunk with that
    chunk's per-step records (numpy, (steps, B)); returning True stops early.

    Long runs: `checkpointer` saves every `checkpointer.every` steps (chunks
    are cut at those steps), at the end, and on SIGINT/SIGTERM. `start_step`
    (steps already done) and `history` (their records, prepended to the
    returned history) continue a resumed run; `fingerprint` is stored in the
    checkpoints. `handle_signals` (default: when checkpointing) finishes the
    current chunk on SIGINT/SIGTERM, checkpoints and raises `Interrupted`;
    handlers are installed only for the call (main thread only). `devices`
    (default: all local devices) shards the batch axis when there are several.
    """
    placed = _run_placed(
        problem, state, data, num_steps=num_steps, shared=shared, callback=callback, progress=progress,
        checkpointer=checkpointer, fingerprint=fingerprint, start_step=start_step, history=history,
        handle_signals=handle_signals, devices=devices,
    )
    return placed.placement.take(placed.state), placed.history


def _run_placed(problem, state, data, *, num_steps, shared, callback, progress, checkpointer, fingerprint,
                start_step, history, handle_signals, devices) -> Placed:
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    placement = sharding.BatchPlacement(int(state.step.shape[0]), devices)
    return run_chunks(
        _chunk_fn(problem, placement.mesh), placement, placement.put(state), placement.put(data),
        placement.put_replicated(shared), num_steps=num_steps, chunk_size=problem.fit_config.chunk_size,
        callback=callback, progress=progress, checkpointer=checkpointer, fingerprint=fingerprint,
        start_step=start_step, history=history, handle_signals=handle_signals,
        images=lambda state_d, data_d: _images(problem, state_d, data_d, placement), postfix=_postfix,
        all_stopped=_all_stopped(state, placement),
    )


def _all_stopped(state: FitState, placement):
    """The host check that ends a fit whose items have all stopped; None when no item can stop."""
    if stop_flag(state) is None:
        return None
    return lambda state_d: bool(np.asarray(stop_flag(state_d))[: placement.batch_size].all())


def _images(problem: Problem, state_d, data_d, placement) -> dict:
    b = placement.batch_size
    out, avg = readout_fn(problem, placement.mesh)(state_d, data_d)
    images = {"output": np.asarray(out)[:b, 0]}
    if problem.fit_config.ema_decay is not None:
        images["output_avg"] = np.asarray(avg)[:b, 0]
    if state_d.best_out is not None:
        images["best"] = np.asarray(state_d.best_out)[:b, 0]
    return images


def _postfix(records: dict) -> dict:
    out = {"loss": f"{np.nanmean(records['loss'][-1]):.4g}"}
    for k in ("psnr_fit", "psnr_gt", "psnr_gt_avg"):
        if k in records:
            out[k] = f"{np.nanmean(records[k][-1]):.2f}"
    if "rolled_back" in records:
        out["rollbacks"] = int(records["rolled_back"].sum())
    return out


def readout(problem: Problem, state: FitState, data: FitData, *, devices=None) -> np.ndarray:
    """f(z) for every item with the unperturbed input, (B, H, W, C).

    Faithfulness: the original's final `net(net_input)` uses the last
    perturbed input (a global left over from the loop); dip_jax reads out with
    the clean `z`. An item whose output is not finite (divergence after the
    last check) falls back to its last healthy snapshot's output.
    """
    placement = sharding.BatchPlacement(int(state.step.shape[0]), devices)
    out, _ = readout_fn(problem, placement.mesh)(placement.put(state), placement.put(data))
    return np.asarray(out)[: placement.batch_size, 0]


def fit(
    key,
    net_config,
    fit_config: FitConfig,
    observation,
    *,
    restarts: int = 1,
    progress: bool = False,
    callback: Callable | None = None,
    checkpoint_dir=None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    checkpointer: checkpoint_lib.Checkpointer | None = None,
    handle_signals: bool | None = None,
    devices=None,
    **kwargs,
) -> FitResult:
    """Restore N images (x R restarts) in one compiled, batched fit. See module docstring.

    Checkpointing: `checkpoint_dir` (and `checkpoint_every` steps) or a
    `checkpoint.Checkpointer`. With `resume=True` an existing checkpoint there
    is verified (checksum, and a fingerprint of the settings, inputs and keys)
    and the fit continues from it to `fit_config.num_steps` steps in total
    (more steps than the checkpoint's run had is fine and equals one run of
    the new total; fewer than the checkpoint's step raises
    `checkpoint.CheckpointAheadError`); without one the fit starts fresh and
    warns `checkpoint.StartingFreshWarning`. A checkpoint present with
    `resume=False` is an error (it would be overwritten). On SIGINT/SIGTERM
    `Interrupted` is raised after checkpointing, with `.result` set.
    """
    t0 = time.perf_counter()
    if checkpointer is not None and (checkpoint_dir is not None or checkpoint_every is not None):
        raise ValueError("pass either checkpointer or checkpoint_dir/checkpoint_every, not both")
    if checkpointer is None and checkpoint_dir is not None:
        checkpointer = checkpoint_lib.Checkpointer(checkpoint_dir, every=checkpoint_every)
    elif checkpointer is None and checkpoint_every is not None:
        raise ValueError("checkpoint_every needs checkpoint_dir (where to write the checkpoints)")
    if resume and checkpointer is None:
        raise ValueError("resume=True needs checkpoint_dir (or a checkpointer) to resume from")
    if checkpointer is not None and checkpointer.exists() and not resume:
        raise checkpoint_lib.OutputExistsError(
            f"{str(checkpointer.path)!r} holds a checkpoint of an earlier run; pass resume=True "
            "(CLI: --resume) to continue it, or delete it (CLI: --overwrite) to start over"
        )
    resumed_from = None
    if resume:
        # Before anything is compiled: a checkpoint past num_steps is refused, a missing one announced.
        resumed_from = checkpoint_lib.resume_step(checkpointer.path, fit_config.num_steps)
        if resumed_from is None:
            warnings.warn(f"no checkpoint {checkpointer.filename} in {str(checkpointer.directory)!r}; starting "
                          "fresh", checkpoint_lib.StartingFreshWarning, stacklevel=2)
    problem, state, data = prepare(key, net_config, fit_config, observation, restarts=restarts,
                                   devices=devices, **kwargs)
    shared = kwargs.get("shared")
    fingerprint, history, done = None, None, 0
    if checkpointer is not None:
        fingerprint = checkpoint_lib.fingerprint(
            problem, data, shared=shared, restarts=restarts, initial_keys=checkpoint_lib.hash_arrays(state.key)
        )
        if resumed_from is not None:
            loaded = checkpointer.load()
            checkpoint_lib.check_fingerprint(loaded.fingerprint, fingerprint, path=checkpointer.path)
            if loaded.step > fit_config.num_steps:  # replaced since resume_step looked
                raise checkpoint_lib.CheckpointAheadError(checkpointer.path, loaded.step, fit_config.num_steps)
            state = checkpoint_lib.restore_state(loaded, state)
            history, done = loaded.history, loaded.step
            resumed_from = done
    try:
        placed = _run_placed(
            problem, state, data, num_steps=fit_config.num_steps - done, shared=shared,
            callback=callback, progress=progress, checkpointer=checkpointer, fingerprint=fingerprint,
            start_step=done, history=history, handle_signals=handle_signals, devices=devices,
        )
    except Interrupted as stop:
        placement = sharding.BatchPlacement(int(stop.state.step.shape[0]), devices)
        stop.result = fit_result(problem, Placed(placement.put(stop.state), placement.put(data), stop.history,
                                               placement), restarts, t0, resumed_from)
        raise
    return fit_result(problem, placed, restarts, t0, resumed_from)
