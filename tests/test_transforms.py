"""Step transforms: a stopping rule written in this file plugs into batched fits (vmap and map) unchanged."""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dip_jax as dj
from dip_jax import nets
from dip_jax.fit import step as step_lib
from dip_jax.fit.transforms import StepTransform
from dip_jax.runtime import checkpoint

TINY = nets.narrow(nets.preset("default", num_input_channels=4), width=8, scales=3)
CFG = dj.FitConfig(num_steps=4, chunk_size=2, reg_noise_std=1 / 30, ema_decay=0.9, backtrack=True)
# Item 0 is a flat grey the fresh net already nearly produces (loss far below the
# threshold at once); item 1 is noise it cannot fit in a few steps.
YS = np.stack([np.full((16, 16, 3), 0.5, np.float32),
               np.random.default_rng(0).uniform(0, 1, (16, 16, 3)).astype(np.float32)])
KEYS = jax.random.split(jax.random.key(5), 2)
THRESHOLD = 0.05


class StopState(NamedTuple):
    stopped: jax.Array


def _stop_init(ctx):
    return StopState(jnp.zeros((), bool))


def _stop_update(info, state):
    # Stop for good once the loss is below the threshold: from that step on the
    # item's update is discarded and its whole state stays where it was.
    stopped = state.stopped | (info.loss < THRESHOLD)
    info = step_lib.hold(info, stopped)
    return info._replace(record={**info.record, "stopped": stopped}), StopState(stopped)


STOP_BELOW = StepTransform("stop_below", _stop_init, _stop_update)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


@pytest.mark.parametrize("batch_mode", ["map", "vmap"])
def test_a_per_item_stopping_rule_freezes_one_item_and_the_other_goes_on(batch_mode):
    cfg = dataclasses.replace(CFG, batch_mode=batch_mode)
    problem, start, data = dj.prepare(KEYS, TINY, cfg, YS, transforms=[STOP_BELOW])
    assert [t.name for t in problem.transforms][-1] == "stop_below"
    # A checkpoint of this fit records the added transform (a resume without it is refused).
    assert checkpoint.fingerprint(problem, data)["transforms"] == ["stop_below"]
    end, records = dj.run(problem, start, data, num_steps=cfg.num_steps)
    assert records["stopped"][:, 0].all() and not records["stopped"][:, 1].any()
    assert records["loss"][0, 0] < THRESHOLD and (records["loss"][:, 1] > THRESHOLD).all()
    # A state with a `stopped` field is the generic stop: the item's later steps are skipped (NaN records).
    assert np.isnan(records["loss"][1:, 0]).all()
    # Item 0 never moved: parameters, optimiser state, average and backup are the initial ones...
    for name in ("params", "opt_state", "z", "out_avg", "backup", "num_updates"):
        for a, b in zip(_leaves(getattr(end, name)), _leaves(getattr(start, name))):
            np.testing.assert_array_equal(a[0], b[0], err_msg=name)
    np.testing.assert_array_equal(end.step, [1, 4])  # a skipped step does not count
    np.testing.assert_array_equal(end.transforms["stop_below"].stopped, [True, False])
    # ... while item 1 fitted as it does without the rule.
    _, ref_records = dj.run(*dj.prepare(KEYS, TINY, cfg, YS), num_steps=cfg.num_steps)
    np.testing.assert_allclose(records["loss"][:, 1], ref_records["loss"][:, 1], rtol=1e-4)
    moved = [not np.array_equal(a[1], b[1]) for a, b in zip(_leaves(end.params), _leaves(start.params))]
    assert any(moved)


def test_transform_names_must_be_distinct():
    clash = StepTransform("backtrack", _stop_init, _stop_update)
    with pytest.raises(ValueError, match="named"):
        dj.prepare(KEYS, TINY, CFG, YS, transforms=[clash])
    with pytest.raises(ValueError, match="StepTransform"):
        dj.prepare(KEYS, TINY, CFG, YS, transforms=[_stop_update])


def test_tv_as_a_regulariser_gives_the_config_fields_numbers():
    from dip_jax import losses

    cfg = dj.FitConfig(num_steps=2, chunk_size=2, batch_mode="map")
    by_config = dj.fit(KEYS[:1], TINY, dataclasses.replace(cfg, tv_weight=0.01, tv_beta=0.5), YS[1:])
    by_argument = dj.fit(KEYS[:1], TINY, cfg, YS[1:], regularisers=[(0.01, losses.TotalVariation(beta=0.5))])
    np.testing.assert_array_equal(by_config.history["loss"], by_argument.history["loss"])
    np.testing.assert_array_equal(by_config.output, by_argument.output)
    plain = dj.fit(KEYS[:1], TINY, cfg, YS[1:])
    assert not np.array_equal(plain.history["loss"][0], by_argument.history["loss"][0])
