"""The fitting engine: a pure update step, vmapped over images x restarts, scanned over steps.

Contract:
- `fit(key, net_config, fit_config, observation, *, op=Identity(), op_args=None, ...)`
  restores N images at once. `observation` is (N, h, w, c) float32 (or one
  (h, w, c) image), the corrupted data `y`; `op` maps the generator's output
  (N, H, W, C) to `y`'s space; `op_args` is a pytree of per-image arrays with a
  leading N axis (mask, kernel); inside a step each item sees its own slice,
  with image-like (H, W, C) leaves given a leading axis of 1 (a mask acts on
  the net's (1, H, W, C) output) and kernels left 2-D. `restarts=R` fits R
  independent nets per image. Returns a `FitResult` with `output`
  (N, R, H, W, C) and a history.
- Every batch item (image x restart) has its own key, parameters, BatchNorm
  statistics, optimiser state and input `z`: fitting N items in one call gives
  the same result as N calls with the same per-item keys.
- The update step is a pure function of a `FitState` pytree. Steps run in
  chunks of `fit_config.chunk_size` inside `lax.scan` under `jit`; host work
  (history, progress, callbacks, checkpoints) happens between chunks, and the
  chunk function is compiled once per problem (a second chunk never
  recompiles). A step does not depend on its position in a chunk, so where
  chunks start and end never changes the numbers.
- Batch axis: `batch_mode='vmap'` maps it with `jax.vmap` (GPU/TPU: one big
  kernel per layer), `'map'` runs items one after another inside the compiled
  chunk, each item all its steps of the chunk in turn (`lax.map` over items
  outside the step scan; on CPU a vmapped conv over per-item weights becomes
  a grouped convolution that XLA's CPU backend runs poorly). `'auto'` picks per
  backend. Under 'vmap', items that do not all fit in memory at once are
  vmapped in groups that do, run one after another (`vmap_group_size`; chosen
  from the memory estimate when not set). With more than one local device the batch axis is also sharded
  over all of them (`dip_jax.sharding`; padded to a multiple of the device
  count, padding dropped afterwards); every item computes exactly what it
  computes on one device.

What one step does (the original's `closure()`):
  z_t = z + reg_noise_std * N(0, 1)          (fresh noise each step)
  out = f(z_t);  loss = loss_fn(A(out), y) + tv_weight * TV(out)
  psnr_fit = PSNR(A(out), y)
  backtracking: if psnr_fit dropped by more than `backtrack_drop_db` since the
  last saved copy, restore that copy, else save the current parameters;
  optimiser step; out_avg = decay * out_avg + (1 - decay) * out.

Optimiser: Adam (or the original's Adam-then-L-BFGS) from the FitConfig acts on
  the trainable parameters raveled into one vector (`over_flat_vector`: the
  same numbers for Adam, far fewer compiled kernels); its state's moments are
  (num_params,) vectors. An optax transformation passed as `optimizer=` sees
  the trainable pytree ({'net': params} and/or {'input': z}) unchanged.

Divergence recovery (not in the original; `divergence_check=True`, per item):
  a step is unhealthy when its loss or its output is not finite, or when
  psnr_fit fell more than `divergence_drop_db` below the previous healthy
  step's (non-finite gradients show up as a non-finite output one step
  later). A healthy step snapshots the state it started from; an unhealthy
  one rolls the item back to the last snapshot (undoing the update that led
  to the bad state), multiplies the item's learning-rate scale by
  `divergence_lr_factor` (the optimiser's updates are scaled, which for Adam
  is exactly a smaller learning rate) and counts a rollback. Other items are
  untouched. The readout falls back to the snapshot's output when the final
  output is not finite, so a fit never returns a NaN image. Rolled-back
  steps keep their non-finite loss/PSNR in the history (use np.nanmax).

Long runs: `fit(..., checkpoint_dir=, checkpoint_every=, resume=)` writes
checkpoints (`dip_jax.checkpoint`) and continues from them bit for bit; on
SIGINT/SIGTERM the current chunk finishes, a checkpoint is written and
`Interrupted` (a KeyboardInterrupt carrying the state and a `FitResult`) is
raised. Before allocating, `prepare` estimates the memory the fit needs
(`dip_jax.memory`) and refuses with a ValueError when it will not fit.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import signal
import threading
import time
import warnings
import weakref
from typing import Any, Callable, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

from dip_jax import checkpoint as checkpoint_lib
from dip_jax import inputs as inputs_lib
from dip_jax import losses, memory, metrics, nets, operators, sharding
from dip_jax.batching import BATCH_MODES, resolve_batch_mode
from dip_jax.batching import batched as _batched_fn

OPT_OVER = ("net", "input", "net,input")
OPTIMIZERS = ("adam", "lbfgs")

# A reference PSNR above this (a near-perfect fit, or +inf for an exact one)
# is clamped, so the collapse rule still fires instead of always firing.
_PSNR_REFERENCE_CAP = 100.0


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """How to fit: the original notebook's loop settings, as data."""

    num_steps: int = 3000
    learning_rate: float = 0.01
    optimizer: str = "adam"
    # L-BFGS in the original is preceded by 100 Adam steps at lr 0.001.
    lbfgs_warmup_steps: int = 100
    lbfgs_warmup_lr: float = 0.001
    opt_over: str = "net"
    reg_noise_std: float = 0.0
    # Output averaging (denoising): avg = decay * avg + (1 - decay) * out. None: off.
    ema_decay: float | None = None
    backtrack: bool = False
    backtrack_drop_db: float = 5.0
    # Faithfulness: the original's param_noise rebinds a local name and has no
    # effect. dip_jax implements what it meant (persistent N(0,1)*std(w)*scale
    # added to every 4-D conv weight each step) but leaves it off by default.
    param_noise: bool = False
    param_noise_scale: float = 1.0 / 50.0
    tv_weight: float = 0.0
    tv_beta: float = 0.5
    input_type: str = "noise"
    noise_type: str = "u"
    input_scale: float = 0.1
    chunk_size: int = 100
    batch_mode: str = "auto"
    # Under 'vmap': how many items are vmapped together (the groups then run
    # one after another). None: all of a device's items at once, or, when the
    # memory check finds they do not fit, the largest group that does (with
    # an even split). Activation memory grows with the group, not the batch.
    vmap_group_size: int | None = None
    # PRNG behind the weight init. Flax draws every parameter with its own
    # threefry call, which XLA's CPU backend takes ~3x longer to compile than
    # 'rbg' (seconds per distinct net). 'rbg' is deterministic on a given
    # backend; use 'threefry2x32' for bit-identical inits across backends.
    init_rng: str = "rbg"
    seed: int = 0
    # Divergence recovery (not in the original, which can silently produce NaN
    # images): see the module docstring. Independent of `backtrack`; when both
    # fire on the same step the rollback wins.
    divergence_check: bool = True
    divergence_drop_db: float = 15.0
    divergence_lr_factor: float = 0.5
    # Refuse up front when the estimated memory exceeds what is available.
    check_memory: bool = True

    def __post_init__(self):
        if self.num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {self.num_steps}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.opt_over not in OPT_OVER:
            raise ValueError(f"opt_over must be one of {OPT_OVER}, got {self.opt_over!r}")
        if self.reg_noise_std < 0:
            raise ValueError(f"reg_noise_std must be >= 0, got {self.reg_noise_std}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {self.ema_decay}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.batch_mode not in BATCH_MODES:
            raise ValueError(f"batch_mode must be one of {BATCH_MODES}, got {self.batch_mode!r}")
        if self.vmap_group_size is not None and (
            isinstance(self.vmap_group_size, bool) or not isinstance(self.vmap_group_size, int)
            or self.vmap_group_size < 1
        ):
            raise ValueError(
                f"vmap_group_size must be None (automatic) or an integer >= 1, got {self.vmap_group_size!r}"
            )
        if self.vmap_group_size is not None and self.batch_mode == "map":
            raise ValueError(
                "vmap_group_size applies to batch_mode='vmap' (or 'auto' on GPU/TPU); 'map' fits items "
                "one at a time. Drop vmap_group_size or use batch_mode='vmap'"
            )
        if self.init_rng not in ("rbg", "threefry2x32"):
            raise ValueError(f"init_rng must be 'rbg' or 'threefry2x32', got {self.init_rng!r}")
        if self.input_type not in inputs_lib.INPUT_TYPES:
            raise ValueError(f"input_type must be one of {inputs_lib.INPUT_TYPES}, got {self.input_type!r}")
        if not self.divergence_drop_db > 0:
            raise ValueError(f"divergence_drop_db must be > 0 dB, got {self.divergence_drop_db}")
        if not 0.0 < self.divergence_lr_factor <= 1.0:
            raise ValueError(
                f"divergence_lr_factor must be in (0, 1], got {self.divergence_lr_factor} "
                "(0.5 halves the learning rate after each rollback; 1 keeps it)"
            )


class GoodState(NamedTuple):
    """Per item: the last state that passed the divergence check, and its data-fit PSNR."""

    params: Any
    batch_stats: Any
    opt_state: Any
    z: jax.Array
    out_avg: jax.Array
    backup: Any
    backup_psnr: jax.Array
    num_updates: jax.Array
    psnr: jax.Array


class FitState(NamedTuple):
    """Everything one batch item's fit carries from step to step.

    `step` counts steps taken; `num_updates` the ones whose result was kept
    (it differs from `step` only after divergence rollbacks). `lr_scale`
    multiplies the optimiser's updates (1 until a rollback). `good` is the
    rollback snapshot (None with `divergence_check=False`); `best_out` and
    `best_psnr` the output with the best ground-truth PSNR so far (None
    without a ground truth).
    """

    params: Any
    batch_stats: Any
    opt_state: Any
    z: jax.Array
    key: jax.Array
    step: jax.Array
    out_avg: jax.Array
    backup: Any
    backup_psnr: jax.Array
    num_backtracks: jax.Array
    num_updates: jax.Array | None = None
    lr_scale: jax.Array | None = None
    num_rollbacks: jax.Array | None = None
    good: GoodState | None = None
    best_out: jax.Array | None = None
    best_psnr: jax.Array | None = None


class FitData(NamedTuple):
    """Per-item arrays (leading batch axis), vmapped alongside the state."""

    target: jax.Array
    op_args: Any
    ground_truth: jax.Array | None


@dataclasses.dataclass(frozen=True)
class Problem:
    """The static half of a fit (hashable): what is built once and compiled once."""

    net_config: Any
    fit_config: FitConfig
    op: Any
    loss_fn: Callable
    optimizer: Any
    has_ground_truth: bool
    batch_mode: str
    # Resolved from FitConfig.vmap_group_size by `prepare`: None means all of
    # a device's items in one vmap (always None under 'map').
    vmap_group_size: int | None = None

    @functools.cached_property
    def module(self):
        return nets.build_generator(self.net_config)

    @functools.cached_property
    def tx(self) -> optax.GradientTransformation:
        # The built-in optimisers act on one flat vector (see `over_flat_vector`);
        # a user's optimiser sees the trainable pytree, since it may depend on
        # its structure (per-layer rates, masks).
        if self.optimizer is not None:
            return self.optimizer
        return over_flat_vector(make_optimizer(self.fit_config))


class FitResult(NamedTuple):
    """What `fit` returns. Arrays are numpy; per-item values are shaped (N, R, ...).

    `output`: f(z) at the end (the last finite state's when divergence left
    the final one non-finite); `output_avg`: the running average (when
    `ema_decay` is set); `best_output`/`best_psnr`: the output with the best
    ground-truth PSNR seen (when a ground truth was given); `num_rollbacks`:
    divergence rollbacks per item; `num_backtracks`: backtracking restores per
    item; `steps`: steps done in total (resumed runs included);
    `resumed_from`: the checkpoint's step this call continued from (None: it
    started at step 0), so `steps - (resumed_from or 0)` were run by this call.
    """

    output: np.ndarray
    output_avg: np.ndarray | None
    history: dict
    state: FitState
    problem: Problem
    seconds: float
    num_rollbacks: np.ndarray | None = None
    num_backtracks: np.ndarray | None = None
    best_output: np.ndarray | None = None
    best_psnr: np.ndarray | None = None
    steps: int = 0
    resumed_from: int | None = None

    @property
    def restored(self) -> np.ndarray:
        """(N, H, W, C): the averaged output if averaging is on, mean over restarts."""
        out = self.output_avg if self.output_avg is not None else self.output
        return out.mean(axis=1)


class Interrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped a run after finishing its current chunk.

    Attributes: `signum`, `step` (steps done in total), `state` and `history`
    (as `run` would have returned them), `checkpoint_path` (None when no
    checkpointer was given or writing failed), and `result` (a `FitResult` of
    the state so far, set by `fit`).
    """

    def __init__(self, signum: int, step: int, state, history: dict, checkpoint_path=None, error=None):
        name = signal.Signals(signum).name if signum in {s.value for s in signal.Signals} else str(signum)
        msg = f"stopped by {name} after step {step}"
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
        self.result: FitResult | None = None


def make_optimizer(cfg: FitConfig) -> optax.GradientTransformation:
    """Adam with PyTorch's defaults, or the original's Adam-then-L-BFGS."""
    adam = optax.adam(cfg.learning_rate, b1=0.9, b2=0.999, eps=1e-8)
    if cfg.optimizer == "adam":
        return adam
    warmup = optax.adam(cfg.lbfgs_warmup_lr, b1=0.9, b2=0.999, eps=1e-8)
    # PyTorch's LBFGS as the original calls it has no line search and lr=LR.
    lbfgs = optax.lbfgs(learning_rate=cfg.learning_rate, linesearch=None)
    return _switch_after(warmup, lbfgs, cfg.lbfgs_warmup_steps)


class FlatVectorState(NamedTuple):
    """The wrapped optimiser's state, over the trainable parameters raveled into one vector."""

    inner: Any


def over_flat_vector(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` applied to the gradient pytree raveled into one vector; updates come back as a pytree.

    For an elementwise optimiser (Adam) the numbers are those of `tx` on the
    pytree; for L-BFGS only the summation order of its inner products
    changes. Why: per leaf, Adam is ~3 fused kernels for each of the default
    net's ~140 parameter arrays, which XLA's CPU backend compiles one by one
    (about a third of a chunk's kernels); on one vector they are a handful.
    The state's moments are then (num_params,) vectors.
    """

    def init(params):
        flat, _ = jax.flatten_util.ravel_pytree(params)
        return FlatVectorState(tx.init(flat))

    def update(grads, state, params=None):
        flat_grads, unravel = jax.flatten_util.ravel_pytree(grads)
        flat_params = None if params is None else jax.flatten_util.ravel_pytree(params)[0]
        flat_updates, inner = tx.update(flat_grads, state.inner, flat_params)
        return unravel(flat_updates), FlatVectorState(inner)

    return optax.GradientTransformation(init, update)


class _SwitchState(NamedTuple):
    count: jax.Array
    first: Any
    second: Any


def _switch_after(first: optax.GradientTransformation, second: optax.GradientTransformation, n: int):
    """`first` for n steps, then `second` (each keeps its own state)."""

    def init(params):
        return _SwitchState(jnp.zeros((), jnp.int32), first.init(params), second.init(params))

    def update(grads, state, params=None):
        def run_first(_):
            u, s = first.update(grads, state.first, params)
            return u, s, state.second

        def run_second(_):
            u, s = second.update(grads, state.second, params)
            return u, state.first, s

        u, s1, s2 = jax.lax.cond(state.count < n, run_first, run_second, None)
        return u, _SwitchState(state.count + 1, s1, s2)

    return optax.GradientTransformation(init, update)


def _trainable(cfg: FitConfig, params, z) -> dict:
    out = {}
    if "net" in cfg.opt_over:
        out["net"] = params
    if "input" in cfg.opt_over:
        out["input"] = z
    return out


def _add_param_noise(key, params, scale):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    noisy = [
        w + jax.random.normal(k, w.shape, w.dtype) * jnp.std(w) * scale if w.ndim == 4 else w
        for w, k in zip(leaves, keys)
    ]
    return jax.tree_util.tree_unflatten(treedef, noisy)


def _pick(cond, if_true, if_false):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(cond, a, b), if_true, if_false)


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.ones((), bool)


def _item_op_args(op_args):
    """One item's op args as the operators expect them: image-like (H, W, C) leaves get a batch axis of 1.

    Kernels stay 2-D (Downsample, Blur); masks become (1, H, W, C) like the
    net's (1, H, W, C) output (Mask.validate checks that layout).
    """
    return jax.tree_util.tree_map(lambda a: a[None] if a.ndim == 3 else a, op_args)


def _item_step(problem: Problem, state: FitState, data: FitData, shared: Any):
    """One step of one batch item. Pure; vmapped or mapped over items."""
    cfg = problem.fit_config
    key, k_input, k_param = jax.random.split(state.key, 3)
    params = state.params
    if cfg.param_noise and "net" in cfg.opt_over:
        params = _add_param_noise(k_param, params, cfg.param_noise_scale)
    if cfg.reg_noise_std > 0:
        perturbation = cfg.reg_noise_std * jax.random.normal(k_input, state.z.shape, state.z.dtype)
    else:
        perturbation = jnp.zeros_like(state.z)
    op_args = _item_op_args(data.op_args)

    def objective(trainable):
        p = trainable.get("net", params)
        z = trainable.get("input", state.z)
        out, updates = problem.module.apply(
            {"params": p, "batch_stats": state.batch_stats}, z + perturbation, mutable=["batch_stats"]
        )
        pred = _apply_op(problem.op, out, op_args, shared)
        loss = problem.loss_fn(pred, data.target)
        if cfg.tv_weight:
            loss = loss + cfg.tv_weight * losses.total_variation(out, beta=cfg.tv_beta)
        return loss, (out, pred, updates["batch_stats"])

    trainable = _trainable(cfg, params, state.z)
    (loss, (out, pred, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(trainable)
    psnr_fit = _psnr(pred, data.target) if pred.shape == data.target.shape else jnp.float32(jnp.nan)
    updates, opt_state = problem.tx.update(grads, state.opt_state, trainable)
    if cfg.divergence_check:
        # 1.0 until a rollback, and x * 1.0 == x exactly: healthy runs are unchanged.
        updates = jax.tree_util.tree_map(lambda u: u * state.lr_scale.astype(u.dtype), updates)
    new_trainable = optax.apply_updates(trainable, updates)
    backup, backup_psnr, num_backtracks = state.backup, state.backup_psnr, state.num_backtracks
    fell = jnp.zeros((), bool)
    if cfg.backtrack:
        fell = psnr_fit - state.backup_psnr < -cfg.backtrack_drop_db
        # On a fall the original copies the saved parameters back. dip_jax also
        # skips that step's optimiser update (the original applies the stale
        # gradient to the restored weights); documented in the README.
        new_trainable = _pick(fell, state.backup, new_trainable)
        opt_state = _pick(fell, state.opt_state, opt_state)
        backup = _pick(fell, state.backup, trainable)
        backup_psnr = jnp.where(fell, state.backup_psnr, psnr_fit)
        num_backtracks = num_backtracks + fell.astype(jnp.int32)
    out = jax.lax.stop_gradient(out)
    if cfg.ema_decay is not None:
        d = cfg.ema_decay
        out_avg = jnp.where(state.num_updates == 0, out, d * state.out_avg + (1 - d) * out)
    else:
        out_avg = out
    record = {"loss": loss, "psnr_fit": psnr_fit, "backtracked": fell}
    if data.ground_truth is not None:
        record["psnr_gt"] = _psnr(out, data.ground_truth)
        if cfg.ema_decay is not None:
            record["psnr_gt_avg"] = _psnr(out_avg, data.ground_truth)
    healthy = jnp.ones((), bool)
    if cfg.divergence_check:
        reference = jnp.minimum(state.good.psnr, _PSNR_REFERENCE_CAP)
        collapsed = psnr_fit < reference - cfg.divergence_drop_db  # False for NaN (no data-fit PSNR)
        # Non-finite gradients need no check of their own: they make the next
        # state non-finite, and that step rolls back to this (healthy) one.
        healthy = jnp.isfinite(loss) & _all_finite(out) & ~collapsed
    best_out, best_psnr = state.best_out, state.best_psnr
    if state.best_psnr is not None:
        score = record["psnr_gt_avg"] if cfg.ema_decay is not None else record["psnr_gt"]
        better = (score > state.best_psnr) & healthy
        best_out = jnp.where(better, out_avg if cfg.ema_decay is not None else out, state.best_out)
        best_psnr = jnp.where(better, score, state.best_psnr)
    new_state = FitState(
        params=new_trainable.get("net", params),
        batch_stats=batch_stats,
        opt_state=opt_state,
        z=new_trainable.get("input", state.z),
        key=key,
        step=state.step + 1,
        out_avg=out_avg,
        backup=backup,
        backup_psnr=backup_psnr,
        num_backtracks=num_backtracks,
        num_updates=state.num_updates + 1,
        lr_scale=state.lr_scale,
        num_rollbacks=state.num_rollbacks,
        good=state.good,
        best_out=best_out,
        best_psnr=best_psnr,
    )
    if cfg.divergence_check:
        g = state.good
        snapshot = GoodState(
            state.params, state.batch_stats, state.opt_state, state.z, state.out_avg,
            state.backup, state.backup_psnr, state.num_updates, psnr_fit,
        )
        rolled_back = new_state._replace(
            params=g.params, batch_stats=g.batch_stats, opt_state=g.opt_state, z=g.z, out_avg=g.out_avg,
            backup=g.backup, backup_psnr=g.backup_psnr, num_backtracks=state.num_backtracks,
            num_updates=g.num_updates, lr_scale=state.lr_scale * cfg.divergence_lr_factor,
            num_rollbacks=state.num_rollbacks + 1,
        )
        # A conditional, not a select over the whole state: under 'map' it only
        # passes buffers through (XLA's CPU compile time doubles with selects).
        kept = new_state._replace(good=snapshot)
        new_state = jax.lax.cond(healthy, lambda: kept, lambda: rolled_back)
        record["backtracked"] = fell & healthy
        record["rolled_back"] = ~healthy
    return new_state, record


def _psnr(a, b) -> jax.Array:
    """PSNR of one item's (1, ...) arrays, as a scalar."""
    return jnp.mean(metrics.psnr(a, b))


def _apply_op(op, x, op_args, shared):
    return op.apply(x, op_args) if shared is None else op.apply(x, op_args, shared)


# XLA:CPU compiles every fused kernel of a program separately (a chunk of the
# default net is ~850 of them), and compiling is most of a fit's first-chunk
# wait. Measured on the lowered 256 px chunk, each pair compiled in one process
# (2 cores): XLA's older fusion emitters 13.3 s vs 22.4 s with the default
# ones (11.6 vs 18.8 s in another run); then LLVM optimisation level 1 instead
# of 2: 11.5/9.5/8.2 s vs 12.4/10.6/11.3 s. Step time was the same each time
# (medians 1.42 vs 1.44 s and 1.48 vs 1.51 s); outputs agree to float32
# round-off. An option also set in the XLA_FLAGS environment variable is left
# to it; set this to {} (before the first fit) to compile with XLA's defaults.
CPU_COMPILER_OPTIONS: dict = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1}
# On top of those, for code a fit runs once (the initialiser): without LLVM
# optimisation. Measured on the default net's 256 px initialiser: 7.0 -> 4.6 s
# to compile, 0.09 -> 0.21 s to run.
CPU_RUN_ONCE_OPTIONS: dict = {"xla_backend_optimization_level": 0}


def _jit(fn: Callable, mesh=None, *, run_once: bool = False) -> Callable:
    """`jax.jit(fn)`, with `CPU_COMPILER_OPTIONS` (and `CPU_RUN_ONCE_OPTIONS` if `run_once`) on CPU."""
    platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
    options = _cpu_compiler_options(run_once=run_once) if platform == "cpu" else {}
    return jax.jit(fn, compiler_options=options or None)


def _cpu_compiler_options(*, run_once: bool = False) -> dict:
    """`CPU_COMPILER_OPTIONS` (+ run-once ones) less those XLA_FLAGS sets and those this jaxlib lacks."""
    from_env = os.environ.get("XLA_FLAGS", "")
    options = {**CPU_COMPILER_OPTIONS, **(CPU_RUN_ONCE_OPTIONS if run_once else {})}
    wanted = tuple(sorted(
        (k, v) for k, v in options.items() if not re.search(rf"(^|\s)--{re.escape(k)}(=|\s|$)", from_env)
    ))
    return _supported_options(wanted)


@functools.lru_cache(maxsize=None)
def _supported_options(options: tuple) -> dict:
    """The options this jaxlib's XLA knows (an unknown one fails every compile)."""
    supported = {}
    probe = jax.device_put(np.zeros((), np.float32), jax.devices("cpu")[0])
    for name, value in options:
        try:
            jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(probe).compile()
        except Exception as err:  # noqa: BLE001 - XLA's runtime error type varies by version
            warnings.warn(f"this jaxlib's XLA rejects the compile option {name}={value!r} ({err}); compiling "
                          "without it", RuntimeWarning, stacklevel=3)
            continue
        supported[name] = value
    return supported


_IMAGE_OPERATORS = (operators.Identity, operators.Mask, operators.Downsample, operators.Blur, operators.Compose)
_BATCH = PartitionSpec(sharding.BATCH_AXIS)
_REPLICATED = PartitionSpec()


def _compile_key(problem: Problem) -> Problem:
    """`problem` with the FitConfig fields that never reach compiled code normalised.

    A fit of 4 steps and one of 3000 (or 'auto' and the 'map' it resolves
    to) share one compiled chunk, init and readout.
    """
    cfg = dataclasses.replace(
        problem.fit_config, num_steps=0, batch_mode=problem.batch_mode, check_memory=True,
        vmap_group_size=problem.vmap_group_size,
    )
    return problem if cfg == problem.fit_config else dataclasses.replace(problem, fit_config=cfg)


def _chunk_fn(problem: Problem, mesh=None) -> Callable:
    """The compiled chunk for `problem` (cached per compile key and mesh)."""
    key = _compile_key(problem)
    return _compiled_chunk(key) if mesh is None else _compiled_chunk(key, mesh)


@functools.lru_cache(maxsize=32)
def _compiled_chunk(problem: Problem, mesh=None) -> Callable:
    """The compiled chunk: `chunk_size` steps in a scan; steps past `n_active` are skipped.

    A step never looks at its index except to skip, so the numbers do not
    depend on where a chunk starts (resumed runs match uninterrupted ones).
    With a mesh, each device runs the same scan over its share of the items.
    """
    chunk = problem.fit_config.chunk_size

    def scan_steps(step, state, data, shared, n_active):
        # A jitted step is traced once: the idle branch's eval_shape and the
        # active branch share its cached trace (tracing a net is seconds).
        step = jax.jit(step)

        def body(st, i):
            def active(s):
                return step(s, data, shared)

            def idle(s):
                _, rec = jax.eval_shape(active, s)
                return s, jax.tree_util.tree_map(lambda r: jnp.zeros(r.shape, r.dtype), rec)

            return jax.lax.cond(i < n_active, active, idle, st)

        return jax.lax.scan(body, state, jnp.arange(chunk))

    if problem.batch_mode == "map" or problem.vmap_group_size is not None:
        # Items (or vmapped groups of them) outside, steps inside: each item's
        # state is sliced out of the batch once per chunk and carried through
        # its own scan, instead of being sliced and written back every step
        # (measured on CPU: that per-step traffic made 4 restarts ~10% slower
        # per restart than 1).
        item_step = functools.partial(_item_step, problem)

        def run(state, data, shared, n_active):
            def one(item):
                return scan_steps(item_step, item[0], item[1], shared, n_active)

            states, records = jax.lax.map(one, (state, data), batch_size=problem.vmap_group_size)
            return states, jax.tree_util.tree_map(lambda r: jnp.swapaxes(r, 0, 1), records)
    else:
        step = _batched_fn(problem.batch_mode, functools.partial(_item_step, problem))

        def run(state, data, shared, n_active):
            return scan_steps(step, state, data, shared, n_active)

    if mesh is not None:
        run = jax.shard_map(
            run, mesh=mesh, in_specs=(_BATCH, _BATCH, _REPLICATED, _REPLICATED),
            out_specs=(_BATCH, PartitionSpec(None, sharding.BATCH_AXIS)), check_vma=False,
        )
    return _jit(run, mesh)


def _readout_fn(problem: Problem, mesh=None) -> Callable:
    return _compiled_readout(_compile_key(problem), mesh)


@functools.lru_cache(maxsize=32)
def _compiled_readout(problem: Problem, mesh=None) -> Callable:
    """(output, out_avg) per item; non-finite ones fall back to the last healthy snapshot's."""

    def one(state: FitState, data, shared):
        def forward(params, batch_stats, z):
            out, _ = problem.module.apply({"params": params, "batch_stats": batch_stats}, z, mutable=["batch_stats"])
            return out

        out = forward(state.params, state.batch_stats, state.z)
        avg = state.out_avg
        if state.good is not None:
            g = state.good
            out = jax.lax.cond(
                _all_finite(out), lambda o: o, lambda o: forward(g.params, g.batch_stats, g.z), out
            )
            avg = jnp.where(_all_finite(avg), avg, g.out_avg)
        return out, avg

    batched = _batched_fn(problem.batch_mode, one, problem.vmap_group_size)
    fn = lambda state, data: batched(state, data, None)  # noqa: E731
    if mesh is not None:
        fn = jax.shard_map(fn, mesh=mesh, in_specs=(_BATCH, _BATCH), out_specs=_BATCH, check_vma=False)
    return _jit(fn, mesh)


def _as_item_keys(key, n: int) -> jax.Array:
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape == (2,):
            key = jax.random.wrap_key_data(key.astype(jnp.uint32))
        elif key.ndim == 2 and key.shape[-1] == 2:
            key = jax.random.wrap_key_data(key.astype(jnp.uint32))
        else:
            raise ValueError(f"key must be a jax.random.key or a batch of N*R keys, got shape {key.shape}")
    if key.ndim == 0:
        return jax.random.split(key, n)
    if key.shape != (n,):
        raise ValueError(
            f"got {key.shape[0]} keys for {n} batch items (images x restarts); "
            "pass one key or exactly one per item"
        )
    return key


def _as_batch(x, name: str, *, image_range: bool = False) -> np.ndarray:
    raw = np.asarray(x)
    if np.issubdtype(raw.dtype, np.integer):
        raise ValueError(
            f"{name} is an integer array ({raw.dtype}); convert it to float32 in [0, 1] first "
            "(e.g. image / 255 for 8-bit data, or load files with dip_jax.io.load_image)"
        )
    if not (jnp.issubdtype(raw.dtype, jnp.floating) or raw.dtype == bool):
        raise ValueError(f"{name} must be a float32 array with values in [0, 1], got dtype {raw.dtype}")
    a = raw.astype(np.float32, copy=False)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise ValueError(f"{name} must be (H, W, C) or (N, H, W, C) float32 in [0, 1]; got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape}); give at least one image with pixels")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values; clean or re-load the image")
    # Noisy observations may stray a little outside [0, 1]; values in the tens
    # mean 0..255 data was passed without scaling.
    lo, hi = float(a.min()), float(a.max())
    if image_range and (lo < -1.0 or hi > 2.0):
        raise ValueError(
            f"{name} values span [{lo:.3g}, {hi:.3g}] but images are float32 in [0, 1]; "
            "scale them (e.g. / 255 for 8-bit data, / 65535 for 16-bit)"
        )
    return a


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
    variables=None,
    devices=None,
) -> tuple[Problem, FitState, FitData]:
    """Validate inputs and build the static problem, the initial state and the data.

    `image_size` is the generator's output size (default: the observation's
    size when the operator preserves it). `net_input` (N, H, W, Cin) replaces
    the config's input (e.g. the flash photo). `variables` starts from given
    weights (one set, broadcast to every item) instead of a random init.
    `devices` (default: all local devices) only sizes the memory check here.
    Everything is checked, memory included, before any parameter is allocated.
    """
    op = operators.Identity() if op is None else op
    # Only the image-space operators promise an image-like observation (a
    # feature-inversion target, for one, is not).
    y = _as_batch(observation, "observation", image_range=isinstance(op, _IMAGE_OPERATORS))
    n = y.shape[0]
    if not isinstance(restarts, (int, np.integer)) or restarts < 1:
        raise ValueError(f"restarts must be an integer >= 1, got {restarts!r}")
    if image_size is None:
        image_size = operators.input_size(op, y.shape[1:3])
    h, w = image_size
    nets.check_input_size(net_config, h, w)
    out_shape = (1, h, w, net_config.num_output_channels)
    if op_args is not None:
        for leaf in jax.tree_util.tree_leaves(op_args):
            if not hasattr(leaf, "shape") or np.ndim(leaf) < 1 or np.shape(leaf)[0] != n:
                raise ValueError(
                    f"op_args leaves must be arrays with a leading axis of {n} (one per image), got "
                    f"{type(leaf).__name__} of shape {getattr(leaf, 'shape', None)}; stack per-image args "
                    "(or repeat a shared one n times)"
                )
    if hasattr(op, "validate"):
        for i in range(n):
            op.validate(out_shape, _item_op_args(jax.tree_util.tree_map(lambda a: np.asarray(a)[i], op_args)))
    if hasattr(op, "output_shape"):
        first_args = None
        if op_args is not None:
            first_args = _item_op_args(jax.tree_util.tree_map(lambda a: np.asarray(a)[0], op_args))
        expected = op.output_shape(out_shape, first_args)
        if tuple(expected[1:]) != tuple(y.shape[1:]):
            raise ValueError(
                f"the observation is {y.shape[1:]} per image but the operator maps the net's "
                f"{out_shape[1:]} output to {tuple(expected[1:])}; check the channels "
                f"(num_output_channels={net_config.num_output_channels}) and the size"
            )
    gt = None
    if ground_truth is not None:
        gt = _as_batch(ground_truth, "ground_truth", image_range=True)
        if gt.shape != (n, h, w, net_config.num_output_channels):
            raise ValueError(
                f"ground_truth is {gt.shape} but the restored images will be {(n, h, w, net_config.num_output_channels)}"
            )
    if net_input is not None:
        zin = _as_batch(net_input, "net_input")
        z_shape = (n, *nets.input_size(net_config, h, w), net_config.num_input_channels)
        if zin.shape != z_shape:
            raise ValueError(
                f"net_input is {zin.shape} but the net needs {z_shape}; "
                "set num_input_channels to its channel count"
            )
    batch_mode = resolve_batch_mode(fit_config.batch_mode)
    problem = Problem(net_config, fit_config, op, loss_fn, optimizer, gt is not None, batch_mode)

    b = n * restarts
    item_keys = _as_item_keys(key, b)
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
            group = _largest_fitting_group(estimate, items_per_device, memory.available_bytes(devs[0]))
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


def _largest_fitting_group(estimate: Callable, items: int, available: int | None) -> int | None:
    """The vmap group for `items` items per device: None (all at once) when that fits.

    Otherwise the largest divisor of `items` whose estimate fits (groups of
    equal size compile one vmapped step; a remainder group would compile a
    second), or 1, whose refusal `check_fits` then explains. Unknown free
    memory (None) means all at once.
    """
    if available is None or memory.fits(estimate(None), available):
        return None
    for size in range(items - 1, 0, -1):
        if items % size == 0 and memory.fits(estimate(size), available):
            return size
    return 1


# A fit whose activations are estimated above this releases the initialiser's
# compiled code once it has run: that code is ~100 MB for the default net (one
# small kernel per parameter's random draw, ~170 KB each in XLA:CPU's
# executable) and would otherwise stay resident through the whole fit (measured
# at 512 px: peak RSS 2407 -> 2324 MB). A later fit of the same problem then
# recompiles it (~5 s), which is small next to a fit this large. 512 px with the
# default net is estimated at ~4 GiB, 256 px at ~1 GiB.
RELEASE_INIT_CODE_ABOVE_BYTES = 2 << 30


@functools.lru_cache(maxsize=32)
def _init_fn(problem: Problem, size: tuple[int, int], with_z: bool, with_variables: bool) -> Callable:
    """The compiled initialiser, cached per problem (a new fit of the same problem does not
    recompile, unless a large fit released the code: `RELEASE_INIT_CODE_ABOVE_BYTES`)."""
    cfg = problem.fit_config
    ncfg = problem.net_config

    def one(item_key, z_in, variables):
        k_init, k_input, k_loop = jax.random.split(item_key, 3)
        if z_in is None:
            z = inputs_lib.make_input(
                k_input, cfg.input_type, ncfg.num_input_channels, nets.input_size(ncfg, *size),
                noise_type=cfg.noise_type, scale=cfg.input_scale,
            )
        else:
            z = z_in
        if cfg.init_rng == "rbg":
            k_init = jax.random.wrap_key_data(jax.random.bits(k_init, (4,), jnp.uint32), impl="rbg")
        v = problem.module.init(k_init, z) if variables is None else variables
        params, stats = v["params"], v.get("batch_stats", {})
        trainable = _trainable(cfg, params, z)
        out_shape = (1, *size, ncfg.num_output_channels)
        opt_state = problem.tx.init(trainable)
        out_avg = jnp.zeros(out_shape, jnp.float32)
        # The original starts its last-PSNR at 0, so the first step never backtracks.
        backup_psnr = jnp.zeros((), jnp.float32)
        zero = jnp.zeros((), jnp.int32)
        good = None
        if cfg.divergence_check:
            good = GoodState(params, stats, opt_state, z, out_avg, trainable, backup_psnr, zero,
                             jnp.full((), -jnp.inf, jnp.float32))
        return FitState(
            params=params,
            batch_stats=stats,
            opt_state=opt_state,
            z=z,
            key=k_loop,
            step=zero,
            out_avg=out_avg,
            backup=trainable,
            backup_psnr=backup_psnr,
            num_backtracks=zero,
            num_updates=zero,
            lr_scale=jnp.ones((), jnp.float32),
            num_rollbacks=zero,
            good=good,
            best_out=jnp.zeros(out_shape, jnp.float32) if problem.has_ground_truth else None,
            best_psnr=jnp.full((), -jnp.inf, jnp.float32) if problem.has_ground_truth else None,
        )

    # lax.map, not vmap: an 'rbg' key draws different numbers when vmapped, and
    # each item must get exactly the init it would get when fitted alone.
    if with_z:
        return _jit(lambda ks, zs, v: jax.lax.map(lambda a: one(a[0], a[1], v), (ks, zs)), run_once=True)
    return _jit(lambda ks, zs, v: jax.lax.map(lambda k: one(k, None, v), ks), run_once=True)


def _init_key(problem: Problem) -> Problem:
    """The compile key of the initialiser, which does not depend on how items are batched."""
    key = _compile_key(problem)
    if key.batch_mode == "map" and key.vmap_group_size is None:
        return key
    cfg = dataclasses.replace(key.fit_config, batch_mode="map", vmap_group_size=None)
    return dataclasses.replace(key, fit_config=cfg, batch_mode="map", vmap_group_size=None)


def _init_states(problem: Problem, item_keys, size, z_given, variables, *, keep_code: bool = True) -> FitState:
    fn = _init_fn(_init_key(problem), tuple(int(s) for s in size), z_given is not None, variables is not None)
    states = jax.block_until_ready(fn(item_keys, z_given, variables))
    if not keep_code:
        fn.clear_cache()
    return states


def _complete_state(problem: Problem, state: FitState) -> FitState:
    """Fill the fields a FitState built by older code (or by hand) leaves at None."""
    cfg = problem.fit_config
    b = state.step.shape[0]
    zeros = jnp.zeros((b,), jnp.int32)
    if state.num_updates is None:
        state = state._replace(num_updates=state.step)
    if state.lr_scale is None:
        state = state._replace(lr_scale=jnp.ones((b,), jnp.float32))
    if state.num_rollbacks is None:
        state = state._replace(num_rollbacks=zeros)
    if cfg.divergence_check and state.good is None:
        state = state._replace(good=GoodState(
            state.params, state.batch_stats, state.opt_state, state.z, state.out_avg, state.backup,
            state.backup_psnr, state.num_updates, jnp.full((b,), -jnp.inf, jnp.float32),
        ))
    if not cfg.divergence_check and state.good is not None:
        state = state._replace(good=None)
    if problem.has_ground_truth and state.best_psnr is None:
        state = state._replace(best_out=jnp.zeros_like(state.out_avg), best_psnr=jnp.full((b,), -jnp.inf, jnp.float32))
    return state


class _SignalGuard:
    """Turns the first SIGINT/SIGTERM into a flag checked between chunks; a second one stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            self.restore()
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without a checkpoint")
        self.signum = signum

    def __enter__(self):
        if self.enabled:
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def restore(self):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def __exit__(self, *exc):
        self.restore()
        return False


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


class _Placed(NamedTuple):
    """A run's state and data as they sit on the devices (padded when sharded)."""

    state: FitState
    data: FitData
    history: dict
    placement: sharding.BatchPlacement


def _run_placed(problem, state, data, *, num_steps, shared, callback, progress, checkpointer, fingerprint,
                start_step, history, handle_signals, devices) -> _Placed:
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    state = _complete_state(problem, state)
    b = int(state.step.shape[0])
    placement = sharding.BatchPlacement(b, devices)
    chunk = _chunk_fn(problem, placement.mesh)
    state_d = placement.put(state)
    data_d = placement.put(data)
    shared_d = placement.put_replicated(shared)
    if num_steps > 0:
        _compile_then_release(chunk, state_d, data_d, shared_d)
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
        images = _images(problem, state_d, data_d, placement)
        return checkpointer.save(state=host_state(), step=step, history=concatenated(), images=images,
                                 fingerprint=fingerprint)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=start_step + num_steps, initial=start_step, unit="step", dynamic_ncols=True)
    try:
        with _SignalGuard(handle_signals) as guard:
            while done < num_steps:
                step_now = start_step + done
                n_active = min(problem.fit_config.chunk_size, num_steps - done)
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
                    bar.set_postfix(_postfix(records))
                stop = callback is not None and callback(host_state(), records)
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
    return _Placed(state_d, data_d, concatenated(), placement)


def _compile_then_release(chunk: Callable, state_d, data_d, shared_d) -> None:
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


# Per chunk function, the argument structures `_compile_then_release` compiled it
# for; weak, so a chunk dropped from `_compiled_chunk`'s cache takes its entry along.
_COMPILED_SIGNATURES: "weakref.WeakKeyDictionary[Callable, set]" = weakref.WeakKeyDictionary()


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


def _images(problem: Problem, state_d, data_d, placement) -> dict:
    b = placement.batch_size
    out, avg = _readout_fn(problem, placement.mesh)(state_d, data_d)
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
    state = _complete_state(problem, state)
    placement = sharding.BatchPlacement(int(state.step.shape[0]), devices)
    out, _ = _readout_fn(problem, placement.mesh)(placement.put(state), placement.put(data))
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
        stop.result = _result(problem, _Placed(placement.put(stop.state), placement.put(data), stop.history,
                                               placement), restarts, t0, resumed_from)
        raise
    return _result(problem, placed, restarts, t0, resumed_from)


def _result(problem: Problem, placed: _Placed, restarts: int, t0: float,
            resumed_from: int | None = None) -> FitResult:
    placement, state_d = placed.placement, placed.state
    b = placement.batch_size
    n = b // restarts
    out, avg = _readout_fn(problem, placement.mesh)(state_d, placed.data)
    per_item = lambda a: np.asarray(a)[:b].reshape((n, restarts) + np.shape(a)[1:])  # noqa: E731
    output_avg = best_output = best_psnr = None
    if problem.fit_config.ema_decay is not None:
        output_avg = per_item(np.asarray(avg)[:, 0])
    if state_d.best_out is not None:
        best_output = per_item(np.asarray(state_d.best_out)[:, 0])
        best_psnr = per_item(state_d.best_psnr)
    history = {k: v.reshape((v.shape[0], n, restarts)) for k, v in placed.history.items()}
    return FitResult(
        output=per_item(np.asarray(out)[:, 0]),
        output_avg=output_avg,
        history=history,
        state=placement.take(state_d),
        problem=problem,
        seconds=time.perf_counter() - t0,
        num_rollbacks=per_item(state_d.num_rollbacks),
        num_backtracks=per_item(state_d.num_backtracks),
        best_output=best_output,
        best_psnr=best_psnr,
        steps=int(np.asarray(state_d.step)[0]),
        resumed_from=resumed_from,
    )
