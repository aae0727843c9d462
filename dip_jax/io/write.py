"""Writing float32 arrays to image files, and checking beforehand that a write will work."""

from __future__ import annotations

import io
import os
import struct
import tempfile
import uuid
import zlib
from pathlib import Path
from typing import Any, Literal

import jax.numpy as jnp
import numpy as np
from PIL import Image

from dip_jax.io._common import _PNG_SIGNATURE, _SAVE_FORMATS, ImageIOError


def save_image(
    path: str | os.PathLike,
    image: Any,
    *,
    bit_depth: Literal[8, 16] = 8,
    alpha: Any = None,
) -> None:
    """Writes float ``(H, W, C)`` or ``(1, H, W, C)`` in ``[0, 1]`` (C in {1, 3}) to an image file.

    Values are clipped to ``[0, 1]`` and rounded to the nearest level.
    The format comes from the extension (``.png``, ``.tif``/``.tiff``,
    ``.jpg``/``.jpeg``); missing parent directories are created and the file
    is written atomically.

    Args:
      path: the file to write (replaced if it exists).
      image: the pixels (NumPy or JAX array, floating point).
      bit_depth: 8 or 16 bits per sample (16 only for PNG and TIFF).
      alpha: optional transparency, ``(H, W)``, ``(H, W, 1)`` or ``(1, H, W, 1)``
        floats in ``[0, 1]`` (PNG and TIFF only).

    Raises:
      ValueError: bad shape, dtype or bit_depth.
      ImageIOError: non-finite values, an unsupported extension or
        combination (JPEG with alpha or 16 bits), or the file cannot be written.
    """
    name = os.fspath(path)
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth!r}.")
    pixels = _as_single_image(image, "image")
    if pixels.shape[-1] not in (1, 3):
        hint = (
            " pass the alpha channel separately: save_image(path, image[..., :3], alpha=image[..., 3:])."
            if pixels.shape[-1] == 4
            else " give a greyscale (C=1) or RGB (C=3) image."
        )
        raise ValueError(f"save_image needs 1 or 3 channels, got shape {pixels.shape};{hint}")
    alpha_pixels = None
    if alpha is not None:
        alpha_pixels = _as_single_image(alpha[..., None] if np.ndim(alpha) == 2 else alpha, "alpha")
        if alpha_pixels.shape != pixels.shape[:2] + (1,):
            raise ValueError(
                f"alpha must be (H, W) or (H, W, 1) matching the image's {pixels.shape[:2]}, "
                f"got shape {np.shape(alpha)}."
            )
    for label, values in (("image", pixels), ("alpha", alpha_pixels)):
        if values is not None and not np.all(np.isfinite(values)):
            count = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
            raise ImageIOError(
                f"Refusing to write {name!r}: the {label} has {count} NaN or infinite values; "
                "fix the computation that produced it (a NaN image is never written)."
            )

    file_format = _file_format(name, bit_depth=bit_depth, alpha=alpha_pixels is not None)

    max_value = 255 if bit_depth == 8 else 65535
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    samples = _quantise(pixels, max_value, dtype)
    if alpha_pixels is not None:
        samples = np.concatenate([samples, _quantise(alpha_pixels, max_value, dtype)], axis=-1)

    if bit_depth == 16 and samples.shape[-1] > 1:
        encode = _png16_encoder(samples) if file_format == "PNG" else _tiff16_encoder(samples)
    else:
        encode = _pillow_encoder(samples, file_format)
    _write_atomically(name, encode)


def check_can_save(path: str | os.PathLike, *, channels: int = 3, bit_depth: int = 8, alpha: bool = False) -> None:
    """Checks, before any work, that :func:`save_image` will be able to write such an image to ``path``.

    Checks the extension and whether its format holds ``bit_depth`` and an
    alpha channel, that ``path`` is not a folder, and that its folder exists
    or can be created and is writable (by writing and removing a probe
    file). Nothing is left behind.

    Raises:
      ImageIOError: what :func:`save_image` would raise, said before the work.
    """
    name = os.fspath(path)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3 (alpha is separate), got {channels!r}.")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth!r}.")
    _file_format(name, bit_depth=bit_depth, alpha=alpha)
    if os.path.isdir(name):
        raise ImageIOError(f"Cannot write image {name!r}: it is a folder; give a file name such as result.png.")
    check_writable_folder(Path(name).parent, what=f"image {name!r}")


def check_writable_folder(folder: str | os.PathLike, *, what: str | None = None) -> None:
    """Checks that ``folder`` is (or can be created as) a writable folder, leaving nothing behind.

    Raises:
      ImageIOError: a part of the path is a file, or the nearest existing
        folder cannot be written.
    """
    folder = Path(os.fspath(folder) or ".")
    label = what or f"into folder {str(folder)!r}"
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ImageIOError(
            f"Cannot write {label}: {str(existing)!r} is a file, not a folder; choose another location."
        )
    try:
        probe = tempfile.NamedTemporaryFile(dir=existing, prefix=".dip_jax_probe_", delete=True)
    except OSError as err:
        raise ImageIOError(
            f"Cannot write {label}: {str(existing)!r} is not writable ({err.strerror or err}); "
            "choose a writable location."
        ) from err
    probe.close()


