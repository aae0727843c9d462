"""Reading image and mask files into float32 arrays (see `dip_jax.io` for the contract)."""

from __future__ import annotations

import os
import re
import struct
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from dip_jax.io._common import (
    _PIL_GLOBALS_LOCK,
    _PNG_SIGNATURE,
    DEFAULT_MAX_PIXELS,
    ImageIOError,
    LoadedImage,
)


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


def _check_size(name: str, height: int, width: int, max_pixels: int | None) -> None:
    """Refuse, from the header alone, an image with no pixels or with more than `max_pixels`."""
    if width == 0 or height == 0:
        raise ImageIOError(
            f"Cannot read image {name!r}: it has zero width or height ({height} x {width}, H x W); "
            "re-export it with some pixels in it."
        )
    if max_pixels is not None and width * height > max_pixels:
        raise _too_large_error(name, width, height, max_pixels)


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
        _check_size(name, height, width, max_pixels)
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
        _check_size(name, height, width, max_pixels)
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
