"""How each task observes an image: the corruption it simulates and the operator that explains it.

A task holds one measurement object (`TaskConfig.operator`). Its contract:

- `kind` (class attribute): a short label written into config.json.
- `observe(task, sample, image, key)`: fill `sample` (observation, ground
  truth, mask, kernel, baselines, reference) from the clean `image`
  (float32 (H, W, C) in [0, 1]); synthetic corruptions draw from `key`.
- `fit_inputs(task, samples, shared) -> FitInputs`: the operator, the stacked
  observations and the other `dj.fit` arguments for same-shaped samples,
  and the window that crops the net's output back to the samples.
- `sample_metrics(task, sample, result)`: the task-specific entries of
  metrics.json.
- `quick(settings)`: the measurement of the `--quick` variant.
- `scale`: how much larger the net's output is than the observation.

Adding a task with a new operator is one class here (or in any file) and a
`TaskConfig` entry: nothing in the fitting code names a kind.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from dip_jax import metrics, operators
from dip_jax.app import observations


@dataclasses.dataclass
class FitInputs:
    """What one `dj.fit` call of a shape group needs, besides the key, net and fit config."""

    op: Any
    observation: np.ndarray  # (N, h, w, c) or the classifier's outputs
    window: tuple[int, int, int, int]  # (top, left, height, width) of the samples in the net's output
    kwargs: dict  # op_args, image_size, ground_truth, net_input, shared, loss_fn


def _lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


def _pad_hw(image: np.ndarray, top: int, bottom: int, left: int, right: int, mode: str) -> np.ndarray:
    if not (top or bottom or left or right):
        return image
    widths = ((top, bottom), (left, right), (0, 0))
    if mode == "reflect" and max(top, bottom) < image.shape[0] and max(left, right) < image.shape[1]:
        return np.pad(image, widths, mode="reflect")
    return np.pad(image, widths, mode="edge" if mode == "reflect" else "constant")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(metrics.psnr(jnp.asarray(a), jnp.asarray(b)))


def _psnr_y(a: np.ndarray, b: np.ndarray) -> float:
    border = 4 if min(a.shape[:2]) > 16 else 0
    return float(metrics.psnr_y(jnp.asarray(a), jnp.asarray(b), border=border))


class ImageMeasurement:
    """An image-space measurement: samples are padded to what the net needs and the result cropped back.

    A subclass (a frozen dataclass holding its settings) defines `kind`,
    `observe` and `operator_inputs(group, pad, observation) -> (operator,
    engine keyword arguments)`; `pad(array, mode, factor=1)` pads a sample's
    array as the observation was ('reflect', or 'constant' for masks).
    """

    kind: ClassVar[str]
    image_like: ClassVar[bool] = True
    takes_units: ClassVar[bool] = False
    needs_mask: ClassVar[bool] = False
    shows_observation: ClassVar[bool] = True

    @property
    def scale(self) -> int:
        return 1

    def quick(self, settings) -> "ImageMeasurement":
        return self

    def net_output_size(self, task, observation_hw: tuple[int, int]) -> tuple[int, int]:
        """The padded size of the net's output for an observation of `observation_hw`."""
        f = self.scale
        multiple = _lcm(task.net.size_multiple, f) // f
        h, w = observation_hw
        return f * (h + -h % multiple), f * (w + -w % multiple)

    def operator_inputs(self, group, pad, observation: np.ndarray) -> tuple[Any, dict]:
        """(operator, engine keyword arguments) for the padded group."""
        raise NotImplementedError

    def fit_inputs(self, task, group, shared=None) -> FitInputs:
        h, w = group[0].observation.shape[:2]
        factor = self.scale
        lr_multiple = _lcm(task.net.size_multiple, factor) // factor
        ph, pw = -h % lr_multiple, -w % lr_multiple
        top, left = ph // 2, pw // 2
        pad = lambda a, mode, f=1: _pad_hw(a, f * top, f * (ph - top), f * left, f * (pw - left), mode)  # noqa: E731
        observation = np.stack([pad(s.observation, "reflect") for s in group])
        kwargs: dict[str, Any] = {}
        if all(s.ground_truth is not None for s in group):
            kwargs["ground_truth"] = np.stack([pad(s.ground_truth, "reflect", factor) for s in group])
        op, op_kwargs = self.operator_inputs(group, pad, observation)
        kwargs.update(op_kwargs)
        if task.has_image_input:
            kwargs["net_input"] = np.stack([pad(s.guide, "reflect") for s in group])
        return FitInputs(op, observation, (factor * top, factor * left, factor * h, factor * w), kwargs)

    def sample_metrics(self, task, sample, result) -> dict:
        gt, out = sample.ground_truth, {}
        if gt is not None and sample.observation is not None and sample.observation.shape == gt.shape:
            # What one would have without restoration (masked pixels count as black).
            out["psnr_observation"] = _psnr(sample.observation, gt)
        return out


