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
from typing import Callable, NamedTuple

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


def reflect_pad(x: jax.Array, p: int) -> jax.Array:
    """PyTorch's ReflectionPad2d(p) of NHWC `x` (edge pixel not repeated)."""
    if p == 0:
        return x
    return _reflect_pad(x, p)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _reflect_pad(x, p):
    return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")


def _reflect_pad_fwd(x, p):
    return _reflect_pad(x, p), None


def _reflect_pad_bwd(p, _, g):
    """Folds the padded cotangent back: each border row/column adds onto the pixel it mirrored.

    Autodiff's transpose of the padding builds a full-size padded copy per
    border and sums them (2 x 139 MB alive at once for a 512 px, 132-channel
    layer); here each axis is one fused pass over the cotangent.
    """
    return (_fold_reflection(_fold_reflection(g, p, 1), p, 2),)


def _fold_reflection(g, p, axis):
    n = g.shape[axis] - 2 * p
    zero = jnp.zeros((), g.dtype)
    config = [(0, 0, 0)] * g.ndim

    def placed(border, low):
        config[axis] = (low, n - p - low, 0)
        return lax.pad(lax.rev(border, (axis,)), zero, config)

    head = lax.slice_in_dim(g, 0, p, axis=axis)
    tail = lax.slice_in_dim(g, n + p, n + 2 * p, axis=axis)
    # padded[k] = x[p - k] (k < p) and padded[n + p + m] = x[n - 2 - m] (m < p).
    return lax.slice_in_dim(g, p, n + p, axis=axis) + placed(head, 1) + placed(tail, n - 1 - p)


_reflect_pad.defvjp(_reflect_pad_fwd, _reflect_pad_bwd)



def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding=((0, 0), (0, 0))) -> jax.Array:
    """Cross-correlation of NHWC `x` with an HWIO `kernel` (PyTorch's Conv2d, no bias).

    `padding` is ((top, bottom), (left, right)) zero padding. Same numbers on
    every backend; on CPU the convolution and its gradients are written in the
    forms XLA:CPU runs fast (see `_conv2d_cpu`).
    """
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    k_h, k_w = kernel.shape[:2]
    if _use_cpu_forms() and all(0 <= lo <= k - 1 and 0 <= hi <= k - 1 for (lo, hi), k in zip(padding, (k_h, k_w))):
        return _conv2d_cpu(x, kernel, int(stride), padding)
    return lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=_DN)


def _use_cpu_forms() -> bool:
    return jax.default_backend() == "cpu"


