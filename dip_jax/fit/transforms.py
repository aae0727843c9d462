"""Step transforms: each DIP feature around the core step as a small pure init/update pair.

Contract: a `StepTransform(name, init, update, before=None)` is
- `init(ctx: InitInfo) -> state`: the feature's per-item state (a pytree,
  e.g. a NamedTuple; None when it needs none), from the item's initial
  parameters, input, optimiser state and output shape;
- `before(inp: StepInput, state) -> (inp, state)` (optional): runs before
  the forward pass and may change what the step uses (`dip_jax.fit.step`);
- `update(info: StepInfo, state) -> (info, state)`: runs after the
  optimiser's update, in chain order, and may change the new state, the
  records, the estimate or the `healthy` flag.
Both see one batch item (no batch axis): a transform written anywhere
plugs into batched fits (vmap, map, groups, devices) unchanged, and its
state is checkpointed with the rest. `fit(..., transforms=[...])` appends
transforms to the ones `default_transforms(fit_config, ...)` builds from
FitConfig's fields (which reproduce the original's loop). Transforms are
part of the compile key: make them once (module level) and reuse them, and
give each a distinct `name`.

`hold(info, cond)` keeps an item where its step started (what a stopping
rule needs). `divergence_rollback` snapshots the transforms before it in the chain and
restores them on a rollback, except the fields a state's class lists in
`KEPT_ON_ROLLBACK` (those keep their value from the start of the step).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from dip_jax.fit.step import GoodState, StepInfo, StepInput, hold, psnr

__all__ = [
    "InitInfo", "StepInfo", "StepInput", "StepTransform", "backtrack", "best_output", "default_transforms",
    "divergence_rollback", "hold", "input_noise", "output_average", "param_noise",
]

# A reference PSNR above this (a near-perfect fit, or +inf for an exact one)
# is clamped, so the collapse rule still fires instead of always firing.
PSNR_REFERENCE_CAP = 100.0


class InitInfo(NamedTuple):
    """One item's starting point, for a transform's `init`.

    `states`: the initial states of the transforms before this one.
    """

    params: Any
    batch_stats: Any
    opt_state: Any
    z: jax.Array
    trainable: dict
    out_shape: tuple
    has_ground_truth: bool
    states: dict


class StepTransform(NamedTuple):
    name: str
    init: Callable[[InitInfo], Any]
    update: Callable[[StepInfo, Any], tuple[StepInfo, Any]]
    before: Callable[[StepInput, Any], tuple[StepInput, Any]] | None = None


def _pick(cond, if_true, if_false):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(cond, a, b), if_true, if_false)


def all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.ones((), bool)


def _no_state(ctx):
    return None


def _unchanged(info, state):
    return info, state


# --------------------------------------------------------------------------- before the forward pass
# The factories are cached: equal settings give the same transform object, so
# fits with equal settings share their compiled programs.


@functools.lru_cache(maxsize=None)
def input_noise(std: float) -> StepTransform:
    """The original's `reg_noise_std`: z + std * N(0, 1), fresh each step, for the forward pass only."""

    def before(inp: StepInput, state):
        return inp._replace(z_offset=std * jax.random.normal(inp.input_key, inp.z.shape, inp.z.dtype)), state

    return StepTransform("input_noise", _no_state, _unchanged, before)


@functools.lru_cache(maxsize=None)
def param_noise(scale: float) -> StepTransform:
    """N(0, 1) * std(w) * scale added to every 4-D (conv) weight each step; it persists.

    What the original's `param_noise` meant (its code rebinds a local name
    and has no effect); FitConfig.param_noise switches it on.
    """

    def before(inp: StepInput, state):
        leaves, treedef = jax.tree_util.tree_flatten(inp.params)
        keys = jax.random.split(inp.param_key, len(leaves))
        noisy = [
            w + jax.random.normal(k, w.shape, w.dtype) * jnp.std(w) * scale if w.ndim == 4 else w
            for w, k in zip(leaves, keys)
        ]
        return inp._replace(params=jax.tree_util.tree_unflatten(treedef, noisy)), state

    return StepTransform("param_noise", _no_state, _unchanged, before)


# --------------------------------------------------------------------------- after the update


