"""Tests for dip_jax.io (files <-> arrays) and dip_jax.sample_images."""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import warnings
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from dip_jax.io import read as dio  # the reader module: its internals are patched below
from dip_jax.io import (
    Crop,
    ImageIOError,
    LoadedImage,
    crop_back,
    load_image,
    load_mask,
    pad_to_multiple,
    save_image,
    to_batch,
)
from dip_jax.sample_images import describe_sample_image, list_sample_images, sample_image

DATA_DIR = Path(__file__).resolve().parents[1] / "data"


def levels(values: np.ndarray, bit_depth: int) -> np.ndarray:
    """The integer levels a float image quantises to (float64, like save_image)."""
    max_value = 2**bit_depth - 1
    return np.rint(np.clip(np.asarray(values, dtype=np.float64), 0, 1) * max_value).astype(np.int64)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def no_temp_files_left(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("extension", [".png", ".tif"])
@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("with_alpha", [False, True])
def test_round_trip_is_exact_at_the_file_bit_depth(tmp_path, extension, bit_depth, channels, with_alpha):
    rng = np.random.default_rng(channels * 100 + bit_depth + with_alpha)
    image = rng.random((6, 9, channels), dtype=np.float32)
    alpha = rng.random((6, 9, 1), dtype=np.float32) if with_alpha else None
    path = tmp_path / f"img{extension}"

    save_image(path, image, bit_depth=bit_depth, alpha=alpha)
    loaded = load_image(path)

    assert isinstance(loaded, LoadedImage)
    assert loaded.image.dtype == np.float32 and loaded.image.shape == (6, 9, channels)
    assert loaded.bit_depth == bit_depth
    assert loaded.path == str(path)
    np.testing.assert_array_equal(levels(loaded.image, bit_depth), levels(image, bit_depth))
    if with_alpha:
        assert loaded.alpha is not None and loaded.alpha.dtype == np.float32 and loaded.alpha.shape == (6, 9, 1)
        np.testing.assert_array_equal(levels(loaded.alpha, bit_depth), levels(alpha, bit_depth))
    else:
        assert loaded.alpha is None
    expected_mode = {
        (1, False): ("L", "I;16"),
        (1, True): ("LA", "LA"),
        (3, False): ("RGB", "RGB"),
        (3, True): ("RGBA", "RGBA"),
    }
    assert loaded.mode == expected_mode[(channels, with_alpha)][bit_depth == 16]


@pytest.mark.parametrize("channels, colour_type", [(3, 2), (4, 6)])
def test_sixteen_bit_colour_png_is_a_valid_png_for_other_readers(tmp_path, channels, colour_type):
    # Our own 16-bit colour PNG encoder: Pillow (which keeps the high byte) must agree with it.
    rng = np.random.default_rng(channels)
    values = rng.integers(0, 65536, size=(5, 7, channels), dtype=np.uint16)
    path = tmp_path / "c16.png"
    alpha = values[..., 3:] / 65535.0 if channels == 4 else None
    save_image(path, values[..., :3] / 65535.0, bit_depth=16, alpha=alpha)
    with Image.open(path) as pil:
        assert pil.mode == ("RGB" if channels == 3 else "RGBA")
        np.testing.assert_array_equal(np.asarray(pil), (values >> 8).astype(np.uint8))
    raw = path.read_bytes()
    assert raw[25] == colour_type and raw[24] == 16  # IHDR colour type and bit depth


def test_sixteen_bit_png_keeps_the_low_byte(tmp_path):
    values = np.array([[[0, 1, 255], [256, 257, 65535]]], dtype=np.uint16)  # (1, 2, 3)
    path = tmp_path / "low.png"
    save_image(path, values / 65535.0, bit_depth=16)
    np.testing.assert_array_equal(levels(load_image(path).image, 16), values)


def test_a_loaded_file_saves_back_byte_identical_levels(tmp_path):
    loaded = load_image(DATA_DIR / "coffee_64_16bit.png")
    path = tmp_path / "again.png"
    save_image(path, loaded.image, bit_depth=loaded.bit_depth)
    np.testing.assert_array_equal(load_image(path).image, loaded.image)


def test_save_accepts_a_batch_of_one_jax_array_and_creates_parent_dirs(tmp_path):
    image = jnp.linspace(0, 1, 4 * 5 * 3, dtype=jnp.float32).reshape(1, 4, 5, 3)
    path = tmp_path / "deep" / "er" / "out.png"
    save_image(path, image)
    np.testing.assert_array_equal(levels(load_image(path).image, 8), levels(np.asarray(image[0]), 8))


def test_save_clips_out_of_range_values(tmp_path):
    image = np.array([[[-0.5], [0.25], [1.7]]], dtype=np.float32)
    path = tmp_path / "clip.png"
    save_image(path, image)
    np.testing.assert_array_equal(levels(load_image(path).image, 8)[..., 0], [[0, 64, 255]])


def test_save_accepts_2d_alpha_and_bfloat16(tmp_path):
    image = jnp.full((3, 4, 3), 0.5, dtype=jnp.bfloat16)
    alpha = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "a.png"
    save_image(path, image, alpha=alpha)
    loaded = load_image(path)
    np.testing.assert_array_equal(levels(loaded.alpha[..., 0], 8), levels(alpha, 8))
    np.testing.assert_array_equal(levels(loaded.image, 8), 128)


def test_jpeg_round_trip_is_close(tmp_path):
    image = np.tile(np.linspace(0, 1, 32, dtype=np.float32)[None, :, None], (16, 1, 3))
    path = tmp_path / "smooth.jpg"
    save_image(path, image)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.bit_depth == 8
    np.testing.assert_allclose(loaded.image, image, atol=4 / 255)


def test_overwrite_replaces_the_file(tmp_path):
    path = tmp_path / "x.png"
    save_image(path, np.zeros((2, 2, 1), np.float32))
    save_image(path, np.ones((3, 3, 3), np.float32))
    assert load_image(path).image.shape == (3, 3, 3)
    assert no_temp_files_left(tmp_path)


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "keep.png"
    save_image(path, np.zeros((2, 2, 1), np.float32))
    before = path.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(ImageIOError, match="No space left on device"):
        save_image(path, np.ones((2, 2, 1), np.float32))
    assert path.read_bytes() == before
    assert no_temp_files_left(tmp_path)


# --------------------------------------------------------------------------- modes


def test_palette_with_transparency_gives_rgb_and_alpha(tmp_path):
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    indices = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    pil = Image.fromarray(indices, mode="P")
    pil.putpalette(palette)
    path = tmp_path / "p.png"
    pil.save(path, transparency=1)

    loaded = load_image(path)
    assert loaded.mode == "P" and loaded.bit_depth == 8
    colours = np.array(palette[:9], dtype=np.float32).reshape(3, 3) / 255
    np.testing.assert_array_equal(loaded.image, colours[indices])
    np.testing.assert_array_equal(loaded.alpha[..., 0], (indices != 1).astype(np.float32))


def test_palette_without_transparency_has_no_alpha(tmp_path):
    pil = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20).convert("P")
    path = tmp_path / "p.gif"
    pil.save(path)
    loaded = load_image(path)
    assert loaded.alpha is None and loaded.image.shape == (3, 4, 3)
    np.testing.assert_allclose(loaded.image, np.asarray(pil.convert("RGB")) / 255, atol=1e-7)


