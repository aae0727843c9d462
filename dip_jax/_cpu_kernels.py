"""Custom forms of the generators' convolution, BatchNorm and reflection padding for XLA:CPU.

Contract:
- Every function here returns the values of the plain JAX computation it
  stands for (`layers.conv2d`, `layers.batch_norm_act`, `layers.reflect_pad`,
  and a `layers.Conv` applied to a `layers.BatchNorm` output); gradients
  agree up to the order of floating-point sums. Only how they are computed
  differs: forwards in the one layout XLA:CPU hands to its fast convolution
  library, and hand-written backward passes that run in that layout too and
  recompute cheap elementwise values instead of keeping image-sized tensors
  alive from the forward pass to the backward one.
- `dip_jax.layers` is the only caller. It uses these forms when `enabled()`
  (by default: JAX's default backend is the CPU) and the plain ops otherwise.
  `use(flag)` overrides the choice, e.g. for tests. It is read when a function
  is traced, and jax caches traces per function object, so switch before a
  function is first traced (or trace a new one).
- Activations and the convolution that follows a BatchNorm are passed in as
  functions, so this module knows nothing of the model code.

What each form saves, measured, is in docs/performance.md.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")
_forced: bool | None = None


def enabled() -> bool:
    """Whether `dip_jax.layers` uses the forms of this module (on CPU, unless `use` says otherwise)."""
    if _forced is not None:
        return _forced
    return jax.default_backend() == "cpu"


@contextlib.contextmanager
def use(flag: bool) -> Iterator[None]:
    """Within the block, `enabled()` returns `flag` on every backend."""
    global _forced
    before, _forced = _forced, bool(flag)
    try:
        yield
    finally:
        _forced = before


# ----------------------------------------------------------------- reflection pad


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def reflect_pad(x: jax.Array, p: int) -> jax.Array:
    """ReflectionPad2d(p) of NHWC `x`, p > 0."""
    return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")


def _reflect_pad_fwd(x, p):
    return reflect_pad(x, p), None


def _reflect_pad_bwd(p, _, g):
    """Folds the padded cotangent back: each border row/column adds onto the pixel it mirrored.

    Autodiff's transpose builds a full-size padded copy per border and sums
    them, all alive at once; here each axis is one fused pass.
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


reflect_pad.defvjp(_reflect_pad_fwd, _reflect_pad_bwd)


# ----------------------------------------------------------------- convolution


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: tuple) -> jax.Array:
    """NHWC x HWIO cross-correlation with ((top, bottom), (left, right)) zero padding.

    Paddings outside 0..k-1 (which the generators never use) take XLA's own form.
    """
    k_h, k_w = kernel.shape[:2]
    if all(0 <= lo <= k - 1 and 0 <= hi <= k - 1 for (lo, hi), k in zip(padding, (k_h, k_w))):
        return _conv2d(x, kernel, stride, padding)
    return lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=_DN)


