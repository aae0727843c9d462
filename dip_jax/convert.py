"""Weight conversion from the original PyTorch generators.

Contract: `from_torch_state_dict(config, state_dict)` takes the original
`state_dict()` (names -> arrays in PyTorch layout: conv `(out, in, kh, kw)`,
transposed conv `(in, out, kh, kw)`, BatchNorm `weight/bias/running_mean/
running_var[/num_batches_tracked]`), in its original order, and returns
dip_jax `variables` ({'params', 'batch_stats'}) for `build_generator(config)`.

Matching is by order, not by name: the original's module names are positional
(`1.1.7.1.0.1.1.weight`), while every dip_jax generator exposes
`torch_module_order(config)`, the list of its modules in the order the
original registers them. Entries are grouped into modules by their name
prefix and paired one to one; any disagreement in count or shape raises
ValueError saying where.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Mapping

import numpy as np

from dip_jax import nets

_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


def load_golden(path: str) -> tuple[Any, "OrderedDict[str, np.ndarray]", dict]:
    """Read a fixture in the `golden/*.npz` layout: (config, state_dict, extras).

    `extras` holds the remaining arrays (`input`, `output`, `num_params`).
    """
    data = np.load(path, allow_pickle=False)
    if "config" not in data:
        raise ValueError(f"{path} has no 'config' entry; it is not a generator fixture")
    original = json.loads(str(data["config"]))
    entries = sorted((k for k in data.files if k.startswith("p/")), key=lambda k: int(k.split("/")[1]))
    state_dict = OrderedDict((k.split("/", 2)[2], np.asarray(data[k])) for k in entries)
    extras = {k: np.asarray(data[k]) for k in data.files if not k.startswith("p/") and k != "config"}
    return nets.config_from_original(original), state_dict, extras


def load_torch_file(path: str) -> "OrderedDict[str, np.ndarray]":
    """Read a `.pth` state dict (needs PyTorch) or an `.npz` of name -> array."""
    if str(path).endswith(".npz"):
        data = np.load(path, allow_pickle=False)
        return OrderedDict((k, np.asarray(data[k])) for k in data.files)
    try:
        import torch
    except ImportError as err:
        raise ValueError(
            f"reading {path} needs PyTorch; install it (`pip install torch==2.13.0`) or save the "
            "state dict as .npz: np.savez(f, **{k: v.numpy() for k, v in sd.items()})"
        ) from err
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if hasattr(obj, "state_dict"):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict or a module")
    return OrderedDict((k, v.detach().cpu().numpy()) for k, v in obj.items())


def _group_modules(state_dict: Mapping[str, np.ndarray]) -> list[tuple[str, dict[str, np.ndarray]]]:
    groups: list[tuple[str, dict[str, np.ndarray]]] = []
    for name, value in state_dict.items():
        prefix, _, field = name.rpartition(".")
        if field == "num_batches_tracked":
            continue
        if not groups or groups[-1][0] != prefix:
            groups.append((prefix, {}))
        groups[-1][1][field] = np.asarray(value)
    return groups


def _set(tree: dict, path: str, leaf: str, value: np.ndarray) -> None:
    node = tree
    for part in path.split("/"):
        node = node.setdefault(part, {})
    node[leaf] = np.asarray(value, np.float32)


def _check_shape(where: str, got: tuple, want: tuple) -> None:
    if tuple(got) != tuple(want):
        raise ValueError(f"{where}: the state dict has shape {tuple(got)} but the config needs {tuple(want)}")


def from_torch_state_dict(config, state_dict: Mapping[str, np.ndarray]) -> dict:
    """Original state dict -> dip_jax variables for `config` (see module docstring)."""
    order = nets.torch_module_order(config)
    groups = _group_modules(state_dict)
    if len(groups) != len(order):
        raise ValueError(
            f"the state dict has {len(groups)} weight-carrying modules but a {config.kind} net with this "
            f"config has {len(order)}; check that the config matches the net that produced the weights"
        )
    params: dict = {}
    stats: dict = {}
    for (prefix, fields), (path, kind) in zip(groups, order):
        where = f"module {prefix!r} (dip_jax {path}, {kind})"
        if kind in ("conv", "deconv"):
            w = fields.get("weight")
            if w is None or w.ndim != 4:
                raise ValueError(f"{where}: expected a 4-D conv weight, got fields {sorted(fields)}")
            # conv (out, in, kh, kw) -> HWIO. A transposed conv (in, out, kh, kw) becomes the
            # equivalent forward conv on the dilated input: swap in/out and flip the window.
            kernel = w.transpose(2, 3, 1, 0) if kind == "conv" else w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)
            _set(params, path, "kernel", kernel)
            if "bias" in fields:
                _set(params, path, "bias", fields["bias"])
        elif kind == "lanczos":
            w = fields["weight"]
            _set(params, path, "lanczos_kernel", w.transpose(2, 3, 1, 0))
            _set(params, path, "lanczos_bias", fields["bias"])
        elif kind in ("bn", "norm_affine"):
            missing = [f for f in ("weight", "bias") if f not in fields]
            if missing:
                raise ValueError(f"{where}: missing normalisation fields {missing}")
            _set(params, path, "scale", fields["weight"])
            _set(params, path, "bias", fields["bias"])
            if kind == "bn":
                _set(stats, path, "mean", fields.get("running_mean", np.zeros_like(fields["weight"])))
                _set(stats, path, "var", fields.get("running_var", np.ones_like(fields["weight"])))
        else:
            raise ValueError(f"unknown module kind {kind!r} at {path}")
    return _conform(config, {"params": params, "batch_stats": stats})


def _conform(config, variables: dict) -> dict:
    """Check every leaf against a fresh init and drop what the net does not hold."""
    import jax

    template = nets.init_shapes(config)
    out = {}
    for collection, tree in template.items():
        flat_template = _flatten(tree)
        flat_got = _flatten(variables.get(collection, {}))
        if collection == "params" and not getattr(config, "train_lanczos", True):
            flat_got = {k: v for k, v in flat_got.items() if "lanczos_" not in k}
        missing = sorted(set(flat_template) - set(flat_got))
        extra = sorted(set(flat_got) - set(flat_template))
        if missing or extra:
            raise ValueError(
                f"converted {collection} do not match the net: missing {missing[:5]}, unexpected {extra[:5]}"
            )
        for k, shape in flat_template.items():
            _check_shape(f"{collection}/{k}", flat_got[k].shape, shape.shape)
        out[collection] = _unflatten({k: jax.numpy.asarray(v) for k, v in flat_got.items()})
    return out


def _flatten(tree: Mapping, prefix: str = "") -> dict:
    flat = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else k
        if isinstance(v, Mapping):
            flat.update(_flatten(v, key))
        else:
            flat[key] = v
    return flat


def _unflatten(flat: Mapping) -> dict:
    tree: dict = {}
    for key, v in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree
