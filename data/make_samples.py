"""Regenerates the small sample images in data/ (see data/README.md).

Run from the repository root with the package installed (``pip install -e .``):

    python data/make_samples.py

Every file is derived from scikit-image's bundled test images (public domain
or CC0) or drawn here, and written through ``dip_jax.io.save_image``. The
output is deterministic for a given Pillow version (the text mask depends on
Pillow's default font).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dip_jax.io import load_image, load_mask, save_image
from dip_jax.sample_images import sample_image

DATA_DIR = Path(__file__).resolve().parent
MASK_SIZE = 128


def soft_disc_alpha(size: int) -> np.ndarray:
    """Opaque centre fading to transparent corners: exercises partial alpha values."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    radius = np.sqrt(coords[:, None] ** 2 + coords[None, :] ** 2)
    return np.clip((1.3 - radius) / 0.6, 0.0, 1.0)[..., None]


def text_mask(size: int) -> np.ndarray:
    """1 = known pixel, 0 = text to inpaint (the convention of the original kate_mask.png)."""
    canvas = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=13)
    lines = [
        "Deep image prior:",
        "a random convnet",
        "fills in the text",
        "written over this",
        "picture using only",
        "the pixels that it",
        "can still see. JAX",
        "0123456789 ?!&%$",
    ]
    for row, line in enumerate(lines):
        draw.text((3, 1 + row * 16), line, fill=0, font=font)
    # Anti-aliased glyph edges are grey; threshold so the file is strictly binary.
    return (np.asarray(canvas) >= 128).astype(np.float32)[..., None]


def hole_mask(size: int) -> np.ndarray:
    """A large elliptical hole (0) a little off-centre, like the vase/library masks."""
    rows = np.arange(size, dtype=np.float32)[:, None] + 0.5
    cols = np.arange(size, dtype=np.float32)[None, :] + 0.5
    inside = ((rows - 0.45 * size) / (0.22 * size)) ** 2 + ((cols - 0.55 * size) / (0.28 * size)) ** 2 <= 1.0
    return (~inside).astype(np.float32)[..., None]


def main() -> None:
    files = {
        "astronaut_128.png": lambda path: save_image(path, sample_image("astronaut", size=128)),
        "chelsea_64.png": lambda path: save_image(path, sample_image("chelsea", size=64)),
        "camera_128.png": lambda path: save_image(path, sample_image("camera", size=128, channels=1)),
        "coffee_64_16bit.png": lambda path: save_image(path, sample_image("coffee", size=64), bit_depth=16),
        "rocket_64_rgba.png": lambda path: save_image(path, sample_image("rocket", size=64), alpha=soft_disc_alpha(64)),
        "mask_text_128.png": lambda path: save_image(path, text_mask(MASK_SIZE)),
        "mask_hole_128.png": lambda path: save_image(path, hole_mask(MASK_SIZE)),
    }
    total = 0
    for name, write in files.items():
        path = DATA_DIR / name
        write(path)
        size = path.stat().st_size
        total += size
        if name.startswith("mask_"):
            mask = load_mask(path)
            summary = f"mask {mask.shape}, {100 * (1 - mask.mean()):.1f}% missing"
        else:
            loaded = load_image(path)
            summary = f"{loaded.mode} {loaded.bit_depth}-bit {loaded.image.shape}, alpha={loaded.alpha is not None}"
        print(f"{name:22s} {size / 1024:6.1f} KiB  {summary}")
    print(f"{'total':22s} {total / 1024:6.1f} KiB")


if __name__ == "__main__":
    main()