def _conv_fast_form(x, w, padding, *, stride=1, lhs_dilation=1):
    """A convolution in the one layout XLA:CPU hands to its conv library.

    Two quirks of XLA:CPU (jax 0.10) shape this. Only convolutions in the
    canonical NHWC/HWIO layout reach the fast library kernels, and XLA
    rewrites other layouts into it only in the entry computation, not inside
    the `scan`/`cond`/`map` bodies the engine runs steps in. And a 3x3
    convolution with no padding at all runs several times slower there than
    one with some padding, so an unpadded one gets one extra zero row whose
    output row is dropped.
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
def _conv2d(x, w, stride, padding):
    return _conv_fast_form(x, w, padding, stride=stride)


def _conv2d_fwd(x, w, stride, padding):
    return _conv_fast_form(x, w, padding, stride=stride), (x, w)


def _conv2d_bwd(stride, padding, residuals, g):
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
    # keep the copy alive through the backward pass.
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
        # operand shared by all taps (faster than slicing both; same sums up
        # to summation order). The input is transposed to channels first
        # once: XLA:CPU hands the left operand to the matrix kernel with the
        # contracted axes innermost, and with NHWC it transposed a copy on
        # every tap.
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
        if pad_dx == ((k_h - 1, k_h - 1), (k_w - 1, k_w - 1)):
            return _conv_fast_form(_tied_to(g_big, dw), w_flipped, ((0, 0), (0, 0))), dw
        return _conv_fast_form(_tied_to(g, dw), w_flipped, pad_dx), dw
    dx = _conv_fast_form(g, w_flipped, pad_dx, lhs_dilation=stride)
    if k_h * k_w == 1:
        rows = xp[:, ::stride, ::stride, :]
        # The left operand gets transposed (see above): let it be the one with
        # fewer channels (e.g. the output conv's 3).
        if g.shape[-1] < rows.shape[-1]:
            return dx, lax.dot_general(g, rows, contract).T.reshape(w.shape)
        return dx, lax.dot_general(rows, g, contract).reshape(w.shape)
    # Strided: each tap is a strided window of the input. Taken inside the loop
    # (its offset depends on the loop index) so XLA cannot compute all taps
    # early and keep them alive together through the backward pass.
    n, _, _, c = xp.shape
    window = (n, (h_out - 1) * stride + 1, (w_out - 1) * stride + 1, c)

    def strided_tap(i, j):
        rows = lax.dynamic_slice(xp, (0, i, j, 0), window)[:, ::stride, ::stride, :]
        return lax.dot_general(rows, g, contract)

    return dx, _weight_gradient_by_taps(strided_tap, w)


def _weight_gradient_by_taps(tap: Callable, w: jax.Array) -> jax.Array:
    """The (k_h, k_w, in, out) gradient with `tap(i, j)` as its [i, j] matrix, one tap at a time.

    A loop, not the taps side by side: XLA would otherwise keep every tap's
    operand copies alive at once, or compute them early and hold them.
    """
    k_h, k_w = w.shape[:2]

    def body(t, dw):
        i, j = t // k_w, t % k_w
        return lax.dynamic_update_slice(dw, tap(i, j)[None, None], (i, j, 0, 0))

    return lax.fori_loop(0, k_h * k_w, body, jnp.zeros(w.shape, w.dtype))


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


# ----------------------------------------------------------------- BatchNorm + activation


def _batch_moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    # The same expressions as layers' running-statistics update, so XLA computes them once.
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    return mean, jnp.mean(jnp.square(x - mean), axis=axes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_act(x, scale, offset, eps: float, act: Callable[[jax.Array], jax.Array]):
    """act((x - mean) / sqrt(var + eps) * scale + offset), batch statistics; `act` elementwise."""
    return _batch_norm_act_fwd(x, scale, offset, eps, act)[0]


def _batch_norm_act_fwd(x, scale, offset, eps, act):
    mean, var = _batch_moments(x)
    inv_std = lax.rsqrt(var + eps)
    y = act((x - mean) * (inv_std * scale) + offset)
    return y, (x, scale, offset, mean, inv_std)


def _recompute_normalized(residuals, tied_to):
    """(x_hat, pre-activation) of the forward pass, recomputed from its input.

    Autodiff would keep the centred input, the pre-activation and more alive
    from the forward pass to the backward one. The recomputation is tied to a
    cotangent (`+ 0 * g`, exact for finite g) because XLA:CPU drops
    optimisation barriers and its common-subexpression pass would otherwise
    merge it back into the forward pass, which is exactly what
    `jax.checkpoint` suffers from there. The pre-activation is the forward
    pass's own expression, so it is exact.
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
    _, act_vjp = jax.vjp(act, pre)
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


batch_norm_act.defvjp(_batch_norm_act_fwd, _batch_norm_act_bwd)


# ----------------------------------------------------------------- BatchNorm + activation, then a conv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def norm_act_conv(x, scale, offset, kernel, eps: float, act: Callable, conv: Callable):
    """`conv(batch_norm_act(x, scale, offset, eps, act), kernel)`, keeping only `x` for the backward pass.

    The conv's input (the normalised, activated `x`) is as large as `x`;
    recomputing it in the backward pass (one elementwise pass) instead of
    keeping it saves one image-sized tensor per such pair.
    """
    return _norm_act_conv_fwd(x, scale, offset, kernel, eps, act, conv)[0]


def _norm_act_conv_fwd(x, scale, offset, kernel, eps, act, conv):
    u, bn_residuals = _batch_norm_act_fwd(x, scale, offset, eps, act)
    return conv(u, kernel), (bn_residuals, kernel)


def _norm_act_conv_bwd(eps, act, conv, residuals, g):
    bn_residuals, kernel = residuals
    _, pre = _recompute_normalized(bn_residuals, g)
    # The convolution's own forward result is unused here and removed by XLA.
    _, conv_vjp = jax.vjp(conv, act(pre), kernel)
    du, d_kernel = conv_vjp(g)
    # Recomputed a second time, tied to `du`, on purpose: reusing the values
    # above keeps them alive through the conv's backward pass, while
    # recomputing is one fused elementwise pass.
    return (*_batch_norm_act_bwd(eps, act, bn_residuals, du), d_kernel)


norm_act_conv.defvjp(_norm_act_conv_fwd, _norm_act_conv_bwd)