def test_grey_with_alpha_la(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    alpha = 255 - grey
    path = tmp_path / "la.png"
    Image.fromarray(np.stack([grey, alpha], axis=-1), mode="LA").save(path)
    loaded = load_image(path)
    assert loaded.mode == "LA" and loaded.image.shape == (3, 4, 1)
    np.testing.assert_array_equal(levels(loaded.image[..., 0], 8), grey)
    np.testing.assert_array_equal(levels(loaded.alpha[..., 0], 8), alpha)


def test_grey_transparency_key_becomes_alpha(tmp_path):
    grey = np.array([[0, 7, 200], [7, 7, 0]], dtype=np.uint8)
    path = tmp_path / "key.png"
    Image.fromarray(grey).save(path, transparency=7)
    loaded = load_image(path)
    np.testing.assert_array_equal(loaded.alpha[..., 0], (grey != 7).astype(np.float32))


def test_cmyk_is_converted_to_rgb(tmp_path):
    cmyk = np.zeros((2, 3, 4), dtype=np.uint8)
    cmyk[0, 0] = (255, 0, 0, 0)  # cyan
    cmyk[0, 1] = (0, 255, 0, 0)  # magenta
    cmyk[0, 2] = (0, 0, 0, 255)  # black
    path = tmp_path / "cmyk.tif"
    Image.fromarray(cmyk, mode="CMYK").save(path)
    loaded = load_image(path)
    assert loaded.mode == "CMYK" and loaded.image.shape == (2, 3, 3) and loaded.alpha is None
    np.testing.assert_array_equal(loaded.image[0, 0], [0, 1, 1])
    np.testing.assert_array_equal(loaded.image[0, 1], [1, 0, 1])
    np.testing.assert_array_equal(loaded.image[0, 2], [0, 0, 0])
    np.testing.assert_array_equal(loaded.image[1, 0], [1, 1, 1])


def test_cmyk_jpeg(tmp_path):
    cmyk = np.zeros((8, 8, 4), dtype=np.uint8)
    cmyk[..., 0] = 255
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(cmyk, mode="CMYK").save(path, quality=100)
    loaded = load_image(path)
    assert loaded.mode == "CMYK" and loaded.image.shape == (8, 8, 3)
    np.testing.assert_allclose(loaded.image, np.broadcast_to([0, 1, 1], (8, 8, 3)), atol=3 / 255)


def test_bilevel_mode_1(tmp_path):
    bits = np.array([[True, False], [False, True]])
    path = tmp_path / "bits.png"
    Image.fromarray(bits).save(path)
    loaded = load_image(path)
    assert loaded.mode == "1" and loaded.bit_depth == 8
    np.testing.assert_array_equal(loaded.image[..., 0], bits.astype(np.float32))


def test_big_endian_16_bit_grey_tiff(tmp_path):
    values = (np.arange(12).reshape(3, 4) * 5000 + 3).astype(">u2")
    path = tmp_path / "b16.tif"
    Image.fromarray(values).save(path)
    loaded = load_image(path)
    assert loaded.mode == "I;16B" and loaded.bit_depth == 16
    np.testing.assert_array_equal(levels(loaded.image[..., 0], 16), values.astype(np.int64))


def test_32_bit_integer_tiff_within_16_bit_range(tmp_path):
    values = (np.arange(12).reshape(3, 4) * 5000).astype(np.int32)
    path = tmp_path / "i32.tif"
    Image.fromarray(values).save(path)
    loaded = load_image(path)
    assert loaded.mode == "I" and loaded.bit_depth == 16
    np.testing.assert_array_equal(levels(loaded.image[..., 0], 16), values)


def test_32_bit_integer_tiff_out_of_range_is_refused(tmp_path):
    path = tmp_path / "i32.tif"
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(path)
    with pytest.raises(ImageIOError, match=r"i32\.tif.*outside 0\.\.65535"):
        load_image(path)


def test_float_tiffs_are_named_as_floating_point(tmp_path):
    import tifffile

    path = tmp_path / "f.tif"
    Image.fromarray(np.ones((2, 2), np.float32)).save(path)
    with pytest.raises(ImageIOError, match=r"f\.tif.*32-bit floating-point.*convert it"):
        load_image(path)
    rgb = tmp_path / "rgb_float.tif"
    tifffile.imwrite(rgb, np.full((4, 4, 3), 0.5, np.float32), photometric="rgb")
    with pytest.raises(ImageIOError, match=r"rgb_float\.tif.*floating-point.*16-bit TIFF or PNG"):
        load_image(rgb)


def _orientation_fixture() -> np.ndarray:
    # 4 x 6, every pixel distinct, so any wrong flip or rotation is detected.
    values = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3
    return values


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow_exif_transpose(tmp_path, orientation):
    pil = Image.fromarray(_orientation_fixture())
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"
    pil.save(path, exif=exif)
    with Image.open(path) as reopened:
        expected = np.asarray(ImageOps.exif_transpose(reopened)) / np.float32(255)
    np.testing.assert_array_equal(load_image(path).image, expected)


def test_exif_rotated_jpeg_is_upright(tmp_path):
    # Stored 16 wide x 8 high; orientation 6 means "rotate 90 degrees clockwise to view".
    pixels = np.zeros((8, 16, 3), dtype=np.uint8)
    pixels[:, :8] = 255  # left half white in the stored frame
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    loaded = load_image(path)
    assert loaded.image.shape == (16, 8, 3)
    # After a clockwise rotation the stored left half is on top.
    assert loaded.image[:6].mean() > 0.95 and loaded.image[10:].mean() < 0.05


def test_sixteen_bit_planar_tiff_with_orientation(tmp_path):
    import tifffile

    values = np.random.default_rng(5).integers(0, 65536, size=(3, 4, 5), dtype=np.uint16)  # (S, H, W)
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, values, photometric="rgb", planarconfig="separate", extratags=[(274, 3, 1, 3, True)])
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.bit_depth == 16
    np.testing.assert_array_equal(levels(loaded.image, 16), np.moveaxis(values, 0, -1)[::-1, ::-1])


