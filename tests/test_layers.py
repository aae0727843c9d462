"""The CPU kernel forms (dip_jax._cpu_kernels) against the plain JAX ops they stand for.

With the CPU kernels on, `layers.conv2d`, `batch_norm_act`, `reflect_pad`
and a BatchNorm -> Conv pair in `layers.chain` run custom forwards and
hand-written gradients; they must give the same numbers as XLA's own ops and
their autodiff for every stride, kernel size, padding and odd image size the
generators use, eagerly, under jit and under vmap.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from dip_jax import _cpu_kernels, layers

DN = ("NHWC", "HWIO", "NHWC")


def _reference(x, w, stride, padding):
    return lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=DN)


@pytest.mark.parametrize(
    "size,k,stride,pad",
    [
        ((8, 8), 3, 1, 1),
        ((8, 8), 3, 1, 0),  # reflection-padded convs reach conv2d unpadded
        ((9, 7), 3, 1, 0),
        ((9, 7), 3, 2, 0),
        ((8, 8), 3, 2, 1),
        ((10, 10), 5, 1, 2),
        ((11, 9), 5, 2, 0),
        ((6, 5), 1, 1, 0),
        ((7, 7), 1, 2, 0),
    ],
)
def test_cpu_conv_and_its_gradients_match_xla(size, k, stride, pad):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, *size, 5)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(k, k, 5, 4)).astype(np.float32))
    padding = ((pad, pad), (pad, pad))

    def loss(fn, x, w):
        y = fn(x, w, stride, padding)
        return jnp.sum(y * jnp.cos(y)), y  # a cotangent that is not uniform

    (l_ref, y_ref), g_ref = jax.value_and_grad(lambda x, w: loss(_reference, x, w), (0, 1), has_aux=True)(x, w)
    with _cpu_kernels.use(True):
        (l_cpu, y_cpu), g_cpu = jax.jit(
            jax.value_and_grad(lambda x, w: loss(layers.conv2d, x, w), (0, 1), has_aux=True)
        )(x, w)
    assert y_cpu.shape == y_ref.shape
    np.testing.assert_allclose(y_cpu, y_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(g_cpu[0], g_ref[0], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(g_cpu[1], g_ref[1], rtol=1e-4, atol=1e-3)


def test_cpu_conv_gradients_under_vmap():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(3, 1, 8, 8, 4)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 4, 2)).astype(np.float32))

    def grads(fn):
        one = jax.grad(lambda x, w: jnp.sum(fn(x, w, 1, ((0, 0), (0, 0))) ** 2), (0, 1))
        return jax.jit(jax.vmap(one))(x, w)

    with _cpu_kernels.use(True):
        got = grads(layers.conv2d)
    for got, want in zip(got, grads(_reference)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def _bn_act_reference(x, scale, offset, act, eps=1e-5):
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    return layers.activation(act, (x - mean) * (lax.rsqrt(var + eps) * scale) + offset)


@pytest.mark.parametrize("act", layers.ACTIVATIONS)
def test_batch_norm_act_gradients_match_autodiff(act):
    """The hand-written BatchNorm+activation backward (inputs only kept) equals autodiff: eager, jit and vmap."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(1.0, 2.0, size=(3, 1, 6, 5, 4)).astype(np.float32))
    scale = jnp.asarray(rng.uniform(0.5, 1.5, size=(3, 4)).astype(np.float32))
    offset = jnp.asarray(rng.normal(size=(3, 4)).astype(np.float32))

    def grads(fn):
        def loss(x, s, o):
            y = fn(x, s, o)
            return jnp.sum(y * jnp.cos(y))

        return jax.grad(loss, (0, 1, 2))

    fused = grads(lambda x, s, o: layers.batch_norm_act(x, s, o, 1e-5, act))
    want = jax.vmap(grads(lambda x, s, o: _bn_act_reference(x, s, o, act)))(x, scale, offset)
    with _cpu_kernels.use(True):
        eager = [fused(x[i], scale[i], offset[i]) for i in range(3)]
        jitted = [jax.jit(fused)(x[i], scale[i], offset[i]) for i in range(3)]
        vmapped = jax.jit(jax.vmap(fused))(x, scale, offset)
        y = layers.batch_norm_act(x[0], scale[0], offset[0], 1e-5, act)
    for k in range(3):
        for i in range(3):
            np.testing.assert_allclose(eager[i][k], want[k][i], rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(jitted[i][k], want[k][i], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(vmapped[k], want[k], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(y, _bn_act_reference(x[0], scale[0], offset[0], act))


class _NormThenConv(nn.Module):
    pad: str
    k: int
    stride: int

    @nn.compact
    def __call__(self, x):
        bn = layers.BatchNorm(act="LeakyReLU", name="bn")
        return layers.chain(bn, layers.Conv(3, self.k, self.stride, False, self.pad, name="conv"))(x)


@pytest.mark.parametrize("pad,k,stride", [("reflection", 3, 1), ("zero", 3, 1), ("zero", 1, 1), ("reflection", 3, 2)])
def test_chained_batch_norm_and_conv_match_autodiff(pad, k, stride):
    """BatchNorm -> Conv in `chain` (fused: only the BatchNorm's input kept) equals the plain composition: eager, jit, vmap."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(0.5, 1.5, size=(2, 1, 9, 8, 4)).astype(np.float32))
    scale = jnp.asarray(rng.uniform(0.5, 1.5, size=(2, 4)).astype(np.float32))
    offset = jnp.asarray(rng.normal(size=(2, 4)).astype(np.float32))
    kernel = jnp.asarray(rng.normal(size=(2, k, k, 4, 3)).astype(np.float32))
    module = _NormThenConv(pad, k, stride)
    stats = {"bn": {"mean": jnp.zeros(4), "var": jnp.ones(4)}}

    def chained(x, s, o, w):
        params = {"bn": {"scale": s, "bias": o}, "conv": {"kernel": w}}
        return module.apply({"params": params, "batch_stats": stats}, x)

    def grads(fn):
        def loss(*args):
            y = fn(*args)
            return jnp.sum(y * jnp.cos(y))

        return jax.grad(loss, (0, 1, 2, 3))

    def plain(x, s, o, w):
        u = _bn_act_reference(x, s, o, "LeakyReLU")
        p = (k - 1) // 2
        if pad == "reflection":
            return _reference(jnp.pad(u, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect"), w, stride, ((0, 0), (0, 0)))
        return _reference(u, w, stride, ((p, p), (p, p)))

    want = jax.vmap(grads(plain))(x, scale, offset, kernel)
    fused = grads(chained)
    with _cpu_kernels.use(True):
        assert "name=norm_act_conv" in str(jax.make_jaxpr(chained)(x[0], scale[0], offset[0], kernel[0]))
        got_vmap = jax.jit(jax.vmap(fused))(x, scale, offset, kernel)
        got_each = [(fused(*args), jax.jit(fused)(*args)) for args in zip(x, scale, offset, kernel)]
    for i in range(2):
        for got in got_each[i]:
            for a in range(4):
                np.testing.assert_allclose(got[a], want[a][i], rtol=1e-4, atol=2e-4)
    for a in range(4):
        np.testing.assert_allclose(got_vmap[a], want[a], rtol=1e-4, atol=2e-4)


def test_without_cpu_kernels_layers_are_the_plain_ops():
    """With the switch off (as on a GPU) no custom form is traced, and the net's values and gradients are the same."""
    from dip_jax import nets

    cfg = nets.narrow(nets.preset("default"), width=8, scales=1)
    module = nets.build_generator(cfg)
    z = jax.random.uniform(jax.random.key(0), (1, 8, 8, cfg.num_input_channels)) * 0.1
    variables = module.init(jax.random.key(1), z)

    results = {}
    for flag in (True, False):
        # A new function per setting: jax caches traces by function, and the switch is read when tracing.
        def loss(params):
            out, _ = module.apply({**variables, "params": params}, z, mutable=["batch_stats"])
            return jnp.mean(out**2)

        step = jax.value_and_grad(loss)
        with _cpu_kernels.use(flag):
            jaxpr = str(jax.make_jaxpr(loss)(variables["params"]))
            assert ("custom_vjp_call" in jaxpr) == flag
            results[flag] = jax.jit(step)(variables["params"])
    np.testing.assert_allclose(results[True][0], results[False][0], rtol=1e-6)
    for got, want in zip(jax.tree_util.tree_leaves(results[True][1]), jax.tree_util.tree_leaves(results[False][1])):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape,p", [((1, 8, 8, 3), 1), ((2, 9, 6, 2), 2), ((1, 5, 7, 4), 3)])
def test_reflect_pad_matches_numpy_and_its_gradient_matches_autodiff(shape, p):
    rng = np.random.default_rng(p)
    x = jnp.asarray(rng.normal(size=shape).astype(np.float32))
    padded_shape = (shape[0], shape[1] + 2 * p, shape[2] + 2 * p, shape[3])
    g = jnp.asarray(rng.normal(size=padded_shape).astype(np.float32))
    with _cpu_kernels.use(True):
        padded = layers.reflect_pad(x, p)
    np.testing.assert_array_equal(
        padded, np.pad(np.asarray(x), ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
    )

    def grad_of(pad_fn):
        return lambda x, g: jax.vjp(pad_fn, x)[1](g)[0]

    want = grad_of(lambda x: jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect"))(x, g)
    got = grad_of(lambda x: layers.reflect_pad(x, p))
    with _cpu_kernels.use(True):
        np.testing.assert_allclose(got(x, g), want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(jax.jit(got)(x, g), want, rtol=1e-6, atol=1e-6)
        batched = jax.vmap(got)(jnp.stack([x, 2 * x]), jnp.stack([g, -g]))
    np.testing.assert_allclose(batched[1], -want, rtol=1e-6, atol=1e-6)
