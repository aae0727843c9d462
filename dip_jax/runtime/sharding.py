"""Spreading the batch axis (images x restarts) over several devices.

Contract:
- `batch_mesh(devices)` is a one-axis `jax.sharding.Mesh` named 'batch' over
  the given devices (default: every local device), or None when there is only
  one, in which case nothing here changes how a fit runs.
- `BatchPlacement(batch_size, devices)` pads a batch of B items to a multiple
  of the device count D (the padding repeats the last item, so it computes
  real, finite numbers that are thrown away), places every array whose
  leading axis is the batch axis with `NamedSharding(mesh, P('batch'))`
  (each device holds B_pad / D consecutive items) and `take` drops the
  padding again. Items never talk to each other, so the engine runs the
  per-device share with `jax.shard_map` and no cross-device communication:
  a fit on D devices computes every item exactly as on one device.
- Multi-host (TPU pods, several GPU hosts): call
  `jax.distributed.initialize()` first in every process (on Cloud TPU it
  needs no arguments; elsewhere pass `coordinator_address`, `num_processes`
  and `process_id`). The engine only shards over the process's *local*
  devices, so give each process its own share of the images with
  `process_share(n)` (images `[start, stop)` of the run's list) and let every
  process write its own outputs; as items are independent, nothing has to be
  gathered across hosts. For example::

      jax.distributed.initialize()
      share = sharding.process_share(len(paths))
      result = dj.fit(keys[share], net, cfg, images[share])

"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "batch"


def local_devices(devices: Sequence[Any] | None = None) -> list:
    """The devices a fit uses: `devices` as given, else every local device of the default backend."""
    if devices is None:
        return list(jax.local_devices())
    devices = list(devices)
    if not devices:
        raise ValueError("devices is empty; pass None (use every local device) or a list of jax devices")
    return devices


def batch_mesh(devices: Sequence[Any] | None = None) -> Mesh | None:
    """A 1-D mesh with axis 'batch' over `devices`, or None for a single device."""
    devices = local_devices(devices)
    if len(devices) == 1:
        return None
    return Mesh(np.array(devices), (BATCH_AXIS,))


def padded_size(batch_size: int, num_devices: int) -> int:
    """The smallest multiple of `num_devices` that is >= `batch_size`."""
    return -(-batch_size // num_devices) * num_devices


def process_share(num_items: int) -> slice:
    """This process's contiguous share of `num_items` in a multi-host run (all of it on one host)."""
    count, index = jax.process_count(), jax.process_index()
    per = -(-num_items // count)
    return slice(min(index * per, num_items), min((index + 1) * per, num_items))


def _pad_on_host(a, padded: int) -> np.ndarray:
    a = np.asarray(a)
    missing = padded - a.shape[0]
    if missing == 0:
        return a
    return np.concatenate([a, np.repeat(a[-1:], missing, axis=0)], axis=0)


def _is_key(a) -> bool:
    return jnp.issubdtype(getattr(a, "dtype", np.float32), jax.dtypes.prng_key)


@functools.lru_cache(maxsize=8)
def _slicer(size: int):
    return jax.jit(lambda tree: jax.tree_util.tree_map(lambda a: a[:size], tree))


class BatchPlacement:
    """Where a batch of `batch_size` items lives: one device, or padded and sharded over a mesh."""

    def __init__(self, batch_size: int, devices: Sequence[Any] | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.mesh = batch_mesh(devices)
        self.num_devices = 1 if self.mesh is None else self.mesh.devices.size
        self.padded_size = padded_size(self.batch_size, self.num_devices)

    @property
    def batch_sharding(self) -> NamedSharding | None:
        return None if self.mesh is None else NamedSharding(self.mesh, PartitionSpec(BATCH_AXIS))

    def put(self, tree):
        """Pad every leaf's leading (batch) axis and shard it over the mesh; identity on one device."""
        if self.mesh is None or tree is None:
            return tree
        sharding = self.batch_sharding

        # Padding and splitting happen on the host: eager device ops would
        # compile a little program per leaf shape, which on CPU costs seconds.
        def place(a):
            if np.shape(a)[:1] != (self.batch_size,):
                raise ValueError(f"expected a leading batch axis of {self.batch_size}, got shape {np.shape(a)}")
            if _is_key(a):
                data = jax.device_put(_pad_on_host(jax.random.key_data(a), self.padded_size), sharding)
                return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
            return jax.device_put(_pad_on_host(a, self.padded_size), sharding)

        return jax.tree_util.tree_map(place, tree)

    def put_replicated(self, tree):
        """Copy `tree` to every device of the mesh; identity on one device."""
        if self.mesh is None or tree is None:
            return tree
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))

    def take(self, tree):
        """Drop the padding from the leading (batch) axis of every leaf (one compiled slice)."""
        if self.padded_size == self.batch_size or tree is None:
            return tree
        return _slicer(self.batch_size)(tree)