@dataclasses.dataclass(frozen=True)
class Direct(ImageMeasurement):
    """`y = x`: denoising (synthetic noise of `noise_sigma`, 0..255 units, or none), JPEG, flash/no-flash."""

    noise_sigma: float | None = None

    kind: ClassVar[str] = "identity"

    def observe(self, task, sample, image, key) -> None:
        if self.noise_sigma is not None:
            sample.ground_truth = image
            # The sample key's first split, as before the measurements had their own classes.
            sample.observation = observations.add_noise(jax.random.split(key, 3)[0], image, self.noise_sigma)

    def operator_inputs(self, group, pad, observation):
        return operators.Identity(), {}


@dataclasses.dataclass(frozen=True)
class MaskFile(ImageMeasurement):
    """`y = mask * x` with a given mask (inpainting)."""

    kind: ClassVar[str] = "mask"
    needs_mask: ClassVar[bool] = True

    def observe(self, task, sample, image, key) -> None:
        if sample.mask is None:
            raise ValueError(f"task {task.name} needs a mask")
        sample.ground_truth = image
        sample.observation = image * sample.mask

    def operator_inputs(self, group, pad, observation):
        return operators.Mask(), {"op_args": np.stack([pad(s.mask, "constant") for s in group]).astype(np.float32)}


@dataclasses.dataclass(frozen=True)
class RandomMask(MaskFile):
    """`y = mask * x` with a Bernoulli mask keeping `keep_fraction` of the pixels, shared by the channels."""

    keep_fraction: float = 0.5

    kind: ClassVar[str] = "random_mask"
    needs_mask: ClassVar[bool] = False

    def quick(self, settings) -> "RandomMask":
        if settings.keep_fraction is None:
            return self
        return dataclasses.replace(self, keep_fraction=settings.keep_fraction)

    def observe(self, task, sample, image, key) -> None:
        k_mask = jax.random.split(key, 3)[1]
        m = operators.bernoulli_mask(k_mask, (1,) + image.shape[:2] + (1,), self.keep_fraction)
        sample.mask = np.asarray(m[0])
        sample.ground_truth = image
        sample.observation = image * sample.mask


@dataclasses.dataclass(frozen=True)
class Downsampling(ImageMeasurement):
    """The original's super-resolution at `factor` with its downsampler's `kernel_type`.

    `baselines`: also make the bicubic / nearest / sharpened-bicubic upsamplings to compare with.
    `noise_sigma` (0..255 units, not in the paper): joint denoising + super-resolution: Gaussian
    noise is added to the low-resolution observation, and the baselines upsample that noisy image
    (what one has without DIP).
    """

    factor: int = 4
    kernel_type: str = "lanczos2"
    baselines: bool = True
    noise_sigma: float | None = None

    kind: ClassVar[str] = "downsample"

    @property
    def scale(self) -> int:
        return self.factor

    def observe(self, task, sample, image, key) -> None:
        hr, lr, baselines = observations.super_resolution_pair(image, self.factor)
        if self.noise_sigma is not None:
            # The same key split as Direct's noise, so a noisy SR sample is reproducible from its key.
            lr = observations.add_noise(jax.random.split(key, 3)[0], lr, self.noise_sigma)
            baselines = observations.upsampling_baselines(lr, hr.shape[:2])
        sample.ground_truth, sample.observation = hr, lr
        sample.baselines = baselines if self.baselines else {}

    def operator_inputs(self, group, pad, observation):
        op = operators.PerImageKernel(operators.Downsample(self.factor, self.kernel_type))
        kernel = np.asarray(op.op.make_args(), np.float32)
        return op, {"op_args": np.stack([kernel] * len(group)),
                    "image_size": (self.factor * observation.shape[1], self.factor * observation.shape[2])}

    def sample_metrics(self, task, sample, result) -> dict:
        gt = sample.ground_truth
        if gt is None:
            return {}
        return {"psnr_y": _psnr_y(result.restored, gt),
                "baselines": {name: {"psnr": _psnr(b, gt), "psnr_y": _psnr_y(b, gt)}
                              for name, b in sample.baselines.items()}}


@dataclasses.dataclass(frozen=True)
class Blurring(ImageMeasurement):
    """`y = k * x` (deblurring, not in the original): a Gaussian of `blur_sigma` px unless a sample has its kernel."""

    blur_sigma: float = 2.0
    blur_padding: str = "reflect"

    kind: ClassVar[str] = "blur"

    def observe(self, task, sample, image, key) -> None:
        sample.kernel = observations.blur_kernel(self.blur_sigma)
        blurred = operators.Blur(self.blur_padding).apply(jnp.asarray(image)[None], jnp.asarray(sample.kernel))
        sample.ground_truth = image
        sample.observation = np.asarray(blurred[0])

    def operator_inputs(self, group, pad, observation):
        kernels = [observations.blur_kernel(self.blur_sigma) if s.kernel is None else s.kernel for s in group]
        return operators.PerImageKernel(operators.Blur(self.blur_padding)), {
            "op_args": np.stack(kernels).astype(np.float32)}


