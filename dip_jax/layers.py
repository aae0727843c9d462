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
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dip_jax import kernels

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


def _pad_axis(a: jax.Array, axis: int, lo: int, hi: int) -> jax.Array:
    cfg = [(0, 0, 0)] * a.ndim
    cfg[axis] = (lo, hi, 0)
    return lax.pad(a, jnp.zeros((), a.dtype), cfg)


def _reflect_parts(x: jax.Array, p: int, axis: int) -> list:
    """[(part, lo, hi)]: zero-padding each part by (lo, hi) along `axis` and summing gives the reflect pad."""
    n = x.shape[axis]
    top = lax.rev(lax.slice_in_dim(x, 1, p + 1, axis=axis), (axis,))
    bottom = lax.rev(lax.slice_in_dim(x, n - 1 - p, n - 1, axis=axis), (axis,))
    return [(top, 0, n + p), (x, p, p), (bottom, n + p, 0)]


def reflect_pad(x: jax.Array, p: int) -> jax.Array:
    """`nn.ReflectionPad2d(p)` on NHWC (the edge pixel is not repeated); needs p < H, W.

    Written as a sum of zero-padded pieces, which XLA fuses into one pass
    writing the padded array once (`jnp.pad`'s reflect mode and nested
    concatenations leave full-size intermediates).
    """
    if p == 0:
        return x
    out = None
    for rows, lo_h, hi_h in _reflect_parts(x, p, 1):
        for piece, lo_w, hi_w in _reflect_parts(rows, p, 2):
            term = _pad_axis(_pad_axis(piece, 2, lo_w, hi_w), 1, lo_h, hi_h)
            out = term if out is None else out + term
    return out


def _reflect_pad_transpose(d: jax.Array, p: int) -> jax.Array:
    """The adjoint of `reflect_pad`: fold the border's cotangent back onto the pixels it copied."""
    if p == 0:
        return d
    n_h, n_w = d.shape[1] - 2 * p, d.shape[2] - 2 * p

    def fold(a, axis, n):
        top = lax.rev(lax.slice_in_dim(a, 0, p, axis=axis), (axis,))
        bottom = lax.rev(lax.slice_in_dim(a, n + p, n + 2 * p, axis=axis), (axis,))
        return [(lax.slice_in_dim(a, p, n + p, axis=axis), 0, 0), (top, 1, n - 1 - p), (bottom, n - 1 - p, 1)]

    out = None
    for rows, lo_h, hi_h in fold(d, 1, n_h):
        for piece, lo_w, hi_w in fold(rows, 2, n_w):
            term = _pad_axis(_pad_axis(piece, 2, lo_w, hi_w), 1, lo_h, hi_h)
            out = term if out is None else out + term
    return out


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, pad: int = 0, pad_mode: str = "zero") -> jax.Array:
    """PyTorch's `Conv2d` (no bias) on NHWC `x` with an HWIO `kernel`, after padding by `pad`.

    `pad_mode` 'zero' zero-pads, 'reflection' reflection-pads (the original's
    `ReflectionPad2d` + unpadded conv). Same arithmetic on every backend; on
    CPU the convolution and its gradients are written in the forms XLA:CPU
    runs fast and the padded copy of `x` is not kept for the backward pass
    (see `_conv2d_cpu`).
    """
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode {pad_mode!r} is not one of {PAD_MODES}")
    stride, pad = int(stride), int(pad)
    k_h, k_w = kernel.shape[:2]
    if _use_cpu_forms() and 0 <= pad <= min(k_h, k_w) - 1:
        return _conv2d_cpu(x, kernel, stride, pad, pad_mode)
    if pad_mode == "reflection":
        x, padding = reflect_pad(x, pad), ((0, 0), (0, 0))
    else:
        padding = ((pad, pad), (pad, pad))
    return lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=_DN)


def _use_cpu_forms() -> bool:
    return jax.default_backend() == "cpu"


