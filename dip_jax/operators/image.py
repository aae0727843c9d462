"""The image-space operators: `Identity`, `Mask`, `Downsample`, `Blur`, `Compose` (see the package docstring).

All are linear with exact adjoints and `image_like` (the observation is an
image in [0, 1]); `make_args(...)` builds each one's float32 `args` from user
data or defaults (e.g. the Lanczos kernel). Value checks in `validate`
(finite, mask in [0, 1]) are skipped for traced arrays.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from dip_jax import kernels


def _check_image_shape(image_shape) -> tuple[int, int, int, int]:
    shape = tuple(image_shape)
    if len(shape) != 4 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in shape):
        raise ValueError(f"image_shape must be (N, H, W, C) of positive ints, got {image_shape!r}; "
                         f"add a batch axis for a single image")
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


def _is_traced(a) -> bool:
    return isinstance(a, jax.core.Tracer)


def _check_finite(name: str, a) -> None:
    if not _is_traced(a) and not np.all(np.isfinite(np.asarray(a))):
        raise ValueError(f"{name} contains NaN or infinite values; replace them (e.g. np.nan_to_num) "
                         f"before fitting")


def _check_kernel(name: str, kernel, height: int, width: int) -> tuple[int, int]:
    if kernel is None or not hasattr(kernel, "shape"):
        raise ValueError(f"{name} args must be a 2-D kernel array, got {type(kernel).__name__}; "
                         f"build it with op.make_args(...)")
    if len(kernel.shape) != 2:
        raise ValueError(f"{name} kernel must be 2-D (Kh, Kw), got shape {tuple(kernel.shape)}; "
                         f"for one kernel per image, vmap over a leading axis")
    kh, kw = kernel.shape
    if kh > height or kw > width:
        raise ValueError(f"{name} kernel {kh}x{kw} is bigger than the {height}x{width} image; "
                         f"use a smaller kernel (or a smaller factor) or a larger image")
    _check_finite(f"{name} kernel", kernel)
    return kh, kw


def _transpose(fun, input_shape, y):
    """The exact adjoint of the linear map `fun` at `y`, with JAX's transpose rules."""
    (x,) = jax.linear_transpose(fun, jax.ShapeDtypeStruct(input_shape, y.dtype))(y)
    return x


@dataclasses.dataclass(frozen=True)
class Identity:
    """`A = I` (denoising). `args` is None."""

    linear: ClassVar[bool] = True
    image_like: ClassVar[bool] = True

    def apply(self, x: jax.Array, args: None) -> jax.Array:
        return x

    def adjoint(self, y: jax.Array, args: None) -> jax.Array:
        return y

    def make_args(self) -> None:
        return None

    def output_shape(self, image_shape, args=None) -> tuple[int, ...]:
        return _check_image_shape(image_shape)

    def validate(self, image_shape, args: None) -> None:
        _check_image_shape(image_shape)
        if args is not None:
            raise ValueError(f"Identity takes no args, got {type(args).__name__}; pass None")