@dataclasses.dataclass(frozen=True)
class _ClassifierMeasurement:
    """Through a classifier: the net makes a `net_size` image whose top-left `classifier_input` crop is classified."""

    classifier: str = "alexnet"
    layer: str = "fc6"
    # Deliberate difference: the original used Caffe-converted weights with Caffe
    # preprocessing; dip_jax loads torchvision's weights, which expect torchvision's.
    classifier_style: str = "torchvision"
    classifier_input: int = 227
    net_size: int = 256

    image_like: ClassVar[bool] = False
    needs_mask: ClassVar[bool] = False
    scale: ClassVar[int] = 1

    def quick(self, settings):
        return dataclasses.replace(self, classifier_input=settings.size, net_size=settings.size)

    def _image_size(self, task) -> dict:
        m = task.net.size_multiple
        if self.net_size % m:
            raise ValueError(f"net_size {self.net_size} must be a multiple of the net's size multiple {m}")
        return {"image_size": (self.net_size, self.net_size)}

    def _features(self) -> operators.ClassifierFeatures:
        return operators.ClassifierFeatures(self.classifier, self.layer, self.classifier_input, self.classifier_style)

    def sample_metrics(self, task, sample, result) -> dict:
        return {"layer": self.layer, "loss_first": float(np.nanmean(result.history["loss"][0]))}


@dataclasses.dataclass(frozen=True)
class Features(_ClassifierMeasurement):
    """Feature inversion: match a classifier layer's activations of the target image."""

    kind: ClassVar[str] = "features"
    takes_units: ClassVar[bool] = False
    shows_observation: ClassVar[bool] = False

    def observe(self, task, sample, image, key) -> None:
        side = self.classifier_input
        square = observations.centre_crop(image, min(image.shape[:2]), min(image.shape[:2]))
        sample.reference = observations.resize(square, (side, side))
        sample.observation = sample.reference

    def fit_inputs(self, task, group, shared=None) -> FitInputs:
        kwargs = {**self._image_size(task), "shared": shared}
        op = self._features()
        feature_fn = jax.jit(lambda x, p: op.apply(x, None, p))
        observation = np.concatenate([np.asarray(feature_fn(s.observation[None], shared)) for s in group])
        return FitInputs(op, observation, (0, 0, self.classifier_input, self.classifier_input), kwargs)


@dataclasses.dataclass(frozen=True)
class UnitActivation(_ClassifierMeasurement):
    """Activation maximisation: drive one `unit` of a layer up ('maximize') or to `fc_target` ('match').

    `window`: the conv window around the centre (the original's matcher);
    `loss_scale`: the original's x5.
    """

    unit: int = 0
    unit_mode: str = "maximize"
    window: int = 20
    fc_target: float = 300.0
    loss_scale: float = 5.0

    kind: ClassVar[str] = "unit"
    takes_units: ClassVar[bool] = True
    shows_observation: ClassVar[bool] = True

    def unit_samples(self, units) -> list:
        chosen = list(units) if units else [self.unit]
        return [observations.Sample(name=f"unit_{u}", observation=None, unit=int(u),
                                    source=f"{self.classifier} {self.layer}") for u in chosen]

    def fit_inputs(self, task, group, shared=None) -> FitInputs:
        kwargs = {**self._image_size(task), "shared": shared}
        op = operators.ClassifierUnit(self.classifier, self.layer, self.classifier_input, self.window,
                                      self.classifier_style)
        probe = jax.ShapeDtypeStruct((1, self.net_size, self.net_size, 3), jnp.float32)
        num_units = jax.eval_shape(self._features().apply, probe, None, shared).shape[-1]
        bad = [s.unit for s in group if not 0 <= s.unit < num_units]
        if bad:
            raise ValueError(f"unit(s) {bad} do not exist: {self.classifier} {self.layer} has units 0..{num_units - 1}")
        kwargs["op_args"] = np.asarray([s.unit for s in group], np.int32)
        kwargs["loss_fn"] = operators.UnitLoss(self.unit_mode, self.loss_scale)
        target = self.fc_target if self.unit_mode == "match" else 0.0
        observation = np.full((len(group), 1, 1, 1), target, np.float32)
        return FitInputs(op, observation, (0, 0, self.classifier_input, self.classifier_input), kwargs)

    def sample_metrics(self, task, sample, result) -> dict:
        return {"unit": sample.unit, **super().sample_metrics(task, sample, result)}
