"""Image files <-> arrays: the only place where files become arrays and back.

Contract
--------
* In memory an image is ``float32`` with values in ``[0, 1]``, shaped
  ``(H, W, C)`` (one image) or ``(N, H, W, C)`` (a batch), ``C`` in ``{1, 3}``
  (greyscale or RGB). Alpha never travels inside the image: ``load_image``
  returns it separately as ``float32 (H, W, 1)`` and ``save_image`` takes it
  as a keyword argument, so the models only ever see grey or RGB.
* ``load_image`` reads anything Pillow can identify (PNG, TIFF, JPEG, BMP,
  GIF, WebP, PNM...), first frame only, and normalises it:

  ==================================  =============================  =========
  file pixel mode (Pillow name)       ``image`` channels / ``alpha``  bit depth
  ==================================  =============================  =========
  ``1``, ``L``                        1 / None                        8
  ``LA`` (``La``)                     1 / alpha                       8 or 16
  ``I;16``, ``I;16B``, ``I;16L``      1 / None                        16
  ``I`` (values within 0..65535)      1 / None                        16
  ``RGB``, ``RGBX``, ``YCbCr``        3 / None                        8 or 16
  ``RGBA`` (``RGBa``)                 3 / alpha                       8 or 16
  ``P``, ``PA`` (palette)             3 / alpha if transparent        8
  ``CMYK``                            3 / None (Pillow's conversion)  8
  ==================================  =============================  =========

  A PNG/TIFF ``transparency`` colour key becomes an alpha channel. The EXIF
  orientation tag is applied, so arrays are upright as viewers show them.
  Colour profiles (ICC) are ignored. Floating-point (``F``), ``LAB``,
  ``HSV`` and other modes raise :class:`ImageIOError`.
* Size limit: ``load_image`` refuses images above ``max_pixels`` (default
  64 million) after reading only the header, so decompression bombs never
  get decoded. Pillow's own ``Image.MAX_IMAGE_PIXELS`` check is set to the
  same limit for the call and its warning is turned into the same
  :class:`ImageIOError`. That global (and ``ImageFile.LOAD_TRUNCATED_IMAGES``,
  forced off so truncated files fail) is set per call under a lock and
  restored afterwards; code using Pillow directly in another thread at that
  moment sees these values.
* 16-bit colour: Pillow keeps only the high byte of 16-bit RGB/RGBA/LA PNGs,
  so those are decoded twice through Pillow's own PNG decoder (high bytes,
  then low bytes); 16-bit colour TIFFs are read and written with
  ``tifffile`` (a scikit-image dependency); 16-bit colour PNGs are written
  by a small encoder here. 8-bit files and 16-bit greyscale use Pillow.
* ``save_image`` quantises ``round(clip(x, 0, 1) * (2**bit_depth - 1))``, so an
  8/16-bit file loaded and saved again at its own bit depth is unchanged.
  It refuses NaN/inf, creates missing parent directories and writes
  atomically (a temporary file in the target directory, then ``os.replace``),
  so a crash never leaves a half-written image under the final name.
  Formats by extension: ``.png`` (8/16 bit, alpha), ``.tif``/``.tiff``
  (8/16 bit, alpha), ``.jpg``/``.jpeg`` (8 bit, no alpha, quality 95, no
  chroma subsampling).
* Masks (``load_mask``) are ``float32 (H, W, 1)`` with values in ``{0, 1}``;
  1 marks a known pixel and 0 a missing one, as in the original DIP code.
* Every problem with a file (missing, empty, truncated, not an image, zero
  sized, too large, unsupported mode, NaN data, unwritable location) raises
  :class:`ImageIOError` (a ``ValueError``) with one sentence naming the file,
  what is wrong and what to do. Wrong arguments (shapes, dtypes, bit depths)
  raise plain ``ValueError``.
* ``pad_to_multiple`` / ``crop_back`` pad ``(H, W, C)`` or ``(N, H, W, C)``
  arrays (NumPy or JAX; JAX inputs stay JAX and are jit/vmap friendly) so H
  and W are multiples of the network's total stride, and undo it exactly.
  Deliberate difference from the original DIP code, which crops images to a
  multiple of 32 (``crop_image(img, d=32)``) and so loses border pixels: we
  pad instead, so every output pixel corresponds to an input pixel.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import struct
import tempfile
import threading
import uuid
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

__all__ = [
    "Crop",
    "ImageIOError",
    "LoadedImage",
    "crop_back",
    "load_image",
    "load_mask",
    "pad_to_multiple",
    "save_image",
    "to_batch",
]

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


# --------------------------------------------------------------------------- loading


def load_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Reads an image file into float32 ``(H, W, C)`` in ``[0, 1]`` (see the module docstring).

    Args:
      path: the file to read.
      max_pixels: refuse images with more than this many pixels (H * W) before
        decoding them; None disables the limit.

    Raises:
      ImageIOError: the file is missing, empty, not an image, truncated or
        corrupt, zero sized, larger than ``max_pixels``, or in a pixel mode
        that has no grey/RGB meaning.
    """
    if max_pixels is not None and (not isinstance(max_pixels, int) or max_pixels < 1):
        raise ValueError(f"max_pixels must be a positive int or None, got {max_pixels!r}.")
    name = os.fspath(path)
    _check_readable_file(name)
    with _PIL_GLOBALS_LOCK:
        saved_limit, saved_truncated = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                return _load_locked(name, max_pixels)
        finally:
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved_limit, saved_truncated


