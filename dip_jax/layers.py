"""Building blocks of the generators, numerically matching the original's PyTorch layers.

Contract:
- Activations are NHWC float32. Every layer works on one image (N = 1) or a
  small batch that shares statistics; fitting several images or restarts at
  once is done with `jax.vmap` over the generator (or `lax.map`), so each
  image keeps its own BatchNorm statistics.
- Initialisation follows PyTorch's defaults (DIP's fitting speed depends on
  it): conv weights and biases uniform in (-1/sqrt(fan_in), 1/sqrt(fan_in)),
  `fan_in = in_channels * k * k`; BatchNorm scale 1, offset 0.
- BatchNorm always normalises with the statistics of the current batch
  (biased variance, eps 1e-5), as the original never switches to eval mode.
  Running statistics (momentum 0.1, unbiased variance, as PyTorch) are still
  tracked in the `batch_stats` collection so weights can be exported back.
- On XLA:CPU, `conv2d`, `reflect_pad`, `batch_norm_act` and each
  BatchNorm -> Conv pair in a `chain` run the custom forms of
  `dip_jax._cpu_kernels` (same values, faster and smaller backward passes);
  elsewhere they are the plain JAX ops.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dip_jax import _cpu_kernels, kernels

_DN = ("NHWC", "HWIO", "NHWC")

PAD_MODES = ("zero", "reflection")
UPSAMPLE_MODES = ("nearest", "bilinear")
DOWNSAMPLE_MODES = ("stride", "avg", "max", "lanczos2", "lanczos3")
ACTIVATIONS = ("LeakyReLU", "Swish", "ELU", "ReLU", "none")


def torch_uniform(bound: float) -> Callable:
    """PyTorch's default conv init: U(-bound, bound) with bound = 1/sqrt(fan_in)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def activation(name: str, x: jax.Array) -> jax.Array:
    if name == "LeakyReLU":
        return jnp.where(x >= 0, x, 0.2 * x)
    if name == "Swish":
        return x * jax.nn.sigmoid(x)
    if name == "ELU":
        return jax.nn.elu(x)
    if name == "ReLU":
        return jax.nn.relu(x)
    if name == "none":
        return x
    raise ValueError(f"unknown activation {name!r}; use one of {ACTIVATIONS}")


def reflect_pad(x: jax.Array, p: int) -> jax.Array:
    """PyTorch's ReflectionPad2d(p) of NHWC `x` (edge pixel not repeated)."""
    if p == 0:
        return x
    if _cpu_kernels.enabled():
        return _cpu_kernels.reflect_pad(x, p)
    return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding=((0, 0), (0, 0))) -> jax.Array:
    """Cross-correlation of NHWC `x` with an HWIO `kernel` (PyTorch's Conv2d, no bias).

    `padding` is ((top, bottom), (left, right)) zero padding.
    """
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    if _cpu_kernels.enabled():
        return _cpu_kernels.conv2d(x, kernel, int(stride), padding)
    return lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=_DN)


def batch_norm_act(x: jax.Array, scale: jax.Array, offset: jax.Array, eps: float, act: str) -> jax.Array:
    """`activation(act, (x - mean) / sqrt(var + eps) * scale + offset)` with the batch's statistics."""
    if _cpu_kernels.enabled():
        return _cpu_kernels.batch_norm_act(x, scale, offset, eps, _activation_fn(act))
    mean, var = _batch_moments(x)
    return activation(act, (x - mean) * (lax.rsqrt(var + eps) * scale) + offset)


def _activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    return functools.partial(activation, name)


class Conv(nn.Module):
    """`conv(...)` of the original: optional reflection padding, then a conv.

    `pad='zero'` lets the conv zero-pad by (k-1)//2; `pad='reflection'`
    reflection-pads by (k-1)//2 and convolves without padding.
    """

    features: int
    kernel_size: int
    stride: int = 1
    use_bias: bool = True
    pad: str = "zero"

    @nn.compact
    def __call__(self, x: "jax.Array | _PendingNorm") -> jax.Array:
        k = self.kernel_size
        in_ch = x.shape[-1]
        bound = 1.0 / math.sqrt(in_ch * k * k)
        kernel = self.param("kernel", torch_uniform(bound), (k, k, in_ch, self.features))
        conv = functools.partial(_padded_conv, stride=self.stride, pad=self.pad)
        if isinstance(x, _PendingNorm):
            y = _norm_act_conv(x, kernel, conv)
        else:
            y = conv(x, kernel)
        if self.use_bias:
            bias = self.param("bias", torch_uniform(bound), (self.features,))
            y = y + bias
        return y


