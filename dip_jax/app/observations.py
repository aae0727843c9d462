"""Observations: load a task's inputs and make what the net is fitted to.

Contract:
- `prepare_samples(key, task, *, images=None, masks=None, guides=None, units=None, data=None, quick=False)`
  loads the task's inputs (the given files, else its default sources) and
  makes each `Sample`: the observation the net is fitted to (float32
  (H, W, C) in [0, 1], e.g. the noisy image, the masked image, the
  low-resolution image), the ground truth where one exists, the mask, the
  guide image (flash) or the unit (activation maximisation). The task's
  measurement (`TaskConfig.operator.observe`) makes the corruption, drawn
  from `key`. With `quick` the images are brought to the task's
  `QuickSettings.size` first.
- `data_dir`: where the original's images are; `add_noise`, `blur_kernel`,
  `super_resolution_pair` (`upsampling_baselines` of any LR image), `degrade`, `synthetic_mask`, `centre_crop`,
  `resize`: the corruptions and image helpers the tasks and the CLI share.

The super-resolution HR image is cropped only to a multiple of the factor
(the original crops to a multiple of 32).
"""

from __future__ import annotations

import dataclasses
import io as _bytes_io
import math
import os
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from dip_jax import io, kernels

DEFAULT_DIP_DATA = Path("/work/shared/dip_data")
PROJECT_DATA = Path(__file__).resolve().parents[2] / "data"
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# Synthetic corruptions of clean stand-in images, returning (observation, ground truth): 'jpeg'
# (quality 5), 'low_light' (a dim, noisy "no-flash" shot of a "flash" image); see `degrade`.
DEGRADATIONS = ("jpeg", "low_light")

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


def resize(image: np.ndarray, size: tuple[int, int], resample=Image.Resampling.LANCZOS) -> np.ndarray:
    """Float resize of (H, W, C) to (height, width), per channel (no 8-bit rounding)."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image.astype(np.float32)
    planes = [
        np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32)).resize((width, height), resample))
        for c in range(image.shape[-1])
    ]
    return np.clip(np.stack(planes, axis=-1), 0.0, 1.0).astype(np.float32)


def _fit_to_quick_size(image: np.ndarray, quick, *, is_mask: bool = False) -> np.ndarray:
    s = quick.size
    h, w = image.shape[:2]
    if quick.fit_to_size == "crop" and h >= s and w >= s:
        return centre_crop(image, s, s)
    side = min(h, w)
    square = centre_crop(image, side, side)
    if is_mask:
        # A pixel stays known only if everything it covers was known, so thin
        # strokes (text) survive the shrinking instead of vanishing.
        return (resize(square, (s, s), Image.Resampling.BOX) >= 0.999).astype(np.float32)
    return resize(square, (s, s))


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
    lr = _from_pil(lr_pil, channels)
    return hr, lr, upsampling_baselines(lr, hr.shape[:2])


def upsampling_baselines(lr: np.ndarray, size: tuple[int, int]) -> dict:
    """`super_resolution_pair`'s baselines (bicubic, nearest, sharpened bicubic) of a given LR image, e.g. a noisy one."""
    channels = lr.shape[-1]
    lr_pil = _pil(lr)
    hw = (size[1], size[0])
    bicubic = lr_pil.resize(hw, Image.Resampling.BICUBIC)
    return {
        "bicubic": _from_pil(bicubic, channels),
        "nearest": _from_pil(lr_pil.resize(hw, Image.Resampling.NEAREST), channels),
        "sharpened_bicubic": _from_pil(bicubic.filter(ImageFilter.UnsharpMask()), channels),
    }


def degrade(kind: str, image: np.ndarray, key) -> tuple[np.ndarray, np.ndarray]:
    """(observation, ground truth) for a stand-in image; see `DEGRADATIONS`."""
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
    raise ValueError(f"unknown degradation {kind!r}; use one of {DEGRADATIONS}")


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
    task,
    *,
    images: Sequence[str] | None = None,
    masks: Sequence[str] | None = None,
    guides: Sequence[str] | None = None,
    units: Sequence[int] | None = None,
    data: str | os.PathLike | None = None,
    quick: bool = False,
) -> list[Sample]:
    """The task's inputs as `Sample`s (see the module docstring); `quick` shrinks them to `task.quick.size`."""
    measurement = task.operator
    if units and not measurement.takes_units:
        raise ValueError(f"--unit is for activation maximisation; task {task.name} takes images (--image)")
    if measurement.takes_units:
        if images:
            raise ValueError("activation maximisation starts from noise and takes no --image; choose --unit instead")
        return measurement.unit_samples(units)
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
    if task.operator.needs_mask and not masks:
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
    # The sample key's splits: [0] noise and [1] masks (drawn by the measurement), [2] the degradation.
    k_degrade = jax.random.split(key, 3)[2]
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
    task.operator.observe(task, sample, image, key)
    return sample
