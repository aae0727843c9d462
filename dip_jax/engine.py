"""The fitting engine: a pure update step, vmapped over images x restarts, scanned over steps.

Contract:
- `fit(key, net_config, fit_config, observation, *, op=Identity(), op_args=None, ...)`
  restores N images at once. `observation` is (N, h, w, c) float32 (or one
  (h, w, c) image), the corrupted data `y`; `op` maps the generator's output
  (N, H, W, C) to `y`'s space; `op_args` is a pytree of per-image arrays with a
  leading N axis (mask, kernel). `restarts=R` fits R independent nets per
  image. Returns a `FitResult` with `output` (N, R, H, W, C) and a history.
- Every batch item (image x restart) has its own key, parameters, BatchNorm
  statistics, optimiser state and input `z`: fitting N items in one call gives
  the same result as N calls with the same per-item keys.
- The update step is a pure function of a `FitState` pytree. Steps run in
  chunks of `fit_config.chunk_size` inside `lax.scan` under `jit`; host work
  (history, progress, callbacks) happens between chunks, and the chunk
  function is compiled once per problem (a second chunk never recompiles).
- Batch axis: `batch_mode='vmap'` maps it with `jax.vmap` (GPU/TPU: one big
  kernel per layer), `'map'` runs items one after another inside the compiled
  step (`lax.map`; on CPU a vmapped conv over per-item weights becomes a
  grouped convolution that XLA's CPU backend runs poorly). `'auto'` picks per
  backend.

What one step does (the original's `closure()`):
  z_t = z + reg_noise_std * N(0, 1)          (fresh noise each step)
  out = f(z_t);  loss = loss_fn(A(out), y) + tv_weight * TV(out)
  psnr_fit = PSNR(A(out), y)
  backtracking: if psnr_fit dropped by more than `backtrack_drop_db` since the
  last saved copy, restore that copy, else save the current parameters;
  optimiser step; out_avg = decay * out_avg + (1 - decay) * out.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dip_jax import inputs as inputs_lib
from dip_jax.batching import BATCH_MODES, resolve_batch_mode
from dip_jax.batching import batched as _batched_fn
from dip_jax import losses, metrics, nets, operators

OPT_OVER = ("net", "input", "net,input")
OPTIMIZERS = ("adam", "lbfgs")


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
    # PRNG behind the weight init. Flax draws every parameter with its own
    # threefry call, which XLA's CPU backend takes ~3x longer to compile than
    # 'rbg' (seconds per distinct net). 'rbg' is deterministic on a given
    # backend; use 'threefry2x32' for bit-identical inits across backends.
    init_rng: str = "rbg"
    seed: int = 0

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
        if self.init_rng not in ("rbg", "threefry2x32"):
            raise ValueError(f"init_rng must be 'rbg' or 'threefry2x32', got {self.init_rng!r}")
        if self.input_type not in inputs_lib.INPUT_TYPES:
            raise ValueError(f"input_type must be one of {inputs_lib.INPUT_TYPES}, got {self.input_type!r}")


class FitState(NamedTuple):
    """Everything one batch item's fit carries from step to step."""

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

    @functools.cached_property
    def module(self):
        return nets.build_generator(self.net_config)

    @functools.cached_property
    def tx(self) -> optax.GradientTransformation:
        return self.optimizer if self.optimizer is not None else make_optimizer(self.fit_config)


class FitResult(NamedTuple):
    output: np.ndarray
    output_avg: np.ndarray | None
    history: dict
    state: FitState
    problem: Problem
    seconds: float

    @property
    def restored(self) -> np.ndarray:
        """(N, H, W, C): the averaged output if averaging is on, mean over restarts."""
        out = self.output_avg if self.output_avg is not None else self.output
        return out.mean(axis=1)


