"""What a fit computes versus how it is run: `FitConfig`, one source of truth.

Contract: every field of `FitConfig` either changes the numbers (it is part
of a checkpoint's fingerprint) or only how they are computed; the latter
carry `metadata={"run_only": True}`, and `RUN_ONLY_FIELDS` is derived from
that. A run-only field that never reaches compiled code also carries
`"compiled": False`, so fits differing only in it share one compiled chunk
(`compile_key`). Nothing else lists fields.
"""

from __future__ import annotations

import dataclasses

from dip_jax import inputs as inputs_lib
from dip_jax.runtime.batching import BATCH_MODES

OPT_OVER = ("net", "input", "net,input")
OPTIMIZERS = ("adam", "lbfgs")


def _run_only(default, *, compiled: bool = True):
    return dataclasses.field(default=default, metadata={"run_only": True, "compiled": compiled})


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """How to fit: the original notebook's loop settings, as data."""

    num_steps: int = _run_only(3000, compiled=False)
    learning_rate: float = 0.01
    optimizer: str = "adam"
    # L-BFGS in the original is preceded by 100 Adam steps at lr 0.001.
    lbfgs_warmup_steps: int = 100
    lbfgs_warmup_lr: float = 0.001
    opt_over: str = "net"
    reg_noise_std: float = 0.0
    # Output averaging (denoising): avg = decay * avg + (1 - decay) * out. None: off.
    ema_decay: float | None = None
    backtrack: bool = False
    backtrack_drop_db: float = 5.0
    # Faithfulness: the original's param_noise rebinds a local name and has no
    # effect. dip_jax implements what it meant (persistent N(0,1)*std(w)*scale
    # added to every 4-D conv weight each step) but leaves it off by default.
    param_noise: bool = False
    param_noise_scale: float = 1.0 / 50.0
    tv_weight: float = 0.0
    tv_beta: float = 0.5
    input_type: str = "noise"
    noise_type: str = "u"
    input_scale: float = 0.1
    # Steps per compiled chunk: where chunks start never changes the numbers.
    chunk_size: int = _run_only(100)
    batch_mode: str = _run_only("auto")
    # Under 'vmap': how many items are vmapped together (the groups then run
    # one after another). None: all of a device's items at once, or, when the
    # memory check finds they do not fit, the largest group that does (with
    # an even split). Activation memory grows with the group, not the batch.
    vmap_group_size: int | None = _run_only(None)
    # PRNG behind the weight init. Flax draws every parameter with its own
    # threefry call, which XLA's CPU backend compiles far more slowly than
    # 'rbg'. 'rbg' is deterministic on a given backend; use 'threefry2x32'
    # for bit-identical inits across backends.
    init_rng: str = "rbg"
    seed: int = 0
    # Divergence recovery (not in the original, which can silently produce NaN
    # images): see `dip_jax.fit.transforms.divergence_rollback`. Independent of
    # `backtrack`; when both fire on the same step the rollback wins.
    divergence_check: bool = True
    divergence_drop_db: float = 15.0
    divergence_lr_factor: float = 0.5
    # Automatic stopping per item (ES-WMV, Wang et al. TMLR 2023; `dip_jax.fit.stopping`):
    # num_steps becomes the maximum; window W and patience P are the paper's defaults.
    auto_stop: bool = False
    auto_stop_window: int = 100
    auto_stop_patience: int = 1000
    # SGLD (Cheng et al. CVPR 2019; `dip_jax.fit.sgld`): Langevin noise of std
    # sgld_noise_scale * learning_rate on the conv weights after each update (the
    # reference's scaling), and the posterior mean of every sgld_every-th output after
    # sgld_burn_in steps as the result (the reference's 2, 7000 and 50).
    sgld: bool = False
    sgld_noise_scale: float = 2.0
    sgld_burn_in: int = 7000
    sgld_every: int = 50
    # Refuse up front when the estimated memory exceeds what is available.
    check_memory: bool = _run_only(True, compiled=False)

    def __post_init__(self):
        if self.num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {self.num_steps}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.opt_over not in OPT_OVER:
            raise ValueError(f"opt_over must be one of {OPT_OVER}, got {self.opt_over!r}")
        if self.reg_noise_std < 0:
            raise ValueError(f"reg_noise_std must be >= 0, got {self.reg_noise_std}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {self.ema_decay}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.batch_mode not in BATCH_MODES:
            raise ValueError(f"batch_mode must be one of {BATCH_MODES}, got {self.batch_mode!r}")
        if self.vmap_group_size is not None and (
            isinstance(self.vmap_group_size, bool) or not isinstance(self.vmap_group_size, int)
            or self.vmap_group_size < 1
        ):
            raise ValueError(
                f"vmap_group_size must be None (automatic) or an integer >= 1, got {self.vmap_group_size!r}"
            )
        if self.vmap_group_size is not None and self.batch_mode == "map":
            raise ValueError(
                "vmap_group_size applies to batch_mode='vmap' (or 'auto' on GPU/TPU); 'map' fits items "
                "one at a time. Drop vmap_group_size or use batch_mode='vmap'"
            )
        if self.init_rng not in ("rbg", "threefry2x32"):
            raise ValueError(f"init_rng must be 'rbg' or 'threefry2x32', got {self.init_rng!r}")
        if self.input_type not in inputs_lib.INPUT_TYPES:
            raise ValueError(f"input_type must be one of {inputs_lib.INPUT_TYPES}, got {self.input_type!r}")
        if self.auto_stop_window < 2 or self.auto_stop_patience < 1:
            raise ValueError(
                f"auto_stop_window must be >= 2 and auto_stop_patience >= 1, got {self.auto_stop_window} and "
                f"{self.auto_stop_patience}"
            )
        if self.sgld_noise_scale < 0 or self.sgld_burn_in < 0 or self.sgld_every < 1:
            raise ValueError(
                f"sgld_noise_scale and sgld_burn_in must be >= 0 and sgld_every >= 1, got {self.sgld_noise_scale}, "
                f"{self.sgld_burn_in} and {self.sgld_every}"
            )
        if not self.divergence_drop_db > 0:
            raise ValueError(f"divergence_drop_db must be > 0 dB, got {self.divergence_drop_db}")
        if not 0.0 < self.divergence_lr_factor <= 1.0:
            raise ValueError(
                f"divergence_lr_factor must be in (0, 1], got {self.divergence_lr_factor} "
                "(0.5 halves the learning rate after each rollback; 1 keeps it)"
            )


_FIELDS = dataclasses.fields(FitConfig)
# Fields that do not change the numbers: left out of checkpoint fingerprints.
RUN_ONLY_FIELDS = tuple(f.name for f in _FIELDS if f.metadata.get("run_only"))
# Run-only fields that never reach compiled code: normalised out of compile keys.
NOT_COMPILED_FIELDS = tuple(f.name for f in _FIELDS if f.metadata.get("compiled", True) is False)


def compile_key(cfg: FitConfig, *, batch_mode: str, vmap_group_size: int | None) -> FitConfig:
    """`cfg` as compiled code sees it: uncompiled fields at their defaults, batching as resolved.

    A fit of 4 steps and one of 3000 (or 'auto' and the 'map' it resolves
    to) then share one compiled chunk, init and readout.
    """
    defaults = {f.name: f.default for f in _FIELDS if f.name in NOT_COMPILED_FIELDS}
    return dataclasses.replace(cfg, **defaults, batch_mode=batch_mode, vmap_group_size=vmap_group_size)