@dataclasses.dataclass(frozen=True)
class Mask:
    """`A x = mask * x` (inpainting). `args`: the mask, (N or 1, H, W, 1 or C), in [0, 1].

    1 marks an observed pixel. The data term stays a mean over all elements
    (as the original's `mse(out * mask, y * mask)`); see `losses.mse`.
    """

    linear: ClassVar[bool] = True
    image_like: ClassVar[bool] = True

    def apply(self, x: jax.Array, args: jax.Array) -> jax.Array:
        return x * args

    def adjoint(self, y: jax.Array, args: jax.Array) -> jax.Array:
        return y * args

    def make_args(self, mask) -> jax.Array:
        """`mask` (H, W), (H, W, C') or (N, H, W, C') -> float32 (N or 1, H, W, C')."""
        mask = jnp.asarray(mask, dtype=jnp.float32)
        if mask.ndim == 2:
            mask = mask[None, :, :, None]
        elif mask.ndim == 3:
            mask = mask[None]
        elif mask.ndim != 4:
            raise ValueError(f"mask must be (H, W), (H, W, C) or (N, H, W, C), got shape {mask.shape}")
        return mask

    def output_shape(self, image_shape, args=None) -> tuple[int, ...]:
        return _check_image_shape(image_shape)

    def validate(self, image_shape, args) -> None:
        n, h, w, c = _check_image_shape(image_shape)
        if args is None or not hasattr(args, "shape"):
            raise ValueError("Mask args must be the mask array; build it with Mask().make_args(mask)")
        if len(args.shape) != 4:
            raise ValueError(f"mask must be (N, H, W, C), got shape {tuple(args.shape)}; "
                             f"build it with Mask().make_args(mask)")
        mn, mh, mw, mc = args.shape
        if (mh, mw) != (h, w):
            raise ValueError(f"mask is {mh}x{mw} but the image is {h}x{w}; resize or crop the mask "
                             f"to the image")
        if mc not in (1, c):
            raise ValueError(f"mask has {mc} channels but the image has {c}; give 1 channel "
                             f"(shared) or {c}")
        if mn not in (1, n):
            raise ValueError(f"mask has batch size {mn} but the image batch is {n}; give 1 "
                             f"(shared) or {n}")
        _check_finite("mask", args)
        if not _is_traced(args):
            values = np.asarray(args)
            if values.min() < 0 or values.max() > 1:
                raise ValueError(f"mask values must lie in [0, 1], got [{values.min()}, {values.max()}]; "
                                 f"use 1 for observed and 0 for missing pixels")


def bernoulli_mask(key: jax.Array, shape, keep_fraction: float) -> jax.Array:
    """A random pixel mask: 1 (kept) with probability `keep_fraction`, else 0; float32.

    `shape` (N, H, W, 1) shares each pixel's mask across channels. The original
    (`get_bernoulli_mask`) draws `uniform > 1 - keep` per element of the
    image's own shape, i.e. independently per channel for RGB images: pass
    shape (N, H, W, 3) for that behaviour.
    """
    shape = _check_image_shape(shape)
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in [0, 1], got {keep_fraction!r} "
                         f"(0.5 for the 50% restoration task)")
    uniform = jax.random.uniform(key, shape, dtype=jnp.float32)
    return (uniform >= 1.0 - keep_fraction).astype(jnp.float32)


def _downsampled_size(size, kernel_shape, factor: int) -> tuple[int, int]:
    return tuple((n + 2 * kernels.replication_pad_amount(k, factor) - k) // factor + 1
                 for n, k in zip(size, kernel_shape))