def make_optimizer(cfg: FitConfig) -> optax.GradientTransformation:
    """Adam with PyTorch's defaults, or the original's Adam-then-L-BFGS."""
    adam = optax.adam(cfg.learning_rate, b1=0.9, b2=0.999, eps=1e-8)
    if cfg.optimizer == "adam":
        return adam
    warmup = optax.adam(cfg.lbfgs_warmup_lr, b1=0.9, b2=0.999, eps=1e-8)
    # PyTorch's LBFGS as the original calls it has no line search and lr=LR.
    lbfgs = optax.lbfgs(learning_rate=cfg.learning_rate, linesearch=None)
    return _switch_after(warmup, lbfgs, cfg.lbfgs_warmup_steps)


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

    def objective(trainable):
        p = trainable.get("net", params)
        z = trainable.get("input", state.z)
        out, updates = problem.module.apply(
            {"params": p, "batch_stats": state.batch_stats}, z + perturbation, mutable=["batch_stats"]
        )
        pred = _apply_op(problem.op, out, data.op_args, shared)
        loss = problem.loss_fn(pred, data.target)
        if cfg.tv_weight:
            loss = loss + cfg.tv_weight * losses.total_variation(out, beta=cfg.tv_beta)
        return loss, (out, pred, updates["batch_stats"])

    trainable = _trainable(cfg, params, state.z)
    (loss, (out, pred, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(trainable)
    psnr_fit = _psnr(pred, data.target) if pred.shape == data.target.shape else jnp.float32(jnp.nan)
    updates, opt_state = problem.tx.update(grads, state.opt_state, trainable)
    new_trainable = optax.apply_updates(trainable, updates)
    backup, backup_psnr, num_backtracks = state.backup, state.backup_psnr, state.num_backtracks
    fell = jnp.zeros((), bool)
    if cfg.backtrack:
        fell = psnr_fit - state.backup_psnr < -cfg.backtrack_drop_db
        # On a fall the original copies the saved parameters back. dip_jax also
        # skips that step's optimiser update (the original applies the stale
        # gradient to the restored weights); documented in the README.
        pick = lambda a, b: jax.tree_util.tree_map(lambda x, y: jnp.where(fell, x, y), a, b)  # noqa: E731
        new_trainable = pick(state.backup, new_trainable)
        opt_state = pick(state.opt_state, opt_state)
        backup = pick(state.backup, trainable)
        backup_psnr = jnp.where(fell, state.backup_psnr, psnr_fit)
        num_backtracks = num_backtracks + fell.astype(jnp.int32)
    out = jax.lax.stop_gradient(out)
    if cfg.ema_decay is not None:
        d = cfg.ema_decay
        out_avg = jnp.where(state.step == 0, out, d * state.out_avg + (1 - d) * out)
    else:
        out_avg = out
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
    )
    record = {"loss": loss, "psnr_fit": psnr_fit, "backtracked": fell}
    if data.ground_truth is not None:
        record["psnr_gt"] = _psnr(out, data.ground_truth)
        if cfg.ema_decay is not None:
            record["psnr_gt_avg"] = _psnr(out_avg, data.ground_truth)
    return new_state, record


def _psnr(a, b) -> jax.Array:
    """PSNR of one item's (1, ...) arrays, as a scalar."""
    return jnp.mean(metrics.psnr(a, b))


def _apply_op(op, x, op_args, shared):
    return op.apply(x, op_args) if shared is None else op.apply(x, op_args, shared)


@functools.lru_cache(maxsize=32)
def _chunk_fn(problem: Problem) -> Callable:
    """The compiled chunk: `chunk_size` steps in a scan; steps past `n_active` are skipped."""
    step = _batched_fn(problem.batch_mode, functools.partial(_item_step, problem))
    chunk = problem.fit_config.chunk_size

    def run(state, data, shared, n_active):
        def body(st, i):
            def active(s):
                return step(s, data, shared)

            def idle(s):
                _, rec = jax.eval_shape(active, s)
                return s, jax.tree_util.tree_map(lambda r: jnp.zeros(r.shape, r.dtype), rec)

            return jax.lax.cond(i < n_active, active, idle, st)

        return jax.lax.scan(body, state, jnp.arange(chunk))

    return jax.jit(run)


@functools.lru_cache(maxsize=32)
def _readout_fn(problem: Problem) -> Callable:
    def one(state: FitState, data, shared):
        out, _ = problem.module.apply(
            {"params": state.params, "batch_stats": state.batch_stats}, state.z, mutable=["batch_stats"]
        )
        return out

    return jax.jit(_batched_fn(problem.batch_mode, one))


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


def _as_batch(x, name: str) -> np.ndarray:
    a = np.asarray(x, np.float32)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise ValueError(f"{name} must be (H, W, C) or (N, H, W, C) float32 in [0, 1]; got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values; clean or re-load the image")
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
) -> tuple[Problem, FitState, FitData]:
    """Validate inputs and build the static problem, the initial state and the data.

    `image_size` is the generator's output size (default: the observation's
    size when the operator preserves it). `net_input` (N, H, W, Cin) replaces
    the config's input (e.g. the flash photo). `variables` starts from given
    weights (one set, broadcast to every item) instead of a random init.
    """
    op = operators.Identity() if op is None else op
    y = _as_batch(observation, "observation")
    n = y.shape[0]
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    if image_size is None:
        image_size = operators.input_size(op, y.shape[1:3])
    h, w = image_size
    nets.check_input_size(net_config, h, w)
    out_shape = (1, h, w, net_config.num_output_channels)
    if hasattr(op, "validate"):
        for i in range(n):
            op.validate(out_shape, jax.tree_util.tree_map(lambda a: np.asarray(a)[i : i + 1], op_args))
    if hasattr(op, "output_shape"):
        first_args = None if op_args is None else jax.tree_util.tree_map(lambda a: np.asarray(a)[:1], op_args)
        expected = op.output_shape(out_shape, first_args)
        if tuple(expected[1:]) != tuple(y.shape[1:]):
            raise ValueError(
                f"the observation is {y.shape[1:]} per image but the operator maps the net's "
                f"{out_shape[1:]} output to {tuple(expected[1:])}; check the channels "
                f"(num_output_channels={net_config.num_output_channels}) and the size"
            )
    gt = None
    if ground_truth is not None:
        gt = _as_batch(ground_truth, "ground_truth")
        if gt.shape != (n, h, w, net_config.num_output_channels):
            raise ValueError(
                f"ground_truth is {gt.shape} but the restored images will be {(n, h, w, net_config.num_output_channels)}"
            )
    if net_input is not None:
        zin = _as_batch(net_input, "net_input")
        if zin.shape != (n, h, w, net_config.num_input_channels):
            raise ValueError(
                f"net_input is {zin.shape} but the net needs {(n, h, w, net_config.num_input_channels)}; "
                "set num_input_channels to its channel count"
            )
    batch_mode = resolve_batch_mode(fit_config.batch_mode)
    problem = Problem(net_config, fit_config, op, loss_fn, optimizer, gt is not None, batch_mode)

    b = n * restarts
    item_keys = _as_item_keys(key, b)
    rep = lambda a: jnp.repeat(jnp.asarray(a), restarts, axis=0)  # noqa: E731
    data = FitData(
        target=rep(y)[:, None],
        op_args=None if op_args is None else jax.tree_util.tree_map(rep, op_args),
        ground_truth=None if gt is None else rep(gt)[:, None],
    )
    z_given = None if net_input is None else rep(zin)[:, None]
    state = _init_states(problem, item_keys, (h, w), z_given, variables)
    return problem, state, data


