"""Run folders, figures, metrics.json and the report of run folders.

Contract:
- `sample_metrics(task, sample, result)`: the numbers of metrics.json (PSNRs
  in dB against the ground truth where there is one; the measurement adds
  its own, e.g. PSNR-Y and the bicubic baselines for super-resolution).
- `write_run(run_dir, task, sample, result, *, options)` writes a run folder:
  `result.png` (the restored image: averaged output if the task averages,
  mean over restarts), `observation.png`, `ground_truth.png` and `mask.png`
  where they exist, `restart_K.png` for R > 1 restarts, `baseline_NAME.png`
  (super-resolution), `std.png` / `std.npy` for R > 1 (the per-pixel
  standard deviation across restarts, `ensemble.std_image` / raw values),
  `comparison.png` (observation / result / ground
  truth side by side), `psnr.png` (PSNR per step; the loss when there is no
  ground truth), `config.json`, `metrics.json` and `history.npz`.
- `report(run_dirs) -> str`: a markdown table of every run found under the
  given folders, next to the paper's numbers (`TaskConfig.paper`); the one
  report of `dip-jax report` and `experiments/report.py`.

The per-step PSNR curves are computed on the padded frame while the final
numbers in metrics.json are on the image itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from dip_jax import io, metrics
from dip_jax.app import ensemble, tasks


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(metrics.psnr(jnp.asarray(a), jnp.asarray(b)))


def _final_loss(loss: np.ndarray) -> float:
    # Stopped restarts record NaN after their stop: each restart's last finite loss.
    last = [col[np.isfinite(col)][-1] if np.isfinite(col).any() else np.nan for col in np.asarray(loss).T]
    return float(np.nanmean(last)) if np.isfinite(last).any() else float("nan")


def sample_metrics(task: tasks.TaskConfig, sample, result) -> dict:
    """The numbers of metrics.json for one sample (PSNRs in dB)."""
    out: dict[str, Any] = {
        "task": task.name,
        "image": sample.name,
        "source": sample.source,
        "steps": int(task.fit.num_steps),
        "restarts": int(result.per_restart.shape[0]),
        "images_in_call": result.images_in_call,
        "seconds": round(result.seconds, 3),
        "final_loss": _final_loss(result.history["loss"]),
        "num_backtracks": [int(b) for b in result.num_backtracks],
    }
    if result.num_rollbacks is not None:
        out["num_rollbacks"] = [int(b) for b in result.num_rollbacks]
    if getattr(result, "stop_step", None) is not None:
        # --auto-stop: the step each restart stopped at (-1: it ran all `steps`).
        out["stop_step"] = [int(s) for s in result.stop_step]
    gt = sample.ground_truth
    if gt is not None:
        out["psnr"] = _psnr(result.restored, gt)
        out["psnr_restarts"] = [_psnr(r, gt) for r in result.per_restart]
        if task.fit.ema_decay is not None:
            out["psnr_last_output"] = _psnr(result.outputs.mean(axis=0), gt)
        if min(gt.shape[:2]) >= 11:
            out["ssim"] = float(metrics.ssim(jnp.asarray(result.restored), jnp.asarray(gt)))
    out.update(task.operator.sample_metrics(task, sample, result))
    # R > 1: the mean single-restart PSNR next to the ensemble's, and how well the spread predicts the error.
    out.update(ensemble.ensemble_metrics(result.per_restart, gt))
    return out


def _figure_panel(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-upsample (observation at low resolution) to the display size, RGB."""
    h, w = size
    if image.shape[:2] != (h, w):
        ys = (np.arange(h) * image.shape[0] // h)
        xs = (np.arange(w) * image.shape[1] // w)
        image = image[ys][:, xs]
    image = np.clip(image, 0, 1)
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def save_comparison(path: Path, panels: Sequence[tuple[str, np.ndarray]], title: str = "") -> None:
    """A side-by-side figure of (label, image) panels (matplotlib, Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = max(p[1].shape[0] for p in panels), max(p[1].shape[1] for p in panels)
    fig = Figure(figsize=(3.2 * len(panels), 3.2 * h / w + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    for i, (label, image) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(_figure_panel(image, (h, w)), interpolation="nearest", vmin=0, vmax=1)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def save_history_plot(path: Path, history: dict, title: str = "") -> None:
    """PSNR per step (vs the ground truth, and vs the observation); the loss when there is no PSNR."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    labels = {"psnr_gt": "output vs ground truth", "psnr_gt_avg": "averaged output vs ground truth",
              "psnr_fit": "A(output) vs observation"}
    plotted = False
    for key, label in labels.items():
        values = history.get(key)
        if values is None or not np.isfinite(values).any():
            continue
        steps = np.arange(1, values.shape[0] + 1)
        for r in range(values.shape[1]):
            ax.plot(steps, values[:, r], label=label if r == 0 else None, lw=1)
        plotted = True
    if plotted:
        ax.set_ylabel("PSNR (dB)")
    else:
        values = history["loss"]
        steps = np.arange(1, values.shape[0] + 1)
        for r in range(values.shape[1]):
            ax.plot(steps, values[:, r], lw=1, label="loss" if r == 0 else None)
        ax.set_ylabel("loss")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def write_run(
    run_dir, task: tasks.TaskConfig, sample, result, *, options: dict | None = None
) -> dict:
    """Write one run folder (see the module docstring); returns its metrics."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    io.save_image(run_dir / "result.png", result.restored)
    panels: list[tuple[str, np.ndarray]] = []
    if sample.observation is not None and task.operator.shows_observation:
        io.save_image(run_dir / "observation.png", sample.observation)
        panels.append(("observation", sample.observation))
    if sample.mask is not None:
        io.save_image(run_dir / "mask.png", sample.mask)
    if sample.reference is not None:
        io.save_image(run_dir / "target.png", sample.reference)
        panels.append(("target", sample.reference))
    panels.append(("result", result.restored))
    if result.per_restart.shape[0] > 1:
        for r, image in enumerate(result.per_restart):
            io.save_image(run_dir / f"restart_{r}.png", image)
        ensemble.save_std(run_dir / "std.png", run_dir / "std.npy", result.std)
        panels.append(("std over restarts (/ max)", ensemble.std_image(result.std)))
    for name, image in sample.baselines.items():
        io.save_image(run_dir / f"baseline_{name}.png", image)
    if "bicubic" in sample.baselines:
        panels.append(("bicubic", sample.baselines["bicubic"]))
    if sample.ground_truth is not None:
        io.save_image(run_dir / "ground_truth.png", sample.ground_truth)
        panels.append(("ground truth", sample.ground_truth))
    found = sample_metrics(task, sample, result)
    found["options"] = dict(options or {})
    title = f"{task.title} - {sample.name}"
    if "psnr" in found:
        title += f"  (PSNR {found['psnr']:.2f} dB)"
    save_comparison(run_dir / "comparison.png", panels, title)
    save_history_plot(run_dir / "psnr.png", result.history, task.title)
    np.savez_compressed(run_dir / "history.npz", **result.history)
    config = {"task": task.to_dict(), "options": dict(options or {})}
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (run_dir / "metrics.json").write_text(json.dumps(found, indent=2) + "\n")
    return found


# --------------------------------------------------------------------------- report


def find_runs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Every folder with a metrics.json at or under the given paths, sorted."""
    runs: set[Path] = set()
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise ValueError(f"{str(p)!r} does not exist; give run folders (or folders that contain them)")
        if (p / "metrics.json").is_file():
            runs.add(p)
        runs.update(m.parent for m in p.rglob("metrics.json"))
    return sorted(runs)


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


_REPORT_FIELDS = ("task", "image", "steps", "restarts")


def _read_metrics(path: Path) -> dict:
    """A run's metrics.json, or a ValueError that names the file and what is wrong with it."""
    try:
        m = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read {str(path)!r} ({err}); check the file or leave its folder out") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(path)!r} is not valid JSON ({err}); the run may not have finished: re-run it "
                         "or leave its folder out") from None
    if not isinstance(m, dict):
        raise ValueError(f"{str(path)!r} does not hold a metrics object; re-run it or leave its folder out")
    missing = [k for k in _REPORT_FIELDS if k not in m]
    if missing:
        raise ValueError(f"{str(path)!r} has no {', '.join(missing)} field(s); it was not written by a dip_jax run "
                         "(or was edited): re-run it or leave its folder out")
    return m