def _conv_fast_form(x, w, padding, *, stride=1, lhs_dilation=1):
    """A convolution in the one layout XLA:CPU hands to its conv library.

    Two measured quirks of XLA:CPU (jax 0.10) shape this. Only convolutions in
    the canonical NHWC/HWIO layout reach the fast library kernels, and XLA
    rewrites other layouts into it only in the entry computation, not inside
    the `scan`/`cond`/`map` bodies the engine runs steps in. And a 3x3
    convolution with no padding at all runs about 3x slower there than one with
    some padding, so an unpadded one gets one extra zero row whose output row
    is dropped (0.4-1.5% more work at 64-256 px).
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d_cpu(x, w, stride, padding):
    return _conv_fast_form(x, w, padding, stride=stride)


def _conv2d_cpu_fwd(x, w, stride, padding):
    return _conv_fast_form(x, w, padding, stride=stride), (x, w)


def _conv2d_cpu_bwd(stride, padding, residuals, g):
    """Both gradients in fast forms (autodiff's own transposes are not canonical).

    d/dx: the cotangent, dilated by the stride, correlated with the flipped
    kernel with in/out swapped. d/dw: one matrix product per kernel tap,
    contracting over all pixels, between the input and the shifted cotangent
    (stride 1) or a strided window of the input and the cotangent (a
    convolution with the pixels as its window runs several times slower).
    """
    x, w = residuals
    k_h, k_w = w.shape[:2]
    sizes_in, sizes_out = x.shape[1:3], g.shape[1:3]
    pad_dx = tuple(
        (k - 1 - lo, n - 1 - (m - 1) * stride + lo)
        for (lo, _), k, n, m in zip(padding, (k_h, k_w), sizes_in, sizes_out)
    )
    w_flipped = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    # Pad (or crop, when the stride leaves the last rows unused) to exactly the used extent.
    # Tied to the cotangent: XLA would otherwise pad the forward input early and
    # keep the copy alive through the backward pass (2 x 34 MB at 512 px).
    extent = [(m - 1) * stride + k for m, k in zip(sizes_out, (k_h, k_w))]
    xp = lax.pad(
        _tied_to(x, g) if stride > 1 else x, jnp.zeros((), x.dtype),
        [(0, 0, 0)] + [(lo, e - n - lo, 0) for (lo, _), e, n in zip(padding, extent, sizes_in)] + [(0, 0, 0)],
    )
    h_out, w_out = sizes_out
    contract = (((0, 1, 2), (0, 1, 2)), ((), ()))
    if stride == 1 and k_h * k_w > 1:
        # Each tap contracts the whole input with a shifted copy of the
        # zero-bordered cotangent: shifting the cotangent (one contiguous
        # copy per tap) instead of slicing the input keeps the input one
        # operand shared by all taps; measured 1.7x faster than slicing both
        # (256 px, 132 -> 128 channels), same sums up to summation order.
        # The input is transposed to channels first once: XLA:CPU hands the
        # left operand to the matrix kernel with the contracted axes
        # innermost, and with NHWC it transposed a copy on every tap (one
        # 256 px layer's taps: 415 -> 322 -> 260 ms with the shared operand).
        g_big = jnp.pad(g, ((0, 0), (k_h - 1, k_h - 1), (k_w - 1, k_w - 1), (0, 0)))
        xp_channels_first = jnp.transpose(xp, (3, 0, 1, 2))
        n, h_ext, w_ext, _ = xp.shape

        def tap(i, j):
            shifted = lax.dynamic_slice(g_big, (0, k_h - 1 - i, k_w - 1 - j, 0), (n, h_ext, w_ext, g.shape[-1]))
            return lax.dot_general(xp_channels_first, shifted, (((1, 2, 3), (0, 1, 2)), ((), ())))

        dw = _weight_gradient_by_taps(tap, w)
        # d/dx strictly after d/dw, so the (image-sized) input is no longer
        # needed when d/dx's output is allocated; and from the bordered copy
        # when d/dx needs exactly that border (unpadded forward convs, e.g.
        # after a reflection pad), so the cotangent itself can die early.
        # Together about 270 MB less at 512 px.
        if pad_dx == ((k_h - 1, k_h - 1), (k_w - 1, k_w - 1)):
            return _conv_fast_form(_tied_to(g_big, dw), w_flipped, ((0, 0), (0, 0))), dw
        return _conv_fast_form(_tied_to(g, dw), w_flipped, pad_dx), dw
    dx = _conv_fast_form(g, w_flipped, pad_dx, lhs_dilation=stride)
    if k_h * k_w == 1:
        rows = xp[:, ::stride, ::stride, :]
        # The left operand gets transposed (see above): let it be the one with
        # fewer channels (the 128 -> 3 output conv: 23 -> 9 ms at 256 px).
        if g.shape[-1] < rows.shape[-1]:
            return dx, lax.dot_general(g, rows, contract).T.reshape(w.shape)
        return dx, lax.dot_general(rows, g, contract).reshape(w.shape)
    # Strided: each tap is a strided window of the input. Taken inside the loop
    # (its offset depends on the loop index) so XLA cannot compute all taps
    # early and keep them alive together: at 512 px it did, holding 2 x 75 MB
    # of the down convs' taps through the whole backward pass.
    n, _, _, c = xp.shape
    window = (n, (h_out - 1) * stride + 1, (w_out - 1) * stride + 1, c)

    def strided_tap(i, j):
        rows = lax.dynamic_slice(xp, (0, i, j, 0), window)[:, ::stride, ::stride, :]
        return lax.dot_general(rows, g, contract)

    return dx, _weight_gradient_by_taps(strided_tap, w)


def _weight_gradient_by_taps(tap: Callable, w: jax.Array) -> jax.Array:
    """The (k_h, k_w, in, out) gradient with `tap(i, j)` as its [i, j] matrix, one tap at a time.

    A loop, not the taps side by side: XLA would otherwise keep every tap's
    operand copies alive at once (at 512 px the fit's temporaries 2.2 -> 1.8
    GB), or compute them early and hold them.
    """
    k_h, k_w = w.shape[:2]

    def body(t, dw):
        i, j = t // k_w, t % k_w
        return lax.dynamic_update_slice(dw, tap(i, j)[None, None], (i, j, 0, 0))

    return lax.fori_loop(0, k_h * k_w, body, jnp.zeros(w.shape, w.dtype))


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
    def __call__(self, x: "jax.Array | Normalized") -> jax.Array:
        k = self.kernel_size
        in_ch = x.shape[-1]
        bound = 1.0 / math.sqrt(in_ch * k * k)
        kernel = self.param("kernel", torch_uniform(bound), (k, k, in_ch, self.features))
        if isinstance(x, Normalized):
            y = _normalized_conv(x.x, x.scale, x.offset, kernel, x.eps, x.act, self.stride, self.pad)
        else:
            y = _padded_conv(x, kernel, self.stride, self.pad)
        if self.use_bias:
            bias = self.param("bias", torch_uniform(bound), (self.features,))
            y = y + bias
        return y


def _padded_conv(x: jax.Array, kernel: jax.Array, stride: int, pad: str) -> jax.Array:
    p = (kernel.shape[0] - 1) // 2
    if pad == "reflection":
        return conv2d(reflect_pad(x, p), kernel, stride, ((0, 0), (0, 0)))
    return conv2d(x, kernel, stride, ((p, p), (p, p)))


class Normalized(NamedTuple):
    """A BatchNorm(+activation) output handed to the next `Conv` uncomputed.

    `BatchNorm(deferred=True)` returns it; `Conv` then runs normalisation,
    activation and convolution as one function whose backward pass keeps only
    `x` (see `_normalized_conv`). `materialize()` computes the array.
    """

    x: jax.Array
    scale: jax.Array
    offset: jax.Array
    eps: float
    act: str

    @property
    def shape(self):
        return self.x.shape

    def materialize(self) -> jax.Array:
        return _batch_norm_act(self.x, self.scale, self.offset, self.eps, self.act)


class BatchNorm(nn.Module):
    """Training-mode BatchNorm of PyTorch (the original never calls `.eval()`).

    `act` applies an activation after the affine step (the original's
    `bn(...)` followed by `act(...)`); fusing them lets the backward pass
    keep one tensor (the input) per layer (see `_batch_norm_act`).
    """

    momentum: float = 0.1
    eps: float = 1e-5
    act: str = "none"
    deferred: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        offset = self.param("bias", nn.initializers.zeros, (c,))
        running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        running_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        if not self.is_initializing() and self.is_mutable_collection("batch_stats"):
            # The same expressions as inside `_batch_norm_act`: XLA computes them once.
            mean, var = _batch_moments(lax.stop_gradient(x))
            n = math.prod(x.shape[:-1])
            unbiased = var * (n / max(n - 1, 1))
            m = self.momentum
            running_mean.value = (1 - m) * running_mean.value + m * mean
            running_var.value = (1 - m) * running_var.value + m * unbiased
        if self.deferred:
            return Normalized(x, scale, offset, self.eps, self.act)
        return _batch_norm_act(x, scale, offset, self.eps, self.act)


def _batch_moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    return mean, jnp.mean(jnp.square(x - mean), axis=axes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_norm_act(x, scale, offset, eps, act):
    """activation((x - mean) / sqrt(var + eps) * scale + offset), batch statistics."""
    return _batch_norm_act_fwd(x, scale, offset, eps, act)[0]


def _batch_norm_act_fwd(x, scale, offset, eps, act):
    mean, var = _batch_moments(x)
    inv_std = lax.rsqrt(var + eps)
    y = activation(act, (x - mean) * (inv_std * scale) + offset)
    return y, (x, scale, offset, mean, inv_std)


def _recompute_normalized(residuals, tied_to):
    """(x_hat, pre-activation) of the forward pass, recomputed from its input.

    Autodiff would keep the centred input, the pre-activation and more alive
    from the forward pass to the backward one (at 512 px that is ~130 MB per
    tensor per layer). The recomputation is tied to a cotangent (`+ 0 * g`,
    exact for finite g) because XLA:CPU drops optimisation barriers and its
    common-subexpression pass would otherwise merge it back into the forward
    pass, which is exactly what `jax.checkpoint` suffers from there. The
    pre-activation is the forward pass's own expression, so it is exact.
    """
    x, scale, offset, mean, inv_std = residuals
    centred = _tied_to(x, tied_to) - mean
    return centred * inv_std, centred * (inv_std * scale) + offset


def _tied_to(x: jax.Array, g: jax.Array) -> jax.Array:
    """`x`, computed only once `g` exists (exact for finite `g`; see `_recompute_normalized`)."""
    return x + lax.stop_gradient(g.reshape(-1)[0] * 0).astype(x.dtype)


def _batch_norm_act_grads(act, residuals, x_hat, pre, g):
    """(dx, d_scale, d_offset) of BatchNorm+activation, from the recomputed values."""
    x, scale, _, _, inv_std = residuals
    _, act_vjp = jax.vjp(functools.partial(activation, act), pre)
    (d_pre,) = act_vjp(g)
    axes = tuple(range(x.ndim - 1))
    n = math.prod(x.shape[:-1])
    d_offset = jnp.sum(d_pre, axis=axes)
    d_scale = jnp.sum(d_pre * x_hat, axis=axes)
    dx = (scale * inv_std) * (d_pre - d_offset / n - x_hat * (d_scale / n))
    return dx, d_scale, d_offset


def _batch_norm_act_bwd(eps, act, residuals, g):
    """Gradients from the layer's input alone (see `_recompute_normalized`)."""
    x_hat, pre = _recompute_normalized(residuals, g)
    return _batch_norm_act_grads(act, residuals, x_hat, pre, g)


_batch_norm_act.defvjp(_batch_norm_act_fwd, _batch_norm_act_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _normalized_conv(x, scale, offset, kernel, eps, act, stride, pad):
    """`Conv` applied to `BatchNorm(act)(x)`, keeping only `x` for the backward pass.

    The conv's input (the normalised, activated `x`) is as large as `x`;
    recomputing it in the backward pass (one elementwise pass) instead of
    keeping it saves one image-sized tensor per layer.
    """
    return _normalized_conv_fwd(x, scale, offset, kernel, eps, act, stride, pad)[0]


def _normalized_conv_fwd(x, scale, offset, kernel, eps, act, stride, pad):
    u, bn_residuals = _batch_norm_act_fwd(x, scale, offset, eps, act)
    return _padded_conv(u, kernel, stride, pad), (bn_residuals, kernel)


def _normalized_conv_bwd(eps, act, stride, pad, residuals, g):
    bn_residuals, kernel = residuals
    _, pre = _recompute_normalized(bn_residuals, g)
    # The convolution's own forward result is unused here and removed by XLA.
    _, conv_vjp = jax.vjp(lambda u, k: _padded_conv(u, k, stride, pad), activation(act, pre), kernel)
    du, d_kernel = conv_vjp(g)
    # Recomputed a second time, tied to `du`, on purpose: reusing the values
    # above keeps them alive through the conv's backward pass (measured: one
    # 256 px gradient's temporaries 386 -> 563 MiB), while recomputing is one
    # fused elementwise pass.
    return (*_batch_norm_act_bwd(eps, act, bn_residuals, du), d_kernel)


_normalized_conv.defvjp(_normalized_conv_fwd, _normalized_conv_bwd)


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