def _file_format(name: str, *, bit_depth: int, alpha: bool) -> str:
    """Pillow's format name for `name`'s extension, or ImageIOError when it cannot hold such an image."""
    extension = Path(name).suffix.lower()
    file_format = _SAVE_FORMATS.get(extension)
    if file_format is None:
        raise ImageIOError(
            f"Cannot write image {name!r}: unsupported extension {extension or '(none)'!r}; "
            "use .png (8/16-bit, alpha), .tif (8/16-bit, alpha) or .jpg (8-bit)."
        )
    if file_format == "JPEG" and (bit_depth != 8 or alpha):
        problem = "16 bits per sample" if bit_depth != 8 else "an alpha channel"
        raise ImageIOError(f"Cannot write image {name!r}: JPEG cannot store {problem}; save it as .png or .tif.")
    return file_format


def _as_single_image(values: Any, label: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    elif array.ndim == 4:
        raise ValueError(
            f"save_image writes one image but {label} is a batch of {array.shape[0]} (shape {array.shape}); "
            "save each image[i] to its own file."
        )
    if array.ndim != 3:
        raise ValueError(
            f"{label} must be (H, W, C) or (1, H, W, C), got shape {array.shape}; "
            "add a channel axis with x[..., None]."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{label} has zero height or width (shape {array.shape}); there is nothing to save.")
    if not jnp.issubdtype(array.dtype, jnp.floating):  # jnp also knows bfloat16
        raise ValueError(
            f"{label} must hold floats in [0, 1], got dtype {array.dtype}; "
            "convert integers first, e.g. x.astype(np.float32) / 255."
        )
    return array.astype(np.float32, copy=False) if array.dtype.kind != "f" else array


def _quantise(values: np.ndarray, max_value: int, dtype: type) -> np.ndarray:
    scaled = np.clip(values.astype(np.float64), 0.0, 1.0) * max_value
    return np.rint(scaled).astype(dtype)


def _pillow_encoder(samples: np.ndarray, file_format: str):
    channels = samples.shape[-1]
    if samples.dtype == np.uint16:  # one channel: Pillow stores 16-bit grey natively (mode I;16)
        pil = Image.fromarray(samples[..., 0].astype("<u2"))
    else:
        pil = Image.fromarray(samples[..., 0] if channels == 1 else samples)
    options: dict[str, Any] = {"format": file_format}
    if file_format == "JPEG":
        options.update(quality=95, subsampling=0)

    def encode(handle) -> None:
        pil.save(handle, **options)

    return encode


def _png16_encoder(samples: np.ndarray):
    # Pillow cannot write 16-bit colour PNGs; this writes the minimal valid file
    # (IHDR, one IDAT with the "Up" filter on every row, IEND).
    height, width, channels = samples.shape
    colour_type = {2: 4, 3: 2, 4: 6}[channels]
    rows = samples.astype(">u2").reshape(height, width * channels).view(np.uint8)
    up_filtered = np.empty_like(rows)
    up_filtered[0] = rows[0]
    up_filtered[1:] = rows[1:] - rows[:-1]  # uint8 arithmetic wraps mod 256 as PNG requires
    scanlines = np.concatenate([np.full((height, 1), 2, dtype=np.uint8), up_filtered], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    def encode(handle) -> None:
        handle.write(_PNG_SIGNATURE)
        handle.write(chunk(b"IHDR", header))
        handle.write(chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 9)))
        handle.write(chunk(b"IEND", b""))

    return encode


def _tiff16_encoder(samples: np.ndarray):
    import tifffile  # only needed for 16-bit colour TIFFs

    channels = samples.shape[-1]
    options: dict[str, Any] = {"photometric": "rgb" if channels >= 3 else "minisblack", "compression": "zlib"}
    if channels in (2, 4):
        options["extrasamples"] = ["unassalpha"]

    def encode(handle) -> None:
        # tifffile wants a named file or a seekable buffer, not a raw descriptor.
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, samples, **options)
        handle.write(buffer.getvalue())

    return encode


def _write_atomically(name: str, encode) -> None:
    target = Path(name)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ImageIOError(
            f"Cannot write image {name!r}: its directory could not be created ({err.strerror or err}); "
            "choose a writable location."
        ) from err
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        # os.open with 0o666 lets the umask decide the final permissions, as for a plain open().
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as err:
        raise ImageIOError(
            f"Cannot write image {name!r}: {err.strerror or err}; choose a writable location."
        ) from err
    try:
        with os.fdopen(descriptor, "wb") as handle:
            encode(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException as err:
        temporary.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise ImageIOError(
                f"Cannot write image {name!r}: {err.strerror or err}; check free space and permissions."
            ) from err
        raise
