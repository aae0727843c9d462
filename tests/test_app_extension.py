"""A task with a new operator is one file (here, this one) plus a task entry: nothing in dip_jax is edited."""

from __future__ import annotations

import dataclasses
import json
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from dip_jax import nets
from dip_jax.app import fitting, measurements, observations, runs, tasks


@dataclasses.dataclass(frozen=True)
class ToGrey:
    """`A x` = the mean of the channels: the observation is a greyscale photo of a colour scene."""

    image_like: ClassVar[bool] = True

    def apply(self, x, args):
        return jnp.mean(x, axis=-1, keepdims=True)

    def output_shape(self, image_shape, args=None):
        return (*image_shape[:3], 1)

    def validate(self, image_shape, args):
        if args is not None:
            raise ValueError("ToGrey takes no args")


@dataclasses.dataclass(frozen=True)
class Colourise(measurements.ImageMeasurement):
    kind: ClassVar[str] = "grey"

    def observe(self, task, sample, image, key):
        sample.ground_truth = image
        sample.observation = image.mean(axis=-1, keepdims=True)

    def operator_inputs(self, group, pad, observation):
        return ToGrey(), {}


def test_a_new_operator_is_one_class_and_a_task_entry(tmp_path):
    base = tasks.task("denoising").quick_variant().with_steps(2)
    task = dataclasses.replace(base, name="colourise", title="Colourisation", operator=Colourise(),
                               net=nets.narrow(base.net, width=8, scales=2))
    # An odd size: the generic padding and cropping apply to the new task too.
    (sample,) = observations.prepare_samples(jax.random.key(0), task, images=["data/chelsea_64.png"], quick=True)
    sample.observation = sample.observation[:29, :27]
    sample.ground_truth = sample.ground_truth[:29, :27]
    (result,) = fitting.fit_samples(jax.random.key(1), task, [sample])
    assert result.restored.shape == (29, 27, 3) and np.all(np.isfinite(result.restored))
    found = runs.write_run(tmp_path / "run", task, sample, result, options={"quick": True})
    assert np.isfinite(found["psnr"]) and "psnr_observation" not in found  # grey and colour do not compare
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["task"]["operator"] == {"kind": "grey"}