def _padded_conv(x: jax.Array, kernel: jax.Array, stride: int, pad: str) -> jax.Array:
    p = (kernel.shape[0] - 1) // 2
    if pad == "reflection":
        return conv2d(reflect_pad(x, p), kernel, stride, ((0, 0), (0, 0)))
    return conv2d(x, kernel, stride, ((p, p), (p, p)))


class BatchNorm(nn.Module):
    """Training-mode BatchNorm of PyTorch (the original never calls `.eval()`).

    `act` applies an activation after the affine step (the original's
    `bn(...)` followed by `act(...)`), as one function (`batch_norm_act`).
    """

    momentum: float = 0.1
    eps: float = 1e-5
    act: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array, *, pending: bool = False) -> "jax.Array | _PendingNorm":
        """The normalised `x`; with `pending=True` (only `chain` asks) its uncomputed form for the next `Conv`."""
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        offset = self.param("bias", nn.initializers.zeros, (c,))
        running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        running_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        if not self.is_initializing() and self.is_mutable_collection("batch_stats"):
            # The same expressions as the normalisation's own statistics: XLA computes them once.
            mean, var = _batch_moments(lax.stop_gradient(x))
            n = math.prod(x.shape[:-1])
            unbiased = var * (n / max(n - 1, 1))
            m = self.momentum
            running_mean.value = (1 - m) * running_mean.value + m * mean
            running_var.value = (1 - m) * running_var.value + m * unbiased
        if pending:
            return _PendingNorm(x, scale, offset, self.eps, self.act)
        return batch_norm_act(x, scale, offset, self.eps, self.act)


def _batch_moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    return mean, jnp.mean(jnp.square(x - mean), axis=axes)


class _PendingNorm(NamedTuple):
    """A `BatchNorm` output that `chain` hands to the next `Conv` uncomputed."""

    x: jax.Array
    scale: jax.Array
    offset: jax.Array
    eps: float
    act: str

    @property
    def shape(self):
        return self.x.shape


def _norm_act_conv(n: _PendingNorm, kernel: jax.Array, conv: Callable) -> jax.Array:
    """`conv(batch_norm_act(...), kernel)`; with the CPU kernels its backward pass keeps only `n.x`."""
    if _cpu_kernels.enabled():
        return _cpu_kernels.norm_act_conv(n.x, n.scale, n.offset, kernel, n.eps, _activation_fn(n.act), conv)
    return conv(batch_norm_act(n.x, n.scale, n.offset, n.eps, n.act), kernel)


