"""dip_jax.classifiers: torchvision AlexNet / VGG layouts, layer names, weight files, eager = jit = vmap, errors,
and (when torch is installed) parity with a torch build of torchvision's AlexNet."""

import math
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from dip_jax import classifiers
from dip_jax.classifiers import model as classifier_model
from dip_jax.classifiers import (
    adaptive_avg_pool,
    expected_state_shapes,
    features,
    layer_names,
    load_classifier,
    min_input_size,
    preprocess,
    random_weights_file,
    resolve_layer,
)

# Layer names of the original DIP notebooks (activation_maximization.ipynb); position i is features.i there.
ORIGINAL_VGG19_NAMES = [
    "conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1",
    "conv2_1", "relu2_1", "conv2_2", "relu2_2", "pool2",
    "conv3_1", "relu3_1", "conv3_2", "relu3_2", "conv3_3", "relu3_3", "conv3_4", "relu3_4", "pool3",
    "conv4_1", "relu4_1", "conv4_2", "relu4_2", "conv4_3", "relu4_3", "conv4_4", "relu4_4", "pool4",
    "conv5_1", "relu5_1", "conv5_2", "relu5_2", "conv5_3", "relu5_3", "conv5_4", "relu5_4", "pool5",
]  # fmt: skip
ORIGINAL_VGG16_NAMES = [
    "conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1",
    "conv2_1", "relu2_1", "conv2_2", "relu2_2", "pool2",
    "conv3_1", "relu3_1", "conv3_2", "relu3_2", "conv3_3", "relu3_3", "pool3",
    "conv4_1", "relu4_1", "conv4_2", "relu4_2", "conv4_3", "relu4_3", "pool4",
    "conv5_1", "relu5_1", "conv5_2", "relu5_2", "conv5_3", "relu5_3", "pool5",
]  # fmt: skip

# AlexNet activation shapes (without the batch axis) for a 63 x 66 image, worked out by hand from torch's
# conv / pool size formula: conv1 (63 + 4 - 11) // 4 + 1 = 15, (66 + 4 - 11) // 4 + 1 = 15; pools 7, 3, 1.
ALEXNET_SHAPES_63x66 = {
    "features.0": (15, 15, 64), "features.1": (15, 15, 64), "features.2": (7, 7, 64),
    "features.3": (7, 7, 192), "features.4": (7, 7, 192), "features.5": (3, 3, 192),
    "features.6": (3, 3, 384), "features.7": (3, 3, 384), "features.8": (3, 3, 256), "features.9": (3, 3, 256),
    "features.10": (3, 3, 256), "features.11": (3, 3, 256), "features.12": (1, 1, 256),
    "avgpool": (6, 6, 256), "classifier.0": (9216,), "classifier.1": (4096,), "classifier.2": (4096,),
    "classifier.3": (4096,), "classifier.4": (4096,), "classifier.5": (4096,), "classifier.6": (1000,),
}  # fmt: skip


def random_images(seed, shape):
    # NumPy rather than jax.random: jax.random compiles anew for every shape, which adds up in these tests.
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape).astype(np.float32))


def assert_close(actual, expected, rel=1e-4):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = max(float(np.abs(expected).max()), 1e-6)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rel * scale)


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "alexnet.safetensors"
    return random_weights_file(jax.random.PRNGKey(0), "alexnet", path, fmt="safetensors")


@pytest.fixture(scope="module")
def alexnet(alexnet_file):
    return load_classifier("alexnet", alexnet_file)


@pytest.fixture(scope="module")
def alexnet_state(alexnet_file):
    return safetensors.numpy.load_file(alexnet_file)


# ---------------------------------------------------------------------------------------------------------------
# Architecture and names


def test_parameter_counts_match_torchvision():
    # torchvision's documented parameter counts for these three models.
    counts = {
        name: sum(math.prod(shape) for shape in expected_state_shapes(name).values())
        for name in classifiers.ARCHITECTURES
    }
    assert counts == {"alexnet": 61_100_840, "vgg16": 138_357_544, "vgg19": 143_667_240}


def test_min_input_sizes():
    assert min_input_size("alexnet") == 63
    assert min_input_size("vgg16") == min_input_size("vgg19") == 32


@pytest.mark.parametrize("name, original_names", [("vgg19", ORIGINAL_VGG19_NAMES), ("vgg16", ORIGINAL_VGG16_NAMES)])
def test_vgg_caffe_names_follow_the_original_order(name, original_names):
    for index, alias in enumerate(original_names):
        assert resolve_layer(name, alias) == f"features.{index}"
    assert [resolve_layer(name, n) for n in ("fc6", "relu6", "fc7", "relu7", "fc8")] == [
        "classifier.0", "classifier.1", "classifier.3", "classifier.4", "classifier.6"
    ]  # fmt: skip


