"""ES-WMV automatic stopping (dip_jax.fit.stopping) and the generic per-item stop: each item stops on
its own, its result is frozen, a batch equals its items fitted alone, the fit ends when all have stopped."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dip_jax as dj
from dip_jax import nets
from dip_jax.fit import stopping
from dip_jax.fit.transforms import InitInfo

TINY = nets.narrow(nets.preset("default", num_input_channels=4), width=8, scales=3)
_x = np.linspace(0, 1, 16, dtype=np.float32)
# A ramp and a checkerboard: their variance minima are clear (a flat grey's or noise's are
# near-ties that float summation order can flip), and they stop at different steps.
YS = np.stack([np.broadcast_to(_x[None, :, None], (16, 16, 3)),
               np.broadcast_to(((np.indices((16, 16)).sum(0) // 4) % 2)[..., None] * 0.6 + 0.2, (16, 16, 3))
               ]).astype(np.float32)
KEYS = jax.random.split(jax.random.key(7), 4)[jnp.array([0, 2])]
# Window and patience scaled down from the paper's 100 / 1000 for a 48-step test fit.
CFG = dj.FitConfig(num_steps=48, chunk_size=8, auto_stop=True, auto_stop_window=4, auto_stop_patience=3,
                   learning_rate=0.05)


def _fit(keys, ys, mode):
    return dj.fit(keys, TINY, dataclasses.replace(CFG, batch_mode=mode), ys)


# ~40 s each on the loaded 2-core CPU (two compiles): in .ci/run's slow step.
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["map", "vmap"])
def test_a_batch_stops_per_item_as_its_items_alone_and_ends_when_all_stopped(mode):
    both = _fit(KEYS, YS, mode)
    stops = both.stop_step[:, 0]
    assert stops[0] != stops[1] and (stops > 0).all() and (stops < CFG.num_steps).all()
    # Every item stopped before the last chunk: the loop ended at the end of the chunk of the last stop.
    assert both.steps == -(-stops.max() // CFG.chunk_size) * CFG.chunk_size < CFG.num_steps
    assert both.history["loss"].shape[0] == both.steps
    for i in range(2):
        alone = _fit(KEYS[i:i + 1], YS[i:i + 1], mode)
        assert alone.stop_step[0, 0] == stops[i]
        # 'map' computes each item as if alone; 'vmap' sums in another order.
        np.testing.assert_allclose(alone.output[0], both.output[i], atol=1e-4 if mode == "map" else 1e-3)
        # The result is the output at the variance minimum, not the final read-out.
        result_step = int(both.state.transforms["es_wmv"].result_step[i])
        assert result_step == stops[i] - CFG.auto_stop_patience
    # After its stop an item's records are NaN and its `stopped` record is set.
    i = int(np.argmin(stops))
    assert np.isnan(both.history["loss"][stops[i]:, i]).all()
    assert both.history["stopped"][stops[i] - 1:, i].all() and not both.history["stopped"][: stops[i] - 1, i].any()


def test_a_stopped_items_state_is_frozen_and_its_steps_are_skipped():
    problem, start, data = dj.prepare(KEYS, TINY, dataclasses.replace(CFG, batch_mode="map"), YS)
    mid, _ = dj.run(problem, start, data, num_steps=24)
    end, records = dj.run(problem, mid, data, num_steps=24)
    stopped = np.asarray(mid.transforms["es_wmv"].stopped)
    assert stopped.any()
    i = int(np.argmax(stopped))
    plain = lambda s: jax.tree_util.tree_leaves(s._replace(key=jax.random.key_data(s.key)))  # noqa: E731
    for a, b in zip(plain(mid), plain(end)):
        np.testing.assert_array_equal(np.asarray(a)[i], np.asarray(b)[i])
    # Skipped, not recomputed: the item's step count stayed where it stopped.
    assert int(end.step[i]) == int(mid.step[i]) < 24
    assert np.isnan(records["loss"][:, i]).all()


def test_window_variance_equals_numpy_on_a_synthetic_sequence():
    window, steps = 5, 12
    rng = np.random.default_rng(1)
    # A slowly settling sequence around a large mean (where running sums would cancel in float32).
    seq = (0.7 + rng.normal(0, 1, (steps, 1, 4, 4, 3)) * np.exp(-np.arange(steps) / 4)[:, None, None, None, None]
           * 1e-2).astype(np.float32)
    t = stopping.es_wmv(window, 3)
    ctx = InitInfo(None, None, None, None, {}, (1, 4, 4, 3), False, {})
    state = t.init(ctx)

    class Info:  # the fields the transform reads, for a fake step
        def __init__(self, out, step):
            self.out = self.estimate = jnp.asarray(out)
            self.healthy = jnp.ones((), bool)
            self.record = {}
            self.state = type("S", (), {"step": jnp.int32(step)})()

        def _replace(self, **kw):
            self.__dict__.update(kw)
            return self

    variances = []
    for k in range(steps):
        info, state = t.update(Info(seq[k], k + 1), state)
        variances.append(float(info.record["es_variance"]))
    expected = [np.nan] * (window - 1)
    for k in range(window - 1, steps):
        w = seq[k - window + 1:k + 1].astype(np.float64)
        expected.append(np.mean([np.mean((x - w.mean(0)) ** 2) for x in w]))
    np.testing.assert_allclose(variances, expected, rtol=1e-4)
    best = int(np.nanargmin(expected))
    assert int(state.result_step) == best + 1
    np.testing.assert_array_equal(np.asarray(state.result), seq[best])


def test_bad_window_or_patience_is_refused():
    with pytest.raises(ValueError, match="auto_stop_window"):
        dj.FitConfig(auto_stop=True, auto_stop_window=1)
    with pytest.raises(ValueError, match="patience"):
        stopping.es_wmv(10, 0)
