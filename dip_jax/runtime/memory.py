"""How much memory a fit needs, and whether the machine has it (checked before allocating).

Contract:
- `estimate_fit(net_config, fit_config, (H, W), num_items, ...)` returns a
  `MemoryEstimate` in bytes, per device, without allocating or compiling:
  * state: every item's `FitState` (parameters, BatchNorm statistics,
    optimiser state, input, averaged output, backtracking backup, divergence
    snapshot), from `jax.eval_shape` of the net's init and the optimiser's
    init, times `STATE_COPIES` (a compiled chunk's input and output states
    and the copies XLA keeps inside its loops);
  * activations: what the forward pass of one item keeps for the backward
    pass, counted from the forward's jaxpr as the bytes of every convolution
    output, times `ACTIVATION_FACTOR[platform]` (BatchNorm, activation and
    upsampling outputs and the gradients live alongside), for the items that
    run at the same time: all of a device's items under `batch_mode='vmap'`
    (or `group_size` of them when vmapped in groups), one under 'map';
  * a fixed `OVERHEAD_BYTES` for the runtime and compiled code.
- `available_bytes(device)`: free memory of a device: `bytes_limit -
  bytes_in_use` from `device.memory_stats()` on GPU/TPU, `MemAvailable`
  from /proc/meminfo (or `os.sysconf` pages) on CPU; None when unknown.
- `fits(estimate, available)`: whether it fits, keeping `1 - USABLE_FRACTION`
  spare; `check_fits(estimate, device)` raises ValueError when it does not,
  suggesting a smaller image, tiles, fewer images or restarts at once,
  `batch_mode='map'` or a smaller `vmap_group_size`.
- `largest_fitting_group(estimate, items, available)`: under 'vmap' with no
  group size set, the fit vmaps items in the largest group that fits.

Calibration: `STATE_COPIES = 4` and a CPU activation factor of 16 were fitted
to XLA's own figures (`compile().memory_analysis()`) for the default net, and
the estimate stays above them at every size (tests/test_hostile_inputs.py
checks this, marked slow); the measurements and their history are in
docs/performance.md ("Memory estimate"). `dip_jax.fit.api` also uses
`activation_bytes` to decide when a fit is large enough to release the
initialiser's compiled code (`RELEASE_INIT_CODE_ABOVE_BYTES`). Backends not
measured here use a factor of 10. Peak RSS is not a usable yardstick on
CPU: the allocator keeps freed buffers, so it reflects the largest program run
so far. The estimate's job is to stop a fit that cannot run before it
allocates gigabytes, not to plan to the byte.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dip_jax import nets

ACTIVATION_FACTOR = {"cpu": 16.0}
DEFAULT_ACTIVATION_FACTOR = 10.0
STATE_COPIES = 4
OVERHEAD_BYTES = 256 * 2**20
# Leave some room for the host process, fragmentation and the data itself.
USABLE_FRACTION = 0.9


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a fit needs on one device (see module docstring)."""

    state_bytes: int
    activation_bytes: int
    overhead_bytes: int
    items_per_device: int
    concurrent_items: int
    image_size: tuple[int, int]
    images: int | None = None
    restarts: int | None = None
    # Devices that draw on the same memory (CPU devices all share the host's RAM).
    sharing_devices: int = 1

    @property
    def total_bytes(self) -> int:
        """Bytes on one device."""
        return self.state_bytes + self.activation_bytes + self.overhead_bytes

    @property
    def needed_bytes(self) -> int:
        """Bytes drawn from one pool of memory (the host's, for several CPU devices)."""
        return self.sharing_devices * (self.state_bytes + self.activation_bytes) + self.overhead_bytes

    def describe(self) -> str:
        return (f"about {_gib(self.needed_bytes)} ({_gib(self.activation_bytes)} of activations for "
                f"{self.concurrent_items} item(s) at {self.image_size[0]}x{self.image_size[1]} at a time, "
                f"{_gib(self.state_bytes)} of state for {self.items_per_device} item(s)"
                + (f", on each of {self.sharing_devices} devices" if self.sharing_devices > 1 else "") + ")")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def _nbytes(tree) -> int:
    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            continue
        total += int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