def test_alexnet_caffe_names():
    expected = {
        "conv1": "features.0", "relu1": "features.1", "pool1": "features.2", "conv2": "features.3",
        "relu2": "features.4", "pool2": "features.5", "conv3": "features.6", "relu3": "features.7",
        "conv4": "features.8", "relu4": "features.9", "conv5": "features.10", "relu5": "features.11",
        "pool5": "features.12", "fc6": "classifier.1", "relu6": "classifier.2", "fc7": "classifier.4",
        "relu7": "classifier.5", "fc8": "classifier.6",
    }  # fmt: skip
    assert {alias: resolve_layer("alexnet", alias) for alias in expected} == expected
    assert set(layer_names("alexnet")) == set(ALEXNET_SHAPES_63x66) | set(expected)


@pytest.mark.parametrize("name", ["vgg16", "vgg19"])
def test_vgg_shapes_of_every_layer_and_flax_parameter_layout(name):
    model = classifiers.TorchvisionClassifier(arch=name)
    image = jax.ShapeDtypeStruct((2, 32, 48, 3), jnp.float32)
    abstract_params = jax.eval_shape(model.init, jax.random.PRNGKey(0), image)
    # The parameter tree the loader builds must be the one flax creates for this module.
    converted = {}
    for key, shape in expected_state_shapes(name).items():
        module, kind = key.rsplit(".", 1)
        if kind == "bias":
            converted[(module.replace(".", "_"), "bias")] = shape
        elif len(shape) == 4:
            converted[(module.replace(".", "_"), "kernel")] = (shape[2], shape[3], shape[1], shape[0])
        else:
            converted[(module.replace(".", "_"), "kernel")] = (shape[1], shape[0])
    init_shapes = {
        (module, kind): leaf.shape
        for module, leaves in abstract_params["params"].items()
        for kind, leaf in leaves.items()
    }
    assert init_shapes == converted
    original_names = {"vgg16": ORIGINAL_VGG16_NAMES, "vgg19": ORIGINAL_VGG19_NAMES}[name]
    for torch_name in layer_names(name):
        if not torch_name.startswith(("features.", "classifier.", "avgpool")):
            continue  # a Caffe-style alias of one of these (see the name tests)
        out = jax.eval_shape(lambda p, x: features(model, p, x, torch_name), abstract_params, image)
        if torch_name.startswith("features."):
            # From the original's name at this position: block b has 64 * 2^(b-1) (at most 512) channels and
            # the maps are halved by every pool up to and including this layer.
            original = original_names[int(torch_name.split(".")[1])]
            block = int(original[4]) if original.startswith("pool") else int(original.split("_")[0][-1])
            halvings = block if original.startswith("pool") else block - 1
            expected = (2, 32 >> halvings, 48 >> halvings, min(64 << (block - 1), 512))
        elif torch_name == "avgpool":
            expected = (2, 7, 7, 512)
        else:
            expected = (2, 1000 if torch_name == "classifier.6" else 4096)
        assert out.shape == expected, torch_name
        assert out.dtype == jnp.float32


# ---------------------------------------------------------------------------------------------------------------
# Building blocks


def torch_rule_adaptive_pool(x, out_h, out_w):
    n, h, w, c = x.shape
    result = np.zeros((n, out_h, out_w, c), np.float64)
    for i in range(out_h):
        r0, r1 = math.floor(i * h / out_h), math.ceil((i + 1) * h / out_h)
        for j in range(out_w):
            c0, c1 = math.floor(j * w / out_w), math.ceil((j + 1) * w / out_w)
            result[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return result


@pytest.mark.parametrize(
    "in_hw, out_hw", [((1, 1), (6, 6)), ((2, 3), (6, 6)), ((7, 13), (6, 6)), ((5, 14), (7, 7)), ((6, 6), (6, 6))]
)
def test_adaptive_avg_pool_follows_torch_bins(in_hw, out_hw):
    x = np.asarray(random_images(1, (2, *in_hw, 3)))
    assert_close(adaptive_avg_pool(jnp.asarray(x), out_hw), torch_rule_adaptive_pool(x, *out_hw), rel=1e-6)


def test_adaptive_avg_pool_matches_torch_if_installed():
    torch = pytest.importorskip("torch")
    x = np.asarray(random_images(2, (2, 13, 9, 4)))
    expected = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), (6, 7))
    assert_close(adaptive_avg_pool(jnp.asarray(x), (6, 7)), expected.permute(0, 2, 3, 1).numpy(), rel=1e-6)