def _init_states(problem: Problem, item_keys, size, z_given, variables) -> FitState:
    cfg = problem.fit_config
    ncfg = problem.net_config

    def one(item_key, z_in):
        k_init, k_input, k_loop = jax.random.split(item_key, 3)
        if z_in is None:
            z = inputs_lib.make_input(
                k_input, cfg.input_type, ncfg.num_input_channels, size,
                noise_type=cfg.noise_type, scale=cfg.input_scale,
            )
        else:
            z = z_in
        if cfg.init_rng == "rbg":
            k_init = jax.random.wrap_key_data(jax.random.bits(k_init, (4,), jnp.uint32), impl="rbg")
        v = problem.module.init(k_init, z) if variables is None else variables
        params, stats = v["params"], v.get("batch_stats", {})
        trainable = _trainable(cfg, params, z)
        out_shape = z.shape[:3] + (ncfg.num_output_channels,)
        return FitState(
            params=params,
            batch_stats=stats,
            opt_state=problem.tx.init(trainable),
            z=z,
            key=k_loop,
            step=jnp.zeros((), jnp.int32),
            out_avg=jnp.zeros(out_shape, jnp.float32),
            backup=trainable,
            # The original starts its last-PSNR at 0, so the first step never backtracks.
            backup_psnr=jnp.zeros((), jnp.float32),
            num_backtracks=jnp.zeros((), jnp.int32),
        )

    # lax.map, not vmap: an 'rbg' key draws different numbers when vmapped, and
    # each item must get exactly the init it would get when fitted alone.
    if z_given is None:
        return jax.jit(lambda ks: jax.lax.map(lambda k: one(k, None), ks))(item_keys)
    return jax.jit(lambda ks, zs: jax.lax.map(lambda a: one(*a), (ks, zs)))(item_keys, z_given)


