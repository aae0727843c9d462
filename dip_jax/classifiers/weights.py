"""Classifier weight files in torchvision's state-dict layout: load, write random ones, convert torch checkpoints.

Nothing is downloaded at run time; torch is imported only by the converter.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dip_jax.classifiers.model import TORCHVISION_CHECKPOINTS, TorchvisionClassifier, _check_arch, _flax_name, _layers


def expected_state_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's ``state_dict()`` for classifier ``name``, in torchvision's order."""
    shapes: dict[str, tuple[int, ...]] = {}
    channels, width = 3, None
    for layer in _layers(name):
        if layer.kind == "conv":
            shapes[layer.name + ".weight"] = (layer.out, channels, layer.kernel, layer.kernel)
            shapes[layer.name + ".bias"] = (layer.out,)
            channels = layer.out
        elif layer.kind == "avgpool":
            width = channels * layer.out * layer.out
        elif layer.kind == "linear":
            shapes[layer.name + ".weight"] = (layer.out, width)
            shapes[layer.name + ".bias"] = (layer.out,)
            width = layer.out
    return shapes


def _check_state(name: str, state: dict[str, np.ndarray], source: str) -> None:
    expected = expected_state_shapes(name)
    missing = [f"{key} {shape}" for key, shape in expected.items() if key not in state]
    wrong_shapes = [
        f"{key} is {tuple(state[key].shape)}, expected {shape}"
        for key, shape in expected.items()
        if key in state and tuple(state[key].shape) != shape
    ]
    unexpected = [key for key in state if key not in expected]
    problems = []
    for label, entries in (("wrong shapes", wrong_shapes), ("unexpected keys", unexpected), ("missing keys", missing)):
        if entries:
            more = f" (and {len(entries) - 5} more)" if len(entries) > 5 else ""
            problems.append(f"{label}: " + ", ".join(entries[:5]) + more)
    if problems:
        raise ValueError(
            f"{source} does not hold torchvision {name} weights; " + "; ".join(problems) + ". "
            f"It must hold torchvision's {name} state_dict (keys like features.0.weight (out, in, kh, kw), "
            "classifier.6.weight (out, in)); convert a checkpoint with "
            f"`python -m dip_jax.classifiers convert --arch {name} --pth FILE --out FILE.safetensors`."
        )


def _missing_weights_message(name: str, path: Path) -> str:
    return (
        f"No classifier weights at {path}. dip_jax never downloads anything at run time, so the pretrained "
        f"{name} weights must be a local file in torchvision's state-dict layout (.safetensors or .npz). To make "
        "one, on a machine with torch and torchvision installed (pip install torch torchvision) run\n"
        f"    python -m dip_jax.classifiers convert --arch {name} --torchvision --out {name}.safetensors\n"
        f"(torchvision fetches its ImageNet weights, {TORCHVISION_CHECKPOINTS[name]}, once), or convert a "
        "torchvision checkpoint you already have, e.g. from ~/.cache/torch/hub/checkpoints/:\n"
        f"    python -m dip_jax.classifiers convert --arch {name} --pth {TORCHVISION_CHECKPOINTS[name]} "
        f"--out {name}.safetensors\n"
        "and pass the written file's path. To test a pipeline without pretrained weights, write random ones with "
        f"dip_jax.classifiers.random_weights_file(key, {name!r}, path)."
    )


def _read_state(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic == b"PK\x03\x04":  # .npz files are zip archives
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except SafetensorError as error:
        raise ValueError(
            f"{path} is neither an .npz archive nor a safetensors file ({error}); write weight files with "
            "`python -m dip_jax.classifiers convert` or random_weights_file."
        ) from error


def _write_state(state: dict[str, np.ndarray], path: Path, fmt: str) -> None:
    arrays = {key: np.ascontiguousarray(value, dtype=np.float32) for key, value in state.items()}
    if fmt == "npz":
        # Through a file handle, because np.savez appends '.npz' to a path that lacks it.
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)
    elif fmt == "safetensors":
        from safetensors.numpy import save_file

        save_file(arrays, str(path))
    else:
        raise ValueError(f"Unknown weight file format {fmt!r}; use 'npz' or 'safetensors'.")


def _state_to_flax(name: str, state: dict[str, np.ndarray]) -> dict:
    params = {}
    channels, pooled_side = 3, None
    first_linear = True
    for layer in _layers(name):
        weight = state.get(layer.name + ".weight")
        bias = state.get(layer.name + ".bias")
        if layer.kind == "conv":
            kernel = np.transpose(weight, (2, 3, 1, 0))  # (out, in, kh, kw) -> HWIO
            channels = layer.out
        elif layer.kind == "avgpool":
            pooled_side = layer.out
            continue
        elif layer.kind == "linear":
            if first_linear:
                # torch flattens (C, h, w); we flatten (h, w, C): permute the input axis to match.
                kernel = (
                    weight.reshape(layer.out, channels, pooled_side, pooled_side)
                    .transpose(2, 3, 1, 0)
                    .reshape(pooled_side * pooled_side * channels, layer.out)
                )
                first_linear = False
            else:
                kernel = weight.T
        else:
            continue
        params[_flax_name(layer.name)] = {
            "kernel": jnp.asarray(kernel, jnp.float32),
            "bias": jnp.asarray(bias, jnp.float32),
        }
    return {"params": params}


def load_classifier(name: str, weights_path) -> tuple[TorchvisionClassifier, dict]:
    """Build classifier ``name`` ('alexnet', 'vgg16', 'vgg19') and load its weights from a local file.

    ``weights_path``: an ``.npz`` or ``.safetensors`` file (the format is read from the content) holding
    torchvision's state dict for ``name``.  Returns ``(model, params)``; use them with ``features``.
    """
    _check_arch(name)
    path = Path(weights_path)
    if not path.is_file():
        raise ValueError(_missing_weights_message(name, path))
    state = _read_state(path)
    _check_state(name, state, str(path))
    return TorchvisionClassifier(arch=name), _state_to_flax(name, state)


def random_weights_file(key: jax.Array, name: str, path, *, fmt: str = "npz") -> Path:
    """Write random weights for classifier ``name`` to ``path`` in torchvision's state-dict layout; return the path.

    Not torchvision's initialisation: weights are He-normal (std sqrt(2 / fan_in)) and biases N(0, 0.1^2), so
    that activations keep their scale through the net and every bias changes the output (useful for tests).
    ``fmt``: 'npz' or 'safetensors'.  Any ``.npz``/``.safetensors`` reader (or ``load_classifier``) reads it.
    The same ``key`` gives the same file.
    """
    if fmt not in ("npz", "safetensors"):
        raise ValueError(f"Unknown weight file format {fmt!r}; use 'npz' or 'safetensors'.")
    # The key seeds a NumPy generator: the VGGs have ~140M parameters, which NumPy draws several times faster
    # than jax.random does on a CPU, and these values never need to live on an accelerator.
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    state = {}
    for entry, shape in expected_state_shapes(name).items():
        if entry.endswith(".weight"):
            std = math.sqrt(2.0 / math.prod(shape[1:]))
        else:
            std = 0.1
        value = rng.standard_normal(shape, dtype=np.float32)
        value *= np.float32(std)
        state[entry] = value
    path = Path(path)
    _write_state(state, path, fmt)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Converter from torch checkpoints (torch is imported only here)


def _rename_by_order(name: str, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map a state dict with other key names (e.g. the original DIP's Caffe VGG: conv1_1.weight ... fc8.bias) onto
    torchvision's keys, pairing conv / Linear weights in the order the checkpoint lists them."""
    weight_keys = [key for key, value in state.items() if key.endswith("weight") and value.ndim in (2, 4)]
    targets = [key for key in expected_state_shapes(name) if key.endswith(".weight")]
    if len(weight_keys) != len(targets):
        raise ValueError(
            f"The checkpoint has {len(weight_keys)} conv/Linear weights, torchvision {name} has {len(targets)}; "
            "it is not a checkpoint of this architecture."
        )
    renamed = {}
    for source, target in zip(weight_keys, targets):
        bias = source[: -len("weight")] + "bias"
        if bias not in state:
            raise ValueError(f"The checkpoint has {source} but no {bias}; torchvision {name} has biases everywhere.")
        renamed[target] = state[source]
        renamed[target[: -len("weight")] + "bias"] = state[bias]
    return renamed


def torch_state_to_numpy(name: str, state) -> dict[str, np.ndarray]:
    """A torch state dict (or a checkpoint dict holding one under 'state_dict') as checked float32 numpy arrays in
    torchvision's keys.  Keys other than torchvision's are mapped by order (see ``_rename_by_order``)."""
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(
            f"Expected a state dict (a dict of tensors), got {type(state).__name__}; save model.state_dict()."
        )
    arrays = {}
    for key, value in state.items():
        if not hasattr(value, "detach"):
            continue
        clean_key = key[len("module.") :] if key.startswith("module.") else key  # DataParallel checkpoints
        arrays[clean_key] = value.detach().cpu().float().numpy()
    if set(arrays) != set(expected_state_shapes(name)):
        arrays = _rename_by_order(name, arrays)
    _check_state(name, arrays, "The checkpoint")
    return {key: arrays[key] for key in expected_state_shapes(name)}


def convert(arch: str, out, *, pth=None, use_torchvision: bool = False) -> Path:
    """Write torchvision's ``arch`` weights (from ``pth``, or torchvision's own ImageNet weights when
    ``use_torchvision``) to ``out`` (.safetensors or .npz).  Needs torch (and torchvision for ``use_torchvision``)."""
    _check_arch(arch)
    out = Path(out)
    fmt = {".safetensors": "safetensors", ".npz": "npz"}.get(out.suffix)
    if fmt is None:
        raise ValueError(f"--out must end in .safetensors or .npz, got {out.name!r}.")
    if (pth is None) == (not use_torchvision):
        raise ValueError("Give exactly one source: a checkpoint file (--pth FILE) or --torchvision.")
    try:
        import torch
    except ImportError as error:
        raise ValueError("Converting needs torch: pip install torch (and torchvision for --torchvision).") from error
    if use_torchvision:
        try:
            import torchvision
        except ImportError as error:
            raise ValueError(
                "--torchvision needs torchvision: pip install torchvision, or pass a checkpoint with --pth "
                f"(torchvision's file is {TORCHVISION_CHECKPOINTS[arch]})."
            ) from error
        state = getattr(torchvision.models, arch)(weights="DEFAULT").state_dict()
    else:
        state = torch.load(str(pth), map_location="cpu", weights_only=True)
    _write_state(torch_state_to_numpy(arch, state), out, fmt)
    return out