def test_preprocess_styles():
    red = jnp.asarray([[[[1.0, 0.0, 0.5]]]])
    np.testing.assert_allclose(
        preprocess(red, style="caffe")[0, 0, 0], [127.5 - 103.939, 0.0 - 116.779, 255.0 - 123.68], rtol=1e-6
    )
    np.testing.assert_allclose(
        preprocess(red)[0, 0, 0],
        [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0.5 - 0.406) / 0.225],
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="torchvision"):
        preprocess(red, style="bgr")


# ---------------------------------------------------------------------------------------------------------------
# Weight files and features


def test_alexnet_round_trip_every_layer(alexnet):
    model, params = alexnet
    image = random_images(3, (2, 63, 66, 3))
    for layer in layer_names("alexnet"):
        out = jax.eval_shape(lambda p, x: features(model, p, x, layer), params, image)
        assert out.shape == (2, *ALEXNET_SHAPES_63x66[resolve_layer("alexnet", layer)]), layer
    conv1 = features(model, params, image, "conv1")
    fc6 = features(model, params, image, "fc6")
    np.testing.assert_array_equal(features(model, params, image, "relu1"), jax.nn.relu(conv1))
    np.testing.assert_array_equal(features(model, params, image, "features.1"), jax.nn.relu(conv1))
    np.testing.assert_array_equal(features(model, params, image, "relu6"), jax.nn.relu(fc6))
    assert float(jnp.std(fc6)) > 0.1 and bool(jnp.all(jnp.isfinite(fc6)))


def test_first_linear_uses_torch_flatten_order(alexnet_state, alexnet):
    # fc6 = W @ flatten_NCHW(avgpool) + b, with W and b straight from the torchvision-layout file.
    model, params = alexnet
    state = alexnet_state
    image = random_images(4, (2, 70, 63, 3))
    pooled_nchw = np.asarray(features(model, params, image, "avgpool")).transpose(0, 3, 1, 2).reshape(2, -1)
    expected = pooled_nchw @ state["classifier.1.weight"].T + state["classifier.1.bias"]
    assert_close(features(model, params, image, "fc6"), expected, rel=1e-5)


def test_eager_equals_jit_equals_vmap(alexnet):
    model, params = alexnet
    images = random_images(5, (3, 63, 63, 3))
    jitted = jax.jit(features, static_argnames=("model", "layer", "style"))
    eager = features(model, params, images, "fc8", style="caffe")
    assert_close(jitted(model, params, images, "fc8", style="caffe"), eager, rel=1e-5)
    mapped = jax.vmap(lambda im: features(model, params, im, "fc8", style="caffe"))(images[:, None])
    assert_close(mapped[:, 0], eager, rel=1e-5)


def test_gradient_with_respect_to_the_image(alexnet):
    model, params = alexnet
    image = random_images(6, (1, 63, 63, 3))
    # params as an argument, not closed over: closed-over arrays would be baked into the compiled program.
    grad = jax.jit(jax.grad(lambda p, x: features(model, p, x, "fc8")[0, 3], argnums=1))(params, image)
    assert grad.shape == image.shape and bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).max()) > 0


# ---------------------------------------------------------------------------------------------------------------
# Errors


def test_missing_file_explains_how_to_get_weights(tmp_path):
    with pytest.raises(ValueError) as info:
        load_classifier("vgg19", tmp_path / "nope.safetensors")
    message = str(info.value)
    assert "never downloads" in message
    assert "python -m dip_jax.classifiers convert --arch vgg19 --torchvision" in message
    assert "--pth vgg19-dcbb9e9d.pth" in message


def test_wrong_keys_and_shapes_are_listed(alexnet_state, alexnet_file, tmp_path):
    bad = tmp_path / "bad.npz"
    with open(bad, "wb") as handle:
        np.savez(
            handle,
            **{
                "features.0.weight": np.zeros((64, 3, 5, 5), np.float32),
                "features.0.bias": alexnet_state["features.0.bias"],
                "fc9.weight": np.zeros(3, np.float32),
            },
        )
    with pytest.raises(ValueError) as info:
        load_classifier("alexnet", bad)
    message = str(info.value)
    assert "wrong shapes: features.0.weight is (64, 3, 5, 5), expected (64, 3, 11, 11)" in message
    assert "unexpected keys: fc9.weight" in message
    assert "missing keys: features.3.weight (192, 64, 5, 5), features.3.bias (192,)," in message
    assert "(and 9 more)" in message
    with pytest.raises(ValueError, match="does not hold torchvision vgg16 weights"):
        load_classifier("vgg16", alexnet_file)


