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

from dip_jax.classifiers.cli import main
from dip_jax.classifiers.model import (
    ARCHITECTURES,
    CAFFE_MEAN_BGR,
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
    PREPROCESSING_STYLES,
    TORCHVISION_CHECKPOINTS,
    TorchvisionClassifier,
    adaptive_avg_pool,
    features,
    layer_names,
    min_input_size,
    preprocess,
    resolve_layer,
)
from dip_jax.classifiers.weights import (
    convert,
    expected_state_shapes,
    load_classifier,
    random_weights_file,
    torch_state_to_numpy,
)

__all__ = [
    "ARCHITECTURES",
    "CAFFE_MEAN_BGR",
    "IMAGENET_MEAN_RGB",
    "IMAGENET_STD_RGB",
    "PREPROCESSING_STYLES",
    "TORCHVISION_CHECKPOINTS",
    "TorchvisionClassifier",
    "adaptive_avg_pool",
    "convert",
    "expected_state_shapes",
    "features",
    "layer_names",
    "load_classifier",
    "main",
    "min_input_size",
    "preprocess",
    "random_weights_file",
    "resolve_layer",
    "torch_state_to_numpy",
]