@dataclasses.dataclass(frozen=True)
class Downsample:
    """The original's super-resolution operator: `Downsampler(..., preserve_size=True)`.

    `args`: the (K, K) kernel (`make_args()` builds `kernel_type`'s kernel at
    `factor`; `phase=None` takes the original's default for the type). Maps
    (N, H, W, C) to (N, H/f, W/f, C); H and W must be multiples of `factor`.
    """

    factor: int
    kernel_type: str = "lanczos2"
    phase: float | None = None

    linear: ClassVar[bool] = True
    image_like: ClassVar[bool] = True

    def __post_init__(self):
        kernels._check_factor(self.factor)
        if self.kernel_type not in kernels.NAMED_KERNEL_TYPES:
            raise ValueError(f"kernel_type {self.kernel_type!r} is not one of {kernels.NAMED_KERNEL_TYPES}")
        if self.phase not in (None, 0, 0.5):
            raise ValueError(f"phase must be None, 0 or 0.5, got {self.phase!r}")

    def apply(self, x: jax.Array, args: jax.Array) -> jax.Array:
        return kernels.downsample(x, args, self.factor, preserve_size=True)

    def adjoint(self, y: jax.Array, args: jax.Array) -> jax.Array:
        n, h, w, c = y.shape
        input_shape = (n, h * self.factor, w * self.factor, c)
        if _downsampled_size(input_shape[1:3], args.shape, self.factor) != (h, w):
            raise ValueError(f"a {args.shape} kernel at factor {self.factor} does not map "
                             f"{input_shape} to {y.shape} (the original's padding loses a pixel for "
                             f"even kernels at odd factors); use an even factor or an odd-sized kernel")
        return _transpose(lambda x: self.apply(x, args), input_shape, y)

    def input_size(self, output_size) -> tuple[int, int]:
        h, w = output_size
        return h * self.factor, w * self.factor

    def make_args(self) -> jax.Array:
        return jnp.asarray(kernels.downsampler_kernel(self.kernel_type, self.factor, phase=self.phase),
                           dtype=jnp.float32)

    def output_shape(self, image_shape, args=None) -> tuple[int, ...]:
        n, h, w, c = _check_image_shape(image_shape)
        return (n, h // self.factor, w // self.factor, c)

    def validate(self, image_shape, args) -> None:
        n, h, w, c = _check_image_shape(image_shape)
        f = self.factor
        if h % f or w % f:
            raise ValueError(f"image size {h}x{w} is not divisible by the factor {f}; crop it to "
                             f"{h - h % f}x{w - w % f} (e.g. io's crop to a multiple)")
        kh, kw = _check_kernel("Downsample", args, h, w)
        out_h, out_w = _downsampled_size((h, w), (kh, kw), f)
        if (out_h, out_w) != (h // f, w // f):
            raise ValueError(f"a {kh}x{kw} kernel at factor {f} gives a {out_h}x{out_w} output instead of "
                             f"{h // f}x{w // f} (the original's padding for even kernels at odd factors); "
                             f"use an even factor or an odd-sized kernel")


BLUR_PADDINGS = ("reflect", "symmetric", "edge", "circular", "zero", "valid")
_JNP_PAD_MODES = {"reflect": "reflect", "symmetric": "symmetric", "edge": "edge",
                  "circular": "wrap", "zero": "constant"}


@dataclasses.dataclass(frozen=True)
class Blur:
    """`A x = k * x`, a true 2-D convolution of every channel with the kernel (deblurring).

    Not in the original. `args`: the (Kh, Kw) kernel (flipped, as convolution
    does, so asymmetric blurs such as motion blur act as recorded). `padding`
    is how the image is extended past its edges: 'reflect' (mirror without
    repeating the edge pixel), 'symmetric' (with), 'edge' (replicate),
    'circular' (periodic), 'zero'; these keep the size, centring the kernel
    like `scipy.signal.convolve2d(mode='same')`. 'valid' assumes nothing about
    the outside and shrinks the output to (H-Kh+1, W-Kw+1). The adjoint is
    exact for every padding: it is JAX's transpose of the padding and the
    convolution (for 'valid', a zero-padded 'full' correlation).
    """

    padding: str = "reflect"

    linear: ClassVar[bool] = True
    image_like: ClassVar[bool] = True

    def __post_init__(self):
        if self.padding not in BLUR_PADDINGS:
            raise ValueError(f"padding {self.padding!r} is not one of {BLUR_PADDINGS}")

    def apply(self, x: jax.Array, args: jax.Array) -> jax.Array:
        kernel = jnp.asarray(args, dtype=x.dtype)
        if x.ndim != 4 or kernel.ndim != 2:
            raise ValueError(f"Blur needs x (N, H, W, C) and a 2-D kernel, got {x.shape} and {kernel.shape}")
        kh, kw = kernel.shape
        if self.padding != "valid":
            # Convolution with the flipped kernel: more padding before than after
            # for even sizes, which is scipy's 'same' centring.
            pad = ((0, 0), (kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2), (0, 0))
            x = jnp.pad(x, pad, mode=_JNP_PAD_MODES[self.padding])
        return kernels.downsample(x, kernel[::-1, ::-1], 1, preserve_size=False)

    def adjoint(self, y: jax.Array, args: jax.Array) -> jax.Array:
        n, h, w, c = y.shape
        if self.padding == "valid":
            kh, kw = args.shape
            input_shape = (n, h + kh - 1, w + kw - 1, c)
        else:
            input_shape = (n, h, w, c)
        return _transpose(lambda x: self.apply(x, args), input_shape, y)

    def input_size(self, output_size) -> tuple[int, int]:
        if self.padding == "valid":
            raise ValueError("a 'valid' Blur shrinks the image by the kernel size; pass image_size=(H, W) to fit")
        return tuple(output_size)

    def make_args(self, kernel) -> jax.Array:
        """`kernel` (Kh, Kw), e.g. `kernels.gaussian_blur_kernel(9, 2.0)` -> float32 array."""
        kernel = jnp.asarray(kernel, dtype=jnp.float32)
        if kernel.ndim != 2:
            raise ValueError(f"the blur kernel must be 2-D (Kh, Kw), got shape {kernel.shape}")
        return kernel

    def output_shape(self, image_shape, args=None) -> tuple[int, ...]:
        n, h, w, c = _check_image_shape(image_shape)
        if self.padding != "valid":
            return (n, h, w, c)
        if args is None:
            raise ValueError("Blur(padding='valid') shrinks the image by the kernel size: pass args "
                             "(the kernel) to output_shape")
        kh, kw = args.shape
        return (n, h - kh + 1, w - kw + 1, c)

    def validate(self, image_shape, args) -> None:
        _, h, w, _ = _check_image_shape(image_shape)
        _check_kernel("Blur", args, h, w)


@dataclasses.dataclass(frozen=True)
class Compose:
    """`A = ops[-1] o ... o ops[0]`: applies `ops` in order; `args` is one entry per op.

    The adjoint applies the ops' adjoints in reverse order.
    """

    ops: tuple[Any, ...]

    def __post_init__(self):
        # Lists would make the dataclass unhashable (and so unusable as a jit static argument).
        object.__setattr__(self, "ops", tuple(self.ops))
        if not self.ops:
            raise ValueError("Compose needs at least one operator; use Identity() for none")

    @property
    def linear(self) -> bool:
        return all(op.linear for op in self.ops)

    @property
    def image_like(self) -> bool:
        return all(getattr(op, "image_like", False) for op in self.ops)

    def input_size(self, output_size) -> tuple[int, int]:
        size = tuple(output_size)
        for inner in reversed(self.ops):
            size = input_size(inner, size)
        return size

    def _check_args(self, args) -> None:
        if not isinstance(args, (tuple, list)) or len(args) != len(self.ops):
            raise ValueError(f"Compose of {len(self.ops)} ops needs a tuple of {len(self.ops)} args "
                             f"(one per op); build it with make_args")

    def apply(self, x: jax.Array, args: tuple) -> jax.Array:
        self._check_args(args)
        for op, op_args in zip(self.ops, args):
            x = op.apply(x, op_args)
        return x

    def adjoint(self, y: jax.Array, args: tuple) -> jax.Array:
        self._check_args(args)
        for op, op_args in zip(reversed(self.ops), reversed(tuple(args))):
            y = op.adjoint(y, op_args)
        return y

    def make_args(self, *per_op: tuple) -> tuple:
        """One tuple of positional `make_args` arguments per op; none at all means `make_args()` each.

        E.g. `Compose((Blur(), Downsample(4))).make_args((kernel,), ())`.
        """
        if not per_op:
            per_op = ((),) * len(self.ops)
        if len(per_op) != len(self.ops):
            raise ValueError(f"make_args got {len(per_op)} entries for {len(self.ops)} ops; give one "
                             f"tuple of arguments per op, () for none")
        return tuple(op.make_args(*op_in) for op, op_in in zip(self.ops, per_op))

    def output_shape(self, image_shape, args=None) -> tuple[int, ...]:
        shape = _check_image_shape(image_shape)
        for i, op in enumerate(self.ops):
            shape = op.output_shape(shape, None if args is None else args[i])
        return shape

    def validate(self, image_shape, args) -> None:
        shape = _check_image_shape(image_shape)
        self._check_args(args)
        for op, op_args in zip(self.ops, args):
            op.validate(shape, op_args)
            shape = op.output_shape(shape, op_args)


def input_size(op: Any, output_size: tuple[int, int]) -> tuple[int, int]:
    """The image size (H, W) that `op` maps to an observation of `output_size`.

    Used by the engine to size the generator's output from the observation:
    the operator's own `input_size(output_size)` where it has one, else the
    same size (operators that keep the image size need not define it).
    """
    h, w = (int(s) for s in output_size)
    if hasattr(op, "input_size"):
        return tuple(int(s) for s in op.input_size((h, w)))
    return h, w