def report(run_dirs: Sequence[str | os.PathLike]) -> str:
    """A markdown report of the runs under `run_dirs`, with the paper's numbers for comparison."""
    runs = find_runs(run_dirs)
    if not runs:
        raise ValueError("no run folders (with a metrics.json) found under " + ", ".join(map(str, run_dirs)))
    rows, seen_tasks = [], []
    for run in runs:
        m = _read_metrics(run / "metrics.json")
        quick = bool(m.get("options", {}).get("quick"))
        baseline = m.get("psnr_observation")
        baseline_label = "observation"
        if "baselines" in m:
            baseline = m["baselines"].get("bicubic", {}).get("psnr")
            baseline_label = "bicubic"
        rows.append(
            f"| {m['task']}{' (quick)' if quick else ''} | {m['image']} | {m['steps']} | {m['restarts']} "
            f"| {_fmt(m.get('psnr'))} | {_fmt(m.get('psnr_y'))} "
            f"| {_fmt(baseline)}{'' if baseline is None else f' ({baseline_label})'} "
            f"| {_fmt(m.get('ssim'), 3)} | {m.get('seconds', 0):.1f} |"
        )
        if m["task"] not in seen_tasks:
            seen_tasks.append(m["task"])
    lines = [
        "# dip_jax experiment report",
        "",
        "PSNR in dB against the ground truth (where there is one); PSNR-Y is the super-resolution protocol "
        "(BT.601 luma, 4 px border). The baseline column is the observation itself, or bicubic upsampling "
        "for super-resolution. Quick runs use tiny images, few steps and narrow nets: they check the "
        "pipeline, not the quality.",
        "",
        "| task | image | steps | restarts | PSNR | PSNR-Y | baseline | SSIM | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ]
    paper_lines = []
    for name in seen_tasks:
        if name in tasks.TASKS and tasks.TASKS[name].paper:
            for number in tasks.TASKS[name].paper:
                paper_lines.append(f"| {name} | {number.label} | {number.psnr:.2f} |")
    if paper_lines:
        lines += [
            "",
            "## The paper's numbers",
            "",
            "Dataset means on full-size images (GPU runs), from the paper; compare full runs on the same "
            "data, not single images or quick runs.",
            "",
            "| task | reference | PSNR |",
            "| --- | --- | --- |",
            *paper_lines,
        ]
    return "\n".join(lines) + "\n"
