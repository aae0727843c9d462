"""Network inputs `z`, as the original's `get_noise` builds them.

Contract: every function returns float32 (1, H, W, C) (one image; vmap for
more). Random inputs take `key` first.
- `noise(key, depth, (H, W), noise_type='u')`: uniform in [0, 1) times 0.1
  (`'n'`: standard normal times 0.1), the original's `var=1/10`.
- `meshgrid((H, W))`: 2 channels, X in [0, 1] along the width and Y in
  [0, 1] along the height.
- `make_input(key, kind, ...)` dispatches on the config's `input_type`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

INPUT_TYPES = ("noise", "meshgrid", "image")


def noise(key: jax.Array, depth: int, size: tuple[int, int], *, noise_type: str = "u", scale: float = 0.1) -> jax.Array:
    h, w = size
    if depth < 1:
        raise ValueError(f"input depth must be >= 1, got {depth}")
    shape = (1, h, w, depth)
    if noise_type == "u":
        return jax.random.uniform(key, shape, jnp.float32) * scale
    if noise_type == "n":
        return jax.random.normal(key, shape, jnp.float32) * scale
    raise ValueError(f"noise_type must be 'u' (uniform) or 'n' (normal), got {noise_type!r}")


def meshgrid(size: tuple[int, int]) -> jax.Array:
    h, w = size
    if h < 2 or w < 2:
        raise ValueError(f"a meshgrid input needs at least 2x2 pixels, got {h}x{w}")
    x = jnp.linspace(0.0, 1.0, w, dtype=jnp.float32)
    y = jnp.linspace(0.0, 1.0, h, dtype=jnp.float32)
    xx, yy = jnp.meshgrid(x, y)
    return jnp.stack([xx, yy], axis=-1)[None]


def make_input(
    key: jax.Array,
    input_type: str,
    depth: int,
    size: tuple[int, int],
    *,
    noise_type: str = "u",
    scale: float = 0.1,
    image: jax.Array | None = None,
) -> jax.Array:
    """The net input for one image; `image` (H, W, C) or (1, H, W, C) for input_type='image'."""
    if input_type == "noise":
        return noise(key, depth, size, noise_type=noise_type, scale=scale)
    if input_type == "meshgrid":
        if depth != 2:
            raise ValueError(f"a meshgrid input has 2 channels; set input_depth=2 (got {depth})")
        return meshgrid(size)
    if input_type == "image":
        if image is None:
            raise ValueError("input_type='image' needs the image to feed the net (e.g. the flash photo)")
        image = jnp.asarray(image, jnp.float32)
        image = image[None] if image.ndim == 3 else image
        if image.shape[1:3] != tuple(size) or image.shape[-1] != depth:
            raise ValueError(
                f"the input image is {image.shape[1:]} but the net needs {tuple(size) + (depth,)}; "
                "resize it or set input_depth to its channel count"
            )
        return image
    raise ValueError(f"input_type must be one of {INPUT_TYPES}, got {input_type!r}")
