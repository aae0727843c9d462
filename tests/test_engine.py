"""The fitting engine: batching equals separate fits, no recompiles, seeds, denoising works, errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dip_jax as dj
from dip_jax.fit import optim
from dip_jax import metrics, nets, operators
from dip_jax.fit import api
from dip_jax.fit import problem as problem_lib
from dip_jax.runtime import compile as runtime_compile

TINY = nets.narrow(nets.preset("default", num_input_channels=4), width=8, scales=3)
FAST = dj.FitConfig(num_steps=4, learning_rate=0.01, reg_noise_std=1 / 30, chunk_size=2)


def _images(n, size=16, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, size, size, channels)).astype(np.float32)


def test_batched_fit_equals_separate_fits():
    # 'map' (the CPU default) runs the same per-item computation, but inside a
    # loop over items (B > 1) XLA may fuse and round differently than for one
    # item. Adam's first updates are ~lr * sign(g): they turn round-off in the
    # mathematically zero gradients of the biases before BatchNorm into +-lr
    # moves that do not change the output. So every parameter is compared
    # under SGD, which keeps round-off at round-off, and the built-in Adam's
    # fits are compared by what they produce. Any BatchNorm statistic shared
    # across items would show up as a large difference in both.
    cfg = dataclasses.replace(FAST, batch_mode="map", ema_decay=0.9, backtrack=True)
    ys = _images(3)
    keys = jax.random.split(jax.random.key(3), 3)
    sgd = optax.sgd(0.05)
    together = dj.fit(keys, TINY, cfg, ys, ground_truth=ys, optimizer=sgd)
    together_adam = dj.fit(keys, TINY, cfg, ys, ground_truth=ys)
    for i in range(3):
        alone = dj.fit(keys[i : i + 1], TINY, cfg, ys[i : i + 1], ground_truth=ys[i : i + 1], optimizer=sgd)
        np.testing.assert_allclose(together.output[i], alone.output[0], atol=2e-5)
        np.testing.assert_allclose(together.output_avg[i], alone.output_avg[0], atol=2e-5)
        np.testing.assert_allclose(together.history["loss"][:, i], alone.history["loss"][:, 0], rtol=1e-5)
        for a, b in zip(jax.tree_util.tree_leaves(together.state.params), jax.tree_util.tree_leaves(alone.state.params)):
            np.testing.assert_allclose(a[i], b[0], atol=2e-5)
        # Adam's outputs hold to a looser bound: how far those +-lr moves show in the output depends on
        # the CPU's vector width (1.5e-5 on an AVX2 machine, 3.3e-5 on an AVX-512 one, the same code).
        alone_adam = dj.fit(keys[i : i + 1], TINY, cfg, ys[i : i + 1], ground_truth=ys[i : i + 1])
        np.testing.assert_allclose(together_adam.output[i], alone_adam.output[0], atol=1e-4)
        np.testing.assert_allclose(together_adam.output_avg[i], alone_adam.output_avg[0], atol=1e-4)
        np.testing.assert_allclose(together_adam.history["loss"][:, i], alone_adam.history["loss"][:, 0], rtol=1e-5)


def test_vmapped_fit_equals_separate_fits():
    # Under 'vmap' the convs become grouped convs with another summation order.
    # One step agrees to round-off; later steps drift, because Adam's first
    # updates are ~lr * sign(g) and turn round-off in the (mathematically zero)
    # gradients of the biases before BatchNorm into +-lr moves, which the tiny
    # BatchNorm windows of a 16x16 net amplify. The loss trajectories still agree.
    cfg = dataclasses.replace(FAST, batch_mode="vmap", num_steps=1)
    ys = _images(3)
    keys = jax.random.split(jax.random.key(3), 3)
    problem, state, data = dj.prepare(keys, TINY, cfg, ys)
    state, hist = dj.run(problem, state, data, num_steps=4)
    for i in range(3):
        p1, s1, d1 = dj.prepare(keys[i : i + 1], TINY, cfg, ys[i : i + 1])
        s1, h1 = dj.run(p1, s1, d1, num_steps=1)
        np.testing.assert_allclose(h1["loss"][0, 0], hist["loss"][0, i], rtol=1e-6)
        s1_rest, h1_rest = dj.run(p1, s1, d1, num_steps=3)
        np.testing.assert_allclose(h1_rest["loss"][:, 0], hist["loss"][1:, i], rtol=1e-3)
    one_step = dj.prepare(keys, TINY, cfg, ys)
    s_all, _ = dj.run(*one_step, num_steps=1)
    out_all = dj.readout(one_step[0], s_all, one_step[2])
    for i in range(3):
        p1, s1, d1 = dj.prepare(keys[i : i + 1], TINY, cfg, ys[i : i + 1])
        s1, _ = dj.run(p1, s1, d1, num_steps=1)
        np.testing.assert_allclose(out_all[i], dj.readout(p1, s1, d1)[0], atol=1e-4)


def test_restarts_are_independent_and_shaped():
    r = dj.fit(jax.random.key(0), TINY, FAST, _images(2), restarts=3)
    assert r.output.shape == (2, 3, 16, 16, 3)
    assert r.history["loss"].shape == (4, 2, 3)
    assert not np.allclose(r.output[0, 0], r.output[0, 1])
    assert r.restored.shape == (2, 16, 16, 3)


def test_second_chunk_does_not_recompile():
    cfg = dataclasses.replace(FAST, num_steps=7, chunk_size=3)  # 3 chunks, the last one partial
    r = dj.fit(jax.random.key(0), TINY, cfg, _images(1))
    fn = problem_lib.chunk_fn(r.problem)
    assert fn._cache_size() == 1
    assert r.history["loss"].shape[0] == 7
    assert int(r.state.step[0]) == 7
    dj.fit(jax.random.key(1), TINY, cfg, _images(1, seed=1))  # a new fit of the same problem
    assert fn._cache_size() == 1


def test_same_seed_same_result_and_different_seed_differs():
    a = dj.fit(jax.random.key(5), TINY, FAST, _images(1))
    b = dj.fit(jax.random.key(5), TINY, FAST, _images(1))
    c = dj.fit(jax.random.key(6), TINY, FAST, _images(1))
    np.testing.assert_array_equal(a.output, b.output)
    assert not np.allclose(a.output, c.output)


def _smooth_image(size=32):
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * x), 0.5 + 0.4 * np.cos(2 * np.pi * y), 0.3 + 0.4 * x * y], -1)
    return img.astype(np.float32)


# Slow: the default run already checks this end to end (the quick denoising
# experiment in test_experiments.py and `dip-jax demo --quick` in test_cli.py).
@pytest.mark.slow
def test_denoising_beats_the_noisy_input():
    clean = _smooth_image(32)
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25 / 255, clean.shape), 0, 1).astype(np.float32)
    net = nets.narrow(nets.preset("default", num_input_channels=8), width=16, scales=3)
    cfg = dj.FitConfig(num_steps=250, learning_rate=0.01, reg_noise_std=1 / 30, ema_decay=0.99, chunk_size=50)
    r = dj.fit(jax.random.key(0), net, cfg, noisy, ground_truth=clean)
    noisy_psnr = float(metrics.psnr(noisy, clean))
    restored_psnr = float(metrics.psnr(r.restored[0], clean))
    assert restored_psnr > noisy_psnr + 3.0, (noisy_psnr, restored_psnr)
    assert r.history["psnr_gt_avg"].shape == (250, 1, 1)


def test_inpainting_operator_and_optimising_the_input():
    ys = _images(2)
    mask = operators.bernoulli_mask(jax.random.key(1), (2, 16, 16, 1), 0.5)
    cfg = dataclasses.replace(FAST, opt_over="net,input", tv_weight=1e-3)
    _, start, _ = dj.prepare(jax.random.key(0), TINY, cfg, ys * mask, op=operators.Mask(), op_args=mask)
    r = dj.fit(jax.random.key(0), TINY, cfg, ys * mask, op=operators.Mask(), op_args=mask)
    assert np.all(np.isfinite(r.output))
    # The same key gives the same starting input, which the fit moved.
    assert not np.array_equal(r.state.z, start.z)


def test_input_only_optimisation_keeps_net_fixed():
    cfg = dataclasses.replace(FAST, opt_over="input")
    problem, state, data = dj.prepare(jax.random.key(0), TINY, cfg, _images(1))
    new, _ = dj.run(problem, state, data, num_steps=2)
    for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(new.params)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(state.z, new.z)


# Slow (~60 s on 2 cores, two compiles): CI runs it in .ci/run's second step.
@pytest.mark.slow
def test_lbfgs_after_adam_warmup_and_custom_optax():
    cfg = dataclasses.replace(FAST, optimizer="lbfgs", lbfgs_warmup_steps=2, learning_rate=0.1)
    r = dj.fit(jax.random.key(0), TINY, cfg, _images(1))
    assert np.all(np.isfinite(r.history["loss"]))
    r2 = dj.fit(jax.random.key(0), TINY, FAST, _images(1), optimizer=optax.sgd(0.1))
    assert np.all(np.isfinite(r2.output))


@pytest.mark.parametrize("make", [lambda: optax.adam(0.01), lambda: optax.lbfgs(0.1, linesearch=None)])
def test_optimiser_over_flat_vector_matches_it_over_the_pytree(make):
    rng = np.random.default_rng(0)
    params = {"a": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "b": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}
    grads = [jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params) for _ in range(3)]
    tree_tx, flat_tx = make(), optim.over_flat_vector(make())

    def run(tx, jit):
        update = jax.jit(tx.update) if jit else tx.update
        p, state, out = params, tx.init(params), []
        for g in grads:
            u, state = update(g, state, p)
            p = optax.apply_updates(p, u)
            out.append(p)
        return out, state

    want, _ = run(tree_tx, jit=False)
    for jit in (False, True):
        got, state = run(flat_tx, jit)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # One vector of moments (17 numbers), not one per leaf (L-BFGS: a history of 10 of them).
    assert {x.shape for x in jax.tree_util.tree_leaves(state) if x.ndim} <= {(17,), (10, 17), (10,)}
    # Under vmap every item gets what it gets alone.
    item = jax.tree_util.tree_map(lambda a: 2 * a, params)
    g_item = jax.tree_util.tree_map(lambda a: -a, grads[0])
    stack = lambda a, b: jnp.stack([a, b])  # noqa: E731
    batch = jax.tree_util.tree_map(stack, params, item)
    g_batch = jax.tree_util.tree_map(stack, grads[0], g_item)
    u_batch, _ = jax.vmap(lambda g, p: flat_tx.update(g, flat_tx.init(p), p))(g_batch, batch)
    u_alone, _ = flat_tx.update(g_item, flat_tx.init(item), item)
    for a, b in zip(jax.tree_util.tree_leaves(u_batch), jax.tree_util.tree_leaves(u_alone)):
        np.testing.assert_allclose(a[1], b, rtol=1e-6, atol=1e-6)


def test_builtin_optimiser_state_is_flat_and_a_custom_one_sees_the_pytree():
    _, state, _ = dj.prepare(jax.random.key(0), TINY, FAST, _images(1))
    num_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    assert isinstance(state.opt_state, optim.FlatVectorState)
    assert state.opt_state.inner[0].mu.shape == (1, num_params)
    _, state, _ = dj.prepare(jax.random.key(0), TINY, FAST, _images(1), optimizer=optax.adam(0.01))
    mu = state.opt_state[0].mu["net"]
    assert jax.tree_util.tree_structure(mu) == jax.tree_util.tree_structure(state.params)


def test_large_fits_release_the_initialisers_code_and_get_the_same_state(monkeypatch):
    problem, kept, _ = dj.prepare(jax.random.key(0), TINY, FAST, _images(1))
    init = problem_lib.init_fn(problem_lib.init_key(problem), (16, 16), False, False)
    assert init._cache_size() >= 1  # other tests may have compiled it for other batch sizes
    monkeypatch.setattr(api, "RELEASE_INIT_CODE_ABOVE_BYTES", 0)
    _, released, _ = dj.prepare(jax.random.key(0), TINY, FAST, _images(1))
    assert init._cache_size() == 0

    def plain(a):
        return np.asarray(jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a)

    for a, b in zip(jax.tree_util.tree_leaves(kept), jax.tree_util.tree_leaves(released)):
        np.testing.assert_array_equal(plain(a), plain(b))


def test_backtracking_restores_saved_parameters():
    cfg = dataclasses.replace(FAST, backtrack=True, reg_noise_std=0.0)
    problem, state, data = dj.prepare(jax.random.key(0), TINY, cfg, _images(1))
    # Pretend the last saved copy fitted far better than anything now: the step must fall back.
    state = state._replace(backup_psnr=jnp.full_like(state.backup_psnr, 100.0))
    new, records = dj.run(problem, state, data, num_steps=1)
    assert bool(records["backtracked"][0, 0])
    assert int(new.num_backtracks[0]) == 1
    for a, b in zip(jax.tree_util.tree_leaves(state.backup["net"]), jax.tree_util.tree_leaves(new.params)):
        np.testing.assert_array_equal(a, b)


def test_param_noise_changes_the_trajectory():
    a = dj.fit(jax.random.key(0), TINY, FAST, _images(1))
    b = dj.fit(jax.random.key(0), TINY, dataclasses.replace(FAST, param_noise=True), _images(1))
    assert not np.allclose(a.output, b.output)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="at least 8x8"):
        dj.fit(jax.random.key(0), TINY, FAST, _images(1, size=4))
    with pytest.raises(ValueError, match="multiples of 8"):
        dj.fit(jax.random.key(0), TINY, FAST, _images(1, size=12))
    with pytest.raises(ValueError, match="NaN"):
        bad = _images(1)
        bad[0, 0, 0, 0] = np.nan
        dj.fit(jax.random.key(0), TINY, FAST, bad)
    with pytest.raises(ValueError, match="channels"):
        dj.fit(jax.random.key(0), TINY, FAST, _images(1, channels=1))
    with pytest.raises(ValueError, match="mask"):
        dj.fit(jax.random.key(0), TINY, FAST, _images(1), op=operators.Mask(), op_args=np.ones((1, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match="keys"):
        dj.fit(jax.random.split(jax.random.key(0), 3), TINY, FAST, _images(2))
    with pytest.raises(ValueError, match="ground_truth"):
        dj.fit(jax.random.key(0), TINY, FAST, _images(1), ground_truth=_images(1, size=8))
    with pytest.raises(ValueError, match="learning_rate"):
        dj.FitConfig(learning_rate=0)
    with pytest.raises(ValueError, match="opt_over"):
        dj.FitConfig(opt_over="weights")


def test_cpu_compile_options_unknown_to_xla_are_dropped_with_a_warning():
    with pytest.warns(RuntimeWarning, match="rejects the compile option xla_cpu_no_such_option=True"):
        options = runtime_compile.supported_options((("xla_cpu_no_such_option", True), ("xla_cpu_use_fusion_emitters", False)))
    assert options == {"xla_cpu_use_fusion_emitters": False}


def test_cpu_compile_options_leave_what_xla_flags_sets_to_it(monkeypatch):
    monkeypatch.setattr(runtime_compile, "CPU_COMPILER_OPTIONS",
                        {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1})
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    assert runtime_compile.cpu_compiler_options() == {"xla_cpu_use_fusion_emitters": False}
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x --xla_cpu_use_fusion_emitters")  # a bare boolean flag
    assert runtime_compile.cpu_compiler_options() == {"xla_backend_optimization_level": 1}
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters_extra=1")  # another flag with a longer name
    assert runtime_compile.cpu_compiler_options() == {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1}
    monkeypatch.setattr(runtime_compile, "CPU_COMPILER_OPTIONS", {})
    assert runtime_compile.cpu_compiler_options() == {}


def test_code_run_once_compiles_without_llvm_optimisation_unless_xla_flags_says_otherwise(monkeypatch):
    monkeypatch.setattr(runtime_compile, "CPU_COMPILER_OPTIONS",
                        {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1})
    monkeypatch.setattr(runtime_compile, "CPU_RUN_ONCE_OPTIONS", {"xla_backend_optimization_level": 0})
    monkeypatch.setenv("XLA_FLAGS", "")
    assert runtime_compile.cpu_compiler_options(run_once=True) == {
        "xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0}
    assert runtime_compile.cpu_compiler_options() == {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1}
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=2")
    assert runtime_compile.cpu_compiler_options(run_once=True) == {"xla_cpu_use_fusion_emitters": False}
