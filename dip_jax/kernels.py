"""Downsampling kernels of the original DIP and the JAX downsampler that applies them.

Contract:
- `get_kernel`, `downsampler_kernel`, `gaussian_blur_kernel` build kernels on the
  host as float64 numpy arrays of shape (K, K) summing to 1, with the same
  arithmetic as the original `models/downsampler.py` (`get_kernel` and the
  named types of `Downsampler`).
- `downsample(x, kernel, factor, *, preserve_size=True)` is a pure JAX function:
  `x` float (N, H, W, C), `kernel` (Kh, Kw) array (an argument, so it can be
  vmapped together with `x`), `factor` a static int. Each channel is
  correlated with the kernel at stride `factor` (the original's Conv2d with
  the kernel on the diagonal of the weight), after replication padding by
  `replication_pad_amount(K, factor)` when `preserve_size`. For the original's
  kernels and H, W divisible by `factor` the output is (N, H/f, W/f, C),
  except for Lanczos kernels at odd factors, where the original's padding
  gives one pixel fewer (reproduced here, not fixed).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

KERNEL_TYPES = ("lanczos", "gauss", "box")
NAMED_KERNEL_TYPES = ("lanczos2", "lanczos3", "gauss12", "gauss1sq2", "box")


def _check_factor(factor) -> int:
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}; pass e.g. factor=4")
    return int(factor)


def get_kernel(factor: int, kernel_type: str, phase: float, kernel_width: int, *,
               support: float | None = None, sigma: float | None = None) -> np.ndarray:
    """The original `get_kernel`: a float64 (K, K) kernel normalised to sum 1.

    `phase` 0.5 (half-pixel shift) gives a `(kernel_width - 1)` square kernel for
    'lanczos' and 'gauss' requests; otherwise the kernel is `kernel_width` square.
    'lanczos' needs `support`, 'gauss' needs `sigma` and phase 0, 'box' needs phase 0.5.
    """
    factor = _check_factor(factor)
    if kernel_type not in KERNEL_TYPES:
        raise ValueError(f"kernel_type {kernel_type!r} is not one of {KERNEL_TYPES}; "
                         f"for the named types ('lanczos2', ...) use downsampler_kernel")
    if phase not in (0, 0.5):
        raise ValueError(f"phase must be 0 or 0.5, got {phase!r}")
    if isinstance(kernel_width, bool) or not isinstance(kernel_width, (int, np.integer)) or kernel_width < 1:
        raise ValueError(f"kernel_width must be a positive int, got {kernel_width!r}")
    if phase == 0.5 and kernel_type != "box":
        if kernel_width < 2:
            raise ValueError("phase 0.5 needs kernel_width >= 2 (the kernel is kernel_width - 1 wide)")
        size = kernel_width - 1
    else:
        size = kernel_width
    # 1-based pixel positions, as in the original's loops.
    idx = np.arange(1, size + 1, dtype=np.float64)
    center = (kernel_width + 1.0) / 2.0

    if kernel_type == "box":
        if phase != 0.5:
            raise ValueError("the box filter is always half-phased (as in the original): pass phase=0.5")
        kernel = np.full((size, size), 1.0 / (kernel_width * kernel_width))
    elif kernel_type == "gauss":
        if not sigma:
            raise ValueError("kernel_type 'gauss' needs sigma, e.g. sigma=0.5")
        if phase == 0.5:
            raise ValueError("phase 0.5 is not implemented for 'gauss' (nor in the original): pass phase=0")
        sigma_sq = sigma * sigma
        d = (idx - center) / 2.0
        kernel = np.exp(-(d[:, None] * d[:, None] + d[None, :] * d[None, :]) / (2 * sigma_sq))
        kernel = kernel / (2.0 * np.pi * sigma_sq)
    else:
        if not support:
            raise ValueError("kernel_type 'lanczos' needs support, e.g. support=2")
        offset = 0.5 if phase == 0.5 else 0.0
        d = np.abs(idx + offset - center) / factor
        nonzero = d != 0
        safe_d = np.where(nonzero, d, 1.0)
        lobe = (support * np.sin(np.pi * safe_d) * np.sin(np.pi * safe_d / support)
                / (np.pi * np.pi * safe_d * safe_d))
        axis = np.where(nonzero, lobe, 1.0)
        kernel = axis[:, None] * axis[None, :]
    return kernel / kernel.sum()


def downsampler_kernel(kernel_type: str, factor: int, *, phase: float | None = None) -> np.ndarray:
    """The kernel of the original `Downsampler(n_planes, factor, kernel_type, phase)`.

    Named types: 'lanczos2' (support 2, width 4f+1), 'lanczos3' (support 3, width
    6f+1), 'gauss12' (width 7, sigma 1/2), 'gauss1sq2' (width 9, sigma 1/sqrt 2),
    'box' (width f). `phase=None` picks what the original's callers use: 0.5 for
    Lanczos and box, 0 for Gaussians (the only phase they support).
    """
    factor = _check_factor(factor)
    if kernel_type == "lanczos2":
        args = dict(kernel_type="lanczos", kernel_width=4 * factor + 1, support=2)
        default_phase = 0.5
    elif kernel_type == "lanczos3":
        args = dict(kernel_type="lanczos", kernel_width=6 * factor + 1, support=3)
        default_phase = 0.5
    elif kernel_type == "gauss12":
        args = dict(kernel_type="gauss", kernel_width=7, sigma=0.5)
        default_phase = 0.0
    elif kernel_type == "gauss1sq2":
        args = dict(kernel_type="gauss", kernel_width=9, sigma=1.0 / np.sqrt(2))
        default_phase = 0.0
    elif kernel_type == "box":
        args = dict(kernel_type="box", kernel_width=factor)
        default_phase = 0.5
    else:
        raise ValueError(f"kernel_type {kernel_type!r} is not one of {NAMED_KERNEL_TYPES}")
    return get_kernel(factor, phase=default_phase if phase is None else phase, **args)


def gaussian_blur_kernel(size: int, sigma: float) -> np.ndarray:
    """A centred (size, size) Gaussian blur kernel, float64, summing to 1.

    Not from the original (it has no deblurring task); a convenience for the
    `operators.Blur` forward model. Pixel offsets are measured from the centre
    (`(size - 1) / 2`), so even sizes are centred between pixels.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be positive and finite, got {sigma!r}")
    d = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    axis = np.exp(-d * d / (2.0 * sigma * sigma))
    kernel = axis[:, None] * axis[None, :]
    return kernel / kernel.sum()