def test_sixteen_bit_tiff_needing_imagecodecs_says_so(tmp_path):
    import tifffile

    path = tmp_path / "lzw.tif"
    tifffile.imwrite(path, np.zeros((4, 5, 3), np.uint16), photometric="rgb", compression="zlib")
    with tifffile.TiffFile(path) as tiff:
        offset = tiff.pages[0].tags["Compression"].valueoffset
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, offset, 5)  # claim LZW, which tifffile decodes only with imagecodecs
    path.write_bytes(bytes(data))
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        with pytest.raises(ImageIOError, match=r"lzw\.tif.*LZW compression.*pip install imagecodecs"):
            load_image(path)
    else:
        with pytest.raises(ImageIOError, match=r"lzw\.tif.*could not be decoded"):  # zlib data is not LZW
            load_image(path)


def test_sixteen_bit_tiff_above_max_pixels(tmp_path):
    path = tmp_path / "big16.tif"
    save_image(path, np.zeros((10, 20, 3), np.float32), bit_depth=16)
    with pytest.raises(ImageIOError, match=r"big16\.tif.*10 x 20 \(H x W\)"):
        load_image(path, max_pixels=100)


def test_sixteen_bit_grey_alpha_png_reports_la(tmp_path):
    rng = np.random.default_rng(4)
    grey = rng.random((4, 5, 1), dtype=np.float32)
    alpha = rng.random((4, 5, 1), dtype=np.float32)
    path = tmp_path / "la16.png"
    save_image(path, grey, bit_depth=16, alpha=alpha)
    with Image.open(path) as pil:
        assert pil.mode == "RGBA"  # what Pillow makes of it; we know better
    loaded = load_image(path)
    assert loaded.mode == "LA" and loaded.bit_depth == 16
    np.testing.assert_array_equal(levels(loaded.alpha, 16), levels(alpha, 16))


