"""Padding images to a multiple of the net's stride and cropping back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from dip_jax.io._common import Crop


def pad_to_multiple(
    image: Any,
    multiple: int,
    *,
    mode: Literal["reflect", "edge", "constant"] = "reflect",
) -> tuple[Any, Crop]:
    """Pads H and W of ``(H, W, C)`` or ``(N, H, W, C)`` up to multiples of ``multiple``.

    The padding is split evenly (the extra pixel, if any, goes bottom/right).
    ``reflect`` mirrors without repeating the border pixel; along an axis too
    short to mirror the needed amount it falls back to ``edge`` (repeat the
    border). ``constant`` pads with zeros. JAX inputs give JAX outputs (usable
    under jit/vmap, shapes are static); anything else gives NumPy.

    Returns:
      ``(padded, crop)``; ``crop_back(padded, crop)`` returns the input exactly.
    """
    if isinstance(multiple, bool) or not isinstance(multiple, (int, np.integer)) or multiple < 1:
        raise ValueError(f"multiple must be a positive int (e.g. the net's total stride, 32), got {multiple!r}.")
    if mode not in ("reflect", "edge", "constant"):
        raise ValueError(f"mode must be 'reflect', 'edge' or 'constant', got {mode!r}.")
    xp = jnp if isinstance(image, jax.Array) else np
    array = image if xp is jnp else np.asarray(image)
    if array.ndim not in (3, 4):
        raise ValueError(f"pad_to_multiple needs (H, W, C) or (N, H, W, C), got shape {array.shape}.")
    height, width = array.shape[-3], array.shape[-2]
    if height == 0 or width == 0:
        raise ValueError(f"cannot pad an image with zero height or width (shape {array.shape}).")
    pads = []
    for size in (height, width):
        total = -size % multiple
        pads.append((total // 2, total - total // 2))
    crop = Crop(top=pads[0][0], left=pads[1][0], height=height, width=width)
    if pads == [(0, 0), (0, 0)]:
        return array, crop
    lead = [(0, 0)] * (array.ndim - 3)
    for axis, (size, pad) in enumerate(zip((height, width), pads)):
        if pad == (0, 0):
            continue
        axis_mode = mode
        if mode == "reflect" and max(pad) > size - 1:
            axis_mode = "edge"
        widths = lead + [pad if axis == 0 else (0, 0), pad if axis == 1 else (0, 0), (0, 0)]
        array = xp.pad(array, widths, mode=axis_mode)
    return array, crop


def crop_back(image: Any, crop: Crop) -> Any:
    """Undoes :func:`pad_to_multiple`: cuts ``crop`` out of ``(H, W, C)`` or ``(N, H, W, C)``."""
    if not isinstance(crop, Crop):
        raise ValueError(f"crop must be the Crop returned by pad_to_multiple, got {type(crop).__name__}.")
    shape = np.shape(image)
    if len(shape) not in (3, 4):
        raise ValueError(f"crop_back needs (H, W, C) or (N, H, W, C), got shape {shape}.")
    if crop.top + crop.height > shape[-3] or crop.left + crop.width > shape[-2]:
        raise ValueError(
            f"crop {crop} does not fit inside an image of shape {shape}; "
            "pass the padded image that pad_to_multiple returned with this crop."
        )
    return image[..., crop.top : crop.top + crop.height, crop.left : crop.left + crop.width, :]


def to_batch(images: Sequence[Any]) -> np.ndarray:
    """Stacks ``(H, W, C)`` images into float32 ``(N, H, W, C)``.

    Raises:
      ValueError: no images, an image that is not 3-D, or images whose shapes differ.
    """
    arrays = [np.asarray(image) for image in images]
    if not arrays:
        raise ValueError("to_batch needs at least one image, got an empty sequence.")
    for index, array in enumerate(arrays):
        if array.ndim != 3:
            raise ValueError(f"to_batch needs (H, W, C) images; image {index} has shape {array.shape}.")
    shapes = [array.shape for array in arrays]
    if len(set(shapes)) > 1:
        listing = ", ".join(f"image {i}: {'x'.join(map(str, s))}" for i, s in enumerate(shapes))
        raise ValueError(
            f"to_batch needs images of one size and channel count (H x W x C), got {listing}; "
            "crop or resize them to a common size (and convert grey/RGB to match) first."
        )
    return np.stack(arrays).astype(np.float32, copy=False)
