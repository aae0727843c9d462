"""The static half of a fit (`Problem`) and the programs compiled for it.

Contract: a `Problem` is hashable and holds what is built once and compiled
once: net and fit configs, operator, data term, optimiser, the transforms
and regularisers a fit adds to FitConfig's, whether a ground truth is
known, and the resolved batching. `chunk_fn`, `readout_fn` and `init_fn`
return the compiled chunk (`chunk_size` steps under `lax.scan`), read-out
and initialiser, cached per compile key (`compile_key`: the problem less
what never reaches compiled code), so a second chunk, a longer fit or a
fit differing only in run-only settings never recompiles.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from dip_jax import inputs as inputs_lib
from dip_jax import losses, nets
from dip_jax.fit import config as config_lib
from dip_jax.fit import optim
from dip_jax.fit import transforms as transforms_lib
from dip_jax.fit.step import FitState, item_step_or_skip, trainable_of
from dip_jax.runtime import sharding
from dip_jax.runtime.batching import batched
from dip_jax.runtime.compile import jit

_BATCH = PartitionSpec(sharding.BATCH_AXIS)
_REPLICATED = PartitionSpec()


class FitData(NamedTuple):
    """Per-item arrays (leading batch axis), vmapped alongside the state."""

    target: jax.Array
    op_args: Any
    ground_truth: jax.Array | None


@dataclasses.dataclass(frozen=True)
class Problem:
    """The static half of a fit (hashable): what is built once and compiled once."""

    net_config: Any
    fit_config: config_lib.FitConfig
    op: Any
    loss_fn: Callable
    optimizer: Any
    has_ground_truth: bool
    batch_mode: str
    # Resolved from FitConfig.vmap_group_size by `prepare`: None means all of
    # a device's items in one vmap (always None under 'map').
    vmap_group_size: int | None = None
    # Added to the ones FitConfig's fields switch on (after them, in order).
    extra_transforms: tuple = ()
    extra_regularisers: tuple = ()

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
        return optim.over_flat_vector(optim.make_optimizer(self.fit_config))

    @functools.cached_property
    def transforms(self) -> tuple:
        defaults = transforms_lib.default_transforms(self.fit_config, has_ground_truth=self.has_ground_truth)
        return defaults + tuple(self.extra_transforms)

    @functools.cached_property
    def regularisers(self) -> tuple:
        cfg = self.fit_config
        tv = ((cfg.tv_weight, losses.TotalVariation(cfg.tv_beta)),) if cfg.tv_weight else ()
        return tv + tuple(self.extra_regularisers)


def compile_key(problem: Problem) -> Problem:
    """`problem` with the FitConfig fields that never reach compiled code normalised."""
    cfg = config_lib.compile_key(problem.fit_config, batch_mode=problem.batch_mode,
                                 vmap_group_size=problem.vmap_group_size)
    return problem if cfg == problem.fit_config else dataclasses.replace(problem, fit_config=cfg)


def chunk_fn(problem: Problem, mesh=None) -> Callable:
    """The compiled chunk for `problem` (cached per compile key and mesh)."""
    key = compile_key(problem)
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

    one_step = functools.partial(item_step_or_skip, problem)
    if problem.batch_mode == "map" or problem.vmap_group_size is not None:
        # Items (or vmapped groups of them) outside, steps inside: each item's
        # state is sliced out of the batch once per chunk and carried through
        # its own scan, instead of being sliced and written back every step
        # (which made several restarts slower per restart than one).
        def run(state, data, shared, n_active):
            def one(item):
                return scan_steps(one_step, item[0], item[1], shared, n_active)

            states, records = jax.lax.map(one, (state, data), batch_size=problem.vmap_group_size)
            return states, jax.tree_util.tree_map(lambda r: jnp.swapaxes(r, 0, 1), records)
    else:
        step = batched(problem.batch_mode, one_step)

        def run(state, data, shared, n_active):
            return scan_steps(step, state, data, shared, n_active)

    if mesh is not None:
        run = jax.shard_map(
            run, mesh=mesh, in_specs=(_BATCH, _BATCH, _REPLICATED, _REPLICATED),
            out_specs=(_BATCH, PartitionSpec(None, sharding.BATCH_AXIS)), check_vma=False,
        )
    return jit(run, mesh)


def readout_fn(problem: Problem, mesh=None) -> Callable:
    return _compiled_readout(compile_key(problem), mesh)


@functools.lru_cache(maxsize=32)
def _compiled_readout(problem: Problem, mesh=None) -> Callable:
    """(output, out_avg) per item (out_avg None without averaging); a non-finite one falls back to
    the last healthy snapshot's when divergence rollback is on."""

    def one(state: FitState, data, shared):
        def forward(params, batch_stats, z):
            out, _ = problem.module.apply({"params": params, "batch_stats": batch_stats}, z, mutable=["batch_stats"])
            return out

        out = forward(state.params, state.batch_stats, state.z)
        avg = state.out_avg
        if state.good is not None:
            g = state.good
            out = jax.lax.cond(
                transforms_lib.all_finite(out), lambda o: o, lambda o: forward(g.params, g.batch_stats, g.z), out
            )
            if avg is not None:
                avg = jnp.where(transforms_lib.all_finite(avg), avg, g.out_avg)
        return out, avg

    fn_batched = batched(problem.batch_mode, one, problem.vmap_group_size)
    fn = lambda state, data: fn_batched(state, data, None)  # noqa: E731
    if mesh is not None:
        fn = jax.shard_map(fn, mesh=mesh, in_specs=(_BATCH, _BATCH), out_specs=_BATCH, check_vma=False)
    return jit(fn, mesh)


@functools.lru_cache(maxsize=32)
def init_fn(problem: Problem, size: tuple[int, int], with_z: bool, with_variables: bool) -> Callable:
    """The compiled initialiser, cached per problem (a new fit of the same problem does not
    recompile, unless a large fit released the code)."""
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
        trainable = trainable_of(cfg.opt_over, params, z)
        opt_state = problem.tx.init(trainable)
        ctx = transforms_lib.InitInfo(params, stats, opt_state, z, trainable,
                                      (1, *size, ncfg.num_output_channels), problem.has_ground_truth, {})
        zero = jnp.zeros((), jnp.int32)
        return FitState(params=params, batch_stats=stats, opt_state=opt_state, z=z, key=k_loop, step=zero,
                        num_updates=zero, transforms=transforms_lib.init_states(problem.transforms, ctx))

    # lax.map, not vmap: an 'rbg' key draws different numbers when vmapped, and
    # each item must get exactly the init it would get when fitted alone.
    if with_z:
        return jit(lambda ks, zs, v: jax.lax.map(lambda a: one(a[0], a[1], v), (ks, zs)), run_once=True)
    return jit(lambda ks, zs, v: jax.lax.map(lambda k: one(k, None, v), ks), run_once=True)


def init_key(problem: Problem) -> Problem:
    """The compile key of the initialiser, which does not depend on how items are batched."""
    key = compile_key(problem)
    if key.batch_mode == "map" and key.vmap_group_size is None:
        return key
    cfg = dataclasses.replace(key.fit_config, batch_mode="map", vmap_group_size=None)
    return dataclasses.replace(key, fit_config=cfg, batch_mode="map", vmap_group_size=None)