# --------------------------------------------------------------------------- errors


def test_image_io_error_is_a_value_error():
    assert issubclass(ImageIOError, ValueError)


def test_missing_file(tmp_path):
    with pytest.raises(ImageIOError, match=r"nope\.png.*does not exist"):
        load_image(tmp_path / "nope.png")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ImageIOError, match="is a directory"):
        load_image(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageIOError, match=r"empty\.png.*empty \(0 bytes\)"):
        load_image(path)


def test_truncated_png(tmp_path):
    rng = np.random.default_rng(0)
    full = tmp_path / "full.png"
    save_image(full, rng.random((64, 64, 3), dtype=np.float32))
    data = full.read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageIOError, match=r"truncated\.png.*could not be decoded.*truncated or corrupt"):
        load_image(path)


def test_truncated_in_the_header(tmp_path):
    path = tmp_path / "stub.png"
    path.write_bytes(dio._PNG_SIGNATURE + b"\x00\x00")
    with pytest.raises(ImageIOError, match=r"stub\.png"):
        load_image(path)


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels\n")
    with pytest.raises(ImageIOError, match=r"notes\.png.*not an image format"):
        load_image(path)


def test_zero_sized_png_header(tmp_path):
    # Pillow refuses to write (or identify) zero-sized images, so build the file by hand.
    path = tmp_path / "zero.png"
    path.write_bytes(
        dio._PNG_SIGNATURE
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 5, 8, 0, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 5))
        + png_chunk(b"IEND", b"")
    )
    with pytest.raises(ImageIOError, match=r"zero\.png.*zero width or height"):
        load_image(path)