def _check_readable_file(name: str) -> None:
    if not os.path.exists(name):
        raise ImageIOError(f"Cannot read image {name!r}: the file does not exist; check the path.")
    if os.path.isdir(name):
        raise ImageIOError(
            f"Cannot read image {name!r}: it is a directory, not a file; give the path of an image file."
        )
    try:
        size = os.path.getsize(name)
    except OSError as err:
        raise ImageIOError(
            f"Cannot read image {name!r}: {err.strerror or err}; check the path and its permissions."
        ) from err
    if not os.path.isfile(name):  # a FIFO or device would block or stream forever
        raise ImageIOError(
            f"Cannot read image {name!r}: it is not a regular file (a pipe, socket or device); "
            "save the image to a file and give its path."
        )
    if size == 0:
        raise ImageIOError(f"Cannot read image {name!r}: the file is empty (0 bytes); re-export or re-copy it.")


def _too_large_error(name: str, width: int, height: int, max_pixels: int | None) -> ImageIOError:
    what = f"Cannot read image {name!r}: it is {height} x {width} (H x W) = {width * height:,} pixels, more than"
    return ImageIOError(
        f"{what} max_pixels={max_pixels:,}; resize or crop it first, or raise max_pixels.",
        cli_message=f"{what} the {max_pixels:,} pixels dip-jax fits; resize or crop it first.",
    )


def _load_locked(name: str, max_pixels: int | None) -> LoadedImage:
    tiff16 = _load_tiff16_colour(name, max_pixels)
    if tiff16 is not None:
        return tiff16
    # Opening reads only the header. Pillow's own bomb check is off for it so
    # that ours, which can name the height and width, decides; it is back on,
    # at max_pixels, while decoding (Pillow re-checks the frames of animated
    # formats there). Above the limit Pillow warns, and above twice the limit
    # it raises; the warning is an error here, so both become ImageIOError.
    Image.MAX_IMAGE_PIXELS = None
    try:
        pil = Image.open(name)
    except UnidentifiedImageError as err:
        raise ImageIOError(_unidentified_message(name)) from err
    except PermissionError as err:
        raise ImageIOError(f"Cannot read image {name!r}: permission denied; check the file's permissions.") from err
    except Exception as err:  # Pillow plugins raise many types for corrupt headers
        raise ImageIOError(_corrupt_message(name, err)) from err
    with pil:
        width, height = pil.size
        if width == 0 or height == 0:
            raise ImageIOError(
                f"Cannot read image {name!r}: it has zero width or height ({height} x {width}, H x W); "
                "re-export it with some pixels in it."
            )
        if max_pixels is not None and width * height > max_pixels:
            raise _too_large_error(name, width, height, max_pixels)
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            samples, max_value, reported_mode = _decode(pil, name)
            orientation = _exif_orientation(pil)
        except ImageIOError:
            raise
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
            raise ImageIOError(_bomb_message(name, err, max_pixels),
                               cli_message=_bomb_message(name, err, max_pixels, cli=True)) from err
        except MemoryError:
            raise
        except Exception as err:  # truncated/corrupt data surfaces as OSError, SyntaxError, zlib errors...
            raise ImageIOError(_corrupt_message(name, err)) from err
    return _finish(name, samples, max_value, orientation, reported_mode)


