"""Pretrained ImageNet classifiers (AlexNet, VGG-16, VGG-19) for feature inversion and activation maximisation.

The networks are exactly torchvision's ``alexnet``, ``vgg16`` and ``vgg19`` (inference only: dropout is the
identity), written in Flax linen, and load torchvision's weights from a local file.

Contract
--------
* ``image``: float32 ``(N, H, W, 3)``, RGB in ``[0, 1]``.  ``H, W >= min_input_size(name)`` (63 for AlexNet,
  32 for VGG); any larger size works, because the adaptive average pool before the classifier follows torch's
  bin rule exactly (bin ``i`` of ``out`` over a length ``L`` covers ``[floor(i L / out), ceil((i + 1) L / out))``).
* ``features(model, params, image, layer)`` returns float32 activations: ``(N, h, w, C)`` for the convolutional
  part and ``avgpool``; ``(N, F)`` for the classifier.  They equal torch's activations up to the NCHW -> NHWC
  transposition, with one exception: the flattened vector that feeds the first Linear (``classifier.0`` of
  AlexNet, which is a Dropout) is in NHWC order (torch flattens NCHW).  The first Linear's weight is permuted
  when loading so that ``fc6`` itself is identical to torch's.
* ``params`` is an ordinary pytree argument (``{'params': {...}}``), never closed over, so ``features`` can be
  jitted (``model``, ``layer`` and ``style`` static), vmapped and differentiated with respect to ``image``.

Layer names
-----------
A layer's activation is the *output of that module*, as a forward hook in the original DIP code sees it:

* torchvision names as in the state dict: ``features.K``, ``avgpool``, ``classifier.K``.  ``features.0`` is
  the first convolution before its ReLU; ``features.1`` is that ReLU's output.
* Caffe-style names, which are what the original DIP notebooks use: AlexNet ``conv1``..``conv5``,
  ``relu1``..``relu5``, ``pool1``, ``pool2``, ``pool5``; VGG ``convB_I``, ``reluB_I``, ``poolB``; all nets
  ``fc6``, ``relu6``, ``fc7``, ``relu7``, ``fc8``.  ``convX`` and ``fcX`` are the conv / Linear outputs *before*
  the ReLU (as in the original, whose hooks sit on the conv / Linear module); ``fc8`` is the logits.
  AlexNet: fc6 = classifier.1, fc7 = classifier.4, fc8 = classifier.6.
  VGG:     fc6 = classifier.0, fc7 = classifier.3, fc8 = classifier.6.
  ``layer_names(name)`` lists them all.

Differences from the original DIP code (deliberate; there is no download here)
-----------------------------------------------------------------------------
The original loaded Caffe-converted weights (``alexnet_caffe``, ``vgg16_caffe``, ``vgg19_caffe``) and fed them
Caffe-preprocessed images (RGB -> BGR, times 255, minus the BGR mean [103.939, 116.779, 123.68]).  We load
torchvision's weights, which expect torchvision preprocessing (ImageNet mean / std), so ``features`` defaults
to ``style='torchvision'``; ``style='caffe'`` reproduces the original preprocessing for Caffe-trained VGG
weights converted to the torchvision layout (the converter below renames the original's
``conv1_1 ... fc8`` keys by order).  The Caffe AlexNet is a different network (96 first-layer filters, grouped
convolutions, local response normalisation ``norm1``/``norm2``, no padding in conv1) and cannot be loaded into
torchvision's AlexNet; with torchvision's AlexNet the original's 227 px crop gives pool5 of 6 x 6 as in Caffe.

Getting weights
---------------
Nothing is downloaded at run time.  On a machine with torch and torchvision::

    python -m dip_jax.classifiers convert --arch alexnet --torchvision --out alexnet.safetensors
    python -m dip_jax.classifiers convert --arch vgg19 --pth vgg19-dcbb9e9d.pth --out vgg19.safetensors

then ``model, params = load_classifier('alexnet', 'alexnet.safetensors')``.  ``random_weights_file`` writes
random weights in the same layout, to check a pipeline without pretrained weights.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ARCHITECTURES = ("alexnet", "vgg16", "vgg19")
PREPROCESSING_STYLES = ("torchvision", "caffe")

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)

# File names torchvision gives its ImageNet weights (in ~/.cache/torch/hub/checkpoints/ once downloaded).
TORCHVISION_CHECKPOINTS = {
    "alexnet": "alexnet-owt-7be5be79.pth",
    "vgg16": "vgg16-397923af.pth",
    "vgg19": "vgg19-dcbb9e9d.pth",
}

_VGG_CONFIGS = {
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}
_NUM_CLASSES = 1000
_HIDDEN = 4096


class _Layer(NamedTuple):
    name: str  # torchvision module name, e.g. 'features.3'
    kind: str  # 'conv', 'relu', 'maxpool', 'avgpool', 'flatten', 'dropout', 'linear'
    out: int = 0  # conv / linear output width; avgpool output side
    kernel: int = 0
    stride: int = 1
    pad: int = 0


def _alexnet_layers() -> tuple[_Layer, ...]:
    f = "features."
    c = "classifier."
    return (
        _Layer(f + "0", "conv", 64, 11, 4, 2),
        _Layer(f + "1", "relu"),
        _Layer(f + "2", "maxpool", kernel=3, stride=2),
        _Layer(f + "3", "conv", 192, 5, 1, 2),
        _Layer(f + "4", "relu"),
        _Layer(f + "5", "maxpool", kernel=3, stride=2),
        _Layer(f + "6", "conv", 384, 3, 1, 1),
        _Layer(f + "7", "relu"),
        _Layer(f + "8", "conv", 256, 3, 1, 1),
        _Layer(f + "9", "relu"),
        _Layer(f + "10", "conv", 256, 3, 1, 1),
        _Layer(f + "11", "relu"),
        _Layer(f + "12", "maxpool", kernel=3, stride=2),
        _Layer("avgpool", "avgpool", 6),
        _Layer("", "flatten"),
        _Layer(c + "0", "dropout"),
        _Layer(c + "1", "linear", _HIDDEN),
        _Layer(c + "2", "relu"),
        _Layer(c + "3", "dropout"),
        _Layer(c + "4", "linear", _HIDDEN),
        _Layer(c + "5", "relu"),
        _Layer(c + "6", "linear", _NUM_CLASSES),
    )


def _vgg_layers(config: Sequence[int | str]) -> tuple[_Layer, ...]:
    layers = []
    for item in config:
        name = f"features.{len(layers)}"
        if item == "M":
            layers.append(_Layer(name, "maxpool", kernel=2, stride=2))
        else:
            layers.append(_Layer(name, "conv", int(item), 3, 1, 1))
            layers.append(_Layer(f"features.{len(layers)}", "relu"))
    c = "classifier."
    layers += [
        _Layer("avgpool", "avgpool", 7),
        _Layer("", "flatten"),
        _Layer(c + "0", "linear", _HIDDEN),
        _Layer(c + "1", "relu"),
        _Layer(c + "2", "dropout"),
        _Layer(c + "3", "linear", _HIDDEN),
        _Layer(c + "4", "relu"),
        _Layer(c + "5", "dropout"),
        _Layer(c + "6", "linear", _NUM_CLASSES),
    ]
    return tuple(layers)


def _check_arch(name: str) -> None:
    if name not in ARCHITECTURES:
        raise ValueError(f"Unknown classifier {name!r}; choose one of {', '.join(ARCHITECTURES)}.")


def _layers(name: str) -> tuple[_Layer, ...]:
    _check_arch(name)
    return _alexnet_layers() if name == "alexnet" else _vgg_layers(_VGG_CONFIGS[name])


def _caffe_aliases(name: str) -> dict[str, str]:
    """Caffe-style layer name -> torchvision module name (the naming of the original DIP notebooks)."""
    layers = _layers(name)
    aliases: dict[str, str] = {}
    if name == "alexnet":
        conv_index = 0
        for layer, following in zip(layers, layers[1:] + (None,)):
            if layer.kind == "conv":
                conv_index += 1
                aliases[f"conv{conv_index}"] = layer.name
                aliases[f"relu{conv_index}"] = following.name
            elif layer.kind == "maxpool":
                aliases[f"pool{conv_index}"] = layer.name
    else:
        block, conv_in_block = 1, 0
        for layer, following in zip(layers, layers[1:] + (None,)):
            if layer.kind == "conv":
                conv_in_block += 1
                aliases[f"conv{block}_{conv_in_block}"] = layer.name
                aliases[f"relu{block}_{conv_in_block}"] = following.name
            elif layer.kind == "maxpool":
                aliases[f"pool{block}"] = layer.name
                block, conv_in_block = block + 1, 0
    linear_index = 5
    for layer, following in zip(layers, layers[1:] + (None,)):
        if layer.kind == "linear":
            linear_index += 1
            aliases[f"fc{linear_index}"] = layer.name
            if following is not None and following.kind == "relu":
                aliases[f"relu{linear_index}"] = following.name
    return aliases


def layer_names(name: str) -> tuple[str, ...]:
    """Every layer name ``features`` accepts for classifier ``name``: torchvision names, then Caffe-style aliases."""
    torchvision_names = tuple(layer.name for layer in _layers(name) if layer.name)
    return torchvision_names + tuple(_caffe_aliases(name))


def resolve_layer(name: str, layer: str) -> str:
    """The torchvision module name for ``layer`` (a torchvision name or a Caffe-style alias)."""
    aliases = _caffe_aliases(name)
    if layer in aliases:
        return aliases[layer]
    if any(spec.name == layer for spec in _layers(name) if spec.name):
        return layer
    hint = ""
    if name == "alexnet" and layer in ("norm1", "norm2"):
        hint = (
            " torchvision's AlexNet has no local response normalisation (the Caffe AlexNet of the original does);"
            " use the ReLU before it (relu1 / relu2) or the pool after it (pool1 / pool2)."
        )
    raise ValueError(
        f"Unknown layer {layer!r} for {name}.{hint} Valid layer names: {', '.join(layer_names(name))}."
    )


def _conv_output_size(size: int, layer: _Layer) -> int:
    return (size + 2 * layer.pad - layer.kernel) // layer.stride + 1


def _spatial_sizes_ok(name: str, height: int, width: int) -> bool:
    for layer in _layers(name):
        if layer.kind in ("conv", "maxpool"):
            height, width = _conv_output_size(height, layer), _conv_output_size(width, layer)
            if height < 1 or width < 1:
                return False
    return True


def min_input_size(name: str) -> int:
    """Smallest image side that leaves every feature map of classifier ``name`` at least 1 x 1."""
    size = 1
    while not _spatial_sizes_ok(name, size, size):
        size += 1
    return size


def _adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    matrix = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)  # ceil((i + 1) * in_size / out_size)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
    """torch's ``adaptive_avg_pool2d`` on NHWC ``x``: ``(N, H, W, C) -> (N, oh, ow, C)``, any H, W >= 1.

    Bin ``i`` averages rows ``floor(i H / oh)`` to ``ceil((i + 1) H / oh) - 1`` (the same for columns), so for
    ``H < oh`` rows are repeated, exactly as torch does.
    """
    out_h, out_w = output_size
    _, height, width, _ = x.shape
    if (height, width) == (out_h, out_w):
        return x
    rows = jnp.asarray(_adaptive_pool_matrix(height, out_h))
    cols = jnp.asarray(_adaptive_pool_matrix(width, out_w))
    return jnp.einsum("ph,nhwc,qw->npqc", rows, x, cols, precision=jax.lax.Precision.HIGHEST)


def _flax_name(torch_name: str) -> str:
    return torch_name.replace(".", "_")


class TorchvisionClassifier(nn.Module):
    """torchvision's AlexNet / VGG on NHWC inputs that are already preprocessed (see ``preprocess``).

    ``__call__(x, layer=None)`` returns the output of layer ``layer`` (any name of ``layer_names``) and skips
    everything after it; ``layer=None`` gives the logits.  Parameter names are torchvision's
    module names with ``.`` replaced by ``_`` (``features_0``, ``classifier_6``).
    """

    arch: str

    @nn.compact
    def __call__(self, x: jax.Array, layer: str | None = None) -> jax.Array:
        if layer is not None:
            layer = resolve_layer(self.arch, layer)  # also accepts the Caffe-style aliases
        for spec in _layers(self.arch):
            if spec.kind == "conv":
                pad = ((spec.pad, spec.pad), (spec.pad, spec.pad))
                x = nn.Conv(
                    spec.out,
                    (spec.kernel, spec.kernel),
                    strides=(spec.stride, spec.stride),
                    padding=pad,
                    name=_flax_name(spec.name),
                )(x)
            elif spec.kind == "relu":
                x = jax.nn.relu(x)
            elif spec.kind == "maxpool":
                # torch's MaxPool2d default (ceil_mode=False) drops an incomplete last window, as VALID does.
                x = nn.max_pool(x, (spec.kernel, spec.kernel), strides=(spec.stride, spec.stride), padding="VALID")
            elif spec.kind == "avgpool":
                x = adaptive_avg_pool(x, (spec.out, spec.out))
            elif spec.kind == "flatten":
                x = x.reshape(x.shape[0], -1)
            elif spec.kind == "linear":
                x = nn.Dense(spec.out, name=_flax_name(spec.name))(x)
            # 'dropout' is the identity: these nets are used for inference only.
            if layer is not None and spec.name == layer:
                return x
        return x


def preprocess(image: jax.Array, *, style: str = "torchvision") -> jax.Array:
    """Map an RGB image in [0, 1] (..., 3) to a classifier's input (..., 3), float32.

    ``style='torchvision'``: ``(x - mean) / std`` with ImageNet mean (0.485, 0.456, 0.406) and std
    (0.229, 0.224, 0.225), RGB: what torchvision's weights expect.
    ``style='caffe'``: RGB -> BGR, times 255, minus the BGR mean (103.939, 116.779, 123.68): what the original
    DIP code fed its Caffe-converted weights.
    """
    if style not in PREPROCESSING_STYLES:
        raise ValueError(
            f"Unknown preprocessing style {style!r}; use 'torchvision' for torchvision weights or 'caffe' for "
            "Caffe-trained weights (the original DIP code's)."
        )
    image = jnp.asarray(image)
    if image.ndim < 1 or image.shape[-1] != 3:
        raise ValueError(f"preprocess expects RGB images with 3 channels last, got shape {image.shape}.")
    if style == "caffe":
        return image[..., ::-1] * 255.0 - jnp.asarray(CAFFE_MEAN_BGR, image.dtype)
    return (image - jnp.asarray(IMAGENET_MEAN_RGB, image.dtype)) / jnp.asarray(IMAGENET_STD_RGB, image.dtype)


def features(
    model: TorchvisionClassifier,
    params,
    image: jax.Array,
    layer: str,
    *,
    style: str = "torchvision",
) -> jax.Array:
    """Activation of ``layer`` for ``image`` (N, H, W, 3) float32 RGB in [0, 1]; see the module docstring.

    ``style`` is the preprocessing (``preprocess``); keep the default for torchvision weights.  To jit, mark
    ``model``, ``layer`` and ``style`` static, e.g. ``jax.jit(features, static_argnames=('model', 'layer',
    'style'))``.
    """
    if not isinstance(model, TorchvisionClassifier):
        raise ValueError(f"model must be the TorchvisionClassifier from load_classifier, got {type(model).__name__}.")
    target = resolve_layer(model.arch, layer)
    if getattr(image, "ndim", None) != 4 or image.shape[-1] != 3:
        raise ValueError(
            f"image must be (N, H, W, 3) RGB in [0, 1], got shape {getattr(image, 'shape', None)}; add a batch "
            "axis with image[None] for a single image."
        )
    height, width = image.shape[1:3]
    if not _spatial_sizes_ok(model.arch, height, width):
        raise ValueError(
            f"{model.arch} needs images of at least {min_input_size(model.arch)} x {min_input_size(model.arch)} "
            f"pixels, got {height} x {width}; resize or pad the image."
        )
    return model.apply(params, preprocess(image, style=style), layer=target)


# ----------------------------------------------------------------------------------------------------------------
# Weight files (torchvision state-dict layout)


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dip_jax.classifiers",
        description="Convert torchvision AlexNet / VGG weights to a file that dip_jax.classifiers loads.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    convert_parser = commands.add_parser("convert", help="torch checkpoint -> .safetensors / .npz")
    convert_parser.add_argument("--arch", required=True, choices=ARCHITECTURES)
    source = convert_parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pth", help="a torch state-dict file (torchvision's layout, or Caffe VGG names)")
    source.add_argument("--torchvision", action="store_true", help="torchvision's ImageNet weights (weights='DEFAULT')")
    convert_parser.add_argument("--out", required=True, help="output file, .safetensors or .npz")
    args = parser.parse_args(argv)
    try:
        written = convert(args.arch, args.out, pth=args.pth, use_torchvision=args.torchvision)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