def test_zero_sized_image_from_a_decoder(tmp_path, monkeypatch):
    # Simulates a format whose decoder does hand out a 0 x 5 image.
    path = tmp_path / "zero.xyz"
    path.write_bytes(b"anything")
    monkeypatch.setattr(dio.Image, "open", lambda name: Image.new("L", (0, 5)))
    with pytest.raises(ImageIOError, match=r"zero\.xyz.*zero width or height"):
        load_image(path)


def test_image_above_max_pixels(tmp_path):
    path = tmp_path / "big.png"
    save_image(path, np.zeros((30, 40, 1), np.float32))
    limit_before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageIOError, match=r"big\.png.*30 x 40 \(H x W\) = 1,200 pixels.*max_pixels=1,000.*resize"):
            load_image(path, max_pixels=1000)
        assert load_image(path, max_pixels=1200).image.shape == (30, 40, 1)
        assert load_image(path, max_pixels=None).image.shape == (30, 40, 1)
    assert not caught  # no DecompressionBombWarning escaped
    assert Image.MAX_IMAGE_PIXELS == limit_before


def test_decompression_bomb_far_beyond_the_limit(tmp_path):
    path = tmp_path / "bomb.png"
    save_image(path, np.zeros((50, 60, 1), np.float32))
    with pytest.raises(ImageIOError, match=r"bomb\.png.*50 x 60 \(H x W\) = 3,000 pixels.*max_pixels=100;"):
        load_image(path, max_pixels=100)


@pytest.mark.parametrize("frame_pixels", [150, 250])  # above max_pixels (Pillow warns), above twice it (raises)
def test_pillow_bomb_checks_while_decoding_become_image_io_errors(tmp_path, monkeypatch, frame_pixels):
    # Pillow re-checks frames of animated formats while decoding; simulate a
    # frame larger than the first one with Pillow's own check.
    path = tmp_path / "anim.png"
    save_image(path, np.zeros((10, 10, 1), np.float32))
    real_decode = dio._decode

    def decode_with_a_larger_frame(pil, name):
        Image._decompression_bomb_check((frame_pixels, 1))
        return real_decode(pil, name)

    monkeypatch.setattr(dio, "_decode", decode_with_a_larger_frame)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageIOError, match=rf"anim\.png.*{frame_pixels} pixels, more than max_pixels=100;"):
            load_image(path, max_pixels=100)
    assert not caught  # the DecompressionBombWarning became the error, it did not escape


def test_bad_max_pixels_argument(tmp_path):
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(tmp_path / "x.png", max_pixels=0)


def test_refuses_to_write_nan(tmp_path):
    image = np.zeros((3, 3, 3), np.float32)
    image[1, 1, 1] = np.nan
    path = tmp_path / "nan.png"
    with pytest.raises(ImageIOError, match=r"nan\.png.*1 NaN or infinite"):
        save_image(path, image)
    assert not path.exists() and no_temp_files_left(tmp_path)


def test_refuses_to_write_infinite_alpha(tmp_path):
    alpha = np.ones((3, 3, 1), np.float32)
    alpha[0, 0, 0] = np.inf
    with pytest.raises(ImageIOError, match="alpha has 1 NaN or infinite"):
        save_image(tmp_path / "inf.png", np.zeros((3, 3, 3), np.float32), alpha=alpha)


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("x.bmp", {}, "unsupported extension '.bmp'"),
        ("x", {}, "unsupported extension '\\(none\\)'"),
        ("x.jpg", {"bit_depth": 16}, "JPEG cannot store 16 bits"),
        ("x.jpeg", {"alpha": np.ones((2, 2, 1), np.float32)}, "JPEG cannot store an alpha channel"),
    ],
)
def test_save_format_errors(tmp_path, name, kwargs, message):
    with pytest.raises(ImageIOError, match=message):
        save_image(tmp_path / name, np.zeros((2, 2, 3), np.float32), **kwargs)