def _finish(name: str, samples: np.ndarray, max_value: int, orientation: int, reported_mode: str) -> LoadedImage:
    samples = _apply_orientation(samples, orientation)
    colour, alpha = _split_alpha(samples)
    scale = np.float32(max_value)
    return LoadedImage(
        image=np.ascontiguousarray(colour, dtype=np.float32) / scale,
        alpha=None if alpha is None else np.ascontiguousarray(alpha, dtype=np.float32) / scale,
        bit_depth=8 if max_value == 255 else 16,
        mode=reported_mode,
        path=name,
    )


def _bomb_message(name: str, err: BaseException, max_pixels: int | None, *, cli: bool = False) -> str:
    # Pillow's message states the pixel count but, above twice the limit, quotes
    # twice our limit; restate it in terms of max_pixels.
    found = re.search(r"Image size \((\d+) pixels\)", str(err))
    pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    limit = "its limit" if max_pixels is None else f"max_pixels={max_pixels:,}"
    if cli:
        return f"Cannot read image {name!r}: it has {pixels}, more than dip-jax fits; resize or crop it first."
    return (
        f"Cannot read image {name!r}: it has {pixels}, more than {limit}; "
        "resize or crop it first, or raise max_pixels."
    )


def _unidentified_message(name: str) -> str:
    with open(name, "rb") as handle:
        head = handle.read(32)
    if head.startswith(_PNG_SIGNATURE) and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        if width == 0 or height == 0:
            return (
                f"Cannot read image {name!r}: the PNG header says it has zero width or height "
                f"({height} x {width}, H x W); re-export it with some pixels in it."
            )
        return f"Cannot read image {name!r}: its PNG header is corrupt; re-export or re-download the file."
    return (
        f"Cannot read image {name!r}: it is not an image format Pillow can read; "
        "check that the path points at an image (PNG, JPEG, TIFF, ...)."
    )


def _corrupt_message(name: str, err: BaseException) -> str:
    detail = str(err) or type(err).__name__
    return (
        f"Cannot read image {name!r}: its pixel data could not be decoded (the file may be truncated or corrupt: "
        f"{detail}); re-export or re-download it."
    )


def _unsupported_message(name: str, mode: str) -> str:
    return (
        f"Cannot read image {name!r}: its pixel mode {mode!r} has no greyscale/RGB meaning dip_jax can use; "
        "convert it to an 8- or 16-bit greyscale or RGB PNG."
    )


def _decode(pil: Image.Image, name: str) -> tuple[np.ndarray, int, str]:
    """Returns integer samples (H, W, K) (K = channels incl. alpha), their max value and the mode to report."""
    mode = pil.mode
    rawmode = _first_tile_rawmode(pil)
    if pil.format == "PNG" and rawmode in ("RGB;16B", "RGBA;16B", "LA;16B"):
        samples = _decode_png16_colour(pil, rawmode)
        if rawmode == "RGB;16B":
            samples = _with_colour_key(samples, pil.info.get("transparency"))
        return samples, 65535, "LA" if rawmode == "LA;16B" else mode

    pil.load()
    transparency = pil.info.get("transparency")
    if mode in ("1", "L"):
        samples = np.asarray(pil.convert("L"))[..., None]
        return _with_colour_key(samples, transparency), 255, mode
    if mode in ("LA", "La"):
        return np.asarray(pil.convert("LA") if mode == "La" else pil), 255, mode
    if mode.startswith("I;16"):
        samples = np.asarray(pil).astype(np.uint16)[..., None]
        return _with_colour_key(samples, transparency), 65535, mode
    if mode == "I":
        samples = np.asarray(pil)
        if samples.size and (samples.min() < 0 or samples.max() > 65535):
            raise ImageIOError(
                f"Cannot read image {name!r}: it holds 32-bit integers outside 0..65535 "
                f"(min {samples.min()}, max {samples.max()}); rescale it to an 8- or 16-bit image."
            )
        return _with_colour_key(samples.astype(np.uint16)[..., None], transparency), 65535, mode
    if mode in ("RGB", "RGBX", "YCbCr", "CMYK"):
        samples = np.asarray(pil if mode == "RGB" else pil.convert("RGB"))
        return _with_colour_key(samples, transparency if mode == "RGB" else None), 255, mode
    if mode in ("RGBA", "RGBa"):
        return np.asarray(pil if mode == "RGBA" else pil.convert("RGBA")), 255, mode
    if mode in ("P", "PA"):
        palette_has_alpha = pil.palette is not None and pil.palette.mode == "RGBA"
        has_alpha = mode == "PA" or "transparency" in pil.info or palette_has_alpha
        return np.asarray(pil.convert("RGBA" if has_alpha else "RGB")), 255, mode
    raise ImageIOError(_unsupported_message(name, mode))


