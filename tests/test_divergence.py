"""Divergence recovery: per-item rollback on NaN or PSNR collapse, smaller steps, never a NaN image."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dip_jax as dj
from dip_jax import nets
from dip_jax.fit import problem as problem_lib

# The same tiny problem as the other reliability tests: one compiled chunk.
TINY = nets.narrow(nets.preset("default", num_input_channels=4), width=8, scales=3)
CFG = dj.FitConfig(num_steps=7, learning_rate=0.01, reg_noise_std=1 / 30, chunk_size=2, ema_decay=0.9,
                   backtrack=True, batch_mode="map")
YS = np.random.default_rng(0).uniform(0, 1, (3, 16, 16, 3)).astype(np.float32)
KEYS = jax.random.split(jax.random.key(3), 3)


@pytest.fixture(scope="module")
def setup():
    problem, state, data = dj.prepare(KEYS, TINY, CFG, YS, ground_truth=YS)
    s1, _ = dj.run(problem, state, data, num_steps=1)
    s2, _ = dj.run(problem, s1, data, num_steps=1)
    return problem, state, data, s1, s2


def _set_item(tree, item, value):
    return jax.tree_util.tree_map(lambda a: a.at[item].set(value), tree)


def _leaves(tree):
    return jax.tree_util.tree_leaves(tree)


def _assert_items_equal(a, b, items):
    for x, y in zip(_leaves(a), _leaves(b)):
        np.testing.assert_array_equal(np.asarray(x)[items], np.asarray(y)[items])


def test_nan_in_one_item_rolls_it_back_and_leaves_the_others_alone(setup):
    problem, _, data, s1, s2 = setup
    ref3, _ = dj.run(problem, s2, data, num_steps=1)
    ref4, _ = dj.run(problem, ref3, data, num_steps=1)
    bad = s2._replace(params=_set_item(s2.params, 1, jnp.nan))
    r3, rec3 = dj.run(problem, bad, data, num_steps=1)
    # The NaN state fails the check; item 1 returns to its last healthy state (s1) with half the step size.
    assert rec3["rolled_back"][0].tolist() == [False, True, False]
    assert np.isnan(rec3["loss"][0, 1]) and not rec3["backtracked"][0, 1]
    _assert_items_equal(r3.params, s1.params, [1])
    _assert_items_equal(r3.opt_state, s1.opt_state, [1])
    np.testing.assert_array_equal(r3.lr_scale, [1.0, 0.5, 1.0])
    np.testing.assert_array_equal(r3.num_rollbacks, [0, 1, 0])
    np.testing.assert_array_equal(r3.num_updates, [3, 1, 3])
    np.testing.assert_array_equal(r3.step, [3, 3, 3])
    # ... and then goes on, finite, on a new path.
    r4, rec4 = dj.run(problem, r3, data, num_steps=1)
    assert not rec4["rolled_back"].any()
    assert all(np.all(np.isfinite(np.asarray(x)[1])) for x in _leaves(r4.params))
    assert not np.array_equal(np.asarray(_leaves(r4.params)[0])[1], np.asarray(_leaves(ref4.params)[0])[1])
    # The other items are exactly where an undisturbed run puts them.
    _assert_items_equal(r4.params, ref4.params, [0, 2])
    _assert_items_equal(r4.opt_state, ref4.opt_state, [0, 2])
    np.testing.assert_array_equal(np.asarray(r4.out_avg)[[0, 2]], np.asarray(ref4.out_avg)[[0, 2]])


def test_readout_falls_back_to_the_last_healthy_state(setup):
    problem, _, data, _, s2 = setup
    bad = s2._replace(params=_set_item(s2.params, 1, jnp.nan), out_avg=s2.out_avg.at[1].set(jnp.nan))
    out, avg = problem_lib.readout_fn(problem)(bad, data)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(avg))
    healthy = s2._replace(params=s2.good.params, batch_stats=s2.good.batch_stats, z=s2.good.z)
    np.testing.assert_allclose(np.asarray(out)[1, 0], dj.readout(problem, healthy, data)[1], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(avg)[1], np.asarray(s2.good.out_avg)[1])
    np.testing.assert_array_equal(np.asarray(out)[[0, 2], 0], dj.readout(problem, s2, data)[[0, 2]])


def test_an_exploding_step_size_in_one_item_never_reaches_the_output(setup):
    problem, state, data, _, _ = setup
    reference, ref_records = dj.run(problem, state, data, num_steps=5)
    wild = state._replace(lr_scale=state.lr_scale.at[2].set(jnp.inf))
    new, records = dj.run(problem, wild, data, num_steps=5)
    # Every update of item 2 is infinite: the next step always rolls back to the initial state.
    assert records["rolled_back"][:, 2].tolist() == [False, True, False, True, False]
    assert int(new.num_rollbacks[2]) == 2
    _assert_items_equal(new.good.params, state.params, [2])
    # The last step's update was applied (its check comes one step later): the readout falls back.
    assert not np.all(np.isfinite(np.asarray(_leaves(new.params)[0])[2]))
    assert np.all(np.isfinite(dj.readout(problem, new, data)))
    _assert_items_equal(new.params, reference.params, [0, 1])
    np.testing.assert_array_equal(records["loss"][:, :2], ref_records["loss"][:, :2])


@pytest.mark.parametrize("reference_psnr", [90.0, np.inf])
def test_a_collapse_of_the_data_fit_psnr_rolls_back(setup, reference_psnr):
    problem, state, data, _, _ = setup
    # Pretend item 0's last healthy step fitted at `reference_psnr` dB (inf: an exact fit, capped at 100 dB).
    good = state.good._replace(psnr=state.good.psnr.at[0].set(reference_psnr))
    new, records = dj.run(problem, state._replace(good=good), data, num_steps=1)
    assert records["psnr_fit"][0, 0] < 40
    assert records["rolled_back"][0].tolist() == [True, False, False]
    _assert_items_equal(new.params, state.params, [0])
    np.testing.assert_array_equal(new.lr_scale, [0.5, 1.0, 1.0])


def test_fit_reports_rollbacks_and_the_best_output():
    r = dj.fit(KEYS, TINY, dataclasses.replace(CFG, num_steps=4), YS, ground_truth=YS)
    assert r.num_rollbacks.shape == (3, 1) and not r.num_rollbacks.any()
    assert r.num_backtracks.shape == (3, 1)
    assert r.history["rolled_back"].shape == (4, 3, 1) and not r.history["rolled_back"].any()
    assert r.best_output.shape == (3, 1, 16, 16, 3)
    np.testing.assert_array_equal(r.best_psnr, r.history["psnr_gt_avg"].max(axis=0))
    best_step = r.history["psnr_gt_avg"].argmax(axis=0)
    assert r.best_psnr.shape == (3, 1) and best_step.shape == (3, 1)


def test_divergence_settings_are_validated():
    with pytest.raises(ValueError, match="divergence_lr_factor"):
        dj.FitConfig(divergence_lr_factor=0.0)
    with pytest.raises(ValueError, match="divergence_lr_factor"):
        dj.FitConfig(divergence_lr_factor=2.0)
    with pytest.raises(ValueError, match="divergence_drop_db"):
        dj.FitConfig(divergence_drop_db=-1.0)


def test_switching_the_check_off_drops_the_snapshot():
    cfg = dataclasses.replace(CFG, divergence_check=False)
    _, state, _ = dj.prepare(KEYS[:1], TINY, cfg, YS[:1], ground_truth=YS[:1])
    assert state.good is None
    np.testing.assert_array_equal(state.lr_scale, [1.0])


@pytest.mark.slow
def test_without_the_check_a_nan_goes_through():
    cfg = dataclasses.replace(CFG, divergence_check=False)
    problem, state, data = dj.prepare(KEYS[:1], TINY, cfg, YS[:1], ground_truth=YS[:1])
    bad = state._replace(params=_set_item(state.params, 0, jnp.nan))
    new, records = dj.run(problem, bad, data, num_steps=1)
    assert "rolled_back" not in records
    assert np.isnan(records["loss"][0, 0])
    assert np.all(np.isnan(dj.readout(problem, new, data)))
