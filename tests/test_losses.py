"""dip_jax.losses: MSE and the original's total variation (values, gradients, eager = jit = vmap)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dip_jax import losses


def original_tv_loss(x_nchw, beta=0.5):
    """The original `tv_loss` on an NCHW array, in float64 numpy."""
    dh = (x_nchw[:, :, :, 1:] - x_nchw[:, :, :, :-1]) ** 2
    dw = (x_nchw[:, :, 1:, :] - x_nchw[:, :, :-1, :]) ** 2
    return np.sum((dh[:, :, :-1] + dw[:, :, :, :-1]) ** beta)


def images(seed, shape):
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def test_mse_is_mean_over_all_elements():
    a, b = images(0, (2, 5, 4, 3)), images(1, (2, 5, 4, 3))
    np.testing.assert_allclose(losses.mse(a, b), np.mean((a.astype(np.float64) - b) ** 2), rtol=1e-6)
    mask = (images(2, (2, 5, 4, 1)) > 0.5).astype(np.float32)
    masked = losses.mse(a * mask, b * mask)
    np.testing.assert_allclose(masked, np.sum(((a - b) * mask) ** 2) / a.size, rtol=1e-6)


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_total_variation_matches_original(beta):
    x = images(3, (2, 7, 6, 3))
    expected = original_tv_loss(np.transpose(x, (0, 3, 1, 2)).astype(np.float64), beta)
    np.testing.assert_allclose(losses.total_variation(x, beta=beta), expected, rtol=1e-5)


def test_total_variation_matches_torch_gradient():
    torch = pytest.importorskip("torch")
    x = images(4, (1, 6, 5, 2))
    xt = torch.tensor(np.transpose(x, (0, 3, 1, 2)), requires_grad=True)
    dh = torch.pow(xt[:, :, :, 1:] - xt[:, :, :, :-1], 2)
    dw = torch.pow(xt[:, :, 1:, :] - xt[:, :, :-1, :], 2)
    torch.sum(torch.pow(dh[:, :, :-1] + dw[:, :, :, :-1], 0.5)).backward()
    ours = jax.grad(losses.total_variation)(jnp.asarray(x))
    np.testing.assert_allclose(ours, np.transpose(xt.grad.numpy(), (0, 2, 3, 1)), rtol=1e-4, atol=1e-5)


def test_total_variation_flat_regions_have_finite_zero_gradient():
    x = np.zeros((1, 6, 6, 1), np.float32)
    x[0, :, 3:] = 1.0  # one vertical edge, flat elsewhere
    value = losses.total_variation(x)
    np.testing.assert_allclose(value, 5.0)  # 5 rows in the (H-1, W-1) region cross the edge once
    grad = np.asarray(jax.grad(losses.total_variation)(jnp.asarray(x)))
    assert np.all(np.isfinite(grad))
    assert grad[0, :, 0].sum() == 0  # far from the edge nothing pulls
    constant_grad = jax.grad(losses.total_variation)(jnp.full((1, 4, 4, 3), 0.5))
    np.testing.assert_array_equal(constant_grad, 0.0)


@pytest.mark.parametrize("loss", [lambda a, b: losses.mse(a, b), lambda a, b: losses.total_variation(a - b)])
def test_losses_eager_jit_vmap(loss):
    a, b = images(5, (3, 1, 6, 5, 3)), images(6, (3, 1, 6, 5, 3))
    eager = jnp.stack([loss(a[i], b[i]) for i in range(3)])
    np.testing.assert_allclose(jax.jit(jax.vmap(loss))(a, b), eager, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(loss)(a, b), eager, rtol=1e-6)
    np.testing.assert_allclose(jnp.stack([jax.jit(loss)(a[i], b[i]) for i in range(3)]), eager, rtol=1e-6)


@pytest.mark.parametrize("call,message", [
    (lambda: losses.mse(np.zeros((1, 4, 4, 3)), np.zeros((1, 4, 4, 1))), "same shape"),
    (lambda: losses.total_variation(np.zeros((4, 4, 3))), r"\(N, H, W, C\)"),
    (lambda: losses.total_variation(np.zeros((1, 4, 4, 3)), beta=0), "beta must be positive"),
])
def test_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