@pytest.mark.parametrize(
    "image, kwargs, message",
    [
        (np.zeros((2, 2), np.float32), {}, r"\(H, W, C\).*x\[\.\.\., None\]"),
        (np.zeros((2, 2, 2, 3), np.float32), {}, "batch of 2"),
        (np.zeros((2, 2, 4), np.float32), {}, "alpha=image\\[\\.\\.\\., 3:\\]"),
        (np.zeros((2, 2, 3), np.uint8), {}, "floats in \\[0, 1\\].*uint8"),
        (np.zeros((2, 2, 3), np.float32), {"bit_depth": 12}, "bit_depth must be 8 or 16"),
        (np.zeros((2, 2, 3), np.float32), {"alpha": np.ones((3, 2, 1), np.float32)}, "alpha must be"),
        (np.zeros((0, 2, 3), np.float32), {}, "zero height or width"),
    ],
)
def test_save_argument_errors(tmp_path, image, kwargs, message):
    with pytest.raises(ValueError, match=message):
        save_image(tmp_path / "x.png", image, **kwargs)


def test_unwritable_location(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ImageIOError, match="could not be created"):
        save_image(blocker / "sub" / "x.png", np.zeros((2, 2, 1), np.float32))


# --------------------------------------------------------------------------- masks


def test_load_mask_thresholds_and_matches_shape(tmp_path):
    grey = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    path = tmp_path / "m.png"
    Image.fromarray(np.repeat(grey[..., None], 3, axis=-1)).save(path)  # an RGB mask
    mask = load_mask(path, shape=(1, 4))
    assert mask.dtype == np.float32 and mask.shape == (1, 4, 1)
    np.testing.assert_array_equal(mask[..., 0], [[0, 0, 1, 1]])
    np.testing.assert_array_equal(load_mask(path, shape=(1, 4, 3)), mask)
    np.testing.assert_array_equal(load_mask(path, shape=(5, 1, 4, 3)), mask)


def test_load_mask_size_mismatch_names_both_sizes(tmp_path):
    path = tmp_path / "m.png"
    save_image(path, np.ones((20, 30, 1), np.float32))
    with pytest.raises(ImageIOError, match=r"m\.png.*20 x 30.*the image is 24 x 32"):
        load_mask(path, shape=(24, 32, 3))


def test_load_mask_bad_shape_argument(tmp_path):
    path = tmp_path / "m.png"
    save_image(path, np.ones((2, 2, 1), np.float32))
    with pytest.raises(ValueError, match="shape must be"):
        load_mask(path, shape=(2,))


def test_bundled_masks_are_binary_and_follow_the_known_is_one_convention():
    for name in ("mask_text_128.png", "mask_hole_128.png"):
        mask = load_mask(DATA_DIR / name, shape=(128, 128))
        assert set(np.unique(mask)) == {0.0, 1.0}
        assert 0.05 < 1 - mask.mean() < 0.3  # mostly known pixels, a sizeable missing part
        raw = np.asarray(Image.open(DATA_DIR / name))
        assert set(np.unique(raw)) == {0, 255}


# --------------------------------------------------------------------------- padding


@pytest.mark.parametrize("shape", [(37, 50, 3), (1, 1, 1), (2, 3, 1), (31, 33, 3), (64, 32, 3), (3, 17, 29, 3)])
@pytest.mark.parametrize("mode", ["reflect", "edge", "constant"])
def test_pad_then_crop_back_is_exact(shape, mode):
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    padded, crop = pad_to_multiple(image, 32, mode=mode)
    height, width = shape[-3], shape[-2]
    assert padded.shape[-3] % 32 == 0 and padded.shape[-2] % 32 == 0
    assert padded.shape[-3] - height < 32 and padded.shape[-2] - width < 32
    assert padded.shape[:-3] == shape[:-3] and padded.shape[-1] == shape[-1]
    assert isinstance(crop, Crop) and (crop.height, crop.width) == (height, width)
    np.testing.assert_array_equal(crop_back(padded, crop), image)


def test_reflect_padding_mirrors_without_repeating_the_border():
    image = np.arange(5, dtype=np.float32).reshape(1, 5, 1) * np.ones((5, 1, 1), np.float32)
    padded, crop = pad_to_multiple(image, 8)
    assert (crop.top, crop.left) == (1, 1)  # 3 extra pixels: 1 before, 2 after
    np.testing.assert_array_equal(padded[0, :, 0], [1, 0, 1, 2, 3, 4, 3, 2])


