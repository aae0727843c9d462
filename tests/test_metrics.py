"""dip_jax.metrics: PSNR (vs skimage), the SR Y-channel PSNR, SSIM; eager = jit = vmap."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.color
import skimage.metrics

from dip_jax import metrics


def pair(seed, shape, noise=0.05):
    rng = np.random.default_rng(seed)
    a = rng.uniform(size=shape).astype(np.float32)
    b = np.clip(a + noise * rng.standard_normal(shape), 0, 1).astype(np.float32)
    return a, b


@pytest.mark.parametrize("shape,data_range", [((20, 17, 3), 1.0), ((16, 16, 1), 1.0), ((9, 13, 3), 2.0)])
def test_psnr_matches_skimage(shape, data_range):
    a, b = pair(0, shape)
    expected = skimage.metrics.peak_signal_noise_ratio(a.astype(np.float64), b.astype(np.float64),
                                                       data_range=data_range)
    ours = metrics.psnr(a, b, data_range=data_range)
    assert ours.shape == () and ours.dtype == jnp.float32
    np.testing.assert_allclose(float(ours), expected, atol=1e-4)


def test_psnr_identical_images_is_inf():
    a, _ = pair(1, (8, 8, 3))
    assert math.isinf(float(metrics.psnr(a, a)))


def test_rgb_to_y_matches_bt601():
    rgb = np.array([[[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]]], np.float32)
    y = np.asarray(metrics.rgb_to_y(rgb))[0, :, 0] * 255
    np.testing.assert_allclose(y, [16, 235, 16 + 65.481, 16 + 128.553, 16 + 24.966], atol=1e-4)
    a, _ = pair(2, (6, 7, 3))
    np.testing.assert_allclose(np.asarray(metrics.rgb_to_y(a))[..., 0] * 255,
                               skimage.color.rgb2ycbcr(a.astype(np.float64))[..., 0], atol=1e-4)


def test_psnr_y_hand_computed():
    h, w, border = 12, 10, 4
    a = np.zeros((h, w, 3), np.float32)
    b = np.zeros((h, w, 3), np.float32)
    b[..., 0] = 1.0  # pure red everywhere: Y differs by 65.481 on the 0..255 scale
    rng = np.random.default_rng(3)
    # Garbage in the border must be cropped away.
    for img in (a, b):
        img[:border] = rng.uniform(size=img[:border].shape)
        img[-border:] = rng.uniform(size=img[-border:].shape)
        img[:, :border] = rng.uniform(size=img[:, :border].shape)
        img[:, -border:] = rng.uniform(size=img[:, -border:].shape)
    expected = 20 * math.log10(255 / 65.481)  # 11.808 dB
    np.testing.assert_allclose(float(metrics.psnr_y(a, b, border=border)), expected, atol=1e-4)
    assert abs(float(metrics.psnr_y(a, b, border=0)) - expected) > 0.1


def test_psnr_y_greyscale_uses_the_channel_as_is():
    a, b = pair(4, (16, 16, 1))
    np.testing.assert_allclose(metrics.psnr_y(a, b, border=2), metrics.psnr(a[2:-2, 2:-2], b[2:-2, 2:-2]),
                               rtol=1e-6)


def test_ssim_identity_and_skimage():
    a, b = pair(5, (24, 20, 3), noise=0.1)
    np.testing.assert_allclose(float(metrics.ssim(a, a)), 1.0, atol=1e-6)
    expected = skimage.metrics.structural_similarity(
        a.astype(np.float64), b.astype(np.float64), data_range=1.0, channel_axis=-1,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    np.testing.assert_allclose(float(metrics.ssim(a, b)), expected, atol=1e-4)
    grey_a, grey_b = a[..., :1], b[..., :1]
    expected = skimage.metrics.structural_similarity(
        grey_a[..., 0].astype(np.float64), grey_b[..., 0].astype(np.float64), data_range=1.0,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    np.testing.assert_allclose(float(metrics.ssim(grey_a, grey_b)), expected, atol=1e-4)
    np.testing.assert_allclose(float(metrics.ssim(grey_a, grey_a)), 1.0, atol=1e-6)
    assert float(metrics.ssim(a, b)) < 0.99


@pytest.mark.parametrize("metric", [metrics.psnr, metrics.psnr_y, metrics.ssim])
@pytest.mark.parametrize("channels", [1, 3])
def test_eager_jit_vmap_and_batches(metric, channels):
    a, b = pair(6, (3, 16, 16, channels))
    a, b = jnp.asarray(a), jnp.asarray(b)
    per_image = jnp.stack([metric(a[i], b[i]) for i in range(3)])
    batched = metric(a, b)
    assert batched.shape == (3,)
    np.testing.assert_allclose(batched, per_image, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(metric)(a, b), per_image, rtol=1e-5)
    np.testing.assert_allclose(jax.vmap(metric)(a, b), per_image, rtol=1e-5)
    assert metric(a[None], b[None]).shape == (1, 3)  # any leading axes are kept


def test_rgb_to_y_eager_jit_vmap():
    a, _ = pair(7, (2, 5, 6, 3))
    eager = metrics.rgb_to_y(a)
    assert eager.shape == (2, 5, 6, 1)
    np.testing.assert_allclose(jax.jit(metrics.rgb_to_y)(a), eager, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(metrics.rgb_to_y)(a), eager, rtol=1e-6)


@pytest.mark.parametrize("call,message", [
    (lambda: metrics.psnr(np.zeros((4, 4, 3)), np.zeros((4, 4, 1))), "same shape"),
    (lambda: metrics.psnr(np.zeros((4, 4)), np.zeros((4, 4))), r"\(\.\.\., H, W, C\)"),
    (lambda: metrics.psnr(np.zeros((4, 4, 1)), np.ones((4, 4, 1)), data_range=0), "data_range"),
    (lambda: metrics.rgb_to_y(np.zeros((4, 4, 4))), "RGB"),
    (lambda: metrics.psnr_y(np.zeros((4, 4, 2)), np.zeros((4, 4, 2))), "C=2"),
    (lambda: metrics.psnr_y(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), border=4), "leaves nothing"),
    (lambda: metrics.psnr_y(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), border=-1), "border must be"),
    (lambda: metrics.ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3))), "11x11"),
])
def test_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
