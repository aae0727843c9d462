"""Ensembles of restarts: the per-pixel spread of R > 1 fits of one image, and how well it predicts the error.

Contract:
- `std_map(per_restart)`: the per-pixel, per-channel standard deviation
  across restarts, `np.std(per_restart, axis=0)` ((R, H, W, C) -> (H, W, C),
  float32; zero where every restart agrees). The mean restoration is
  `per_restart.mean(axis=0)` (`SampleResult.restored`).
- `std_image(std)`: the map as a visible greyscale image: the mean over
  channels divided by its maximum (so the most uncertain pixel is white;
  `metrics.json` records that maximum as `std_max`). An all-zero map stays
  black.
- `spearman(a, b)`: Spearman's rank correlation of two equally sized arrays
  (scipy.stats.spearmanr when scipy is installed, else ranks with ties
  averaged and Pearson's r of the ranks: the same number).
- `ensemble_metrics(per_restart, ground_truth)`: for metrics.json:
  `psnr_restart_mean` (the mean single-restart PSNR), `ensemble_gain_db`
  (the mean's PSNR minus that), `uncertainty_spearman` (rho between the std
  map's values and the absolute error of the mean, pixel by pixel and
  channel by channel) and `std_mean` / `std_max`.
- `save_std(png, npy, std)`: writes both files (raw float32 values in the
  `.npy`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dip_jax import io, metrics


def std_map(per_restart: np.ndarray) -> np.ndarray:
    per_restart = np.asarray(per_restart, np.float32)
    if per_restart.ndim != 4:
        raise ValueError(f"per_restart must be (R, H, W, C), got shape {per_restart.shape}")
    # In float64: restarts that agree exactly give exactly 0 (a float32 mean of equal values may not).
    return np.std(per_restart.astype(np.float64), axis=0).astype(np.float32)


def std_image(std: np.ndarray) -> np.ndarray:
    grey = np.asarray(std, np.float32).mean(axis=-1, keepdims=True)
    top = float(grey.max())
    return grey / top if top > 0 else np.zeros_like(grey)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy's rankdata)."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Start index of each run of equal values, and each value's run.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    run = np.cumsum(np.r_[True, sorted_x[1:] != sorted_x[:-1]]) - 1
    ends = np.r_[starts[1:], x.size]
    average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(x.size, np.float64)
    ranks[order] = average[run]
    return ranks


def spearman(a, b) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.size != b.size or a.size < 2:
        raise ValueError(f"spearman needs two arrays of the same size >= 2, got {a.size} and {b.size} values")
    try:
        from scipy import stats
    except ImportError:
        ra, rb = _ranks(a) - (a.size + 1) / 2.0, _ranks(b) - (b.size + 1) / 2.0
        denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
        return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")
    return float(stats.spearmanr(a, b).statistic)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(metrics.psnr(np.asarray(a), np.asarray(b)))


def ensemble_metrics(per_restart: np.ndarray, ground_truth: np.ndarray | None) -> dict:
    """metrics.json entries of an R > 1 ensemble (see the module docstring); {} for one restart."""
    per_restart = np.asarray(per_restart, np.float32)
    if per_restart.shape[0] < 2:
        return {}
    std = std_map(per_restart)
    out = {"std_mean": float(std.mean()), "std_max": float(std.mean(axis=-1).max())}
    if ground_truth is None or ground_truth.shape != per_restart.shape[1:]:
        return out
    mean = per_restart.mean(axis=0)
    single = [_psnr(r, ground_truth) for r in per_restart]
    out["psnr_restart_mean"] = float(np.mean(single))
    out["ensemble_gain_db"] = _psnr(mean, ground_truth) - out["psnr_restart_mean"]
    out["uncertainty_spearman"] = spearman(std, np.abs(mean - ground_truth))
    return out


def save_std(png: Path, npy: Path, std: np.ndarray) -> None:
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    io.save_image(png, std_image(std))
    np.save(npy, np.asarray(std, np.float32))