def test_reflect_falls_back_to_edge_on_tiny_images():
    image = np.array([[[0.25], [0.75]]], dtype=np.float32)  # 1 x 2
    padded, crop = pad_to_multiple(image, 4)
    # H: 1 -> 4 needs (1, 2) rows but a single row cannot be mirrored: edge.
    # W: 2 -> 4 needs (1, 1) columns, which mirroring can give: reflect.
    np.testing.assert_array_equal(padded[:, :, 0], np.tile([[0.75, 0.25, 0.75, 0.25]], (4, 1)))
    np.testing.assert_array_equal(crop_back(padded, crop), image)
    # W: 2 -> 8 needs (3, 3) columns, more than mirroring gives: edge.
    padded, crop = pad_to_multiple(image, 8)
    np.testing.assert_array_equal(padded[0, :, 0], [0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75])
    np.testing.assert_array_equal(crop_back(padded, crop), image)


def test_constant_padding_is_zero():
    padded, crop = pad_to_multiple(np.ones((3, 3, 1), np.float32), 4, mode="constant")
    assert padded.sum() == 9 and padded[crop.top, crop.left, 0] == 1


def test_already_a_multiple_is_unchanged():
    image = np.zeros((32, 64, 3), np.float32)
    padded, crop = pad_to_multiple(image, 32)
    assert padded is image and crop == Crop(0, 0, 32, 64)


def test_pad_with_jax_eager_equals_jit_equals_vmap_and_numpy():
    batch = jax.random.uniform(jax.random.key(0), (2, 19, 22, 3))
    eager, crop = pad_to_multiple(batch, 8)
    assert isinstance(eager, jax.Array)
    jitted = jax.jit(lambda x: pad_to_multiple(x, 8)[0])(batch)
    mapped = jax.vmap(lambda x: pad_to_multiple(x, 8)[0])(batch)
    numpy_version, numpy_crop = pad_to_multiple(np.asarray(batch), 8)
    np.testing.assert_array_equal(np.asarray(jitted), np.asarray(eager))
    np.testing.assert_array_equal(np.asarray(mapped), np.asarray(eager))
    np.testing.assert_array_equal(numpy_version, np.asarray(eager))
    assert crop == numpy_crop
    back = jax.jit(lambda x: crop_back(x, crop))(eager)
    np.testing.assert_array_equal(np.asarray(back), np.asarray(batch))


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((np.zeros((4, 4, 1)), 0), {}, "multiple must be a positive int"),
        ((np.zeros((4, 4, 1)), 2.0), {}, "multiple must be a positive int"),
        ((np.zeros((4, 4, 1)), 4), {"mode": "wrap"}, "mode must be"),
        ((np.zeros((4, 4)), 4), {}, r"\(H, W, C\) or \(N, H, W, C\)"),
    ],
)
def test_pad_argument_errors(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pad_to_multiple(*args, **kwargs)


def test_crop_back_errors():
    with pytest.raises(ValueError, match="Crop returned by pad_to_multiple"):
        crop_back(np.zeros((4, 4, 1)), (0, 0, 4, 4))
    with pytest.raises(ValueError, match="does not fit"):
        crop_back(np.zeros((4, 4, 1)), Crop(1, 1, 4, 4))


# --------------------------------------------------------------------------- batching


def test_to_batch_stacks():
    images = [np.full((3, 4, 3), i, np.float32) for i in range(5)]
    batch = to_batch(images)
    assert batch.shape == (5, 3, 4, 3) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[:, 0, 0, 0], np.arange(5))


def test_to_batch_size_mismatch_lists_sizes():
    with pytest.raises(ValueError, match=r"image 0: 3x4x3, image 1: 3x5x3.*crop or resize"):
        to_batch([np.zeros((3, 4, 3)), np.zeros((3, 5, 3))])
    with pytest.raises(ValueError, match="at least one image"):
        to_batch([])
    with pytest.raises(ValueError, match="image 1 has shape"):
        to_batch([np.zeros((3, 4, 3)), np.zeros((1, 3, 4, 3))])


# --------------------------------------------------------------------------- property test


