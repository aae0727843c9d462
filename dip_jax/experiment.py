"""Run the paper's tasks on images and write run folders; gather run folders into a report.

Contract:
- `prepare_samples(key, task, *, images=None, masks=None, guides=None, units=None, data=None, quick=False)`
  loads the task's inputs (the given files, else its default sources) and
  makes each `Sample`: the observation the net is fitted to (float32
  (H, W, C) in [0, 1], e.g. the noisy image, the masked image, the
  low-resolution image), the ground truth where one exists, the mask, the
  guide image (flash) or the unit (activation maximisation). Synthetic
  corruptions (noise, random masks) are drawn from `key`. With `quick` the
  images are brought to the task's `QuickSettings.size` first.
- `fit_samples(key, task, samples, *, restarts=1, progress=False, classifier=None, checkpoint=None,
  handle_signals=None)` fits every sample: samples of the same shape go
  through ONE engine call (vmapped or mapped over images x restarts). Images
  are padded to the net's `size_multiple` (reflection; masks with 0 =
  unknown) and the results cropped back. Returns one `SampleResult` per
  sample, in order. `checkpoint` (a `CheckpointOptions`) checkpoints each
  shape group to its own file and resumes from it; on SIGINT/SIGTERM
  (`handle_signals`, default: when checkpointing) `Interrupted` is raised
  with every sample's result so far.
- `write_run(run_dir, task, sample, result, *, options)` writes a run folder:
  `result.png` (the restored image: averaged output if the task averages,
  mean over restarts), `observation.png`, `ground_truth.png` and `mask.png`
  where they exist, `restart_K.png` for R > 1 restarts, `baseline_NAME.png`
  (super-resolution), `comparison.png` (observation / result / ground
  truth side by side), `psnr.png` (PSNR per step; the loss when there is no
  ground truth), `config.json`, `metrics.json` and `history.npz`.
- `report(run_dirs) -> str`: a markdown table of every run found under the
  given folders, next to the paper's numbers (`TaskConfig.paper`).
- `main(argv, *, variants, default_variant, description)`: the command line
  shared by the scripts in `experiments/`.

Deliberate differences from the original notebooks: images are padded, not
cropped, to what the net needs; the super-resolution HR image is cropped only
to a multiple of the factor (the original crops to a multiple of 32); the
per-step PSNR curves are computed on the padded frame while the final
numbers in metrics.json are on the image itself.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io as _bytes_io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from dip_jax import engine, io, kernels, metrics, operators, tasks
from dip_jax.operators import ClassifierFeatures, ClassifierUnit, PerImageKernel, UnitLoss

DEFAULT_DIP_DATA = Path("/work/shared/dip_data")
PROJECT_DATA = Path(__file__).resolve().parents[1] / "data"
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


# --------------------------------------------------------------------------- data


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The original's data folder: `explicit`, else $DIP_DATA, else /work/shared/dip_data; None if absent.

    'none' (for either) means: do not use the original's images, take the
    stand-ins (this repository's data/, the built-in samples). A folder that
    does not exist is an error, so a typo never silently falls back.
    """
    for label, value in (("--data", explicit), ("DIP_DATA", os.environ.get("DIP_DATA"))):
        if value:
            if str(value).lower() == "none":
                return None
            path = Path(value)
            if not path.is_dir():
                raise ValueError(
                    f"{label} points at {str(path)!r}, which is not a folder; give the original's data "
                    "folder (with denoising/, sr/, inpainting/ ...), or 'none' to use the stand-in images"
                )
            return path
    return DEFAULT_DIP_DATA if DEFAULT_DIP_DATA.is_dir() else None


@dataclasses.dataclass
class Sample:
    """One input of a task, ready to fit (all arrays float32 in [0, 1], (H, W, C))."""

    name: str
    observation: np.ndarray | None
    ground_truth: np.ndarray | None = None
    mask: np.ndarray | None = None
    guide: np.ndarray | None = None
    unit: int | None = None
    # blur: this image's kernel (Kh, Kw) summing to 1; None takes the task's Gaussian.
    kernel: np.ndarray | None = None
    # An image shown next to the result without a PSNR (feature inversion's target).
    reference: np.ndarray | None = None
    baselines: dict = dataclasses.field(default_factory=dict)
    source: str = ""


def _to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    if image.shape[-1] == channels:
        return image
    if channels == 1:
        return (image @ _LUMA[:, None]).astype(np.float32)
    return np.repeat(image, 3, axis=-1)


def _read(spec: str, dip: Path | None, channels: int) -> np.ndarray:
    kind, _, rest = spec.partition(":")
    if kind == "dip":
        if dip is None:
            raise ValueError(f"{spec} needs the original's data folder; pass --data or set DIP_DATA")
        return _to_channels(io.load_image(dip / rest).image, channels)
    if kind == "data":
        return _to_channels(io.load_image(PROJECT_DATA / rest).image, channels)
    if kind == "sample":
        from dip_jax import sample_images

        name, _, grey = rest.partition(":")
        return _to_channels(sample_images.sample_image(name, channels=1 if grey else 3), channels)
    if kind == "file":
        return _to_channels(io.load_image(rest).image, channels)
    raise ValueError(f"unknown image source {spec!r}")


def _available(spec: str | None, dip: Path | None) -> bool:
    if spec is None:
        return True
    kind, _, rest = spec.partition(":")
    if kind == "dip":
        return dip is not None and (dip / rest).is_file()
    if kind == "data":
        return (PROJECT_DATA / rest).is_file()
    return kind in ("sample", "synthetic")


def _read_mask(spec: str, dip: Path | None, shape: tuple[int, int]) -> np.ndarray:
    kind, _, rest = spec.partition(":")
    if kind == "synthetic":
        return synthetic_mask(rest, shape)
    if kind == "dip":
        path = dip / rest
    elif kind == "data":
        path = PROJECT_DATA / rest
    else:
        path = Path(rest)
    return io.load_mask(path, shape=shape)


