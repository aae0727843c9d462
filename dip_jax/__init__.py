"""dip_jax: Deep Image Prior in JAX.

The public API is small: fit a generator so that an operator of its output
matches an observation, many images and restarts at once.

    import dip_jax as dj
    result = dj.fit(key, dj.nets.preset("default"), dj.FitConfig(num_steps=1800, reg_noise_std=1 / 30,
                    ema_decay=0.99), noisy, ground_truth=clean)
    result.restored   # (N, H, W, C): the restoration of each image

`fit` takes `op=` (an operator from `dj.operators` or your own),
`regularisers=[(weight, fn)]` (e.g. `dj.losses.TotalVariation()`),
`transforms=[...]` (your own `dj.StepTransform`s), `restarts=R` and
checkpoint options; `prepare` / `run` / `readout` are its three stages for
a loop of your own. `dj.nets` holds the generators (`register` your own),
`dj.io` reads and writes image files. docs/extending.md shows an operator,
a regulariser, a generator and a step transform, each in one file.
"""

from dip_jax import io, losses, metrics, nets, operators
from dip_jax.fit.api import FitResult, fit, prepare, readout, run
from dip_jax.fit.config import FitConfig
from dip_jax.fit.transforms import StepTransform
from dip_jax.runtime.loop import Interrupted

__all__ = [
    "FitConfig",
    "FitResult",
    "Interrupted",
    "StepTransform",
    "fit",
    "io",
    "losses",
    "metrics",
    "nets",
    "operators",
    "prepare",
    "readout",
    "run",
]
