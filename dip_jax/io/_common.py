"""What reading and writing share: limits, formats, the error type and the small records."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np

DEFAULT_MAX_PIXELS = 64_000_000

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SAVE_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG"}

# Pillow's decompression-bomb limit and truncated-image switch are module
# globals; loads temporarily set them to this call's values, so they are
# serialised through this lock.
_PIL_GLOBALS_LOCK = threading.Lock()


class ImageIOError(ValueError):
    """A file could not be read or written as an image (message says why and what to do).

    `cli_message`, when set, is the same diagnosis in the command line's terms
    (the `dip-jax` command prints it instead of the library's advice).
    """

    def __init__(self, message: str, *, cli_message: str | None = None):
        super().__init__(message)
        self.cli_message = cli_message


@dataclasses.dataclass(frozen=True)
class LoadedImage:
    """An image read from a file.

    Attributes:
      image: float32 ``(H, W, C)`` in ``[0, 1]``, ``C`` in ``{1, 3}``.
      alpha: float32 ``(H, W, 1)`` in ``[0, 1]`` if the file has transparency, else None.
      bit_depth: 8 or 16, the precision of the stored samples.
      mode: Pillow's name for the file's pixel layout (``"RGB"``, ``"P"``, ``"I;16"``...);
        16-bit colour files Pillow cannot represent are named by their layout
        (``"LA"``, ``"RGB"``, ``"RGBA"``), with ``bit_depth`` 16.
      path: the path it was read from.
    """

    image: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int
    mode: str
    path: str


@dataclasses.dataclass(frozen=True)
class Crop:
    """Where the original image lies inside a padded one (pixels, in the padded image)."""

    top: int
    left: int
    height: int
    width: int
