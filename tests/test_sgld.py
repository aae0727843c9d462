"""SGLD (dip_jax.fit.sgld): Langevin noise on the conv weights, the posterior mean and variance of the samples."""

import dataclasses

import jax
import numpy as np

import dip_jax as dj
from dip_jax import nets
from dip_jax.fit import sgld as sgld_lib

TINY = nets.narrow(nets.preset("default", num_input_channels=4), width=8, scales=3)
_rng = np.random.default_rng(0)
CLEAN = np.broadcast_to(np.linspace(0, 1, 16, dtype=np.float32)[None, :, None], (16, 16, 3))
NOISY = np.clip(CLEAN + _rng.normal(0, 0.1, CLEAN.shape), 0, 1).astype(np.float32)[None]
KEY = jax.random.split(jax.random.key(3), 1)
# Burn-in 2, a sample every 2 steps: samples at steps 4 and 6.
CFG = dj.FitConfig(num_steps=6, chunk_size=3, batch_mode="map", sgld=True, sgld_burn_in=2, sgld_every=2)


def test_posterior_mean_is_the_mean_of_the_sampled_outputs_and_the_variance_map_is_theirs():
    problem, state, data = dj.prepare(KEY, TINY, CFG, NOISY)
    assert [t.name for t in problem.transforms][-1] == "sgld"
    outputs = []
    # No input noise: the output of step t is the read-out after t - 1 steps.
    for steps in (3, 2, 1):
        state, records = dj.run(problem, state, data, num_steps=steps)
        if steps == 3 or steps == 2:
            outputs.append(dj.readout(problem, state, data)[0])
    np.testing.assert_array_equal(records["sgld_samples"][-1], [2])
    sgld_state = jax.tree_util.tree_map(lambda a: a[0], state.transforms["sgld"])
    samples = np.stack(outputs).astype(np.float64)
    np.testing.assert_allclose(sgld_state.result[0], samples.mean(0), atol=2e-6)
    variance = np.asarray(sgld_lib.posterior_variance(sgld_state))[0]
    np.testing.assert_allclose(variance, samples.var(0), atol=2e-6)
    assert variance.max() > 0


def test_langevin_noise_moves_the_conv_weights_by_the_references_scale():
    plain = dataclasses.replace(CFG, sgld=False, num_steps=1)
    problem0, s0, data = dj.prepare(KEY, TINY, plain, NOISY)
    problem1, s1, _ = dj.prepare(KEY, TINY, dataclasses.replace(plain, sgld=True), NOISY)
    a, _ = dj.run(problem0, s0, data, num_steps=1)
    b, _ = dj.run(problem1, s1, data, num_steps=1)
    diffs = [(x.ndim, np.asarray(y - x)) for x, y in zip(jax.tree_util.tree_leaves(a.params),
                                                      jax.tree_util.tree_leaves(b.params))]
    conv = np.concatenate([d.ravel() for n, d in diffs if n == 5])  # 4-D weights, with the batch axis
    # Other leaves get no noise: they differ at most by Adam's first-step bound (2 lr), which two compiled
    # programs can reach where a gradient is ~0 (biases before a BatchNorm: lr * g / |g| of rounding noise).
    other = np.concatenate([d.ravel() for n, d in diffs if n != 5])
    assert np.abs(other).max() <= 2 * CFG.learning_rate * 1.001
    # std = noise_scale * learning_rate = 2 * 0.01 (the same key: the update is identical, only the noise differs).
    assert abs(conv.std() / (CFG.sgld_noise_scale * CFG.learning_rate) - 1) < 0.05


def test_a_small_denoising_fit_returns_a_finite_mean_and_a_non_negative_variance_map():
    result = dj.fit(KEY, TINY, dataclasses.replace(CFG, num_steps=8), NOISY)
    state = jax.tree_util.tree_map(lambda a: a[0], result.state.transforms["sgld"])
    assert int(state.count) == 3  # steps 4, 6, 8
    np.testing.assert_array_equal(result.output[0, 0], np.asarray(state.result)[0])
    assert np.isfinite(result.output).all()
    assert (np.asarray(sgld_lib.posterior_variance(state)) >= 0).all()
