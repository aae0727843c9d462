"""Weight conversion from the original PyTorch generators.

Contract: `from_torch_state_dict(config, state_dict)` takes the original
`state_dict()` (names -> arrays in PyTorch layout: conv `(out, in, kh, kw)`,
transposed conv `(in, out, kh, kw)`, BatchNorm `weight/bias/running_mean/
running_var[/num_batches_tracked]`), in its original order, and returns
dip_jax `variables` ({'params', 'batch_stats'}) for `build_generator(config)`.

Matching is by order, not by name: the original's module names are positional
(`1.1.7.1.0.1.1.weight`). `torch_module_order(config)` lists a generator's
dip_jax modules in the order the original registers them; this module holds
that knowledge for each of the original's generators ('skip', 'unet',
'resnet', 'texture_nets', 'dcgan'), so generators themselves carry no PyTorch
ordering. Entries are grouped into modules by their name prefix and paired
one to one; any disagreement in count or shape raises ValueError saying where.
`config_from_original(kwargs)` builds a config from the original's
constructor arguments plus a 'kind' key (as the golden fixtures store them).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Mapping

import numpy as np

from dip_jax import nets
from dip_jax.nets import dcgan, resnet, skip, texture_nets, unet

_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


# ---------------------------------------------------------------------------- the original's module orders
# Each returns (dip_jax module path, kind) in the order of the original's state_dict. kind is
# 'conv' (weight[, bias]), 'deconv' (a ConvTranspose2d), 'bn' (weight, bias, running stats),
# 'norm_affine' (InstanceNorm2d(affine=True): weight, bias) or 'lanczos' (the original's in-net
# Downsampler conv). Paths are '/'-joined submodule names inside the `params` collection.


def _skip_order(cfg: skip.SkipConfig) -> list[tuple[str, str]]:
    order: list[tuple[str, str]] = []

    def scale(i: int) -> None:
        if cfg.num_channels_skip[i] > 0:
            order.extend([(f"s{i}_skip_conv", "conv"), (f"s{i}_skip_bn", "bn")])
        order.append((f"s{i}_down/conv", "conv"))
        if cfg.downsample_modes[i] in ("lanczos2", "lanczos3"):
            order.append((f"s{i}_down", "lanczos"))
        order.extend([(f"s{i}_down_bn", "bn"), (f"s{i}_conv2", "conv"), (f"s{i}_conv2_bn", "bn")])
        if i + 1 < cfg.num_scales:
            scale(i + 1)
        order.extend([(f"s{i}_join_bn", "bn"), (f"s{i}_up_conv", "conv"), (f"s{i}_up_conv_bn", "bn")])
        if cfg.need1x1_up:
            order.extend([(f"s{i}_up1x1", "conv"), (f"s{i}_up1x1_bn", "bn")])

    scale(0)
    order.append(("out_conv", "conv"))
    return order


def _unet_order(cfg: unet.UNetConfig) -> list[tuple[str, str]]:
    # start, down1..4, more_downs, more_ups, up4..up1, final; InstanceNorm2d(affine=False) holds no weights.
    order: list[tuple[str, str]] = []

    def conv2(path: str, norm_layer: str | None) -> None:
        for i in (1, 2):
            order.append((f"{path}/conv{i}", "conv"))
            if norm_layer == "BatchNorm2d":
                order.append((f"{path}/norm{i}", "bn"))

    def up(path: str) -> None:
        order.append((f"{path}/up", "deconv" if cfg.upsample_mode == "deconv" else "conv"))
        conv2(f"{path}/conv", None)

    for name in ["start", "down1", "down2", "down3", "down4"] + [f"more_down{j}" for j in range(cfg.more_layers)]:
        conv2(name, cfg.norm_layer)
    for j in range(cfg.more_layers):
        up(f"more_up{j}")
    for i in (4, 3, 2, 1):
        up(f"up{i}")
    order.append(("final", "conv"))
    return order


def _resnet_order(cfg: resnet.ResNetConfig) -> list[tuple[str, str]]:
    norm_kind = "bn" if cfg.norm_layer == "BatchNorm2d" else "norm_affine"
    order: list[tuple[str, str]] = [("head", "conv")]
    for i in range(cfg.num_blocks):
        order.extend([
            (f"block{i}_conv1", "conv"), (f"block{i}_norm1", norm_kind),
            (f"block{i}_conv2", "conv"), (f"block{i}_norm2", norm_kind),
        ])
    order.extend([("tail_conv", "conv"), ("tail_norm", norm_kind), ("out_conv", "conv")])
    return order


def _texture_nets_order(cfg: texture_nets.TextureNetsConfig) -> list[tuple[str, str]]:
    # The original nests the coarser path inside each finer `Concat` and appends each merge
    # BatchNorm to the end of the sequence it normalises: branch0, carry1's BN, then per scale
    # the branch, its merge BN, the join, and the next carry's BN (or, last, the output conv).
    def block(path: str) -> list[tuple[str, str]]:
        return [entry for k in (1, 2, 3) for entry in ((f"{path}/conv{k}", "conv"), (f"{path}/bn{k}", "bn"))]

    n = len(cfg.ratios)
    order = block("branch0") + [("carry1_merge_bn", "bn")]
    for i in range(1, n):
        order += block(f"branch{i}") + [(f"branch{i}_merge_bn", "bn")] + block(f"join{i}")
        order.append((f"carry{i + 1}_merge_bn", "bn") if i < n - 1 else ("out_conv", "conv"))
    return order


def _dcgan_order(cfg: dcgan.DCGANConfig) -> list[tuple[str, str]]:
    up = "deconv" if cfg.need_convT else "conv"
    order = [("in_deconv", "deconv"), ("in_bn", "bn")]
    for i in range(cfg.num_ups - 3):
        order += [(f"up{i}", up), (f"up{i}_bn", "bn")]
    order.append(("out_conv", up))
    return order


# kind -> (module order, config from the original's constructor arguments)
ORIGINAL_GENERATORS = {
    "skip": (_skip_order, skip.skip_config),
    "unet": (_unet_order, unet.unet_config),
    "resnet": (_resnet_order, resnet.resnet_config),
    "texture_nets": (_texture_nets_order, texture_nets.texture_nets_config),
    "dcgan": (_dcgan_order, dcgan.dcgan_config),
}


def torch_module_order(config) -> list[tuple[str, str]]:
    """(dip_jax module path, kind) of `config`'s net in the order of the original's `state_dict()`."""
    kind = getattr(config, "kind", None)
    if kind not in ORIGINAL_GENERATORS:
        raise ValueError(
            f"a {kind!r} generator has no PyTorch original to convert weights from; "
            f"weights convert for {sorted(ORIGINAL_GENERATORS)}"
        )
    return ORIGINAL_GENERATORS[kind][0](config)


def config_from_original(original: Mapping):
    """Config from the original's constructor arguments plus a 'kind' key (default 'skip')."""
    original = dict(original)
    kind = original.pop("kind", "skip")
    if kind not in ORIGINAL_GENERATORS:
        raise ValueError(f"unknown original generator kind {kind!r}; use one of {sorted(ORIGINAL_GENERATORS)}")
    return ORIGINAL_GENERATORS[kind][1](**original)


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
    return config_from_original(original), state_dict, extras


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
    order = torch_module_order(config)
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