def replication_pad_amount(kernel_size: int, factor: int) -> int:
    """The original's `preserve_size` padding: (K-1)//2 for odd K, (K-factor)//2 for even K."""
    if kernel_size % 2 == 1:
        return (kernel_size - 1) // 2
    return (kernel_size - factor) // 2


def downsample(x: jax.Array, kernel: jax.Array, factor: int, *, preserve_size: bool = True) -> jax.Array:
    """Depthwise stride-`factor` correlation of `x` (N, H, W, C) with `kernel` (Kh, Kw).

    With `preserve_size`, `x` is first replication ('edge') padded by
    `replication_pad_amount` on every side, as the original's `ReplicationPad2d`.
    The output has `x`'s dtype; the kernel is cast to it (the original casts its
    float64 kernel to the float32 conv weight).
    """
    factor = _check_factor(factor)
    x = jnp.asarray(x)
    kernel = jnp.asarray(kernel, dtype=x.dtype)
    if x.ndim != 4:
        raise ValueError(f"x must be (N, H, W, C), got shape {x.shape}; add a batch axis with x[None]")
    if kernel.ndim != 2:
        raise ValueError(f"kernel must be 2-D (Kh, Kw), got shape {kernel.shape}; vmap for per-image kernels")
    kh, kw = kernel.shape
    if preserve_size:
        ph = replication_pad_amount(kh, factor)
        pw = replication_pad_amount(kw, factor)
        x = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), mode="edge")
    if x.shape[1] < kh or x.shape[2] < kw:
        raise ValueError(f"kernel {kernel.shape} is larger than the (padded) image {x.shape[1:3]}; "
                         f"use a smaller kernel or a larger image")
    channels = x.shape[-1]
    rhs = jnp.broadcast_to(kernel[:, :, None, None], (kh, kw, 1, channels))
    return jax.lax.conv_general_dilated(
        x, rhs, window_strides=(factor, factor), padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels,
        # HIGHEST: keep the float32 result exact on GPUs that default to TF32.
        precision=jax.lax.Precision.HIGHEST)
