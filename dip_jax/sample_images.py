"""Sample photographs that work offline, right after ``pip install``.

Contract: ``sample_image(name)`` returns float32 ``(H, W, C)`` in ``[0, 1]``
with ``C = 3`` by default (greyscale photographs are repeated into three
channels) or ``C = 1`` with ``channels=1`` (colour photographs reduced to
ITU-R 601 luma). With ``size=S`` the image is centre-cropped to a square and
resized to ``(S, S)`` with a Lanczos filter, computed in float32 so the result
is not quantised to 8 bits.

The pictures are the test images bundled inside the scikit-image wheel
(``skimage/data/*.png|jpg``), read through ``skimage.data``. Only images that
ship in the wheel are listed: the others in ``skimage.data`` need ``pooch`` and
a network download. Only pictures whose scikit-image docstring states a
licence are listed: all are public domain or CC0 (see each description).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

__all__ = ["describe_sample_image", "list_sample_images", "sample_image"]


@dataclasses.dataclass(frozen=True)
class _Sample:
    loader: str  # name of the skimage.data function
    description: str


_SAMPLES: dict[str, _Sample] = {
    "astronaut": _Sample(
        "astronaut",
        "RGB 512x512, astronaut Eileen Collins (NASA, public domain).",
    ),
    "camera": _Sample(
        "camera",
        "grey 512x512, man with a camera (Lav Varshney, CC0).",
    ),
    "chelsea": _Sample(
        "chelsea",
        "RGB 300x451, Chelsea the cat (Stefan van der Walt, CC0).",
    ),
    "coffee": _Sample(
        "coffee",
        "RGB 400x600, coffee cup (Rachel Michetti, courtesy of Pikolo Espresso Bar, CC0).",
    ),
    "coins": _Sample(
        "coins",
        "grey 303x384, Greek coins from Pompeii (Brooklyn Museum, no known copyright restrictions).",
    ),
    "rocket": _Sample(
        "rocket",
        "RGB 427x640, DSCOVR launch on Falcon 9 (SpaceX, public domain).",
    ),
}

_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def list_sample_images() -> tuple[str, ...]:
    """Names accepted by :func:`sample_image`, sorted."""
    return tuple(sorted(_SAMPLES))


def describe_sample_image(name: str) -> str:
    """One line: colour, native size, subject and credit/licence."""
    return _lookup(name).description


def sample_image(name: str = "astronaut", *, size: int | None = None, channels: int = 3) -> np.ndarray:
    """Returns a bundled photograph as float32 ``(H, W, channels)`` in ``[0, 1]``.

    Args:
      name: one of :func:`list_sample_images`.
      size: if given, centre-crop to a square and resize to ``(size, size)`` (Lanczos).
      channels: 3 (RGB; grey images repeated) or 1 (grey; colour images reduced to luma).

    Raises:
      ValueError: unknown name, bad size or channels.
    """
    sample = _lookup(name)
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1):
        raise ValueError(f"size must be a positive int (the side of the square output) or None, got {size!r}.")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}.")

    import skimage.data  # deferred: importing scikit-image costs time that most callers don't need

    pixels = np.asarray(getattr(skimage.data, sample.loader)())
    image = pixels.astype(np.float32) / np.float32(255.0)
    if image.ndim == 2:
        image = image[..., None]
    if size is not None:
        image = _centre_square(image)
        image = _resize_lanczos(image, int(size))
    if channels == 3 and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    elif channels == 1 and image.shape[-1] == 3:
        image = image @ _LUMA_WEIGHTS[:, None]
    return np.ascontiguousarray(image, dtype=np.float32)


def _lookup(name: str) -> _Sample:
    try:
        return _SAMPLES[name]
    except KeyError:
        raise ValueError(
            f"unknown sample image {name!r}; choose one of {', '.join(list_sample_images())}."
        ) from None


def _centre_square(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top : top + side, left : left + side]


def _resize_lanczos(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    resized = [
        np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c])).resize((size, size), Image.Resampling.LANCZOS))
        for c in range(image.shape[-1])
    ]
    # Lanczos overshoots near sharp edges; clip to keep the [0, 1] contract.
    return np.clip(np.stack(resized, axis=-1), 0.0, 1.0)