def test_not_a_weights_file(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"definitely not weights")
    with pytest.raises(ValueError, match="neither an .npz archive nor a safetensors file"):
        load_classifier("alexnet", junk)


def test_bad_arguments(alexnet):
    model, params = alexnet
    image = random_images(7, (1, 63, 63, 3))
    with pytest.raises(ValueError, match="Valid layer names: features.0"):
        features(model, params, image, "conv6")
    with pytest.raises(ValueError, match="Unknown layer 'fc9'"):
        model.apply(params, image, layer="fc9")
    with pytest.raises(ValueError, match="no local response normalisation"):
        features(model, params, image, "norm1")
    with pytest.raises(ValueError, match="at least 63 x 63"):
        features(model, params, random_images(7, (1, 62, 80, 3)), "conv1")
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        features(model, params, image[0], "conv1")
    with pytest.raises(ValueError, match="choose one of alexnet, vgg16, vgg19"):
        load_classifier("resnet50", "x.npz")
    with pytest.raises(ValueError, match="'npz' or 'safetensors'"):
        random_weights_file(jax.random.PRNGKey(0), "alexnet", "x.pt", fmt="pt")


# ---------------------------------------------------------------------------------------------------------------
# Converter


def test_converter_rejects_bad_requests(tmp_path, capsys):
    assert classifiers.main(["convert", "--arch", "alexnet", "--pth", "x.pth", "--out", str(tmp_path / "a.txt")]) == 2
    assert "--out must end in .safetensors or .npz" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: exactly one of --pth / --torchvision
        classifiers.main(["convert", "--arch", "alexnet", "--out", "a.npz"])


def test_module_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "dip_jax.classifiers", "convert", "--help"], capture_output=True, text=True, check=True
    )
    assert "--torchvision" in result.stdout


def test_converter_without_torchvision_says_what_to_install(tmp_path, capsys):
    pytest.importorskip("torch")
    try:
        import torchvision  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torchvision is installed; --torchvision would try to fetch weights")
    assert classifiers.main(["convert", "--arch", "alexnet", "--torchvision", "--out", str(tmp_path / "a.npz")]) == 2
    assert "pip install torchvision" in capsys.readouterr().err


def torch_alexnet(torch):
    """torchvision.models.alexnet, rebuilt from torch.nn (torchvision is not a dependency); non-inplace ReLUs so
    that hooks on the convs see their pre-ReLU outputs."""
    nn = torch.nn

    class AlexNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
                nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
                nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
                nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
                nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
            )  # fmt: skip
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                nn.Dropout(), nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(),
                nn.Linear(4096, 1000),
            )  # fmt: skip

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    return AlexNet().eval()


def test_parity_with_torch_alexnet_through_the_converter(alexnet_state, alexnet, tmp_path):
    torch = pytest.importorskip("torch")
    net = torch_alexnet(torch)
    net.load_state_dict({key: torch.from_numpy(value) for key, value in alexnet_state.items()})
    checkpoint = tmp_path / "alexnet.pth"
    torch.save(net.state_dict(), checkpoint)
    converted = tmp_path / "alexnet.npz"
    assert classifiers.main(["convert", "--arch", "alexnet", "--pth", str(checkpoint), "--out", str(converted)]) == 0
    with zipfile.ZipFile(converted) as archive:
        assert archive.namelist() == [key + ".npy" for key in expected_state_shapes("alexnet")]
    model, params = load_classifier("alexnet", converted)
    # The .npz the converter wrote and the .safetensors random_weights_file wrote hold the same weights.
    jax.tree.map(np.testing.assert_array_equal, params, alexnet[1])

    outputs = {}
    for name, module in net.named_modules():
        if name.startswith(("features.", "classifier.")) or name == "avgpool":
            module.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o.detach().numpy()))

    def run_torch(image):
        outputs.clear()
        with torch.no_grad():
            net(torch.from_numpy(np.asarray(preprocess(image))).permute(0, 3, 1, 2))
        return dict(outputs)

    # Every module on a small non-square image (pool5 3 x 2, which the adaptive pool repeats up to 6 x 6) ...
    image = np.asarray(random_images(8, (2, 131, 99, 3)))
    expected_outputs = run_torch(image)
    assert expected_outputs["features.12"].shape[2:] == (3, 2)
    for layer in layer_names("alexnet")[:21]:  # the torchvision names; the aliases map onto them
        expected = expected_outputs[layer]
        if expected.ndim == 4:
            expected = expected.transpose(0, 2, 3, 1)
        elif layer == "classifier.0":  # the flattened pool5: ours is in NHWC order
            expected = expected.reshape(2, 256, 6, 6).transpose(0, 2, 3, 1).reshape(2, -1)
        assert_close(features(model, params, image, layer), expected, rel=1e-4)
    # ... and the logits where pool5 is 7 x 6, so that the adaptive pool averages overlapping bins in one axis
    # and is the identity in the other.
    image = np.asarray(random_images(9, (1, 255, 227, 3)))
    expected_outputs = run_torch(image)
    assert expected_outputs["features.12"].shape[2:] == (7, 6)
    assert_close(features(model, params, image, "fc8"), expected_outputs["classifier.6"], rel=1e-4)


