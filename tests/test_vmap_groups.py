"""Vmapping items in groups: same numbers as fitting them alone, groups chosen to fit memory, clear errors."""

import dataclasses
import types

import jax
import numpy as np
import optax
import pytest

import dip_jax as dj
from dip_jax.fit import optim
from dip_jax import nets
from dip_jax.runtime import checkpoint, memory
from dip_jax.fit import problem as problem_lib

TINY = nets.narrow(nets.preset("default", num_input_channels=4), width=8, scales=3)
CFG = dj.FitConfig(num_steps=3, learning_rate=0.01, reg_noise_std=1 / 30, chunk_size=2, ema_decay=0.9,
                   batch_mode="vmap", vmap_group_size=2)
KEYS = jax.random.split(jax.random.key(3), 4)


def _images(n, size=16):
    return np.random.default_rng(0).uniform(0, 1, (n, size, size, 3)).astype(np.float32)


def test_grouped_vmap_fit_equals_separate_fits():
    # Three items in groups of two: one full group, then the rest as a group
    # of one (both of lax.map's paths). SGD keeps round-off at round-off (see
    # test_engine.test_batched_fit_equals_separate_fits for why Adam is not
    # compared parameter by parameter); a BatchNorm statistic shared across a
    # group, or items swapped between groups, would be far outside these bounds.
    ys = _images(3)
    sgd = optax.sgd(0.05)
    together = dj.fit(KEYS[:3], TINY, CFG, ys, ground_truth=ys, optimizer=sgd)
    assert together.problem.batch_mode == "vmap" and together.problem.vmap_group_size == 2
    assert together.history["loss"].shape == (3, 3, 1)
    for i in range(3):
        alone = dj.fit(KEYS[i : i + 1], TINY, dataclasses.replace(CFG, batch_mode="map", vmap_group_size=None),
                       ys[i : i + 1], ground_truth=ys[i : i + 1], optimizer=sgd)
        np.testing.assert_allclose(together.output[i], alone.output[0], atol=2e-5)
        np.testing.assert_allclose(together.output_avg[i], alone.output_avg[0], atol=2e-5)
        np.testing.assert_allclose(together.history["loss"][:, i], alone.history["loss"][:, 0], rtol=1e-5)
        for a, b in zip(jax.tree_util.tree_leaves(together.state.params), jax.tree_util.tree_leaves(alone.state.params)):
            np.testing.assert_allclose(a[i], b[0], atol=2e-5)


def test_a_group_as_large_as_the_batch_is_a_plain_vmap_and_batching_never_recompiles_the_init():
    vmapped, s_vmap, _ = dj.prepare(KEYS[:2], TINY, dataclasses.replace(CFG, vmap_group_size=8), _images(2))
    assert vmapped.batch_mode == "vmap" and vmapped.vmap_group_size is None
    mapped, s_map, _ = dj.prepare(KEYS[:2], TINY, dataclasses.replace(CFG, batch_mode="map", vmap_group_size=None),
                                  _images(2))
    assert mapped.vmap_group_size is None
    grouped, _, _ = dj.prepare(KEYS[:2], TINY, dataclasses.replace(CFG, vmap_group_size=1), _images(2))
    assert grouped.vmap_group_size == 1
    # One initialiser for all three (it does not depend on the batching), and the same initial states.
    assert problem_lib.init_key(vmapped) == problem_lib.init_key(mapped) == problem_lib.init_key(grouped)
    for a, b in zip(jax.tree_util.tree_leaves(s_vmap.params), jax.tree_util.tree_leaves(s_map.params)):
        np.testing.assert_array_equal(a, b)


def _fake_estimate(per_item, fixed=0):
    """estimate(group) with `per_item` bytes for each item vmapped together (None: all 6)."""
    return lambda group: types.SimpleNamespace(needed_bytes=fixed + per_item * (6 if group is None else group))


def test_largest_fitting_group_is_the_largest_divisor_that_fits():
    estimate = _fake_estimate(100, fixed=50)
    usable = memory.USABLE_FRACTION
    assert memory.largest_fitting_group(estimate, 6, None) is None  # free memory unknown: all at once
    assert memory.largest_fitting_group(estimate, 6, int(650 / usable) + 1) is None  # all 6 fit
    assert memory.largest_fitting_group(estimate, 6, int(549 / usable)) == 3  # 5 and 4 would fit, 3 divides 6
    assert memory.largest_fitting_group(estimate, 6, int(251 / usable)) == 2
    assert memory.largest_fitting_group(estimate, 6, int(100 / usable)) == 1  # nothing fits: 1, refused later


def test_memory_estimate_counts_one_group_of_activations():
    cfg = dataclasses.replace(CFG, vmap_group_size=None)
    one = memory.estimate_fit(TINY, cfg, (64, 64), 1, batch_mode="map")
    grouped = memory.estimate_fit(TINY, cfg, (64, 64), 8, batch_mode="vmap", group_size=2)
    everything = memory.estimate_fit(TINY, cfg, (64, 64), 8, batch_mode="vmap")
    assert grouped.activation_bytes == 2 * one.activation_bytes
    assert everything.activation_bytes == 8 * one.activation_bytes
    assert grouped.state_bytes == everything.state_bytes  # every item's state is held either way
    with pytest.raises(ValueError, match="smaller vmap_group_size"):
        memory.check_fits(grouped, available=grouped.total_bytes)


def test_prepare_picks_a_group_that_fits_when_all_items_do_not(monkeypatch):
    cfg = dataclasses.replace(CFG, vmap_group_size=None)
    ys = _images(4)
    tx = optim.over_flat_vector(optim.make_optimizer(cfg))  # what prepare estimates with
    all_four = memory.estimate_fit(TINY, cfg, (16, 16), 4, batch_mode="vmap", tx=tx)
    two = memory.estimate_fit(TINY, cfg, (16, 16), 4, batch_mode="vmap", tx=tx, group_size=2)
    # Room for two items' activations but not for four.
    free = int((two.needed_bytes + all_four.needed_bytes) / 2 / memory.USABLE_FRACTION)
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: free)
    problem, _, _ = dj.prepare(KEYS, TINY, cfg, ys)
    assert problem.vmap_group_size == 2  # (fits in groups run as tested above)
    # A group the user sets is taken as given, and refused when it does not fit.
    with pytest.raises(ValueError, match="4 items vmapped together"):
        dj.prepare(KEYS, TINY, dataclasses.replace(cfg, vmap_group_size=4), ys)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(vmap_group_size=0), "vmap_group_size must be None"),
        (dict(vmap_group_size=2.0), "vmap_group_size must be None"),
        (dict(vmap_group_size=True), "vmap_group_size must be None"),
        (dict(batch_mode="map", vmap_group_size=2), "applies to batch_mode='vmap'"),
    ],
)
def test_bad_group_sizes_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(CFG, **changes)


def test_group_size_is_not_part_of_a_checkpoints_fingerprint():
    assert "vmap_group_size" in checkpoint.RUN_ONLY_FIELDS
