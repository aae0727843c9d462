"""Image quality metrics: PSNR, the super-resolution Y-channel PSNR, SSIM.

Contract: images are float arrays (..., H, W, C) in [0, 1] (any leading batch
axes, e.g. (H, W, C) or (N, H, W, C)); metrics reduce over H, W, C and keep
the leading axes, returning float32 dB (PSNR) or a unitless index (SSIM).
Pure jnp: usable under jit and vmap. Identical images give PSNR = inf.
"""

from __future__ import annotations

import dm_pix
import jax
import jax.numpy as jnp

# ITU-R BT.601 luma for R, G, B in [0, 1], giving Y in [16, 235] (MATLAB's rgb2ycbcr).
_Y_OFFSET = 16.0
_Y_WEIGHTS = (65.481, 128.553, 24.966)


def _check_pair(a, b, name: str) -> tuple[jax.Array, jax.Array]:
    a = jnp.asarray(a)
    b = jnp.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"{name}: images must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim < 3:
        raise ValueError(f"{name}: images must be (..., H, W, C), got shape {a.shape}; "
                         f"add a channel axis with x[..., None]")
    return a, b


def psnr(a: jax.Array, b: jax.Array, *, data_range: float = 1.0) -> jax.Array:
    """`10 log10(data_range**2 / mean((a - b)**2))` per image (as skimage's peak_signal_noise_ratio)."""
    a, b = _check_pair(a, b, "psnr")
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range!r} (1.0 for [0, 1] images)")
    diff = a.astype(jnp.float32) - b.astype(jnp.float32)
    mse = jnp.mean(jnp.square(diff), axis=(-3, -2, -1))
    return 10.0 * jnp.log10(data_range**2 / mse)


def rgb_to_y(x: jax.Array) -> jax.Array:
    """BT.601 luma of RGB `x` (..., H, W, 3) in [0, 1] -> (..., H, W, 1) in [16/255, 235/255].

    `Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255`, MATLAB's `rgb2ycbcr` on
    double images (no rounding to 8 bits).
    """
    x = jnp.asarray(x)
    if x.ndim < 3 or x.shape[-1] != 3:
        raise ValueError(f"rgb_to_y needs (..., H, W, 3) RGB, got shape {x.shape}")
    weights = jnp.asarray(_Y_WEIGHTS, dtype=jnp.float32)
    y = _Y_OFFSET + jnp.einsum("...c,c->...", x.astype(jnp.float32), weights,
                               precision=jax.lax.Precision.HIGHEST)
    return (y / 255.0)[..., None]


def psnr_y(a: jax.Array, b: jax.Array, *, border: int = 4) -> jax.Array:
    """The super-resolution protocol: PSNR of the BT.601 Y channel, `border` px cropped per side.

    RGB inputs are converted with `rgb_to_y`; single-channel inputs are used as
    they are (as the MATLAB SR evaluation scripts do for greyscale images).
    The peak is 255 on Y's 0..255 scale, i.e. 1 on the [0, 1] scale used here.
    """
    a, b = _check_pair(a, b, "psnr_y")
    if a.shape[-1] not in (1, 3):
        raise ValueError(f"psnr_y needs RGB (C=3) or greyscale (C=1) images, got C={a.shape[-1]}")
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border!r} (the paper crops 4 px)")
    h, w = a.shape[-3], a.shape[-2]
    if 2 * border >= min(h, w):
        raise ValueError(f"border {border} leaves nothing of a {h}x{w} image; use a smaller border")
    if a.shape[-1] == 3:
        a, b = rgb_to_y(a), rgb_to_y(b)
    crop = (..., slice(border, h - border), slice(border, w - border), slice(None))
    return psnr(a[crop], b[crop], data_range=1.0)


def ssim(a: jax.Array, b: jax.Array, *, data_range: float = 1.0) -> jax.Array:
    """Mean SSIM per image (dm-pix: 11x11 Gaussian window, sigma 1.5, k1 0.01, k2 0.03).

    Works for any channel count (RGB, greyscale); equals skimage's
    `structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, channel_axis=-1)` up to float32 rounding.
    """
    a, b = _check_pair(a, b, "ssim")
    if min(a.shape[-3], a.shape[-2]) < 11:
        raise ValueError(f"ssim's 11x11 window needs images of at least 11x11, got {a.shape[-3:-1]}")
    # dm-pix takes (H, W, C) or (N, H, W, C): fold any leading axes into one.
    lead, image = a.shape[:-3], a.shape[-3:]
    value = dm_pix.ssim(a.reshape((-1,) + image).astype(jnp.float32),
                        b.reshape((-1,) + image).astype(jnp.float32), max_val=data_range)
    return value.reshape(lead)
