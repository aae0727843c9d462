"""The classifier networks (torchvision's AlexNet, VGG-16, VGG-19 in Flax), their layer names and `features`.

See `dip_jax.classifiers` for the contract; weight files are `dip_jax.classifiers.weights`.
"""

from __future__ import annotations

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