def run(
    problem: Problem,
    state: FitState,
    data: FitData,
    *,
    num_steps: int,
    shared=None,
    callback: Callable | None = None,
    progress: bool = False,
) -> tuple[FitState, dict]:
    """Advance every item by `num_steps` steps, chunk by chunk.

    `callback(state, records)` runs on the host after each chunk with that
    chunk's per-step records (numpy, (steps, B)); returning True stops early.
    """
    chunk = _chunk_fn(problem)
    history: dict[str, list] = {}
    done = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, unit="step", dynamic_ncols=True)
    try:
        while done < num_steps:
            n_active = min(problem.fit_config.chunk_size, num_steps - done)
            state, records = chunk(state, data, shared, jnp.int32(n_active))
            records = {k: np.asarray(v)[:n_active] for k, v in records.items()}
            for k, v in records.items():
                history.setdefault(k, []).append(v)
            done += n_active
            if bar is not None:
                bar.update(n_active)
                bar.set_postfix(_postfix(records))
            if callback is not None and callback(state, records):
                break
    finally:
        if bar is not None:
            bar.close()
    return state, {k: np.concatenate(v) for k, v in history.items()}


def _postfix(records: dict) -> dict:
    out = {"loss": f"{np.nanmean(records['loss'][-1]):.4g}"}
    for k in ("psnr_fit", "psnr_gt", "psnr_gt_avg"):
        if k in records:
            out[k] = f"{np.nanmean(records[k][-1]):.2f}"
    return out


def readout(problem: Problem, state: FitState, data: FitData) -> np.ndarray:
    """f(z) for every item with the unperturbed input, (B, H, W, C).

    Faithfulness: the original's final `net(net_input)` uses the last
    perturbed input (a global left over from the loop); dip_jax reads out with
    the clean `z`.
    """
    out = _readout_fn(problem)(state, data, None)
    return np.asarray(out)[:, 0]


def fit(
    key,
    net_config,
    fit_config: FitConfig,
    observation,
    *,
    restarts: int = 1,
    progress: bool = False,
    callback: Callable | None = None,
    **kwargs,
) -> FitResult:
    """Restore N images (x R restarts) in one compiled, batched fit. See module docstring."""
    t0 = time.perf_counter()
    problem, state, data = prepare(key, net_config, fit_config, observation, restarts=restarts, **kwargs)
    state, history = run(
        problem, state, data, num_steps=fit_config.num_steps, shared=kwargs.get("shared"),
        callback=callback, progress=progress,
    )
    n = data.target.shape[0] // restarts
    out = readout(problem, state, data)
    out = out.reshape((n, restarts) + out.shape[1:])
    avg = None
    if fit_config.ema_decay is not None:
        avg = np.asarray(state.out_avg)[:, 0]
        avg = avg.reshape((n, restarts) + avg.shape[1:])
    history = {k: v.reshape((v.shape[0], n, restarts)) for k, v in history.items()}
    return FitResult(out, avg, history, state, problem, time.perf_counter() - t0)