def _sub_jaxprs(eqn):
    for value in eqn.params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if hasattr(v, "eqns"):
                yield v
            elif hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
                yield v.jaxpr


def _conv_output_bytes(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        subs = list(_sub_jaxprs(eqn))
        if subs:
            total += sum(_conv_output_bytes(s) for s in subs)
        elif eqn.primitive.name == "conv_general_dilated":
            for v in eqn.outvars:
                total += int(np.prod(v.aval.shape, dtype=np.int64)) * np.dtype(v.aval.dtype).itemsize
    return total


@functools.lru_cache(maxsize=64)
def _net_shapes(net_config, height: int, width: int):
    module = nets.build_generator(net_config)
    z_size = nets.input_size(net_config, height, width)
    z = jax.ShapeDtypeStruct((1, *z_size, net_config.num_input_channels), jnp.float32)
    variables = jax.eval_shape(module.init, jax.random.key(0), z)
    jaxpr = jax.make_jaxpr(lambda v, x: module.apply(v, x, mutable=["batch_stats"]))(variables, z)
    return variables, _conv_output_bytes(jaxpr.jaxpr)


def net_footprint(net_config, height: int, width: int) -> tuple[int, int, int]:
    """(parameter bytes, BatchNorm-statistics bytes, convolution-output bytes) of one forward pass."""
    variables, conv_bytes = _net_shapes(net_config, int(height), int(width))
    return _nbytes(variables.get("params", {})), _nbytes(variables.get("batch_stats", {})), conv_bytes


def estimate_fit(
    net_config,
    fit_config,
    image_size: tuple[int, int],
    num_items: int,
    *,
    batch_mode: str = "map",
    tx=None,
    num_devices: int = 1,
    images: int | None = None,
    restarts: int | None = None,
    platform: str | None = None,
    group_size: int | None = None,
) -> MemoryEstimate:
    """Bytes per device for fitting `num_items` items (images x restarts) of `image_size`.

    `platform` ('cpu', 'gpu', 'tpu'; default: JAX's default backend) picks the
    activation factor. `group_size`: under 'vmap', items vmapped together
    (None: all of a device's items).
    """
    h, w = (int(s) for s in image_size)
    param_bytes, stats_bytes, conv_bytes = net_footprint(net_config, h, w)
    z_h, z_w = nets.input_size(net_config, h, w)
    z_bytes = z_h * z_w * net_config.num_input_channels * 4
    out_bytes = h * w * net_config.num_output_channels * 4
    trainable = {}
    if "net" in fit_config.opt_over:
        trainable["net"] = _net_shapes(net_config, h, w)[0]["params"]
    if "input" in fit_config.opt_over:
        trainable["input"] = jax.ShapeDtypeStruct((1, z_h, z_w, net_config.num_input_channels), jnp.float32)
    trainable_bytes = _nbytes(trainable)
    opt_bytes = _nbytes(jax.eval_shape(tx.init, trainable)) if tx is not None else 2 * trainable_bytes
    copies = 2 if fit_config.divergence_check else 1  # the state and its rollback snapshot
    per_item_state = (copies * (param_bytes + stats_bytes + opt_bytes + z_bytes + out_bytes + trainable_bytes)
                      + 3 * out_bytes)  # target, best output, op args (about an image each)
    items_per_device = -(-num_items // num_devices)
    concurrent = 1
    if batch_mode == "vmap":
        concurrent = items_per_device if group_size is None else min(int(group_size), items_per_device)
    state_total = STATE_COPIES * items_per_device * per_item_state
    platform = jax.default_backend() if platform is None else platform
    factor = ACTIVATION_FACTOR.get(platform, DEFAULT_ACTIVATION_FACTOR)
    activations = int(factor * conv_bytes * concurrent)
    return MemoryEstimate(
        state_bytes=int(state_total),
        activation_bytes=activations,
        overhead_bytes=OVERHEAD_BYTES,
        items_per_device=items_per_device,
        concurrent_items=concurrent,
        image_size=(h, w),
        images=images,
        restarts=restarts,
        sharing_devices=num_devices if platform == "cpu" else 1,
    )


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_bytes(device=None) -> int | None:
    """Free memory on `device` (default: the first local device), or None when it cannot be told."""
    device = jax.local_devices()[0] if device is None else device
    if device.platform != "cpu":
        try:
            stats = device.memory_stats()
        except Exception:  # noqa: BLE001 - not every backend implements it
            stats = None
        if stats and "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return None
    return _meminfo_available()


def fits(estimate: MemoryEstimate, available: int) -> bool:
    """Whether `estimate` fits in `available` free bytes (keeping `1 - USABLE_FRACTION` spare)."""
    return estimate.needed_bytes <= USABLE_FRACTION * available


def check_fits(estimate: MemoryEstimate, device=None, *, available: int | None = None) -> None:
    """Raise ValueError when `estimate` does not fit in the device's free memory."""
    if available is None:
        available = available_bytes(device)
    if available is None or fits(estimate, available):
        return
    platform = "this machine" if device is None or device.platform == "cpu" else f"the {device.platform} device"
    batch = estimate.items_per_device
    what = f"{batch} item(s)"
    if estimate.images is not None and estimate.restarts is not None:
        what = f"{estimate.images} image(s) x {estimate.restarts} restart(s)"
    tips = ["use a smaller image (downscale or crop it)",
            "split it into tiles",
            f"fit fewer images or restarts at once (now {what})"]
    if estimate.concurrent_items > 1:
        tips.append("use batch_mode='map' (items one after another: activations for one item only) or "
                    f"a smaller vmap_group_size (now {estimate.concurrent_items} items vmapped together)")
    head = f"this fit needs {estimate.describe()} but only {_gib(int(available))} is free on {platform}"
    raise InsufficientMemoryError(
        head + "; " + "; ".join(tips) + ". Pass check_memory=False in the FitConfig to try anyway",
        estimate=estimate, available=int(available),
        cli_message=head + "; use a smaller image (downscale or crop it), fewer --restarts or, for batch, "
                           "a smaller --batch-size",
    )


class InsufficientMemoryError(ValueError):
    """A fit would not fit in memory; `estimate` and `available` say by how much.

    `cli_message` says what to do in the `dip-jax` command's terms.
    """

    def __init__(self, message: str, *, estimate: MemoryEstimate, available: int, cli_message: str):
        super().__init__(message)
        self.estimate, self.available, self.cli_message = estimate, available, cli_message


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        import ctypes

        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def release_freed_host_memory() -> bool:
    """Return heap memory the process has freed to the OS; False where that is not possible.

    XLA's compiler frees hundreds of MB of scratch memory when it finishes
    (~0.6 GB for the default net), but glibc keeps freed pages in its heap, so
    they stay in the process's resident memory and add to the fit's buffers.
    The engine calls this after compiling and before the first real chunk;
    measured on the 512 px default fit it lowers peak RSS by ~0.5 GB.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def largest_fitting_group(estimate: Callable, items: int, available: int | None) -> int | None:
    """The vmap group for `items` items per device: None (all at once) when that fits.

    Otherwise the largest divisor of `items` whose estimate fits (groups of
    equal size compile one vmapped step; a remainder group would compile a
    second), or 1, whose refusal `check_fits` then explains. Unknown free
    memory (None) means all at once.
    """
    if available is None or fits(estimate(None), available):
        return None
    for size in range(items - 1, 0, -1):
        if items % size == 0 and fits(estimate(size), available):
            return size
    return 1
