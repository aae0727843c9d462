"""The tasks of the paper as data: one frozen `TaskConfig` per notebook setting.

Contract:
- `TASKS` (filled by `dip_jax.app.task_table`) maps a task name to its
  `TaskConfig`: the generator config, the `dj.FitConfig` (steps,
  learning rate, input type, regularisers), the measurement that makes the
  observation and holds the operator's settings (`operator`, an object of
  `dip_jax.app.measurements`), where its default images come from
  (`sources`, tried in order: the original's data folder, this repository's
  `data/`, built-in samples), the paper's reference numbers and the
  quick-mode settings.
- `task(name)` looks one up (ValueError listing the names otherwise);
  `TaskConfig.quick_variant()` returns the small, fast version used by
  `--quick` (tiny images, few steps, a narrow net: `QuickSettings`).
- Nothing here runs anything: `dip_jax.app.fitting` turns a task and samples
  into fits, `dip_jax.app.runs` into run folders, `dip_jax.app.cli` into a
  command.

Every task pads images to what its net needs instead of cropping them, so
no border pixel is lost.

The sr-prior task's "no prior" and "TV prior" optimise the pixels directly:
the original does it with an identity net and `OPT_OVER='input'`; here the
pixels are the parameters of a `Pixels` generator (registered with `nets`),
initialised to the same 3-channel noise input, which is the same
optimisation problem.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import dip_jax as dj
from dip_jax import nets
from dip_jax.app.observations import DEGRADATIONS

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
    `observations.data_dir`), `'data:NAME'` (this repository's `data/`),
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
    # RandomMask tasks: the fraction kept in the quick run (None: the task's).
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
    fit: dj.FitConfig
    # The measurement: how the observation is made and which operator explains it
    # (dip_jax.app.measurements), with its settings (noise sigma, factor, mask, classifier layer...).
    operator: Any
    sources: tuple[DataSource, ...] = ()
    # Channels of the images the task works on (1: greyscale, e.g. barbara).
    channels: int = 3
    paper: tuple[PaperNumber, ...] = ()
    # False for tasks dip_jax adds (deblurring).
    in_paper: bool = True
    quick: QuickSettings = QuickSettings()
    notes: str = ""

    def __post_init__(self):
        if not hasattr(self.operator, "fit_inputs"):
            raise ValueError(f"task {self.name!r}: operator must be a measurement (dip_jax.app.measurements, e.g. "
                             f"Direct(noise_sigma=25)), got {self.operator!r}")
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
    def classifier(self) -> str | None:
        """The classifier architecture the task needs (its weights are an input of the fit), else None."""
        return getattr(self.operator, "classifier", None)

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
        return dataclasses.replace(self, net=net, fit=fit, operator=self.operator.quick(q))

    def with_net(self, net, **changes) -> "TaskConfig":
        """The task with another generator; the learning rate is capped by the generator's
        `learning_rate_cap` when its config class has one (a net that is unstable at the task's rate).
        `changes`: other fields that change with the net (e.g. `channels`), set in the same step."""
        cap = getattr(net, "learning_rate_cap", None)
        fit = self.fit
        if cap is not None and fit.learning_rate > cap:
            fit = dataclasses.replace(fit, learning_rate=cap)
        return dataclasses.replace(self, net=net, fit=fit, **changes)

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
        """JSON-ready description (config.json), with the generator's and the measurement's kinds."""
        out = _jsonable(dataclasses.asdict(self))
        out["net"]["kind"] = self.net.kind
        out["operator"]["kind"] = self.operator.kind
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


TASKS: dict[str, TaskConfig] = {}


def task(name: str) -> TaskConfig:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(sorted(TASKS))}")
    return TASKS[name]


# The table of the paper's tasks fills TASKS (it needs the classes above).
from dip_jax.app import task_table as _task_table  # noqa: E402,F401
