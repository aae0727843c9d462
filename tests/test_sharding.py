"""Several devices: the batch axis sharded over 4 (forced) CPU devices gives the 1-device fit."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dip_jax.runtime import sharding

# Runs in a fresh interpreter: the device count must be set before jax is imported.
_FOUR_DEVICES = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    import dip_jax as dj
    from dip_jax import nets

    # A one-scale net keeps the two compiles (one device, four devices) short.
    net = nets.narrow(nets.preset("default", num_input_channels=2), width=4, scales=1)
    cfg = dj.FitConfig(num_steps=3, learning_rate=0.01, reg_noise_std=1 / 30, chunk_size=2, batch_mode="map")
    ys = np.random.default_rng(0).uniform(0, 1, (8, 8, 8, 3)).astype(np.float32)
    keys = jax.random.split(jax.random.key(7), 8)
    one = dj.fit(keys, net, cfg, ys, devices=jax.devices()[:1])
    four = dj.fit(keys, net, cfg, ys)
    six = dj.fit(keys[:6], net, cfg, ys[:6])  # padded to 8 on 4 devices
    leaf = jax.tree_util.tree_leaves(four.state.params)[0]
    diff = lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
    json.dump({
        "devices": jax.device_count(),
        "output": diff(one.output, four.output),
        "loss": diff(one.history["loss"], four.history["loss"]),
        "params": max(diff(a, b) for a, b in zip(jax.tree_util.tree_leaves(one.state.params),
                                                  jax.tree_util.tree_leaves(four.state.params))),
        "padded_output": diff(one.output[:6], six.output),
        "padded_shape": list(six.output.shape),
        "padded_history": list(six.history["loss"].shape),
        "state_devices": len(leaf.sharding.device_set),
    }, sys.stdout)
    """
)


def test_four_device_fit_equals_the_one_device_fit():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", _FOUR_DEVICES], env=env, capture_output=True, text=True,
                          timeout=600, cwd=pathlib.Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4
    assert result["state_devices"] == 4  # the state really lived on 4 devices
    assert result["output"] < 1e-6 and result["params"] < 1e-6 and result["loss"] < 1e-6
    assert result["padded_output"] < 1e-6
    assert result["padded_shape"] == [6, 1, 8, 8, 3] and result["padded_history"] == [3, 6, 1]


def test_one_device_needs_no_mesh():
    assert sharding.batch_mesh([jax.devices()[0]]) is None
    placement = sharding.BatchPlacement(3, [jax.devices()[0]])
    tree = {"a": np.arange(6).reshape(3, 2)}
    assert placement.put(tree) is tree and placement.take(tree) is tree
    with pytest.raises(ValueError, match="devices is empty"):
        sharding.batch_mesh([])
    with pytest.raises(ValueError, match="batch_size"):
        sharding.BatchPlacement(0)


@settings(max_examples=50, deadline=None)
@given(batch=st.integers(1, 40), devices=st.integers(1, 9))
def test_property_padding_is_minimal(batch, devices):
    padded = sharding.padded_size(batch, devices)
    assert padded % devices == 0 and batch <= padded < batch + devices


def test_process_share_covers_everything_on_one_host():
    assert sharding.process_share(5) == slice(0, 5)
