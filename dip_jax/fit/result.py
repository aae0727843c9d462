"""`FitResult`, what `fit` returns, and how it is read off the final (placed) state."""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

from dip_jax.fit.problem import Problem, readout_fn
from dip_jax.fit.step import FitState, stop_flag
from dip_jax.runtime.loop import Placed


class FitResult(NamedTuple):
    """What `fit` returns. Arrays are numpy; per-item values are shaped (N, R, ...).

    `output`: f(z) at the end (the last finite state's when divergence left
    the final one non-finite); `output_avg`: the running average (when
    `ema_decay` is set); `best_output`/`best_psnr`: the output with the best
    ground-truth PSNR seen (when a ground truth was given); `num_rollbacks`:
    divergence rollbacks per item; `num_backtracks`: backtracking restores per
    item; `steps`: steps done in total (resumed runs included);
    `resumed_from`: the checkpoint's step this call continued from (None: it
    started at step 0), so `steps - (resumed_from or 0)` were run by this call.
    With a stopping rule (a transform whose state has a `stopped` field, e.g.
    `dip_jax.fit.stopping.es_wmv`): `stop_step` is the step at which each item
    stopped (-1: it ran all `num_steps`). Where a transform's state carries a
    `result` (`result_avg`), that image is `output` (`output_avg`): ES-WMV's
    output at the variance minimum, SGLD's posterior mean.
    """

    output: np.ndarray
    output_avg: np.ndarray | None
    history: dict
    state: FitState
    problem: Problem
    seconds: float
    num_rollbacks: np.ndarray | None = None
    num_backtracks: np.ndarray | None = None
    best_output: np.ndarray | None = None
    best_psnr: np.ndarray | None = None
    steps: int = 0
    resumed_from: int | None = None
    stop_step: np.ndarray | None = None

    @property
    def restored(self) -> np.ndarray:
        """(N, H, W, C): the averaged output if averaging is on, mean over restarts."""
        out = self.output_avg if self.output_avg is not None else self.output
        return out.mean(axis=1)




def fit_result(problem: Problem, placed: Placed, restarts: int, t0: float,
            resumed_from: int | None = None) -> FitResult:
    placement, state_d = placed.placement, placed.state
    b = placement.batch_size
    n = b // restarts
    out, avg = readout_fn(problem, placement.mesh)(state_d, placed.data)
    per_item = lambda a: np.asarray(a)[:b].reshape((n, restarts) + np.shape(a)[1:])  # noqa: E731
    output_avg = best_output = best_psnr = None
    if problem.fit_config.ema_decay is not None:
        output_avg = per_item(np.asarray(avg)[:, 0])
    if state_d.best_out is not None:
        best_output = per_item(np.asarray(state_d.best_out)[:, 0])
        best_psnr = per_item(state_d.best_psnr)
    history = {k: v.reshape((v.shape[0], n, restarts)) for k, v in placed.history.items()}
    output = per_item(np.asarray(out)[:, 0])
    stop_step = None
    flag = stop_flag(state_d)
    if flag is not None:
        stop_step = per_item(np.where(np.asarray(flag), np.asarray(state_d.step), -1))
    for s in state_d.transforms.values():
        # A transform's own result (ES-WMV's output at the variance minimum, SGLD's posterior mean).
        if hasattr(s, "_fields") and "result" in s._fields:
            output = per_item(np.asarray(s.result)[:, 0])
            if output_avg is not None:  # `restored` prefers the average: it must be the result too
                output_avg = per_item(np.asarray(getattr(s, "result_avg", s.result))[:, 0])
    steps = int(np.max(np.asarray(state_d.step)[:b])) if b else 0
    if flag is not None and placed.history:
        steps = int(next(iter(placed.history.values())).shape[0])
    return FitResult(
        output=output,
        output_avg=output_avg,
        history=history,
        state=placement.take(state_d),
        problem=problem,
        seconds=time.perf_counter() - t0,
        num_rollbacks=per_item(state_d.num_rollbacks),
        num_backtracks=per_item(state_d.num_backtracks),
        best_output=best_output,
        best_psnr=best_psnr,
        steps=steps,
        resumed_from=resumed_from,
        stop_step=stop_step,
    )