def chain(*fns: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
    """`x -> fns[-1](... fns[0](x))`, as `nn.Sequential`, for layers made in the caller's compact method.

    A `BatchNorm` directly followed by a `Conv` runs as one function, so the
    CPU kernels can recompute the normalised activations in the backward pass
    instead of keeping them (one image-sized tensor less per pair; the same
    numbers as applying the layers one by one). Write a net's
    BatchNorm -> Conv runs with `chain` when the BatchNorm's output feeds
    only that Conv.
    """

    def apply(x):
        for i, f in enumerate(fns):
            fuse = isinstance(f, BatchNorm) and i + 1 < len(fns) and isinstance(fns[i + 1], Conv)
            x = f(x, pending=True) if fuse else f(x)
        return x

    return apply


class InstanceNorm(nn.Module):
    """PyTorch InstanceNorm2d: per image and channel, biased variance, eps 1e-5."""

    affine: bool = False
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        mean = jnp.mean(x, axis=(1, 2), keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
        y = (x - mean) * lax.rsqrt(var + self.eps)
        if self.affine:
            c = x.shape[-1]
            y = y * self.param("scale", nn.initializers.ones, (c,)) + self.param(
                "bias", nn.initializers.zeros, (c,)
            )
        return y


def upsample2x(x: jax.Array, mode: str) -> jax.Array:
    """x2 upsampling as `nn.Upsample(scale_factor=2, mode)` (align_corners=False).

    Bilinear x2 with half-pixel centres is a fixed 2-tap stencil per axis:
    even outputs take 0.25*x[k-1] + 0.75*x[k], odd ones 0.75*x[k] + 0.25*x[k+1],
    with clamped edges. Writing it as a stencil rather than a general resize
    keeps it cheap and exactly PyTorch's arithmetic.
    """
    if mode == "nearest":
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    if mode == "bilinear":
        return _bilinear2x_axis(_bilinear2x_axis(x, 1), 2)
    raise ValueError(f"unknown upsample mode {mode!r}; use one of {UPSAMPLE_MODES}")


def _bilinear2x_axis(x: jax.Array, axis: int) -> jax.Array:
    n = x.shape[axis]
    prev = jnp.concatenate([lax.slice_in_dim(x, 0, 1, axis=axis), lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis=axis)
    nxt = jnp.concatenate([lax.slice_in_dim(x, 1, n, axis=axis), lax.slice_in_dim(x, n - 1, n, axis=axis)], axis=axis)
    even = 0.75 * x + 0.25 * prev
    odd = 0.75 * x + 0.25 * nxt
    stacked = jnp.stack([even, odd], axis=axis + 1)
    shape = list(x.shape)
    shape[axis] = 2 * n
    return stacked.reshape(shape)


def pool2x(x: jax.Array, mode: str) -> jax.Array:
    """`nn.AvgPool2d(2, 2)` / `nn.MaxPool2d(2, 2)` (floor on odd sizes)."""
    window = (1, 2, 2, 1)
    if mode == "avg":
        return lax.reduce_window(x, 0.0, lax.add, window, window, "VALID") * 0.25
    if mode == "max":
        return lax.reduce_window(x, -jnp.inf, lax.max, window, window, "VALID")
    raise ValueError(f"unknown pool mode {mode!r}")


def lanczos_kernel(kernel_type: str, factor: int = 2) -> np.ndarray:
    """The kernel the original's in-net `Downsampler(phase=0.5)` uses."""
    return kernels.downsampler_kernel(kernel_type, factor, phase=0.5)


class DownConv(nn.Module):
    """The first conv of a scale, with the original's downsampling variants.

    `stride`: the conv itself has stride 2. `avg`/`max`/`lanczos*`: the conv
    runs at stride 1 and is followed by 2x2 pooling or a Lanczos downsampler.

    Faithfulness: the original builds the Lanczos downsampler as a full
    `Conv2d(C, C, K)` whose weights are registered as trainable parameters (so
    they count towards `num_params` and Adam updates them). dip_jax keeps the
    Lanczos filter fixed by default (`train_lanczos=False`): the paper treats it
    as a fixed anti-aliasing filter. `train_lanczos=True` reproduces the
    original, with a (C, C, K, K)-equivalent trainable kernel initialised to the
    diagonal Lanczos kernel and a zero bias.
    """

    features: int
    kernel_size: int
    use_bias: bool = True
    pad: str = "zero"
    downsample_mode: str = "stride"
    train_lanczos: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.downsample_mode == "stride":
            return Conv(self.features, self.kernel_size, 2, self.use_bias, self.pad, name="conv")(x)
        y = Conv(self.features, self.kernel_size, 1, self.use_bias, self.pad, name="conv")(x)
        if self.downsample_mode in ("avg", "max"):
            return pool2x(y, self.downsample_mode)
        if self.downsample_mode in ("lanczos2", "lanczos3"):
            kern = jnp.asarray(lanczos_kernel(self.downsample_mode), jnp.float32)
            if not self.train_lanczos:
                return kernels.downsample(y, kern, 2, preserve_size=True)
            c = self.features
            full = self.param(
                "lanczos_kernel",
                lambda key: jnp.einsum("hw,io->hwio", kern, jnp.eye(c, dtype=jnp.float32)),
            )
            bias = self.param("lanczos_bias", nn.initializers.zeros, (c,))
            k = kern.shape[0]
            p = kernels.replication_pad_amount(k, 2)
            y = jnp.pad(y, ((0, 0), (p, p), (p, p), (0, 0)), mode="edge")
            return lax.conv_general_dilated(y, full, (2, 2), "VALID", dimension_numbers=_DN) + bias
        raise ValueError(
            f"unknown downsample mode {self.downsample_mode!r}; use one of {DOWNSAMPLE_MODES}"
        )


def lanczos_param_count(downsample_mode: str, channels: int) -> int:
    """Parameters the original registers for an in-net Lanczos downsampler."""
    if downsample_mode not in ("lanczos2", "lanczos3"):
        return 0
    k = lanczos_kernel(downsample_mode).shape[0]
    return channels * channels * k * k + channels


def center_crop_to(xs: list[jax.Array]) -> list[jax.Array]:
    """The original `Concat`: centre-crop every input to the smallest H and W."""
    h = min(x.shape[1] for x in xs)
    w = min(x.shape[2] for x in xs)
    out = []
    for x in xs:
        dh = (x.shape[1] - h) // 2
        dw = (x.shape[2] - w) // 2
        out.append(x[:, dh : dh + h, dw : dw + w, :])
    return out