def _first_tile_rawmode(pil: Image.Image) -> str | None:
    if not getattr(pil, "tile", None):
        return None
    args = pil.tile[0].args
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


def _decode_png16_colour(pil: Image.Image, rawmode: str) -> np.ndarray:
    # Pillow unfilters 16-bit PNG rows correctly but its unpackers keep only the
    # high byte. Decoding the same stream with the little-endian unpacker picks
    # the low bytes instead; for grey+alpha the 8-bit RGBA unpacker has the same
    # 4 bytes per pixel and returns (L hi, L lo, A hi, A lo).
    tile = pil.tile[0]
    if rawmode == "LA;16B":
        pil.tile = [tile._replace(args="RGBA")]
        pil.load()
        raw = np.asarray(pil).astype(np.uint16)
        return np.stack([raw[..., 0] * 256 + raw[..., 1], raw[..., 2] * 256 + raw[..., 3]], axis=-1)
    pil.load()
    high = np.asarray(pil).astype(np.uint16)
    with Image.open(pil.filename) as again:
        again.tile = [again.tile[0]._replace(args=rawmode.replace(";16B", ";16L"))]
        again.load()
        low = np.asarray(again).astype(np.uint16)
    return high * 256 + low


def _load_tiff16_colour(name: str, max_pixels: int | None) -> LoadedImage | None:
    """Reads 16-bit TIFFs with several samples per pixel, which Pillow truncates or rejects.

    Returns None for every other file (including TIFFs tifffile cannot parse,
    which then get Pillow's diagnosis).
    """
    with open(name, "rb") as handle:
        if handle.read(4) not in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
            return None
    import tifffile  # only needed for TIFFs

    try:
        tiff = tifffile.TiffFile(name)
    except Exception:
        return None
    with tiff:
        if not tiff.pages:
            return None
        page = tiff.pages[0]
        if page.sampleformat == tifffile.SAMPLEFORMAT.IEEEFP:
            raise ImageIOError(
                f"Cannot read image {name!r}: it is a TIFF of {page.bitspersample}-bit floating-point samples; "
                "dip_jax reads 8- and 16-bit integer images: convert it to a 16-bit TIFF or PNG."
            )
        if page.bitspersample != 16 or page.samplesperpixel < 2:
            return None
        height, width = page.imagelength, page.imagewidth
        if height == 0 or width == 0:
            raise ImageIOError(
                f"Cannot read image {name!r}: it has zero width or height ({height} x {width}, H x W); "
                "re-export it with some pixels in it."
            )
        if max_pixels is not None and width * height > max_pixels:
            raise _too_large_error(name, width, height, max_pixels)
        photometric, axes = page.photometric, page.axes
        orientation_tag = page.tags.get(274)
        try:
            samples = page.asarray()
        except MemoryError:
            raise
        except Exception as err:
            if "imagecodecs" in str(err):  # tifffile decodes only zlib/lzma itself (not LZW, JPEG, PackBits...)
                raise ImageIOError(
                    f"Cannot read image {name!r}: it is a 16-bit colour TIFF with {page.compression.name} "
                    "compression, which needs the 'imagecodecs' package; install it (pip install imagecodecs) "
                    "or re-save the image as PNG or as an uncompressed TIFF."
                ) from err
            raise ImageIOError(_corrupt_message(name, err)) from err
    if axes.startswith("S"):  # planar configuration: samples first
        samples = np.moveaxis(samples, 0, -1)
    channels = samples.shape[-1]
    supported = (photometric == tifffile.PHOTOMETRIC.RGB and channels in (3, 4)) or (
        photometric == tifffile.PHOTOMETRIC.MINISBLACK and channels == 2
    )
    if samples.dtype != np.uint16 or samples.ndim != 3 or not supported:
        raise ImageIOError(_unsupported_message(name, f"16-bit {photometric.name} with {channels} samples per pixel"))
    orientation = orientation_tag.value if orientation_tag is not None else 1
    orientation = orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1
    reported_mode = {2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    return _finish(name, samples, 65535, orientation, reported_mode)


def _with_colour_key(samples: np.ndarray, transparency: Any) -> np.ndarray:
    """Turns a PNG/TIFF transparency colour key into an alpha channel."""
    channels = samples.shape[-1]
    if channels == 1 and isinstance(transparency, int):
        key = np.array([transparency])
    elif channels == 3 and isinstance(transparency, tuple) and len(transparency) == 3:
        key = np.array(transparency)
    else:
        return samples
    max_value = np.iinfo(samples.dtype).max if samples.dtype.kind == "u" else 65535
    opaque = np.any(samples != key, axis=-1, keepdims=True)
    return np.concatenate([samples, np.where(opaque, max_value, 0).astype(samples.dtype)], axis=-1)


def _exif_orientation(pil: Image.Image) -> int:
    try:
        orientation = pil.getexif().get(0x0112, 1)
    except Exception:  # a damaged EXIF block should not make the pixels unreadable
        return 1
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def _apply_orientation(samples: np.ndarray, orientation: int) -> np.ndarray:
    """Same result as PIL.ImageOps.exif_transpose, on (H, W, K) arrays of any dtype."""
    if orientation == 2:
        return samples[:, ::-1]
    if orientation == 3:
        return samples[::-1, ::-1]
    if orientation == 4:
        return samples[::-1]
    if orientation == 5:
        return samples.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(samples, k=-1)
    if orientation == 7:
        return samples[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(samples, k=1)
    return samples


def _split_alpha(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    channels = samples.shape[-1]
    if channels in (2, 4):
        return samples[..., :-1], samples[..., -1:]
    return samples, None


def load_mask(path: str | os.PathLike, *, shape: Sequence[int] | None = None, count_grey: bool = False):
    """Reads a mask image as float32 ``(H, W, 1)`` with values in ``{0, 1}`` (1 = known pixel).

    The file is read with :func:`load_image`; colour masks are reduced to
    luma (ITU-R 601: 0.299 R + 0.587 G + 0.114 B) and thresholded at 0.5
    (``grey >= 0.5`` is 1). A mask's alpha channel is ignored: draw masks as
    opaque black (missing) and white (known) images.

    Args:
      path: the mask file.
      shape: the shape of the image the mask goes with, ``(H, W)``, ``(H, W, C)``
        or ``(N, H, W, C)``; the mask's height and width must match it.

      count_grey: also return how many pixels were neither black nor white
        (so a caller can say that they were thresholded): ``(mask, count)``.

    Raises:
      ImageIOError: the file cannot be read, or its size differs from ``shape``.
    """
    loaded = load_image(path)
    grey = loaded.image
    if grey.shape[-1] == 3:
        grey = grey @ np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None]
    mask = (grey >= 0.5).astype(np.float32)
    in_between = int(np.count_nonzero(np.any((loaded.image > 0) & (loaded.image < 1), axis=-1)))
    if shape is not None:
        expected = tuple(int(s) for s in shape)
        if len(expected) == 4:
            expected = expected[1:3]
        elif len(expected) in (2, 3):
            expected = expected[:2]
        else:
            raise ValueError(f"shape must be (H, W), (H, W, C) or (N, H, W, C); got {tuple(shape)}.")
        if mask.shape[:2] != expected:
            raise ImageIOError(
                f"Mask {loaded.path!r} is {mask.shape[0]} x {mask.shape[1]} (H x W) but the image is "
                f"{expected[0]} x {expected[1]}; use a mask of the same size as the image."
            )
    return (mask, in_between) if count_grey else mask


# --------------------------------------------------------------------------- saving


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

    extension = Path(name).suffix.lower()
    file_format = _SAVE_FORMATS.get(extension)
    if file_format is None:
        raise ImageIOError(
            f"Cannot write image {name!r}: unsupported extension {extension or '(none)'!r}; "
            "use .png (8/16-bit, alpha), .tif (8/16-bit, alpha) or .jpg (8-bit)."
        )
    if file_format == "JPEG" and (bit_depth != 8 or alpha_pixels is not None):
        problem = "16 bits per sample" if bit_depth != 8 else "an alpha channel"
        raise ImageIOError(f"Cannot write image {name!r}: JPEG cannot store {problem}; save it as .png or .tif.")

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
    extension = Path(name).suffix.lower()
    file_format = _SAVE_FORMATS.get(extension)
    if file_format is None:
        raise ImageIOError(
            f"Cannot write image {name!r}: unsupported extension {extension or '(none)'!r}; "
            "use .png (8/16-bit, alpha), .tif (8/16-bit, alpha) or .jpg (8-bit)."
        )
    if file_format == "JPEG" and (bit_depth != 8 or alpha):
        problem = "16 bits per sample" if bit_depth != 8 else "an alpha channel"
        raise ImageIOError(
            f"Cannot write image {name!r}: the result has {problem}, which JPEG cannot store; "
            "save it as .png or .tif."
        )
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


# --------------------------------------------------------------------------- shapes


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
