"""The tasks of the paper as data: one frozen `TaskConfig` per notebook setting.

Contract:
- `TASKS` maps a task name to its `TaskConfig`: the generator config, the
  `engine.FitConfig` (steps, learning rate, input type, regularisers), which
  forward operator to build (`operator`, one of `OPERATORS`) and with what
  settings, where its default images come from (`sources`, tried in order:
  the original's data folder, this repository's `data/`, built-in samples),
  the paper's reference numbers and the quick-mode settings.
- `task(name)` looks one up (ValueError listing the names otherwise);
  `TaskConfig.quick_variant()` returns the small, fast version used by
  `--quick` (tiny images, few steps, a narrow net: `QuickSettings`).
- Nothing here runs anything: `dip_jax.experiment` turns a task and images
  into a fit and a run folder, `dip_jax.cli` into a command.

Where a setting deliberately differs from the original notebook, the field
says so in a comment; every task pads images to what its net needs instead
of cropping them (`pad_to_multiple`), so no border pixel is lost.

The sr-prior task's "no prior" and "TV prior" optimise the pixels directly:
the original does it with an identity net and `OPT_OVER='input'`; here the
pixels are the parameters of a `Pixels` generator (registered as kind
'pixels'), initialised to the same 3-channel noise input, which is the same
optimisation problem.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dip_jax import engine, nets
from dip_jax.nets import resnet as _resnet  # noqa: F401  (registers the 'resnet' kind)
from dip_jax.nets import unet as _unet  # noqa: F401  (registers the 'unet' kind)
from dip_jax.nets.resnet import ResNetConfig
from dip_jax.nets.unet import UNetConfig

# How a task's observation is made from its net's output.
# identity: y = x (denoising); mask: y = mask * x with a mask file;
# random_mask: a Bernoulli mask drawn with the run's key (restoration);
# downsample: the original's Lanczos downsampler (super-resolution);
# blur: a convolution (deblurring, not in the original);
# features: a classifier layer's activations (feature inversion);
# unit: one unit of a classifier layer (activation maximisation).
OPERATORS = ("identity", "mask", "random_mask", "downsample", "blur", "features", "unit")

# Synthetic corruptions applied to clean stand-in images, returning
# (observation, ground truth): 'jpeg' (quality 5), 'low_light' (a dim, noisy
# "no-flash" shot of a "flash" image). Implemented in dip_jax.experiment.
DEGRADATIONS = ("jpeg", "low_light")


# --------------------------------------------------------------------------- the "no prior" generator


@dataclasses.dataclass(frozen=True)
class PixelsConfig:
    """A "generator" whose parameters are the output pixels (optimising the image directly).

    Its parameters start as the input `z` (so `num_input_channels` must equal
    `num_output_channels`); the input is ignored afterwards.
    """

    num_input_channels: int = 3
    num_output_channels: int = 3

    kind = "pixels"

    def __post_init__(self):
        if self.num_input_channels != self.num_output_channels:
            raise ValueError(
                f"a Pixels generator starts from its input, so num_input_channels ({self.num_input_channels}) "
                f"must equal num_output_channels ({self.num_output_channels})"
            )

    @property
    def size_multiple(self) -> int:
        return 1

    def torch_param_count_extra(self) -> int:
        return 0


class Pixels(nn.Module):
    config: PixelsConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        if z.shape[-1] != self.config.num_input_channels:
            raise ValueError(f"Pixels expects {self.config.num_input_channels} input channels, got {z.shape[-1]}")
        return self.param("pixels", lambda key: jnp.asarray(z, jnp.float32))


nets.register(PixelsConfig, Pixels)


# --------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class DataSource:
    """One complete set of default inputs for a task.

    Each entry is `'dip:REL'` (a file of the original's data folder, see
    `experiment.data_dir`), `'data:NAME'` (this repository's `data/`),
    `'sample:NAME'` or `'sample:NAME:grey'` (`sample_images.sample_image`), or
    `'synthetic:text'` / `'synthetic:hole'` (masks drawn on the fly).
    `degrade` names a `DEGRADATIONS` entry that turns the clean `image` into
    the observation (and keeps it as the ground truth).
    """

    image: str
    mask: str | None = None
    guide: str | None = None
    degrade: str | None = None


@dataclasses.dataclass(frozen=True)
class QuickSettings:
    """The `--quick` variant: tiny images, few steps, a narrow net (for CI and a first look).

    `fit_to_size`: 'crop' takes a centre `size` x `size` patch at the image's
    own scale (natural-image statistics, so the prior still has something to
    work with); 'resize' shrinks the whole picture (keeps a mask's layout).
    `net`: an explicit small generator (UNet / ResNet / Pixels); by default
    the task's skip net through `nets.narrow(width=, scales=)`.
    """

    size: int = 64
    fit_to_size: str = "crop"
    num_steps: int = 200
    width: int = 16
    scales: int = 3
    chunk_size: int = 50
    learning_rate: float | None = None
    net: Any = None
    # random_mask tasks: the fraction kept in the quick run (None: the task's).
    keep_fraction: float | None = None
    # Tasks that average their output: the quick run's decay. The paper's 0.99
    # averages over ~100 steps, too long a memory for a run of a few hundred.
    ema_decay: float = 0.9


@dataclasses.dataclass(frozen=True)
class PaperNumber:
    """A reference number of the paper (dataset-level, full-size images, GPU runs)."""

    label: str
    psnr: float


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """One task of the paper: net, fitting loop, operator, data and quick variant (see the module docstring)."""

    name: str
    title: str
    notebook: str
    net: Any
    fit: engine.FitConfig
    operator: str
    sources: tuple[DataSource, ...] = ()
    # Channels of the images the task works on (1: greyscale, e.g. barbara).
    channels: int = 3
    # Synthetic Gaussian noise added to the clean image, in 0..255 units (denoising).
    noise_sigma: float | None = None
    # random_mask: fraction of pixels kept; the mask is shared by a pixel's channels.
    keep_fraction: float | None = None
    # downsample: factor and kernel of the original's Downsampler.
    factor: int | None = None
    kernel_type: str = "lanczos2"
    # blur: Gaussian kernel sigma (px) and the padding of operators.Blur.
    blur_sigma: float | None = None
    blur_padding: str = "reflect"
    # super-resolution: also compute the bicubic / nearest / sharpened-bicubic baselines.
    baselines: bool = False
    # features / unit: the classifier, its layer and input crop (the net's output is
    # cropped to classifier_input x classifier_input, as the original's [:imsize, :imsize]).
    classifier: str | None = None
    layer: str | None = None
    # Deliberate difference: the original used Caffe-converted weights with Caffe
    # preprocessing; dip_jax loads torchvision's weights, which expect torchvision's.
    classifier_style: str = "torchvision"
    classifier_input: int | None = None
    # Output size of the generator when it is not the observation's (classifier tasks).
    net_size: int | None = None
    # unit: which unit (channel / class index), how (maximize a conv window's sum,
    # or match an fc unit to fc_target) and the loss weight (the original's x5).
    unit: int | None = None
    unit_mode: str = "maximize"
    window: int = 20
    fc_target: float = 300.0
    loss_scale: float = 5.0
    paper: tuple[PaperNumber, ...] = ()
    # False for tasks dip_jax adds (deblurring).
    in_paper: bool = True
    quick: QuickSettings = QuickSettings()
    notes: str = ""

    def __post_init__(self):
        if self.operator not in OPERATORS:
            raise ValueError(f"task {self.name!r}: operator must be one of {OPERATORS}, got {self.operator!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"task {self.name!r}: channels must be 1 or 3, got {self.channels}")
        if self.net.num_output_channels != self.channels:
            raise ValueError(
                f"task {self.name!r}: the net makes {self.net.num_output_channels} channels but the task works on "
                f"{self.channels}"
            )
        for source in self.sources:
            if source.degrade is not None and source.degrade not in DEGRADATIONS:
                raise ValueError(f"task {self.name!r}: degrade must be one of {DEGRADATIONS}, got {source.degrade!r}")
        if self.quick.fit_to_size not in ("crop", "resize"):
            raise ValueError(f"quick.fit_to_size must be 'crop' or 'resize', got {self.quick.fit_to_size!r}")

    @property
    def has_image_input(self) -> bool:
        return self.fit.input_type == "image"

    def quick_variant(self) -> "TaskConfig":
        """The small version (`QuickSettings`): narrow net, few steps, small classifier crop."""
        q = self.quick
        net = q.net if q.net is not None else nets.narrow(self.net, width=q.width, scales=q.scales)
        fit = dataclasses.replace(
            self.fit,
            num_steps=q.num_steps,
            chunk_size=min(q.chunk_size, max(q.num_steps, 1)),
            learning_rate=q.learning_rate if q.learning_rate is not None else self.fit.learning_rate,
            ema_decay=None if self.fit.ema_decay is None else q.ema_decay,
        )
        changes: dict[str, Any] = {"net": net, "fit": fit}
        if self.net_size is not None:
            changes["net_size"] = q.size
        if self.classifier_input is not None:
            changes["classifier_input"] = q.size
        if q.keep_fraction is not None:
            changes["keep_fraction"] = q.keep_fraction
        return dataclasses.replace(self, **changes)

    def with_steps(self, num_steps: int | None = None, learning_rate: float | None = None) -> "TaskConfig":
        """The task with another step count and/or learning rate (None keeps the task's)."""
        fit = self.fit
        if num_steps is not None:
            if num_steps < 1:
                raise ValueError(f"the number of steps must be >= 1, got {num_steps}")
            fit = dataclasses.replace(fit, num_steps=num_steps, chunk_size=min(fit.chunk_size, num_steps))
        if learning_rate is not None:
            fit = dataclasses.replace(fit, learning_rate=learning_rate)
        return dataclasses.replace(self, fit=fit)

    def to_dict(self) -> dict:
        """JSON-ready description (config.json), with the generator's kind."""
        out = _jsonable(dataclasses.asdict(self))
        out["net"]["kind"] = self.net.kind
        return out


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if dataclasses.is_dataclass(value):
        return _jsonable(dataclasses.asdict(value))
    return repr(value)


def task(name: str) -> TaskConfig:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(sorted(TASKS))}")
    return TASKS[name]


# --------------------------------------------------------------------------- the registry

_FIT = engine.FitConfig
_ASTRONAUT = (DataSource("data:astronaut_128.png"), DataSource("sample:astronaut"))

# Paper numbers (ORIGINAL.md, "Paper numbers"); dataset means, not per image.
_DENOISING_PAPER = (
    PaperNumber("DIP, 9 colour images, sigma 25, 1800 steps", 29.22),
    PaperNumber("DIP with output averaging", 30.43),
    PaperNumber("DIP, average of two runs", 31.00),
    PaperNumber("CBM3D", 31.42),
    PaperNumber("NLM", 30.26),
)
_SR4_PAPER = (
    PaperNumber("DIP Set5 (Y, 4 px border)", 29.90),
    PaperNumber("bicubic Set5", 28.43),
    PaperNumber("DIP Set14 (Y, 4 px border)", 27.00),
    PaperNumber("bicubic Set14", 26.05),
)
_INPAINTING50_PAPER = (
    PaperNumber("DIP, 11 grey images of Heide et al., 50% missing", 33.48),
    PaperNumber("convolutional sparse coding", 31.18),
)

_LIBRARY_SOURCES = (
    DataSource("dip:inpainting/library.png", mask="dip:inpainting/library_mask.png"),
    DataSource("data:astronaut_128.png", mask="data:mask_hole_128.png"),
    DataSource("sample:astronaut", mask="synthetic:hole"),
)
_LARGE_HOLE_QUICK = QuickSettings(fit_to_size="resize", num_steps=200)

TASKS: dict[str, TaskConfig] = {}


def _add(config: TaskConfig) -> None:
    TASKS[config.name] = config


_add(TaskConfig(
    name="denoising",
    title="Denoising, synthetic Gaussian noise sigma 25",
    notebook="denoising.ipynb (F16)",
    net=nets.preset("default"),
    fit=_FIT(num_steps=3000, learning_rate=0.01, reg_noise_std=1.0 / 30.0, ema_decay=0.99, backtrack=True),
    operator="identity",
    sources=(DataSource("dip:denoising/F16_GT.png"), DataSource("sample:astronaut")),
    noise_sigma=25.0,
    paper=_DENOISING_PAPER,
    quick=QuickSettings(num_steps=300),
))
_add(dataclasses.replace(
    TASKS["denoising"],
    name="denoising_sigma50",
    title="Denoising, synthetic Gaussian noise sigma 50",
    fit=dataclasses.replace(TASKS["denoising"].fit, reg_noise_std=1.0 / 20.0),
    noise_sigma=50.0,
    paper=(),
))
_add(dataclasses.replace(
    TASKS["denoising"],
    name="denoising_real",
    title="Denoising a real noisy photo (no ground truth)",
    # The original's "real" case is snail.jpg; any noisy photo can be given.
    sources=(DataSource("dip:denoising/snail.jpg"), DataSource("data:chelsea_64.png"), DataSource("sample:chelsea")),
    noise_sigma=None,
    paper=(),
))
_add(TaskConfig(
    name="jpeg",
    title="JPEG artifact removal",
    notebook="denoising.ipynb (snail.jpg)",
    net=nets.preset("jpeg"),
    # The notebook runs snail.jpg through the denoising loop (averaging, backtracking).
    fit=_FIT(num_steps=2400, learning_rate=0.01, reg_noise_std=1.0 / 30.0, ema_decay=0.99, backtrack=True),
    operator="identity",
    sources=(
        DataSource("dip:denoising/snail.jpg"),
        # Stand-in: a clean photo compressed at quality 5, so a ground truth exists.
        DataSource("sample:coffee", degrade="jpeg"),
    ),
    notes="Stop early: with more steps the net fits the artifacts too.",
))
_add(TaskConfig(
    name="sr_x4",
    title="Super-resolution x4",
    notebook="super-resolution.ipynb (zebra)",
    net=nets.preset("default"),
    fit=_FIT(num_steps=2000, learning_rate=0.01, reg_noise_std=0.03),
    operator="downsample",
    sources=(DataSource("dip:sr/zebra_GT.png"), DataSource("sample:astronaut")),
    factor=4,
    kernel_type="lanczos2",
    baselines=True,
    paper=_SR4_PAPER,
    quick=QuickSettings(num_steps=300),
))
_add(dataclasses.replace(
    TASKS["sr_x4"],
    name="sr_x8",
    title="Super-resolution x8",
    fit=_FIT(num_steps=4000, learning_rate=0.01, reg_noise_std=0.05),
    factor=8,
    paper=(),
))
_add(TaskConfig(
    name="text_inpainting",
    title="Text inpainting",
    notebook="inpainting.ipynb (kate)",
    net=nets.preset("text_inpainting"),
    fit=_FIT(num_steps=6001, learning_rate=0.01, reg_noise_std=0.03),
    operator="mask",
    sources=(
        DataSource("dip:inpainting/kate.png", mask="dip:inpainting/kate_mask.png"),
        DataSource("data:astronaut_128.png", mask="data:mask_text_128.png"),
        DataSource("sample:astronaut", mask="synthetic:text"),
    ),
    quick=QuickSettings(fit_to_size="resize"),
))
_add(TaskConfig(
    name="large_hole_vase",
    title="Large-hole inpainting (vase, meshgrid input)",
    notebook="inpainting.ipynb (vase)",
    net=nets.preset("large_hole"),
    fit=_FIT(num_steps=5001, learning_rate=0.01, reg_noise_std=0.03, input_type="meshgrid"),
    operator="mask",
    sources=(
        DataSource("dip:inpainting/vase.png", mask="dip:inpainting/vase_mask.png"),
        DataSource("data:astronaut_128.png", mask="data:mask_hole_128.png"),
        DataSource("sample:astronaut", mask="synthetic:hole"),
    ),
    quick=_LARGE_HOLE_QUICK,
))
_add(TaskConfig(
    name="large_hole_library",
    title="Large-hole inpainting (library, depth-6 skip net)",
    notebook="inpainting.ipynb (library, skip_depth6)",
    net=nets.preset("large_hole_depth6"),
    # The notebook sets param_noise=True, which has no effect in the original
    # code (it rebinds a local name); leaving it off computes what it computed.
    fit=_FIT(num_steps=3001, learning_rate=0.01, reg_noise_std=0.0),
    operator="mask",
    sources=_LIBRARY_SOURCES,
    quick=_LARGE_HOLE_QUICK,
))
_add(TaskConfig(
    name="large_hole_library_unet",
    title="Large-hole inpainting (library, UNet)",
    notebook="inpainting.ipynb (library, UNET)",
    net=UNetConfig(
        num_input_channels=1, num_output_channels=3, feature_scale=8, more_layers=1, concat_x=False,
        upsample_mode="deconv", pad="zero", norm_layer="InstanceNorm2d", need_sigmoid=True, need_bias=True,
    ),
    fit=_FIT(num_steps=3001, learning_rate=0.001, reg_noise_std=0.0),
    operator="mask",
    sources=_LIBRARY_SOURCES,
    quick=dataclasses.replace(
        _LARGE_HOLE_QUICK,
        learning_rate=0.01,
        net=UNetConfig(
            num_input_channels=1, num_output_channels=3, feature_scale=16, more_layers=0,
            upsample_mode="deconv", pad="zero", norm_layer="InstanceNorm2d",
        ),
    ),
))
_add(TaskConfig(
    name="large_hole_library_resnet",
    title="Large-hole inpainting (library, ResNet)",
    notebook="inpainting.ipynb (library, ResNet)",
    net=ResNetConfig(num_input_channels=1, num_output_channels=3, num_blocks=8, num_channels=32),
    fit=_FIT(num_steps=3001, learning_rate=0.001, reg_noise_std=0.0),
    operator="mask",
    sources=_LIBRARY_SOURCES,
    quick=dataclasses.replace(
        _LARGE_HOLE_QUICK,
        learning_rate=0.01,
        net=ResNetConfig(num_input_channels=1, num_output_channels=3, num_blocks=2, num_channels=8),
    ),
))
_add(TaskConfig(
    name="restoration_50",
    title="Restoration, 50% of pixels missing (greyscale)",
    notebook="restoration.ipynb (barbara)",
    net=nets.preset("default", num_output_channels=1),
    # The original also reflection-pads barbara by one pixel first (514 x 514); not done here.
    fit=_FIT(num_steps=11000, learning_rate=0.001, reg_noise_std=0.03, backtrack=True),
    operator="random_mask",
    sources=(
        DataSource("dip:restoration/barbara.png"),
        DataSource("data:camera_128.png"),
        DataSource("sample:camera:grey"),
    ),
    channels=1,
    keep_fraction=0.5,
    paper=_INPAINTING50_PAPER,
    # lr 0.001 barely moves in 200 steps; the quick run uses the usual 0.01.
    quick=QuickSettings(learning_rate=0.01),
))
_add(TaskConfig(
    name="restoration_98",
    title="Restoration, 98% of pixels missing",
    notebook="restoration.ipynb (kate)",
    net=nets.preset("restoration_sparse"),
    fit=_FIT(num_steps=1000, learning_rate=0.01, reg_noise_std=0.0),
    operator="random_mask",
    sources=(DataSource("dip:restoration/kate.png"),) + _ASTRONAUT,
    keep_fraction=0.02,
    # 2% of a 64 x 64 patch is ~80 pixels; the quick run keeps 20%.
    quick=QuickSettings(fit_to_size="resize", keep_fraction=0.2),
))
_add(TaskConfig(
    name="flash_no_flash",
    title="Flash / no-flash reconstruction",
    notebook="flash-no-flash.ipynb (cave01)",
    net=nets.preset("flash"),
    fit=_FIT(num_steps=601, learning_rate=0.1, reg_noise_std=0.0, input_type="image"),
    operator="identity",
    sources=(
        DataSource("dip:flash_no_flash/cave01_01_noflash.jpg", guide="dip:flash_no_flash/cave01_00_flash.jpg"),
        # Stand-in pair: the photo is the "flash" input; a dim, noisy copy is the "no-flash" target.
        DataSource("data:astronaut_128.png", guide="data:astronaut_128.png", degrade="low_light"),
        DataSource("sample:astronaut", guide="sample:astronaut", degrade="low_light"),
    ),
    quick=QuickSettings(fit_to_size="resize", num_steps=100, learning_rate=0.01),
))
_add(TaskConfig(
    name="feature_inversion",
    title="Feature inversion (AlexNet fc6)",
    notebook="feature_inversion.ipynb (building)",
    net=nets.preset("feature_inversion"),
    fit=_FIT(num_steps=3100, learning_rate=0.001, reg_noise_std=0.0),
    operator="features",
    sources=(DataSource("dip:feature_inversion/building.jpg"),) + _ASTRONAUT,
    classifier="alexnet",
    layer="fc6",
    classifier_input=227,
    net_size=256,
    quick=QuickSettings(fit_to_size="resize", num_steps=60, learning_rate=0.01, chunk_size=30),
))
_add(TaskConfig(
    name="activation_maximization",
    title="Activation maximisation (AlexNet conv4, unit 2)",
    notebook="activation_maximization.ipynb",
    net=nets.preset("activation_maximization"),
    # param_noise=True in the notebook has no effect in the original code; off here.
    fit=_FIT(num_steps=3100, learning_rate=0.001, reg_noise_std=0.03),
    operator="unit",
    classifier="alexnet",
    layer="conv4",
    classifier_input=227,
    net_size=256,
    unit=2,
    unit_mode="maximize",
    quick=QuickSettings(num_steps=60, learning_rate=0.01, chunk_size=30),
))
_add(dataclasses.replace(
    TASKS["activation_maximization"],
    name="activation_maximization_fc8",
    title="Activation maximisation (AlexNet fc8, class 'black swan')",
    fit=dataclasses.replace(TASKS["activation_maximization"].fit, learning_rate=0.01),
    layer="fc8",
    unit=100,
    # The original's matcher drives an fc unit towards 300 (|300 - a|), not to +infinity.
    unit_mode="match",
))
_SR_PRIOR_SOURCES = (DataSource("dip:sr/zebra_crop.png"), DataSource("sample:astronaut"))
_add(TaskConfig(
    name="sr_prior_none",
    title="SR x4 prior effect: no prior (optimise the pixels)",
    notebook="sr_prior_effect.ipynb (experiment 1)",
    net=PixelsConfig(3, 3),
    fit=_FIT(num_steps=2000, learning_rate=0.01, reg_noise_std=0.0),
    operator="downsample",
    sources=_SR_PRIOR_SOURCES,
    factor=4,
    baselines=True,
    quick=QuickSettings(num_steps=300, net=PixelsConfig(3, 3)),
))
_add(dataclasses.replace(
    TASKS["sr_prior_none"],
    name="sr_prior_tv",
    title="SR x4 prior effect: TV prior",
    notebook="sr_prior_effect.ipynb (experiment 2)",
    fit=dataclasses.replace(TASKS["sr_prior_none"].fit, tv_weight=1e-7),
))
_add(dataclasses.replace(
    TASKS["sr_prior_none"],
    name="sr_prior_deep",
    title="SR x4 prior effect: deep prior (skip net)",
    notebook="sr_prior_effect.ipynb (experiment 3)",
    net=nets.preset("default", num_input_channels=3),
    fit=_FIT(num_steps=2000, learning_rate=0.01, reg_noise_std=1.0 / 30.0),
    quick=QuickSettings(num_steps=300),
))
_add(TaskConfig(
    name="deblur",
    title="Deblurring (Gaussian blur; not in the original)",
    notebook="(none: added by dip_jax)",
    net=nets.preset("default"),
    fit=_FIT(num_steps=3000, learning_rate=0.01, reg_noise_std=1.0 / 30.0),
    operator="blur",
    sources=(DataSource("sample:astronaut"),),
    blur_sigma=2.0,
    in_paper=False,
    quick=QuickSettings(num_steps=300),
))