class BacktrackState(NamedTuple):
    backup: Any  # the trainable pytree saved at the last step that did not fall
    psnr: jax.Array  # its data-fit PSNR
    count: jax.Array  # restores so far

    # On a rollback the count is not undone (the restores happened).
    KEPT_ON_ROLLBACK = ("count",)


@functools.lru_cache(maxsize=None)
def backtrack(drop_db: float) -> StepTransform:
    """The original's backtracking: when the data-fit PSNR falls more than `drop_db` below the
    saved copy's, restore that copy (parameters and optimiser state), else save the current one.

    dip_jax also skips the falling step's optimiser update (the original
    applies the stale gradient to the restored weights); documented in the README.
    """

    def init(ctx: InitInfo):
        # The original starts its last-PSNR at 0, so the first step never backtracks.
        return BacktrackState(ctx.trainable, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))

    def update(info: StepInfo, state: BacktrackState):
        fell = info.psnr_fit - state.psnr < -drop_db
        new = info.state
        current = {k: {"net": new.params, "input": new.z}[k] for k in info.trainable}
        restored = _pick(fell, state.backup, current)
        new = new._replace(
            params=restored.get("net", new.params), z=restored.get("input", new.z),
            opt_state=_pick(fell, info.before.opt_state, new.opt_state),
        )
        state = BacktrackState(
            _pick(fell, state.backup, info.trainable), jnp.where(fell, state.psnr, info.psnr_fit),
            state.count + fell.astype(jnp.int32),
        )
        return info._replace(state=new, record={**info.record, "backtracked": fell}), state

    return StepTransform("backtrack", init, update)


class AverageState(NamedTuple):
    average: jax.Array  # (1, H, W, C)


@functools.lru_cache(maxsize=None)
def output_average(decay: float) -> StepTransform:
    """avg = decay * avg + (1 - decay) * out (the first kept update starts it at out); the estimate
    becomes the average, and with a ground truth its PSNR is recorded as `psnr_gt_avg`."""

    def init(ctx: InitInfo):
        return AverageState(jnp.zeros(ctx.out_shape, jnp.float32))

    def update(info: StepInfo, state: AverageState):
        out = info.out
        avg = jnp.where(info.before.num_updates == 0, out, decay * state.average + (1 - decay) * out)
        record, score = info.record, None
        if info.ground_truth is not None:
            score = psnr(avg, info.ground_truth)
            record = {**record, "psnr_gt_avg": score}
        return info._replace(record=record, estimate=avg, estimate_psnr_gt=score), AverageState(avg)

    return StepTransform("output_average", init, update)


class RollbackState(NamedTuple):
    good: GoodState  # the last state that passed the check
    lr_scale: jax.Array  # multiplies the optimiser's updates; 1 until a rollback
    count: jax.Array  # rollbacks so far