def _conv_fast_form(x, w, padding, *, stride=1, lhs_dilation=1):
    """A convolution in the form XLA:CPU hands to its fast conv library.

    Two measured quirks of XLA:CPU (jax 0.10) shape this. Only convolutions in
    the canonical NHWC/HWIO layout reach the fast library kernels, and XLA
    rewrites other layouts into it only in the entry computation, not inside
    the `scan`/`cond`/`map` bodies the engine runs steps in (autodiff's
    gradient convolutions are not canonical: they ran 5-10x slower). And a
    3x3 convolution with no padding at all runs about 3x slower there than one
    with some, so an unpadded one gets one extra zero row whose output row is
    dropped (0.2-1.5% more work at 64-512 px). A 1x1 convolution is a matrix
    product.
    """
    k_h, k_w = w.shape[:2]
    if k_h == 1 and k_w == 1 and stride == 1 and lhs_dilation == 1 and padding == ((0, 0), (0, 0)):
        return lax.dot_general(x, w[0, 0], (((3,), (0,)), ((), ())))
    conv = functools.partial(
        lax.conv_general_dilated, window_strides=(stride, stride),
        lhs_dilation=(lhs_dilation, lhs_dilation), dimension_numbers=_DN,
    )
    if padding == ((0, 0), (0, 0)):
        dilated_h = (x.shape[1] - 1) * lhs_dilation + 1
        h_out = (dilated_h - k_h) // stride + 1
        return conv(x, w, padding=((0, 1), (0, 0)))[:, :h_out]
    return conv(x, w, padding=padding)


def _padded_input(x, pad, pad_mode):
    """(the input the convolution slides over, the zero padding the convolution adds)."""
    if pad_mode == "reflection":
        return reflect_pad(x, pad), ((0, 0), (0, 0))
    return x, ((pad, pad), (pad, pad))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv2d_cpu(x, w, stride, pad, pad_mode):
    xp, padding = _padded_input(x, pad, pad_mode)
    return _conv_fast_form(xp, w, padding, stride=stride)


def _conv2d_cpu_fwd(x, w, stride, pad, pad_mode):
    # Residuals: the unpadded input (usually alive anyway as the previous
    # layer's output), not the padded copy; the backward pass re-pads.
    return _conv2d_cpu(x, w, stride, pad, pad_mode), (x, w)


def _conv2d_cpu_bwd(stride, pad, pad_mode, residuals, g):
    """Both gradients in fast forms.

    d/dx: the cotangent, dilated by the stride, correlated with the flipped
    kernel with in/out swapped (then folded through the reflection pad).
    d/dw: one matrix product per kernel tap between the shifted input and the
    cotangent, contracting over all pixels, taps one after another in a loop so
    only one shifted copy of the input exists at a time (a convolution with
    the pixels as its window, autodiff's form, runs 2-5x slower).
    """
    x, w = residuals
    xp, padding = _padded_input(x, pad, pad_mode)
    k_h, k_w, c_in, c_out = w.shape
    sizes_in, sizes_out = xp.shape[1:3], g.shape[1:3]
    if (k_h, k_w, stride) == (1, 1, 1) and padding == ((0, 0), (0, 0)):
        dx = lax.dot_general(g, w[0, 0], (((3,), (1,)), ((), ())))
        dw = lax.dot_general(x, g, (((0, 1, 2), (0, 1, 2)), ((), ())))[None, None]
        return dx, dw
    pad_dx = tuple(
        (k - 1 - lo, n - 1 - (m - 1) * stride + lo)
        for (lo, _), k, n, m in zip(padding, (k_h, k_w), sizes_in, sizes_out)
    )
    w_flipped = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    dx = _conv_fast_form(g, w_flipped, pad_dx, lhs_dilation=stride)
    if pad_mode == "reflection":
        dx = _reflect_pad_transpose(dx, pad)

    # Zero-pad (or crop, where the stride leaves the last rows unused) to exactly the extent the taps read.
    extent = [(m - 1) * stride + k for m, k in zip(sizes_out, (k_h, k_w))]
    xp = lax.pad(
        xp, jnp.zeros((), xp.dtype),
        [(0, 0, 0)] + [(lo, e - n - lo, 0) for (lo, _), e, n in zip(padding, extent, sizes_in)] + [(0, 0, 0)],
    )
    h_out, w_out = sizes_out
    window = (xp.shape[0], (h_out - 1) * stride + 1, (w_out - 1) * stride + 1, c_in)

    def tap(index):
        i, j = index // k_w, index % k_w
        shifted = lax.dynamic_slice(xp, (0, i, j, 0), window)
        if stride > 1:
            shifted = shifted[:, ::stride, ::stride]
        return lax.dot_general(shifted, g, (((0, 1, 2), (0, 1, 2)), ((), ())))

    dw = lax.map(tap, jnp.arange(k_h * k_w)).reshape(w.shape)
    return dx, dw


