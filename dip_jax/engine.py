"""The fitting engine's public names, kept here while callers move to `dip_jax.fit` and `dip_jax.runtime`.

`dip_jax.fit` holds what a fit computes (config, the core step, step
transforms, objective, `prepare` / `run` / `readout` / `fit`);
`dip_jax.runtime` how it runs (chunk loop, compile options, signals,
checkpoints, memory, batching, sharding). See their module docstrings.
"""

from dip_jax.fit.api import FitResult, fit, prepare, readout, run
from dip_jax.fit.config import OPT_OVER, OPTIMIZERS, RUN_ONLY_FIELDS, FitConfig
from dip_jax.fit.optim import FlatVectorState, make_optimizer, over_flat_vector
from dip_jax.fit.problem import FitData, Problem
from dip_jax.fit.step import FitState, GoodState, StepInfo, StepInput
from dip_jax.fit.transforms import StepTransform
from dip_jax.runtime.loop import Interrupted

__all__ = [
    "FitConfig", "FitData", "FitResult", "FitState", "FlatVectorState", "GoodState", "Interrupted", "OPTIMIZERS",
    "OPT_OVER", "Problem", "RUN_ONLY_FIELDS", "StepInfo", "StepInput", "StepTransform", "fit", "make_optimizer",
    "over_flat_vector", "prepare", "readout", "run",
]