def synthetic_mask(kind: str, shape: tuple[int, int]) -> np.ndarray:
    """A stand-in mask (H, W, 1) in {0, 1}: 'text' (lines of text missing) or 'hole' (an ellipse missing)."""
    h, w = shape
    canvas = Image.new("L", (w, h), 255)
    draw = ImageDraw.Draw(canvas)
    if kind == "text":
        font = ImageFont.load_default(size=max(8, h // 10))
        step = max(10, h // 8)
        for i, y in enumerate(range(step // 4, h, step)):
            draw.text((2 - (i % 3) * 3, y), "deep image prior " * 4, fill=0, font=font)
    elif kind == "hole":
        draw.ellipse([w * 0.30, h * 0.25, w * 0.65, h * 0.70], fill=0)
    else:
        raise ValueError(f"unknown synthetic mask {kind!r}; use 'text' or 'hole'")
    return (np.asarray(canvas, np.float32)[..., None] >= 128).astype(np.float32)


def centre_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = image.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    return image[top : top + height, left : left + width]


def _resize(image: np.ndarray, size: tuple[int, int], resample=Image.Resampling.LANCZOS) -> np.ndarray:
    """Float resize of (H, W, C) to (height, width), per channel (no 8-bit rounding)."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image.astype(np.float32)
    planes = [
        np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32)).resize((width, height), resample))
        for c in range(image.shape[-1])
    ]
    return np.clip(np.stack(planes, axis=-1), 0.0, 1.0).astype(np.float32)


def _fit_to_quick_size(image: np.ndarray, quick: tasks.QuickSettings, *, is_mask: bool = False) -> np.ndarray:
    s = quick.size
    h, w = image.shape[:2]
    if quick.fit_to_size == "crop" and h >= s and w >= s:
        return centre_crop(image, s, s)
    side = min(h, w)
    square = centre_crop(image, side, side)
    if is_mask:
        # A pixel stays known only if everything it covers was known, so thin
        # strokes (text) survive the shrinking instead of vanishing.
        return (_resize(square, (s, s), Image.Resampling.BOX) >= 0.999).astype(np.float32)
    return _resize(square, (s, s))


def _quantise8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _pil(image: np.ndarray) -> Image.Image:
    q = _quantise8(image)
    return Image.fromarray(q[..., 0] if q.shape[-1] == 1 else q)


def _from_pil(pil: Image.Image, channels: int) -> np.ndarray:
    a = np.asarray(pil, np.float32) / 255.0
    return a[..., None] if a.ndim == 2 else a[..., :channels]


def super_resolution_pair(hr: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(HR cropped to a multiple of `factor`, LR, baselines) as the original's `load_LR_HR_imgs_sr`.

    LR: PIL's Lanczos (antialiased) resize of the 8-bit HR, as the original.
    Baselines (`get_baselines`): bicubic and nearest upsampling of the LR and
    the bicubic one sharpened with PIL's default UnsharpMask.
    """
    h, w = hr.shape[:2]
    if h < factor or w < factor:
        raise ValueError(f"the image is {h}x{w}, smaller than the super-resolution factor {factor}; use a larger image")
    hr = centre_crop(hr, h - h % factor, w - w % factor)
    channels = hr.shape[-1]
    hr_pil = _pil(hr)
    hr = _from_pil(hr_pil, channels)
    lr_pil = hr_pil.resize((hr_pil.width // factor, hr_pil.height // factor), Image.Resampling.LANCZOS)
    bicubic = lr_pil.resize(hr_pil.size, Image.Resampling.BICUBIC)
    baselines = {
        "bicubic": _from_pil(bicubic, channels),
        "nearest": _from_pil(lr_pil.resize(hr_pil.size, Image.Resampling.NEAREST), channels),
        "sharpened_bicubic": _from_pil(bicubic.filter(ImageFilter.UnsharpMask()), channels),
    }
    return hr, _from_pil(lr_pil, channels), baselines


def degrade(kind: str, image: np.ndarray, key) -> tuple[np.ndarray, np.ndarray]:
    """(observation, ground truth) for a stand-in image; see `tasks.DEGRADATIONS`."""
    if kind == "jpeg":
        buffer = _bytes_io.BytesIO()
        _pil(image).save(buffer, format="JPEG", quality=5)
        buffer.seek(0)
        clean = _from_pil(_pil(image), image.shape[-1])
        return _from_pil(Image.open(buffer), image.shape[-1]), clean
    if kind == "low_light":
        dim = (0.5 * image).astype(np.float32)
        noise = np.asarray(jax.random.normal(key, image.shape, jnp.float32)) * 0.04
        return np.clip(dim + noise, 0.0, 1.0).astype(np.float32), dim
    raise ValueError(f"unknown degradation {kind!r}; use one of {tasks.DEGRADATIONS}")


def add_noise(key, image: np.ndarray, sigma: float) -> np.ndarray:
    """`clip(x + N(0, sigma/255), 0, 1)`, the original's `get_noisy_image` (sigma in 0..255 units)."""
    noise = np.asarray(jax.random.normal(key, image.shape, jnp.float32)) * np.float32(sigma / 255.0)
    return np.clip(image + noise, 0.0, 1.0).astype(np.float32)


def blur_kernel(sigma: float) -> np.ndarray:
    """A Gaussian kernel of width 2 * ceil(3 sigma) + 1."""
    if not sigma > 0:
        raise ValueError(f"the blur sigma must be positive, got {sigma!r}")
    return kernels.gaussian_blur_kernel(2 * math.ceil(3 * sigma) + 1, float(sigma)).astype(np.float32)


def _display_name(spec: str) -> str:
    """'dip:inpainting/kate.png' -> 'kate', 'sample:camera:grey' -> 'camera', a path -> its stem."""
    kind, _, rest = spec.partition(":")
    if kind == "sample":
        return rest.partition(":")[0]
    return Path(rest if kind in ("dip", "data", "file") else spec).stem


def _unique_names(specs: Sequence[str]) -> list[str]:
    names, seen = [], {}
    for spec in specs:
        stem = _display_name(spec)
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        names.append(stem if count == 0 else f"{stem}_{count + 1}")
    return names


def prepare_samples(
    key,
    task: tasks.TaskConfig,
    *,
    images: Sequence[str] | None = None,
    masks: Sequence[str] | None = None,
    guides: Sequence[str] | None = None,
    units: Sequence[int] | None = None,
    data: str | os.PathLike | None = None,
    quick: bool = False,
) -> list[Sample]:
    """The task's inputs as `Sample`s (see the module docstring); `quick` shrinks them to `task.quick.size`."""
    if units and task.operator != "unit":
        raise ValueError(f"--unit is for activation maximisation; task {task.name} takes images (--image)")
    if task.operator == "unit":
        chosen = list(units) if units else [task.unit]
        if images:
            raise ValueError("activation maximisation starts from noise and takes no --image; choose --unit instead")
        return [Sample(name=f"unit_{u}", observation=None, unit=int(u), source=f"{task.classifier} {task.layer}")
                for u in chosen]
    dip = None
    if images:
        specs = [(f"file:{p}", None if not masks else f"file:{m}", None if not guides else f"file:{g}", None)
                 for p, m, g in _zip_inputs(task, images, masks, guides)]
        names = _unique_names([spec[0] for spec in specs])
    else:
        if masks or guides:
            raise ValueError("--mask / --guide go with --image; give the image(s) too")
        dip = data_dir(data)
        source = next(
            (s for s in task.sources if all(_available(e, dip) for e in (s.image, s.mask, s.guide))), None
        )
        if source is None:
            raise ValueError(f"no input found for task {task.name!r}; pass --image (and --mask / --guide)")
        specs = [(source.image, source.mask, source.guide, source.degrade)]
        names = _unique_names([source.image])
    keys = jax.random.split(key, len(specs))
    return [
        _make_sample(k, task, name, spec, dip, quick)
        for k, name, spec in zip(keys, names, specs)
    ]


def _zip_inputs(task, images, masks, guides):
    n = len(images)
    if task.operator == "mask" and not masks:
        raise ValueError(f"task {task.name} needs a mask per image: pass --mask FILE for each --image")
    if task.has_image_input and not guides:
        raise ValueError(f"task {task.name} needs the guide (flash) image: pass --guide FILE for each --image")
    for label, values in (("--mask", masks), ("--guide", guides)):
        if values and len(values) not in (1, n):
            raise ValueError(f"got {n} images but {len(values)} {label} files; give one, or one per image")
    masks = (list(masks) * n if masks and len(masks) == 1 else masks) or [None] * n
    guides = (list(guides) * n if guides and len(guides) == 1 else guides) or [None] * n
    return list(zip(images, masks, guides))


def _make_sample(key, task, name, spec, dip, quick) -> Sample:
    image_spec, mask_spec, guide_spec, degradation = spec
    k_noise, k_mask, k_degrade = jax.random.split(key, 3)
    image = _read(image_spec, dip, task.channels)
    mask = None
    if mask_spec is not None:
        mask = _read_mask(mask_spec, dip, image.shape[:2])
    guide = None
    if guide_spec is not None:
        guide = _read(guide_spec, dip, task.net.num_input_channels)
        if guide.shape[:2] != image.shape[:2]:
            raise ValueError(
                f"the guide image {guide_spec.partition(':')[2]!r} is {guide.shape[0]}x{guide.shape[1]} but the image "
                f"is {image.shape[0]}x{image.shape[1]}; they must be aligned and of one size"
            )
    if quick:
        image = _fit_to_quick_size(image, task.quick)
        mask = None if mask is None else _fit_to_quick_size(mask, task.quick, is_mask=True)
        guide = None if guide is None else _fit_to_quick_size(guide, task.quick)
    sample = Sample(name=name, observation=image, mask=mask, guide=guide, source=image_spec)
    if degradation is not None:
        sample.observation, sample.ground_truth = degrade(degradation, image, k_degrade)
    op = task.operator
    if op == "identity" and task.noise_sigma is not None:
        sample.ground_truth = image
        sample.observation = add_noise(k_noise, image, task.noise_sigma)
    elif op == "mask":
        if sample.mask is None:
            raise ValueError(f"task {task.name} needs a mask")
        sample.ground_truth = image
        sample.observation = image * sample.mask
    elif op == "random_mask":
        m = operators.bernoulli_mask(k_mask, (1,) + image.shape[:2] + (1,), task.keep_fraction)
        sample.mask = np.asarray(m[0])
        sample.ground_truth = image
        sample.observation = image * sample.mask
    elif op == "downsample":
        hr, lr, baselines = super_resolution_pair(image, task.factor)
        sample.ground_truth, sample.observation, sample.baselines = hr, lr, baselines
    elif op == "blur":
        sample.kernel = blur_kernel(task.blur_sigma)
        blurred = operators.Blur(task.blur_padding).apply(jnp.asarray(image)[None], jnp.asarray(sample.kernel))
        sample.ground_truth = image
        sample.observation = np.asarray(blurred[0])
    elif op == "features":
        side = task.classifier_input
        square = centre_crop(image, min(image.shape[:2]), min(image.shape[:2]))
        sample.reference = _resize(square, (side, side))
        sample.observation = sample.reference
    return sample


# --------------------------------------------------------------------------- fitting


@dataclasses.dataclass
class SampleResult:
    """What one sample's fit gave, cropped to the sample's size."""

    restored: np.ndarray  # (H, W, C): averaged output if the task averages, mean over restarts
    per_restart: np.ndarray  # (R, H, W, C): each restart's restored image
    outputs: np.ndarray  # (R, H, W, C): each restart's last output f(z) (no averaging)
    history: dict  # name -> (steps, R)
    seconds: float  # the whole engine call's time (it fitted `images_in_call` images)
    images_in_call: int
    num_backtracks: np.ndarray  # (R,)
    # Divergence rollbacks per restart (engines that recover from divergence), else None.
    num_rollbacks: np.ndarray | None = None
    # The checkpoint step this call resumed at (None: started at step 0); the call ran steps - resumed_from.
    resumed_from: int | None = None


def _lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


def _pad_hw(image: np.ndarray, top: int, bottom: int, left: int, right: int, mode: str) -> np.ndarray:
    if not (top or bottom or left or right):
        return image
    widths = ((top, bottom), (left, right), (0, 0))
    if mode == "reflect" and max(top, bottom) < image.shape[0] and max(left, right) < image.shape[1]:
        return np.pad(image, widths, mode="reflect")
    return np.pad(image, widths, mode="edge" if mode == "reflect" else "constant")


def _group(samples: Sequence[Sample]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(samples):
        shape = None if s.observation is None else s.observation.shape
        kernel = None if s.kernel is None else s.kernel.shape
        groups.setdefault((shape, None if s.mask is None else s.mask.shape, kernel), []).append(i)
    return groups


@dataclasses.dataclass(frozen=True)
class CheckpointOptions:
    """Where and how `fit_samples` checkpoints: `directory/NAME.npz` (`NAME-G.npz` per shape group G).

    `every`: steps between checkpoints (None: only at the end and when a
    signal stops the fit); `resume`: continue from the checkpoints found
    (a group without one starts fresh, with a `checkpoint.StartingFreshWarning`;
    the task's `num_steps` may exceed the checkpoints' runs, but not fall
    below a checkpoint's step: `checkpoint.CheckpointAheadError`, raised
    before any group is fitted); `name`: the file name's stem, so
    several calls (a batch's chunks, an experiment's tasks) can share a
    directory without resuming each other's checkpoints.
    """

    directory: Path
    every: int | None = None
    resume: bool = False
    name: str = "ckpt"

    def __post_init__(self):
        if self.every is not None and (isinstance(self.every, bool) or not isinstance(self.every, (int, np.integer))
                                       or self.every < 1):
            raise ValueError(f"checkpoint every must be a positive number of steps or None, got {self.every!r}")
        if not self.name or any(sep in self.name for sep in ("/", "\\", os.sep)):
            raise ValueError(f"checkpoint name must be a plain file name stem like 'ckpt', got {self.name!r}")
        object.__setattr__(self, "directory", Path(self.directory))

    def checkpointer(self, group: int, num_groups: int):
        from dip_jax import checkpoint as checkpoint_lib

        filename = f"{self.name}.npz" if num_groups == 1 else f"{self.name}-{group}.npz"
        return checkpoint_lib.Checkpointer(self.directory, every=self.every, filename=filename)


class Interrupted(engine.Interrupted):
    """SIGINT/SIGTERM stopped `fit_samples` (after the current chunk, and a checkpoint when checkpointing).

    `results[i]`: sample i's `SampleResult`: the final one for shape groups
    that had finished, the state so far for the group that was stopped
    (`partial[i]` True), None for groups not started. `checkpoint_path`: the
    stopped group's checkpoint (None without checkpointing).
    """

    def __init__(self, stop: engine.Interrupted, results: list, partial: list[bool]):
        super().__init__(stop.signum, stop.step, stop.state, stop.history, stop.checkpoint_path)
        self.args = stop.args  # keep the engine's message (it says when the checkpoint could not be written)
        self.result = stop.result
        self.results = results
        self.partial = partial


def fit_samples(
    key,
    task: tasks.TaskConfig,
    samples: Sequence[Sample],
    *,
    restarts: int = 1,
    progress: bool = False,
    classifier: tuple | None = None,
    callback=None,
    checkpoint: CheckpointOptions | None = None,
    handle_signals: bool | None = None,
) -> list[SampleResult]:
    """Fit every sample (same-shaped samples in one engine call); see the module docstring."""
    if not samples:
        raise ValueError("no samples to fit")
    if task.classifier is not None and classifier is None:
        raise ValueError(f"task {task.name} needs the classifier: pass classifier=(model, params)")
    if checkpoint is not None and not isinstance(checkpoint, CheckpointOptions):
        raise ValueError(f"checkpoint must be an experiment.CheckpointOptions or None, got {type(checkpoint).__name__}")
    results: list[SampleResult | None] = [None] * len(samples)
    partial = [False] * len(samples)
    groups = _group(samples)
    if checkpoint is not None and checkpoint.resume:
        from dip_jax import checkpoint as checkpoint_lib

        # Every group's checkpoint is checked before the first fit: a damaged one, or one past num_steps,
        # must not end the run after the earlier groups were fitted.
        for g in range(len(groups)):
            checkpoint_lib.resume_step(checkpoint.checkpointer(g, len(groups)).path, task.fit.num_steps)
    for g, (_, indices) in enumerate(groups.items()):
        group = [samples[i] for i in indices]
        run_options = {"callback": callback, "handle_signals": handle_signals}
        if checkpoint is not None:
            run_options.update(checkpointer=checkpoint.checkpointer(g, len(groups)), resume=checkpoint.resume)
        try:
            group_results = _fit_group(jax.random.fold_in(key, g), task, group, restarts, progress, classifier,
                                       run_options)
        except _GroupInterrupted as stop:
            for i, r in zip(indices, stop.results):
                results[i], partial[i] = r, True
            raise Interrupted(stop.stop, results, partial) from None
        for i, r in zip(indices, group_results):
            results[i] = r
    return results  # type: ignore[return-value]


class _GroupInterrupted(Exception):
    """Internal: one group's engine.Interrupted with its results converted to `SampleResult`s."""

    def __init__(self, stop: engine.Interrupted, results: list):
        super().__init__(str(stop))
        self.stop = stop
        self.results = results


def _fit_group(key, task, group, restarts, progress, classifier, run_options) -> list[SampleResult]:
    net = task.net
    m = net.size_multiple
    kwargs: dict[str, Any] = {}
    op_kind = task.operator
    crop_top = crop_left = 0
    out_h = out_w = None
    if op_kind in ("features", "unit"):
        size = task.net_size
        if size % m:
            raise ValueError(f"net_size {size} must be a multiple of the net's size multiple {m}")
        kwargs["image_size"] = (size, size)
        kwargs["shared"] = classifier[1]
        if op_kind == "features":
            op = ClassifierFeatures(task.classifier, task.layer, task.classifier_input, task.classifier_style)
            targets = np.stack([s.observation for s in group])
            feature_fn = jax.jit(lambda x, p: op.apply(x, None, p))
            observation = np.concatenate([np.asarray(feature_fn(t[None], classifier[1])) for t in targets])
        else:
            op = ClassifierUnit(task.classifier, task.layer, task.classifier_input, task.window, task.classifier_style)
            features = ClassifierFeatures(task.classifier, task.layer, task.classifier_input, task.classifier_style)
            probe = jax.ShapeDtypeStruct((1, task.net_size, task.net_size, 3), jnp.float32)
            num_units = jax.eval_shape(features.apply, probe, None, classifier[1]).shape[-1]
            bad = [s.unit for s in group if not 0 <= s.unit < num_units]
            if bad:
                raise ValueError(
                    f"unit(s) {bad} do not exist: {task.classifier} {task.layer} has units 0..{num_units - 1}"
                )
            kwargs["op_args"] = np.asarray([s.unit for s in group], np.int32)
            kwargs["loss_fn"] = UnitLoss(task.unit_mode, task.loss_scale)
            target = task.fc_target if task.unit_mode == "match" else 0.0
            observation = np.full((len(group), 1, 1, 1), target, np.float32)
        out_h = out_w = task.classifier_input
    else:
        h, w = group[0].observation.shape[:2]
        factor = task.factor if op_kind == "downsample" else 1
        lr_multiple = _lcm(m, factor) // factor
        ph, pw = -h % lr_multiple, -w % lr_multiple
        top, left = ph // 2, pw // 2
        pad = lambda a, mode, f=1: _pad_hw(a, f * top, f * (ph - top), f * left, f * (pw - left), mode)  # noqa: E731
        observation = np.stack([pad(s.observation, "reflect") for s in group])
        crop_top, crop_left, out_h, out_w = factor * top, factor * left, factor * h, factor * w
        if any(s.ground_truth is not None for s in group) and all(s.ground_truth is not None for s in group):
            kwargs["ground_truth"] = np.stack([pad(s.ground_truth, "reflect", factor) for s in group])
        if op_kind in ("identity",):
            op = operators.Identity()
        elif op_kind in ("mask", "random_mask"):
            op = operators.Mask()
            kwargs["op_args"] = np.stack([pad(s.mask, "constant") for s in group]).astype(np.float32)
        elif op_kind == "downsample":
            op = PerImageKernel(operators.Downsample(task.factor, task.kernel_type))
            kernel = np.asarray(op.op.make_args(), np.float32)
            kwargs["op_args"] = np.stack([kernel] * len(group))
            kwargs["image_size"] = (factor * observation.shape[1], factor * observation.shape[2])
        elif op_kind == "blur":
            op = PerImageKernel(operators.Blur(task.blur_padding))
            kwargs["op_args"] = np.stack(
                [blur_kernel(task.blur_sigma) if s.kernel is None else s.kernel for s in group]).astype(np.float32)
        else:
            raise ValueError(f"operator {op_kind!r} is not handled")
        if task.has_image_input:
            kwargs["net_input"] = np.stack([pad(s.guide, "reflect") for s in group])
    try:
        result = engine.fit(key, net, task.fit, observation, op=op, restarts=restarts, progress=progress,
                            **run_options, **kwargs)
    except engine.Interrupted as stop:
        if stop.result is None:
            raise
        raise _GroupInterrupted(stop, _sample_results(stop.result, len(group), restarts,
                                                      (crop_top, crop_left, out_h, out_w))) from None
    return _sample_results(result, len(group), restarts, (crop_top, crop_left, out_h, out_w))


def check_memory(task: tasks.TaskConfig, samples: Sequence[Sample], *, restarts: int = 1, devices=None) -> None:
    """Raise `memory.InsufficientMemoryError`, before anything is built, when `fit_samples` of these
    same-shaped image samples in one call would not fit (the estimate the engine checks again itself).

    Under 'vmap' with no group size set, the engine may vmap items in small
    groups, so only the smallest such group (one item) must fit here.
    """
    from dip_jax import batching, memory, sharding

    if not task.fit.check_memory or task.operator in ("features", "unit"):
        return
    h, w = samples[0].observation.shape[:2]
    factor = task.factor if task.operator == "downsample" else 1
    multiple = _lcm(task.net.size_multiple, factor) // factor
    size = (factor * (h + -h % multiple), factor * (w + -w % multiple))
    batch_mode = batching.resolve_batch_mode(task.fit.batch_mode)
    devs = sharding.local_devices(devices)
    group = task.fit.vmap_group_size if batch_mode == "vmap" else None
    if batch_mode == "vmap" and group is None:
        group = 1
    problem = engine.Problem(task.net, task.fit, None, None, None, False, batch_mode)
    estimate = memory.estimate_fit(task.net, task.fit, size, len(samples) * restarts, batch_mode=batch_mode,
                                   tx=problem.tx, num_devices=len(devs), images=len(samples), restarts=restarts,
                                   group_size=group)
    memory.check_fits(estimate, devs[0])


def _sample_results(result: engine.FitResult, n: int, restarts: int, window) -> list[SampleResult]:
    """Split an engine result (N images x R restarts, padded) into per-sample results cropped to `window`."""
    crop_top, crop_left, out_h, out_w = window
    crop = (slice(None), slice(None), slice(crop_top, crop_top + out_h), slice(crop_left, crop_left + out_w))
    outputs = np.asarray(result.output)[crop]
    averaged = None if result.output_avg is None else np.asarray(result.output_avg)[crop]
    per_restart = averaged if averaged is not None else outputs
    backtracks = getattr(result, "num_backtracks", None)
    if backtracks is None:
        backtracks = np.asarray(result.state.num_backtracks)[: n * restarts]
    backtracks = np.asarray(backtracks).reshape(n, restarts)
    rollbacks = getattr(result, "num_rollbacks", None)
    rollbacks = None if rollbacks is None else np.asarray(rollbacks).reshape(n, restarts)
    out = []
    for i in range(n):
        history = {k: np.asarray(v[:, i, :]) for k, v in result.history.items()}
        out.append(SampleResult(
            restored=per_restart[i].mean(axis=0),
            per_restart=per_restart[i],
            outputs=outputs[i],
            history=history,
            seconds=float(result.seconds),
            images_in_call=n,
            num_backtracks=backtracks[i],
            num_rollbacks=None if rollbacks is None else rollbacks[i],
            resumed_from=getattr(result, "resumed_from", None),
        ))
    return out


# --------------------------------------------------------------------------- metrics and run folders


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(metrics.psnr(jnp.asarray(a), jnp.asarray(b)))


def _psnr_y(a: np.ndarray, b: np.ndarray) -> float | None:
    border = 4 if min(a.shape[:2]) > 16 else 0
    return float(metrics.psnr_y(jnp.asarray(a), jnp.asarray(b), border=border))


def sample_metrics(task: tasks.TaskConfig, sample: Sample, result: SampleResult) -> dict:
    """The numbers of metrics.json for one sample (PSNRs in dB)."""
    out: dict[str, Any] = {
        "task": task.name,
        "image": sample.name,
        "source": sample.source,
        "steps": int(task.fit.num_steps),
        "restarts": int(result.per_restart.shape[0]),
        "images_in_call": result.images_in_call,
        "seconds": round(result.seconds, 3),
        "final_loss": float(np.nanmean(result.history["loss"][-1])),
        "num_backtracks": [int(b) for b in result.num_backtracks],
    }
    if result.num_rollbacks is not None:
        out["num_rollbacks"] = [int(b) for b in result.num_rollbacks]
    gt = sample.ground_truth
    if gt is not None:
        out["psnr"] = _psnr(result.restored, gt)
        out["psnr_restarts"] = [_psnr(r, gt) for r in result.per_restart]
        if task.fit.ema_decay is not None:
            out["psnr_last_output"] = _psnr(result.outputs.mean(axis=0), gt)
        if min(gt.shape[:2]) >= 11:
            out["ssim"] = float(metrics.ssim(jnp.asarray(result.restored), jnp.asarray(gt)))
        if task.operator == "downsample":
            out["psnr_y"] = _psnr_y(result.restored, gt)
            out["baselines"] = {
                name: {"psnr": _psnr(b, gt), "psnr_y": _psnr_y(b, gt)} for name, b in sample.baselines.items()
            }
        elif sample.observation is not None and sample.observation.shape == gt.shape:
            # What one would have without restoration (masked pixels count as black).
            out["psnr_observation"] = _psnr(sample.observation, gt)
    if task.operator == "unit":
        out["unit"] = sample.unit
        out["layer"] = task.layer
        out["loss_first"] = float(np.nanmean(result.history["loss"][0]))
    if task.operator == "features":
        out["layer"] = task.layer
        out["loss_first"] = float(np.nanmean(result.history["loss"][0]))
    return out


def _figure_panel(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-upsample (observation at low resolution) to the display size, RGB."""
    h, w = size
    if image.shape[:2] != (h, w):
        ys = (np.arange(h) * image.shape[0] // h)
        xs = (np.arange(w) * image.shape[1] // w)
        image = image[ys][:, xs]
    image = np.clip(image, 0, 1)
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def save_comparison(path: Path, panels: Sequence[tuple[str, np.ndarray]], title: str = "") -> None:
    """A side-by-side figure of (label, image) panels (matplotlib, Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = max(p[1].shape[0] for p in panels), max(p[1].shape[1] for p in panels)
    fig = Figure(figsize=(3.2 * len(panels), 3.2 * h / w + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    for i, (label, image) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(_figure_panel(image, (h, w)), interpolation="nearest", vmin=0, vmax=1)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def save_history_plot(path: Path, history: dict, title: str = "") -> None:
    """PSNR per step (vs the ground truth, and vs the observation); the loss when there is no PSNR."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    labels = {"psnr_gt": "output vs ground truth", "psnr_gt_avg": "averaged output vs ground truth",
              "psnr_fit": "A(output) vs observation"}
    plotted = False
    for key, label in labels.items():
        values = history.get(key)
        if values is None or not np.isfinite(values).any():
            continue
        steps = np.arange(1, values.shape[0] + 1)
        for r in range(values.shape[1]):
            ax.plot(steps, values[:, r], label=label if r == 0 else None, lw=1)
        plotted = True
    if plotted:
        ax.set_ylabel("PSNR (dB)")
    else:
        values = history["loss"]
        steps = np.arange(1, values.shape[0] + 1)
        for r in range(values.shape[1]):
            ax.plot(steps, values[:, r], lw=1, label="loss" if r == 0 else None)
        ax.set_ylabel("loss")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def write_run(
    run_dir, task: tasks.TaskConfig, sample: Sample, result: SampleResult, *, options: dict | None = None
) -> dict:
    """Write one run folder (see the module docstring); returns its metrics."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    io.save_image(run_dir / "result.png", result.restored)
    panels: list[tuple[str, np.ndarray]] = []
    if sample.observation is not None and task.operator != "features":
        io.save_image(run_dir / "observation.png", sample.observation)
        panels.append(("observation", sample.observation))
    if sample.mask is not None:
        io.save_image(run_dir / "mask.png", sample.mask)
    if sample.reference is not None:
        io.save_image(run_dir / "target.png", sample.reference)
        panels.append(("target", sample.reference))
    panels.append(("result", result.restored))
    if result.per_restart.shape[0] > 1:
        for r, image in enumerate(result.per_restart):
            io.save_image(run_dir / f"restart_{r}.png", image)
    for name, image in sample.baselines.items():
        io.save_image(run_dir / f"baseline_{name}.png", image)
    if "bicubic" in sample.baselines:
        panels.append(("bicubic", sample.baselines["bicubic"]))
    if sample.ground_truth is not None:
        io.save_image(run_dir / "ground_truth.png", sample.ground_truth)
        panels.append(("ground truth", sample.ground_truth))
    found = sample_metrics(task, sample, result)
    found["options"] = dict(options or {})
    title = f"{task.title} - {sample.name}"
    if "psnr" in found:
        title += f"  (PSNR {found['psnr']:.2f} dB)"
    save_comparison(run_dir / "comparison.png", panels, title)
    save_history_plot(run_dir / "psnr.png", result.history, task.title)
    np.savez_compressed(run_dir / "history.npz", **result.history)
    config = {"task": task.to_dict(), "options": dict(options or {})}
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (run_dir / "metrics.json").write_text(json.dumps(found, indent=2) + "\n")
    return found


# --------------------------------------------------------------------------- report


def find_runs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Every folder with a metrics.json at or under the given paths, sorted."""
    runs: set[Path] = set()
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise ValueError(f"{str(p)!r} does not exist; give run folders (or folders that contain them)")
        if (p / "metrics.json").is_file():
            runs.add(p)
        runs.update(m.parent for m in p.rglob("metrics.json"))
    return sorted(runs)


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


_REPORT_FIELDS = ("task", "image", "steps", "restarts")


def _read_metrics(path: Path) -> dict:
    """A run's metrics.json, or a ValueError that names the file and what is wrong with it."""
    try:
        m = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read {str(path)!r} ({err}); check the file or leave its folder out") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(path)!r} is not valid JSON ({err}); the run may not have finished: re-run it "
                         "or leave its folder out") from None
    if not isinstance(m, dict):
        raise ValueError(f"{str(path)!r} does not hold a metrics object; re-run it or leave its folder out")
    missing = [k for k in _REPORT_FIELDS if k not in m]
    if missing:
        raise ValueError(f"{str(path)!r} has no {', '.join(missing)} field(s); it was not written by a dip_jax run "
                         "(or was edited): re-run it or leave its folder out")
    return m


def report(run_dirs: Sequence[str | os.PathLike]) -> str:
    """A markdown report of the runs under `run_dirs`, with the paper's numbers for comparison."""
    runs = find_runs(run_dirs)
    if not runs:
        raise ValueError("no run folders (with a metrics.json) found under " + ", ".join(map(str, run_dirs)))
    rows, seen_tasks = [], []
    for run in runs:
        m = _read_metrics(run / "metrics.json")
        quick = bool(m.get("options", {}).get("quick"))
        baseline = m.get("psnr_observation")
        baseline_label = "observation"
        if "baselines" in m:
            baseline = m["baselines"].get("bicubic", {}).get("psnr")
            baseline_label = "bicubic"
        rows.append(
            f"| {m['task']}{' (quick)' if quick else ''} | {m['image']} | {m['steps']} | {m['restarts']} "
            f"| {_fmt(m.get('psnr'))} | {_fmt(m.get('psnr_y'))} "
            f"| {_fmt(baseline)}{'' if baseline is None else f' ({baseline_label})'} "
            f"| {_fmt(m.get('ssim'), 3)} | {m.get('seconds', 0):.1f} |"
        )
        if m["task"] not in seen_tasks:
            seen_tasks.append(m["task"])
    lines = [
        "# dip_jax experiment report",
        "",
        "PSNR in dB against the ground truth (where there is one); PSNR-Y is the super-resolution protocol "
        "(BT.601 luma, 4 px border). The baseline column is the observation itself, or bicubic upsampling "
        "for super-resolution. Quick runs use tiny images, few steps and narrow nets: they check the "
        "pipeline, not the quality.",
        "",
        "| task | image | steps | restarts | PSNR | PSNR-Y | baseline | SSIM | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ]
    paper_lines = []
    for name in seen_tasks:
        if name in tasks.TASKS and tasks.TASKS[name].paper:
            for number in tasks.TASKS[name].paper:
                paper_lines.append(f"| {name} | {number.label} | {number.psnr:.2f} |")
    if paper_lines:
        lines += [
            "",
            "## The paper's numbers",
            "",
            "Dataset means on full-size images (GPU runs), from the paper; compare full runs on the same "
            "data, not single images or quick runs.",
            "",
            "| task | reference | PSNR |",
            "| --- | --- | --- |",
            *paper_lines,
        ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the experiments' command line


def enable_compile_cache() -> None:
    """Keep compiled XLA programs on disk, so the next run of the same problem starts at once.

    The folder is $JAX_COMPILATION_CACHE_DIR if set, else ~/.cache/dip_jax/xla
    ($XDG_CACHE_HOME respected); DIP_JAX_COMPILE_CACHE=0 turns it off.
    """
    if os.environ.get("DIP_JAX_COMPILE_CACHE", "1") == "0":
        return
    if jax.config.jax_compilation_cache_dir:
        return
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    with contextlib.suppress(Exception):
        jax.config.update("jax_compilation_cache_dir", str(base / "dip_jax" / "xla"))


def classifier_for(task: tasks.TaskConfig, weights: str | None, *, quick: bool, workdir: Path):
    """(model, params, description) for a classifier task: the given weights, or random ones in quick mode."""
    from dip_jax import classifiers

    if weights:
        model, params = classifiers.load_classifier(task.classifier, weights)
        return model, params, str(weights)
    if not quick:
        raise ValueError(missing_weights_message(task))
    path = classifiers.random_weights_file(
        jax.random.key(0), task.classifier, workdir / f"random_{task.classifier}.npz"
    )
    model, params = classifiers.load_classifier(task.classifier, path)
    return model, params, "random (quick mode: checks the pipeline, not a pretrained net)"


def missing_weights_message(task: tasks.TaskConfig) -> str:
    arch = task.classifier
    return (
        f"{task.title} needs pretrained {arch} weights and dip_jax never downloads anything: pass --weights FILE, "
        f"a torchvision {arch} state dict as .safetensors or .npz. Make one on a machine with torch and "
        f"torchvision: `python -m dip_jax.classifiers convert --arch {arch} --torchvision --out {arch}.safetensors` "
        f"(or convert a .pth you have with --pth FILE). Use --quick to check the pipeline with random weights."
    )


def _parser(prog: str, description: str, variants: dict, default_variant: str) -> argparse.ArgumentParser:
    from dip_jax.cli import _positive_float, _positive_int, _seed  # the dip-jax command's checked types

    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if len(variants) > 1:
        p.add_argument("--variant", choices=sorted(variants), default=default_variant,
                       help=f"which setting of the paper (default: {default_variant})")
    p.add_argument("--image", action="append", metavar="FILE",
                   help="input image (repeatable: several images are fitted in one batched call); "
                        "default: the task's image from the original's data folder, else a stand-in")
    p.add_argument("--mask", action="append", metavar="FILE", help="mask per --image (white = known pixel)")
    p.add_argument("--guide", action="append", metavar="FILE", help="flash photo per --image (flash/no-flash)")
    p.add_argument("--unit", action="append", type=int, metavar="N",
                   help="unit (channel or class index) to maximise; repeatable")
    p.add_argument("--weights", metavar="FILE", help="classifier weights (torchvision layout, .npz/.safetensors)")
    p.add_argument("--data", metavar="DIR",
                   help="the original's data folder (default: $DIP_DATA, else /work/shared/dip_data if present); "
                        "'none': use the stand-in images")
    p.add_argument("--restarts", type=_positive_int, default=1, metavar="R",
                   help="independent fits per image (default 1)")
    p.add_argument("--steps", type=_positive_int, metavar="N",
                   help="number of steps (default: the paper's, or quick's)")
    p.add_argument("--lr", type=_positive_float, metavar="LR", help="learning rate (default: the paper's)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    p.add_argument("--quick", action="store_true", help="tiny images, few steps, narrow net (a smoke test)")
    p.add_argument("--out", default="runs", metavar="DIR", help="output folder (default: runs/)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: when the terminal is interactive)")
    p.add_argument("--checkpoint-every", type=_positive_int, metavar="N",
                   help="write a checkpoint every N steps into OUT/TASK/ (also at the end and on Ctrl-C)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in OUT/TASK/")
    p.add_argument("--overwrite", action="store_true", help="delete earlier checkpoints in OUT/TASK/ and start over")
    return p


def main(argv: Sequence[str] | None = None, *, variants: dict, default_variant: str, description: str,
         prog: str | None = None) -> int:
    """The command line of an experiment script: run its task(s), write run folders, print a summary."""
    prog = prog or Path(sys.argv[0]).name
    parser = _parser(prog, description, variants, default_variant)
    args = parser.parse_args(argv)
    try:
        return _run_main(args, variants[getattr(args, "variant", default_variant)])
    except ValueError as err:  # io.ImageIOError and checkpoint.CheckpointError are ValueErrors
        message = " ".join(str(getattr(err, "cli_message", None) or err).split())
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        where = (f"checkpoint {str(stop.checkpoint_path)!r}; run the same command with --resume to continue"
                 if stop.checkpoint_path is not None else "no checkpoint (use --checkpoint-every N to be able to resume)")
        print(f"{prog}: interrupted after step {stop.step}; partial results written as result.partial.png; {where}",
              file=sys.stderr)
        return 130


def _run_main(args, task_names) -> int:
    from dip_jax import checkpoint as checkpoint_lib

    if args.restarts < 1:
        raise ValueError(f"--restarts must be >= 1, got {args.restarts}")
    checkpoint_every = getattr(args, "checkpoint_every", None)
    resume, overwrite = getattr(args, "resume", False), getattr(args, "overwrite", False)
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be a positive number of steps, got {checkpoint_every}")
    if resume and overwrite:
        raise ValueError("--resume continues the checkpoints and --overwrite deletes them; pass one of them")
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    key = jax.random.key(args.seed)
    out_root = Path(args.out)
    io.check_writable_folder(out_root, what=f"--out {args.out!r}")  # before any data is made or fitted
    names = (task_names,) if isinstance(task_names, str) else tuple(task_names)
    with tempfile.TemporaryDirectory(prefix="dip_jax_") as tmp:
        for t, name in enumerate(names):
            task = tasks.task(name)
            if args.quick:
                task = task.quick_variant()
            task = task.with_steps(args.steps, args.lr)
            k_data, k_fit = jax.random.split(jax.random.fold_in(key, t))
            samples = prepare_samples(k_data, task, images=args.image, masks=args.mask, guides=args.guide,
                                      units=args.unit, data=args.data, quick=args.quick)
            classifier, weights_note = None, None
            if task.classifier is not None:
                model, params, weights_note = classifier_for(task, args.weights, quick=args.quick, workdir=Path(tmp))
                classifier = (model, params)
            checkpoint = None
            task_dir = out_root / task.name
            if checkpoint_every is not None or resume or (overwrite and task_dir.is_dir()):
                # Only the checkpoints are guarded here (an unfinished run needs --resume or --overwrite):
                # the finished runs live one level down, TASK/IMAGE/metrics.json, and are rewritten as before.
                checkpoint_lib.prepare_output_dir(task_dir, overwrite=overwrite, resume=resume,
                                                  marker="no-finished-marker-at-this-level")
            if checkpoint_every is not None or resume:
                checkpoint = CheckpointOptions(task_dir, every=checkpoint_every, resume=resume)
            enable_compile_cache()
            t0 = time.perf_counter()
            try:
                results = fit_samples(k_fit, task, samples, restarts=args.restarts, progress=progress,
                                      classifier=classifier, checkpoint=checkpoint,
                                      handle_signals=True if checkpoint is not None else None)
            except Interrupted as stop:
                options = {"quick": args.quick, "seed": args.seed, "restarts": args.restarts,
                           "backend": jax.default_backend(), "weights": weights_note}
                for sample, result, partial in zip(samples, stop.results, stop.partial):
                    run_dir = out_root / task.name / sample.name
                    if result is not None and not partial:
                        write_run(run_dir, task, sample, result, options=options)
                    elif result is not None and np.all(np.isfinite(result.restored)):
                        run_dir.mkdir(parents=True, exist_ok=True)
                        io.save_image(run_dir / "result.partial.png", result.restored)
                raise
            options = {"quick": args.quick, "seed": args.seed, "restarts": args.restarts,
                       "backend": jax.default_backend(), "weights": weights_note,
                       "wall_seconds": round(time.perf_counter() - t0, 3)}
            for sample, result in zip(samples, results):
                run_dir = out_root / task.name / sample.name
                found = write_run(run_dir, task, sample, result, options=options)
                print(_summary_line(task, found, run_dir))
    return 0


def _summary_line(task, found: dict, run_dir: Path) -> str:
    parts = [f"{task.name}/{found['image']}: {found['steps']} steps"]
    if "psnr" in found:
        parts.append(f"PSNR {found['psnr']:.2f} dB")
    if "psnr_observation" in found:
        parts.append(f"(observation {found['psnr_observation']:.2f} dB)")
    if "baselines" in found:
        parts.append(f"(bicubic {found['baselines']['bicubic']['psnr']:.2f} dB)")
    if "psnr" not in found:
        parts.append(f"loss {found['final_loss']:.4g}")
    parts.append(f"-> {run_dir}")
    return " ".join(parts)
