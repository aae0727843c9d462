"""The core step: perturbed input -> generator -> operator -> objective -> gradient -> optax update.

Contract: `item_step(problem, state, data, shared)` advances one batch item
by one step; it is pure and is vmapped or mapped over items by the runtime.
Every DIP feature around the core (input perturbation, parameter noise,
backtracking, output averaging, divergence rollback, best-output tracking,
a user's stopping rule) is a `StepTransform` (`dip_jax.fit.transforms`) with
its own state in `FitState.transforms[name]`; `problem.transforms` lists
them in order. Each transform's `before` hook may change the step's inputs
(`StepInput`: the parameters used, an offset to `z`, a scale on the
optimiser's updates); its `update` hook sees the step's results
(`StepInfo`: loss, output, the new state, the records) and may change them.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dip_jax import metrics
from dip_jax.fit import objective


class GoodState(NamedTuple):
    """Per item: the last state that passed the divergence check, and its data-fit PSNR.

    `transforms` holds the states of the transforms before the rollback in the chain.
    """

    params: Any
    batch_stats: Any
    opt_state: Any
    z: jax.Array
    num_updates: jax.Array
    transforms: dict
    psnr: jax.Array

    @property
    def out_avg(self):
        avg = self.transforms.get("output_average")
        return None if avg is None else avg.average


class _FitStateFields(NamedTuple):
    params: Any
    batch_stats: Any
    opt_state: Any
    z: jax.Array
    key: jax.Array
    step: jax.Array
    num_updates: jax.Array
    transforms: dict


# Older names of transform-state fields, readable (and replaceable) on FitState:
# name -> (transform, field).
_ALIASES = {
    "out_avg": ("output_average", "average"),
    "backup": ("backtrack", "backup"),
    "backup_psnr": ("backtrack", "psnr"),
    "num_backtracks": ("backtrack", "count"),
    "lr_scale": ("divergence_rollback", "lr_scale"),
    "num_rollbacks": ("divergence_rollback", "count"),
    "good": ("divergence_rollback", "good"),
    "best_out": ("best_output", "out"),
    "best_psnr": ("best_output", "psnr"),
}


class FitState(_FitStateFields):
    """Everything one batch item's fit carries from step to step (a pytree; batched: leading axis B).

    `step` counts steps taken; `num_updates` the ones whose result was kept
    (it differs from `step` only after divergence rollbacks). `transforms`
    maps each step transform's name to its state. The attributes `out_avg`,
    `backup`, `backup_psnr`, `num_backtracks`, `lr_scale`, `num_rollbacks`,
    `good`, `best_out` and `best_psnr` read the built-in transforms' states
    (None, or the neutral value for counters and the step-size scale, when
    that transform is not in the fit); `_replace` accepts them too (None
    removes that transform's state).
    """

    __slots__ = ()

    def __getattr__(self, name):
        if name not in _ALIASES:
            raise AttributeError(f"FitState has no attribute {name!r}")
        transform, field = _ALIASES[name]
        state = self.transforms.get(transform)
        if state is not None:
            return getattr(state, field)
        if name in ("num_backtracks", "num_rollbacks"):
            return jnp.zeros_like(self.step)
        if name == "lr_scale":
            return jnp.ones(jnp.shape(self.step), jnp.float32)
        return None

    def _replace(self, **changes):
        aliased = {n: changes.pop(n) for n in list(changes) if n in _ALIASES}
        fields = _FitStateFields(*self)._replace(**changes)
        if aliased:
            transforms = dict(fields.transforms)
            for name, value in aliased.items():
                transform, field = _ALIASES[name]
                if value is None:
                    transforms.pop(transform, None)
                else:
                    transforms[transform] = transforms[transform]._replace(**{field: value})
            fields = fields._replace(transforms=transforms)
        return FitState(*fields)


class StepInput(NamedTuple):
    """What the core step uses, as the transforms' `before` hooks leave it.

    `params`: the net parameters this step starts from (the trainable ones
    are updated from these); `z`: the item's input (read only); `z_offset`: added to `z` for this step's forward
    pass only (None: nothing); `update_scale`: multiplies the optimiser's
    updates (None: not scaled); `input_key`, `param_key`: this step's keys for
    perturbing the input and the parameters (another transform needing
    randomness folds its own constant into one of them).
    """

    params: Any
    z: jax.Array
    z_offset: Any
    update_scale: Any
    input_key: jax.Array
    param_key: jax.Array


class StepInfo(NamedTuple):
    """What the transforms' `update` hooks see and may change, for one item and one step.

    `before`: the state the step started from; `state`: the new state so far
    (the transforms earlier in the chain applied); `trainable`: the pytree
    the optimiser updated ({'net': params} and/or {'input': z}), as it was
    before the update; `loss`, `out` (f(z) of this step, no gradient),
    `pred` (A(out)), `psnr_fit` (PSNR of pred against the target, NaN when
    they differ in shape); `target`, `ground_truth` (None when unknown),
    `op_args`: the item's data; `estimate`: the image the fit would return
    now (out, or the average with output averaging) and `estimate_psnr_gt`
    its PSNR against the ground truth (None without one); `record`: this
    step's per-item records (scalars), returned as the history; `healthy`:
    False when a check found this step bad; `earlier`: names of the
    transforms before this one in the chain.
    """

    before: FitState
    state: FitState
    trainable: dict
    loss: jax.Array
    out: jax.Array
    pred: jax.Array
    psnr_fit: jax.Array
    target: jax.Array
    ground_truth: Any
    op_args: Any
    estimate: jax.Array
    estimate_psnr_gt: Any
    record: dict
    healthy: jax.Array
    earlier: tuple = ()


def psnr(a, b) -> jax.Array:
    """PSNR of one item's (1, ...) arrays, as a scalar."""
    return jnp.mean(metrics.psnr(a, b))


def trainable_of(opt_over: str, params, z) -> dict:
    out = {}
    if "net" in opt_over:
        out["net"] = params
    if "input" in opt_over:
        out["input"] = z
    return out


def item_op_args(op_args):
    """One item's op args as the operators expect them: image-like (H, W, C) leaves get a batch axis of 1.

    Kernels stay 2-D (Downsample, Blur); masks become (1, H, W, C) like the
    net's (1, H, W, C) output (Mask.validate checks that layout).
    """
    return jax.tree_util.tree_map(lambda a: a[None] if a.ndim == 3 else a, op_args)


def apply_op(op, x, op_args, shared):
    # `shared` goes to operators that take it (classifier features); a fit may also pass it for a loss only.
    if shared is None or len(inspect.signature(op.apply).parameters) < 3:
        return op.apply(x, op_args)
    return op.apply(x, op_args, shared)


def item_step(problem, state: FitState, data, shared: Any):
    """One step of one batch item (see the module docstring). Pure; vmapped or mapped over items."""
    cfg = problem.fit_config
    chain = problem.transforms
    key, k_input, k_param = jax.random.split(state.key, 3)
    inp = StepInput(state.params, state.z, None, None, k_input, k_param)
    states = dict(state.transforms)
    for t in chain:
        if t.before is not None:
            inp, states[t.name] = t.before(inp, states[t.name])
    params = inp.params
    perturbation = jnp.zeros_like(state.z) if inp.z_offset is None else inp.z_offset
    op_args = item_op_args(data.op_args)
    regularisers = problem.regularisers

    def loss_of(trainable):
        p = trainable.get("net", params)
        z = trainable.get("input", state.z)
        out, updates = problem.module.apply(
            {"params": p, "batch_stats": state.batch_stats}, z + perturbation, mutable=["batch_stats"]
        )
        pred = apply_op(problem.op, out, op_args, shared)
        loss = objective.value(problem.loss_fn, regularisers, objective.Terms(out, pred, data.target, op_args, shared))
        return loss, (out, pred, updates["batch_stats"])

    trainable = trainable_of(cfg.opt_over, params, state.z)
    (loss, (out, pred, batch_stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable)
    psnr_fit = psnr(pred, data.target) if pred.shape == data.target.shape else jnp.float32(jnp.nan)
    updates, opt_state = problem.tx.update(grads, state.opt_state, trainable)
    if inp.update_scale is not None:
        # x * 1.0 == x exactly: an unscaled item's numbers are unchanged.
        updates = jax.tree_util.tree_map(lambda u: u * inp.update_scale.astype(u.dtype), updates)
    new_trainable = optax.apply_updates(trainable, updates)
    out = jax.lax.stop_gradient(out)
    record = {"loss": loss, "psnr_fit": psnr_fit, "backtracked": jnp.zeros((), bool)}
    psnr_gt = None
    if data.ground_truth is not None:
        psnr_gt = record["psnr_gt"] = psnr(out, data.ground_truth)
    new_state = FitState(
        params=new_trainable.get("net", params), batch_stats=batch_stats, opt_state=opt_state,
        z=new_trainable.get("input", state.z), key=key, step=state.step + 1,
        num_updates=state.num_updates + 1, transforms=states,
    )
    info = StepInfo(
        before=state, state=new_state, trainable=trainable, loss=loss, out=out, pred=pred, psnr_fit=psnr_fit,
        target=data.target, ground_truth=data.ground_truth, op_args=op_args, estimate=out,
        estimate_psnr_gt=psnr_gt, record=record, healthy=jnp.ones((), bool),
    )
    names = tuple(t.name for t in chain)
    for i, t in enumerate(chain):
        info = info._replace(earlier=names[:i])
        info, own = t.update(info, info.state.transforms[t.name])
        info = info._replace(state=info.state._replace(transforms={**info.state.transforms, t.name: own}))
    return info.state, info.record


def hold(info: StepInfo, cond) -> StepInfo:
    """`info` with the item kept where this step started wherever `cond` (a bool scalar).

    Parameters, BatchNorm statistics, optimiser state, input, kept-update
    count and every transform state return to `info.before` (the caller's
    own state is its own to set); `step` and the key still advance, so the
    item stays in step with the others. A select over the whole state.
    """
    before, new = info.before, info.state
    pick = lambda a, b: jax.tree_util.tree_map(lambda x, y: jnp.where(cond, x, y), a, b)  # noqa: E731
    transforms = dict(new.transforms)
    for name in before.transforms:
        transforms[name] = pick(before.transforms[name], new.transforms[name])
    held = new._replace(
        params=pick(before.params, new.params), batch_stats=pick(before.batch_stats, new.batch_stats),
        opt_state=pick(before.opt_state, new.opt_state), z=pick(before.z, new.z),
        num_updates=pick(before.num_updates, new.num_updates), transforms=transforms,
    )
    return info._replace(state=held)


def stop_flag(state: FitState):
    """True where a transform's state says its item has stopped (a `stopped` field), or None when no
    transform of the fit can stop an item (decided when tracing: the default program is unchanged)."""
    flags = [s.stopped for s in state.transforms.values() if hasattr(s, "_fields") and "stopped" in s._fields]
    if not flags:
        return None
    return functools.reduce(jnp.logical_or, flags)


def item_step_or_skip(problem, state: FitState, data, shared: Any):
    """`item_step`, skipped for a stopped item (see `stop_flag`); exactly `item_step` when none can stop.

    A stopped item's state is returned unchanged (its `step` stays where it
    stopped) and its records are NaN (False for flags, True for `stopped`).
    A `lax.cond`: under 'map' the skipped step costs nothing; under 'vmap'
    both branches run and the item is held.
    """
    flag = stop_flag(state)
    if flag is None:
        return item_step(problem, state, data, shared)

    def active(s):
        return item_step(problem, s, data, shared)

    def idle(s):
        _, rec = jax.eval_shape(active, s)
        return s, {k: _idle_record(k, r) for k, r in rec.items()}

    return jax.lax.cond(flag, idle, active, state)


def _idle_record(name, r):
    if name == "stopped":
        return jnp.ones(r.shape, r.dtype)
    if jnp.issubdtype(r.dtype, jnp.floating):
        return jnp.full(r.shape, jnp.nan, r.dtype)
    return jnp.zeros(r.shape, r.dtype)