@functools.lru_cache(maxsize=None)
def divergence_rollback(drop_db: float, lr_factor: float) -> StepTransform:
    """Per-item divergence recovery (not in the original).

    A step is unhealthy when its loss or its output is not finite, or when
    the data-fit PSNR fell more than `drop_db` below the previous healthy
    step's (non-finite gradients show up as a non-finite output one step
    later). A healthy step snapshots the state it started from; an unhealthy
    one rolls the item back to the last snapshot (undoing the update that led
    to the bad state), multiplies the item's update scale by `lr_factor`
    (for Adam exactly a smaller learning rate) and counts a rollback. Other
    items are untouched. Rolled-back steps keep their non-finite loss/PSNR
    in the history.
    """

    def init(ctx: InitInfo):
        zero = jnp.zeros((), jnp.int32)
        good = GoodState(ctx.params, ctx.batch_stats, ctx.opt_state, ctx.z, zero, dict(ctx.states),
                         jnp.full((), -jnp.inf, jnp.float32))
        return RollbackState(good, jnp.ones((), jnp.float32), zero)

    def before(inp: StepInput, state: RollbackState):
        return inp._replace(update_scale=state.lr_scale), state

    def update(info: StepInfo, state: RollbackState):
        reference = jnp.minimum(state.good.psnr, PSNR_REFERENCE_CAP)
        collapsed = info.psnr_fit < reference - drop_db  # False for NaN (no data-fit PSNR)
        healthy = jnp.isfinite(info.loss) & all_finite(info.out) & ~collapsed
        old, new, g = info.before, info.state, state.good
        snapshot = GoodState(old.params, old.batch_stats, old.opt_state, old.z, old.num_updates,
                             {name: old.transforms[name] for name in info.earlier}, info.psnr_fit)
        restored = dict(new.transforms)
        for name, saved in g.transforms.items():
            kept = getattr(type(saved), "KEPT_ON_ROLLBACK", ())
            restored[name] = saved._replace(**{f: getattr(old.transforms[name], f) for f in kept}) if kept else saved
        rolled_back = (
            new._replace(params=g.params, batch_stats=g.batch_stats, opt_state=g.opt_state, z=g.z,
                         num_updates=g.num_updates, transforms=restored),
            RollbackState(g, state.lr_scale * lr_factor, state.count + 1),
        )
        kept = (new, RollbackState(snapshot, state.lr_scale, state.count))
        # A conditional, not a select over the whole state: under 'map' it only
        # passes buffers through (XLA's CPU compile time doubles with selects).
        new, state = jax.lax.cond(healthy, lambda: kept, lambda: rolled_back)
        record = {**info.record, "backtracked": info.record["backtracked"] & healthy, "rolled_back": ~healthy}
        return info._replace(state=new, record=record, healthy=healthy), state

    return StepTransform("divergence_rollback", init, update, before)


class BestState(NamedTuple):
    out: jax.Array  # the estimate with the best ground-truth PSNR so far
    psnr: jax.Array


def _best_init(ctx: InitInfo):
    return BestState(jnp.zeros(ctx.out_shape, jnp.float32), jnp.full((), -jnp.inf, jnp.float32))


def _best_update(info: StepInfo, state: BestState):
    better = (info.estimate_psnr_gt > state.psnr) & info.healthy
    return info, BestState(jnp.where(better, info.estimate, state.out),
                           jnp.where(better, info.estimate_psnr_gt, state.psnr))


# The estimate (averaged, when averaging) with the best PSNR against the ground
# truth among healthy steps; needs a ground truth.
best_output = StepTransform("best_output", _best_init, _best_update)


def default_transforms(cfg, *, has_ground_truth: bool) -> tuple[StepTransform, ...]:
    """The transforms FitConfig's fields switch on, in the order that reproduces the original's loop."""
    chain = []
    if cfg.reg_noise_std > 0:
        chain.append(input_noise(cfg.reg_noise_std))
    if cfg.param_noise and "net" in cfg.opt_over:
        chain.append(param_noise(cfg.param_noise_scale))
    if cfg.backtrack:
        chain.append(backtrack(cfg.backtrack_drop_db))
    if cfg.ema_decay is not None:
        chain.append(output_average(cfg.ema_decay))
    if cfg.divergence_check:
        chain.append(divergence_rollback(cfg.divergence_drop_db, cfg.divergence_lr_factor))
    if has_ground_truth:
        chain.append(best_output)
    if cfg.sgld:
        from dip_jax.fit.sgld import sgld  # sgld imports this module

        chain.append(sgld(cfg.learning_rate, noise_scale=cfg.sgld_noise_scale, burn_in=cfg.sgld_burn_in,
                          every=cfg.sgld_every))
    if cfg.auto_stop:
        from dip_jax.fit.stopping import es_wmv  # stopping imports this module

        chain.append(es_wmv(cfg.auto_stop_window, cfg.auto_stop_patience))
    return tuple(chain)


def init_states(chain, ctx: InitInfo) -> dict:
    """Every transform's initial state, in chain order (each sees the ones before it)."""
    states: dict = {}
    for t in chain:
        states[t.name] = t.init(ctx._replace(states=dict(states)))
    return states


def check_chain(chain) -> tuple:
    chain = tuple(chain)
    for t in chain:
        if not isinstance(t, StepTransform):
            raise ValueError(f"transforms must be dip_jax.fit.transforms.StepTransform objects, got {t!r}")
    names = [t.name for t in chain]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"two transforms are named {dupes}; give each transform of a fit its own name")
    return chain