@st.composite
def integer_images(draw):
    bit_depth = draw(st.sampled_from([8, 16]))
    height, width = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    channels = draw(st.sampled_from([1, 3]))
    with_alpha = draw(st.booleans())
    max_value = 2**bit_depth - 1
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    total = height * width * (channels + with_alpha)
    flat = draw(st.lists(st.integers(0, max_value), min_size=total, max_size=total))
    values = np.array(flat, dtype=dtype).reshape(height, width, channels + with_alpha)
    extension = draw(st.sampled_from([".png", ".tif"]))
    return bit_depth, values, channels, with_alpha, extension


@settings(max_examples=25, deadline=None)
@given(integer_images())
def test_property_integer_images_survive_save_and_load(case):
    bit_depth, values, channels, with_alpha, extension = case
    max_value = 2**bit_depth - 1
    as_float = values.astype(np.float32) / np.float32(max_value)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "x" + extension)
        alpha = as_float[..., channels:] if with_alpha else None
        save_image(path, as_float[..., :channels], bit_depth=bit_depth, alpha=alpha)
        loaded = load_image(path)
    assert loaded.bit_depth == bit_depth
    np.testing.assert_array_equal(np.rint(loaded.image * np.float32(max_value)), values[..., :channels])
    if with_alpha:
        np.testing.assert_array_equal(np.rint(loaded.alpha * np.float32(max_value)), values[..., channels:])
    # Loading gives the same floats that dividing the integers gives.
    np.testing.assert_array_equal(loaded.image, as_float[..., :channels])


# --------------------------------------------------------------------------- sample images


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_sample_images_work_offline(no_network):
    names = list_sample_images()
    assert {"astronaut", "camera", "coffee", "chelsea", "rocket"} <= set(names)
    for name in names:
        image = sample_image(name, size=16)
        assert image.shape == (16, 16, 3) and image.dtype == np.float32
        assert 0 <= image.min() and image.max() <= 1 and image.std() > 0.02
        licence = describe_sample_image(name).lower()
        assert "cc0" in licence or "public domain" in licence or "no known copyright" in licence


def test_sample_image_native_size_and_grey():
    astronaut = sample_image()
    assert astronaut.shape == (512, 512, 3)
    camera = sample_image("camera")
    assert camera.shape == (512, 512, 3)
    np.testing.assert_array_equal(camera[..., 0], camera[..., 2])  # grey repeated
    grey = sample_image("chelsea", size=32, channels=1)
    assert grey.shape == (32, 32, 1)
    colour = sample_image("chelsea", size=32)
    np.testing.assert_allclose(grey[..., 0], colour @ np.array([0.299, 0.587, 0.114], np.float32), atol=1e-6)


def test_sample_image_centre_crop():
    # chelsea is 300 x 451: the square crop is the central 300 columns.
    full = sample_image("chelsea")
    cropped = sample_image("chelsea", size=300)
    np.testing.assert_array_equal(cropped, full[:, 75:375])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "lena"}, "unknown sample image 'lena'; choose one of"),
        ({"size": 0}, "size must be a positive int"),
        ({"channels": 2}, "channels must be 1"),
    ],
)
def test_sample_image_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample_image(**kwargs)


@pytest.mark.parametrize(
    "name, mode, bit_depth, shape, has_alpha",
    [
        ("astronaut_128.png", "RGB", 8, (128, 128, 3), False),
        ("chelsea_64.png", "RGB", 8, (64, 64, 3), False),
        ("camera_128.png", "L", 8, (128, 128, 1), False),
        ("coffee_64_16bit.png", "RGB", 16, (64, 64, 3), False),
        ("rocket_64_rgba.png", "RGBA", 8, (64, 64, 3), True),
    ],
)
def test_bundled_data_files_are_as_documented(name, mode, bit_depth, shape, has_alpha):
    loaded = load_image(DATA_DIR / name)
    got = (loaded.mode, loaded.bit_depth, loaded.image.shape, loaded.alpha is not None)
    assert got == (mode, bit_depth, shape, has_alpha)
    if bit_depth == 16:  # genuinely 16-bit, not 8-bit values scaled by 257
        assert np.any(levels(loaded.image, 16) % 257 != 0)
    assert name in (DATA_DIR / "README.md").read_text()


def test_bundled_data_is_small():
    total = sum(p.stat().st_size for p in DATA_DIR.iterdir() if p.suffix == ".png")
    assert total < 300 * 1024
