"""Fit a task's samples: same-shaped samples in one engine call, results cropped back per sample.

Contract:
- `fit_samples(key, task, samples, *, restarts=1, progress=False, classifier=None, callback=None,
  checkpoint=None, handle_signals=None)` fits every sample: samples of the
  same shape go through ONE `dj.fit` call (vmapped or mapped over
  images x restarts). The task's measurement (`task.operator.fit_inputs`)
  gives the operator, the observations (padded to the net's size multiple:
  reflection, masks with 0 = unknown) and the other engine arguments.
  Returns one `SampleResult` per sample, in order. `key`: one key, or one
  per sample (then each sample's fit depends only on its own key, not on
  which samples share its call: what a multi-process batch relies on).
- `checkpoint` (a `CheckpointOptions`) checkpoints each shape group to its
  own file and resumes from it. On SIGINT/SIGTERM (`handle_signals`,
  default: when checkpointing) the engine's `dj.Interrupted` propagates
  with two more attributes: `results[i]`, sample i's `SampleResult` (final
  for groups that had finished, the state so far for the stopped group,
  `partial[i]` True; None for groups not started) and `partial`.
- `check_memory(task, samples, ...)`: the engine's memory estimate for one
  call, before anything is built.
- `classifier_for(task, weights, ...)`: the classifier a task needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

import dip_jax as dj
from dip_jax.fit.problem import Problem


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
    # --auto-stop: the step at which each restart stopped (-1: it ran all the steps), else None.
    stop_step: np.ndarray | None = None

    @property
    def std(self) -> np.ndarray:
        """(H, W, C): the per-pixel standard deviation across restarts (zeros for one restart)."""
        from dip_jax.app import ensemble

        return ensemble.std_map(self.per_restart)


def _group(samples: Sequence) -> dict[tuple, list[int]]:
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
        from dip_jax.runtime import checkpoint as checkpoint_lib

        filename = f"{self.name}.npz" if num_groups == 1 else f"{self.name}-{group}.npz"
        return checkpoint_lib.Checkpointer(self.directory, every=self.every, filename=filename)


def fit_samples(
    key,
    task,
    samples: Sequence,
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
        raise ValueError(f"checkpoint must be a fitting.CheckpointOptions or None, got {type(checkpoint).__name__}")
    results: list[SampleResult | None] = [None] * len(samples)
    partial = [False] * len(samples)
    groups = _group(samples)
    if checkpoint is not None and checkpoint.resume:
        from dip_jax.runtime import checkpoint as checkpoint_lib

        # Every group's checkpoint is checked before the first fit: a damaged one, or one past num_steps,
        # must not end the run after the earlier groups were fitted.
        for g in range(len(groups)):
            checkpoint_lib.resume_step(checkpoint.checkpointer(g, len(groups)).path, task.fit.num_steps)
    shared = None if classifier is None else classifier[1]
    for g, (_, indices) in enumerate(groups.items()):
        group = [samples[i] for i in indices]
        run_options = {"callback": callback, "handle_signals": handle_signals}
        if checkpoint is not None:
            run_options.update(checkpointer=checkpoint.checkpointer(g, len(groups)), resume=checkpoint.resume)
        inputs = task.operator.fit_inputs(task, group, shared)
        try:
            result = dj.fit(_group_keys(key, g, indices, restarts), task.net, task.fit, inputs.observation,
                            op=inputs.op,
                            restarts=restarts, progress=progress, **run_options, **inputs.kwargs)
        except dj.Interrupted as stop:
            # One exception carries everything: the engine's, with every sample's result so far.
            if stop.result is not None:
                for i, r in zip(indices, _sample_results(stop.result, len(group), restarts, inputs.window)):
                    results[i], partial[i] = r, True
            stop.results, stop.partial = results, partial
            raise
        for i, r in zip(indices, _sample_results(result, len(group), restarts, inputs.window)):
            results[i] = r
    return results  # type: ignore[return-value]


def _group_keys(key, g: int, indices: Sequence[int], restarts: int):
    """One key: group g's key (the engine splits it per item). One key per sample: each sample's R item keys
    are split from its own key alone, so its fit does not depend on which samples share its call."""
    if jax.numpy.ndim(key) == 0:
        return jax.random.fold_in(key, g)
    per_sample = key[np.asarray(indices)]
    return jax.vmap(lambda k: jax.random.split(k, restarts))(per_sample).reshape(-1)


def check_memory(task, samples: Sequence, *, restarts: int = 1, devices=None) -> None:
    """Raise `memory.InsufficientMemoryError`, before anything is built, when `fit_samples` of these
    same-shaped image samples in one call would not fit (the estimate the engine checks again itself).

    Under 'vmap' with no group size set, the engine may vmap items in small
    groups, so only the smallest such group (one item) must fit here.
    """
    from dip_jax.runtime import batching, memory, sharding

    if not task.fit.check_memory or not task.operator.image_like:
        return
    size = task.operator.net_output_size(task, samples[0].observation.shape[:2])
    batch_mode = batching.resolve_batch_mode(task.fit.batch_mode)
    devs = sharding.local_devices(devices)
    group = task.fit.vmap_group_size if batch_mode == "vmap" else None
    if batch_mode == "vmap" and group is None:
        group = 1
    problem = Problem(task.net, task.fit, None, None, None, False, batch_mode)
    estimate = memory.estimate_fit(task.net, task.fit, size, len(samples) * restarts, batch_mode=batch_mode,
                                   tx=problem.tx, num_devices=len(devs), images=len(samples), restarts=restarts,
                                   group_size=group)
    memory.check_fits(estimate, devs[0])


def _sample_results(result, n: int, restarts: int, window) -> list[SampleResult]:
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
    stops = getattr(result, "stop_step", None)
    stops = None if stops is None else np.asarray(stops)[:n].reshape(n, restarts)
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
            stop_step=None if stops is None else stops[i],
        ))
    return out


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


def classifier_for(task, weights: str | None, *, quick: bool, workdir: Path):
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


def missing_weights_message(task) -> str:
    arch = task.classifier
    return (
        f"{task.title} needs pretrained {arch} weights and dip_jax never downloads anything: pass --weights FILE, "
        f"a torchvision {arch} state dict as .safetensors or .npz. Make one on a machine with torch and "
        f"torchvision: `python -m dip_jax.classifiers convert --arch {arch} --torchvision --out {arch}.safetensors` "
        f"(or convert a .pth you have with --pth FILE). Use --quick to check the pipeline with random weights."
    )