def test_converter_maps_caffe_style_names_by_order(alexnet_state):
    torch = pytest.importorskip("torch")
    state = alexnet_state
    names = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    weights = [key[: -len(".weight")] for key in expected_state_shapes("alexnet") if key.endswith(".weight")]
    caffe_named = {}
    for caffe, torchvision_name in zip(names, weights):
        caffe_named[caffe + ".weight"] = torch.from_numpy(state[torchvision_name + ".weight"])
        caffe_named[caffe + ".bias"] = torch.from_numpy(state[torchvision_name + ".bias"])
    converted = classifiers.torch_state_to_numpy("alexnet", {"state_dict": caffe_named})
    assert list(converted) == list(expected_state_shapes("alexnet"))
    for key, value in converted.items():
        np.testing.assert_array_equal(value, state[key])
    with pytest.raises(ValueError, match="has 8 conv/Linear weights, torchvision vgg16 has 16"):
        classifiers.torch_state_to_numpy("vgg16", caffe_named)


# ---------------------------------------------------------------------------------------------------------------
# Full-size VGG files (each ~550 MB): slow


def torch_vgg(torch, config):
    """torchvision.models.vgg16 / vgg19 rebuilt from torch.nn, non-inplace ReLUs (see torch_alexnet)."""
    nn = torch.nn
    layers, channels = [], 3
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU()]
            channels = item

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(25088, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(),
                nn.Linear(4096, 1000),
            )  # fmt: skip

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    return VGG().eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg16", "vgg19"])
def test_vgg_round_trip_and_parity(name, tmp_path):
    path = random_weights_file(jax.random.PRNGKey(1), name, tmp_path / f"{name}.safetensors", fmt="safetensors")
    model, params = load_classifier(name, path)
    state = safetensors.numpy.load_file(path)
    image = random_images(9, (2, 32, 40, 3))
    pooled_nchw = np.asarray(features(model, params, image, "avgpool")).transpose(0, 3, 1, 2).reshape(2, -1)
    expected_fc6 = pooled_nchw @ state["classifier.0.weight"].T + state["classifier.0.bias"]
    assert_close(features(model, params, image, "fc6"), expected_fc6, rel=1e-5)
    logits = features(model, params, image, "fc8")
    assert logits.shape == (2, 1000) and bool(jnp.all(jnp.isfinite(logits))) and float(jnp.std(logits)) > 0.1

    torch = pytest.importorskip("torch")
    net = torch_vgg(torch, classifier_model._VGG_CONFIGS[name])
    net.load_state_dict({key: torch.from_numpy(value) for key, value in state.items()})
    outputs = {}
    for module_name, module in net.named_modules():
        if module_name.startswith(("features.", "classifier.")) or module_name == "avgpool":
            module.register_forward_hook(
                lambda m, i, o, module_name=module_name: outputs.__setitem__(module_name, o.detach().numpy())
            )
    torchvision_names = [n for n in layer_names(name) if n.startswith(("features.", "classifier.", "avgpool"))]
    # Every module at 32 x 40 (pool5 1 x 1, repeated by the adaptive pool), the logits at the usual 224 x 224.
    for image, layers in ((image, torchvision_names), (random_images(10, (1, 224, 224, 3)), ["fc8"])):
        outputs.clear()
        with torch.no_grad():
            net(torch.from_numpy(np.asarray(preprocess(image))).permute(0, 3, 1, 2))
        for layer in layers:
            expected = outputs[resolve_layer(name, layer)]
            expected = expected.transpose(0, 2, 3, 1) if expected.ndim == 4 else expected
            assert_close(features(model, params, image, layer), expected, rel=1e-4)
