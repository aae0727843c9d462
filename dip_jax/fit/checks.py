"""What `prepare` checks before anything is allocated: keys, arrays, and the operator against the net.

Every check raises ValueError saying what to change, in the caller's terms.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dip_jax import nets, operators
from dip_jax.fit.step import item_op_args


def as_item_keys(key, n: int) -> jax.Array:
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape == (2,):
            key = jax.random.wrap_key_data(key.astype(jnp.uint32))
        elif key.ndim == 2 and key.shape[-1] == 2:
            key = jax.random.wrap_key_data(key.astype(jnp.uint32))
        else:
            raise ValueError(f"key must be a jax.random.key or a batch of N*R keys, got shape {key.shape}")
    if key.ndim == 0:
        return jax.random.split(key, n)
    if key.shape != (n,):
        raise ValueError(
            f"got {key.shape[0]} keys for {n} batch items (images x restarts); "
            "pass one key or exactly one per item"
        )
    return key


def as_batch(x, name: str, *, image_range: bool = False) -> np.ndarray:
    raw = np.asarray(x)
    if np.issubdtype(raw.dtype, np.integer):
        raise ValueError(
            f"{name} is an integer array ({raw.dtype}); convert it to float32 in [0, 1] first "
            "(e.g. image / 255 for 8-bit data, or load files with dip_jax.io.load_image)"
        )
    if not (jnp.issubdtype(raw.dtype, jnp.floating) or raw.dtype == bool):
        raise ValueError(f"{name} must be a float32 array with values in [0, 1], got dtype {raw.dtype}")
    a = raw.astype(np.float32, copy=False)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise ValueError(f"{name} must be (H, W, C) or (N, H, W, C) float32 in [0, 1]; got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape}); give at least one image with pixels")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values; clean or re-load the image")
    # Noisy observations may stray a little outside [0, 1]; values in the tens
    # mean 0..255 data was passed without scaling.
    lo, hi = float(a.min()), float(a.max())
    if image_range and (lo < -1.0 or hi > 2.0):
        raise ValueError(
            f"{name} values span [{lo:.3g}, {hi:.3g}] but images are float32 in [0, 1]; "
            "scale them (e.g. / 255 for 8-bit data, / 65535 for 16-bit)"
        )
    return a


def check_inputs(net_config, op, observation, *, op_args=None, ground_truth=None, net_input=None,
                 image_size=None):
    """The observation, ground truth and net input as float32 (N, H, W, C) batches, and the output size.

    Checks per-image `op_args` (a leading axis of N), the operator's own
    `validate` for every image, and that it maps the net's output to the
    observation's shape. Returns `(y, ground_truth, net_input, (h, w))`.
    """
    # Only operators whose observation is an image promise values in [0, 1]
    # (a feature-inversion target, for one, is not).
    y = as_batch(observation, "observation", image_range=getattr(op, "image_like", False))
    n = y.shape[0]
    if image_size is None:
        image_size = operators.input_size(op, y.shape[1:3])
    h, w = image_size
    nets.check_input_size(net_config, h, w)
    out_shape = (1, h, w, net_config.num_output_channels)
    if op_args is not None:
        for leaf in jax.tree_util.tree_leaves(op_args):
            if not hasattr(leaf, "shape") or np.ndim(leaf) < 1 or np.shape(leaf)[0] != n:
                raise ValueError(
                    f"op_args leaves must be arrays with a leading axis of {n} (one per image), got "
                    f"{type(leaf).__name__} of shape {getattr(leaf, 'shape', None)}; stack per-image args "
                    "(or repeat a shared one n times)"
                )
    if hasattr(op, "validate"):
        for i in range(n):
            op.validate(out_shape, item_op_args(jax.tree_util.tree_map(lambda a: np.asarray(a)[i], op_args)))
    if hasattr(op, "output_shape"):
        first_args = None
        if op_args is not None:
            first_args = item_op_args(jax.tree_util.tree_map(lambda a: np.asarray(a)[0], op_args))
        expected = op.output_shape(out_shape, first_args)
        if tuple(expected[1:]) != tuple(y.shape[1:]):
            raise ValueError(
                f"the observation is {y.shape[1:]} per image but the operator maps the net's "
                f"{out_shape[1:]} output to {tuple(expected[1:])}; check the channels "
                f"(num_output_channels={net_config.num_output_channels}) and the size"
            )
    gt = zin = None
    if ground_truth is not None:
        gt = as_batch(ground_truth, "ground_truth", image_range=True)
        if gt.shape != (n, h, w, net_config.num_output_channels):
            raise ValueError(
                f"ground_truth is {gt.shape} but the restored images will be {(n, h, w, net_config.num_output_channels)}"
            )
    if net_input is not None:
        zin = as_batch(net_input, "net_input")
        z_shape = (n, *nets.input_size(net_config, h, w), net_config.num_input_channels)
        if zin.shape != z_shape:
            raise ValueError(
                f"net_input is {zin.shape} but the net needs {z_shape}; "
                "set num_input_channels to its channel count"
            )
    return y, gt, zin, (h, w)