_conv2d_cpu.defvjp(_conv2d_cpu_fwd, _conv2d_cpu_bwd)


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
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        in_ch = x.shape[-1]
        bound = 1.0 / math.sqrt(in_ch * k * k)
        kernel = self.param("kernel", torch_uniform(bound), (k, k, in_ch, self.features))
        y = conv2d(x, kernel, self.stride, (k - 1) // 2, self.pad)
        if self.use_bias:
            bias = self.param("bias", torch_uniform(bound), (self.features,))
            y = y + bias
        return y


def batch_norm(x: jax.Array, scale: jax.Array, offset: jax.Array, *, eps: float = 1e-5,
               act: str = "none") -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training-mode BatchNorm over all axes but the last, then `activation(act, .)`.

    Returns (y, mean, biased variance). Same arithmetic as PyTorch's
    `BatchNorm2d` (two-pass variance); the gradient is written by hand so the
    backward pass keeps only `x` and the per-channel statistics (autodiff
    keeps normalised copies and activation masks: more memory, more kernels)
    and recomputes the normalised values when it needs them.
    """
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; use one of {ACTIVATIONS}")
    return _batch_norm(x, scale, offset, float(eps), act)


def _bn_forward(x, scale, offset, eps, act):
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    inv = lax.rsqrt(var + eps)
    y = (x - mean) * (inv * scale) + offset
    return activation(act, y), mean, var, inv


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_norm(x, scale, offset, eps, act):
    y, mean, var, _ = _bn_forward(x, scale, offset, eps, act)
    return y, mean, var


def _batch_norm_fwd(x, scale, offset, eps, act):
    y, mean, var, inv = _bn_forward(x, scale, offset, eps, act)
    return (y, mean, var), (x, scale, offset, mean, inv)


def _batch_norm_bwd(eps, act, residuals, cotangents):
    x, scale, offset, mean, inv = residuals
    g, g_mean, g_var = cotangents
    axes = tuple(range(x.ndim - 1))
    n = math.prod(x.shape[:-1])
    centred = x - mean
    x_hat = centred * inv
    if act != "none":
        _, act_vjp = jax.vjp(functools.partial(activation, act), x_hat * scale + offset)
        (g,) = act_vjp(g)
    d_offset = jnp.sum(g, axis=axes)
    d_scale = jnp.sum(g * x_hat, axis=axes)
    dx = (scale * inv) * (g - d_offset / n - x_hat * (d_scale / n))
    # The statistics' own cotangents (zero when, as here, they only feed running averages).
    dx = dx + g_mean / n + centred * (2.0 * g_var / n)
    return dx, d_scale, d_offset


_batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


class BatchNorm(nn.Module):
    """Training-mode BatchNorm of PyTorch (the original never calls `.eval()`).

    `act` applies an activation after the normalisation, inside the same
    hand-written gradient (see `batch_norm`); 'none' by default.
    """

    momentum: float = 0.1
    eps: float = 1e-5
    act: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        offset = self.param("bias", nn.initializers.zeros, (c,))
        running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        running_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        y, mean, var = batch_norm(x, scale, offset, eps=self.eps, act=self.act)
        if not self.is_initializing() and self.is_mutable_collection("batch_stats"):
            n = math.prod(x.shape[:-1])
            unbiased = var * (n / max(n - 1, 1))
            m = self.momentum
            running_mean.value = (1 - m) * running_mean.value + m * lax.stop_gradient(mean)
            running_var.value = (1 - m) * running_var.value + m * lax.stop_gradient(unbiased)
        return y


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
    keeps it cheap and exactly PyTorch's arithmetic; its gradient is the
    transposed stencil, written out (autodiff's transpose of the interleaving
    built several full-size temporaries).
    """
    if mode == "nearest":
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    if mode == "bilinear":
        return _bilinear2x(x)
    raise ValueError(f"unknown upsample mode {mode!r}; use one of {UPSAMPLE_MODES}")


def _shift(x: jax.Array, axis: int, by: int) -> jax.Array:
    """x moved by +-1 along `axis`, the edge value repeated (clamped indexing)."""
    n = x.shape[axis]
    if by < 0:
        parts = [lax.slice_in_dim(x, 0, 1, axis=axis), lax.slice_in_dim(x, 0, n - 1, axis=axis)]
    else:
        parts = [lax.slice_in_dim(x, 1, n, axis=axis), lax.slice_in_dim(x, n - 1, n, axis=axis)]
    return lax.concatenate(parts, axis)


def _bilinear2x_axis(x: jax.Array, axis: int) -> jax.Array:
    even = 0.75 * x + 0.25 * _shift(x, axis, -1)
    odd = 0.75 * x + 0.25 * _shift(x, axis, +1)
    shape = list(x.shape)
    shape[axis] *= 2
    return jnp.stack([even, odd], axis=axis + 1).reshape(shape)


def _bilinear2x_axis_transpose(d: jax.Array, axis: int) -> jax.Array:
    """Adjoint of `_bilinear2x_axis`: each input pixel collects from the outputs that read it."""
    shape = list(d.shape)
    n = shape[axis] // 2
    shape[axis:axis + 1] = [n, 2]
    pairs = d.reshape(shape)
    even = lax.index_in_dim(pairs, 0, axis + 1, keepdims=False)
    odd = lax.index_in_dim(pairs, 1, axis + 1, keepdims=False)
    zero = jnp.zeros((), d.dtype)

    def pad_axis(a, lo, hi):
        cfg = [(0, 0, 0)] * a.ndim
        cfg[axis] = (lo, hi, 0)
        return lax.pad(a, zero, cfg)

    # even[k] read x[k-1] (x[0] at k=0); odd[k] read x[k+1] (x[n-1] at k=n-1).
    from_even = pad_axis(lax.slice_in_dim(even, 1, n, axis=axis), 0, 1) + pad_axis(
        lax.slice_in_dim(even, 0, 1, axis=axis), 0, n - 1)
    from_odd = pad_axis(lax.slice_in_dim(odd, 0, n - 1, axis=axis), 1, 0) + pad_axis(
        lax.slice_in_dim(odd, n - 1, n, axis=axis), n - 1, 0)
    return 0.75 * (even + odd) + 0.25 * (from_even + from_odd)


@jax.custom_vjp
def _bilinear2x(x):
    return _bilinear2x_axis(_bilinear2x_axis(x, 1), 2)


def _bilinear2x_fwd(x):
    return _bilinear2x(x), None


def _bilinear2x_bwd(_, d):
    return (_bilinear2x_axis_transpose(_bilinear2x_axis_transpose(d, 2), 1),)


_bilinear2x.defvjp(_bilinear2x_fwd, _bilinear2x_bwd)


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
