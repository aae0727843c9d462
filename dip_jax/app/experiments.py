"""The paper's experiments: which tasks each `experiments/NAME.py` script (and `dip-jax experiment NAME`) runs.

`EXPERIMENTS[name] = (variants, default variant)`, a variant naming one task
or several run in turn. `run(args, task_names)` fits each task's default (or
given) inputs and writes one run folder per image, OUT/TASK/IMAGE/, with a
summary line each. `run_all(args, run_one)` runs the `ALL_RUNS` entries (or
`--only` ones) one after another, writes OUT/run_all.json and OUT/report.md.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np

from dip_jax.runtime import checkpoint as checkpoint_lib
import dip_jax as dj
from dip_jax import io
from dip_jax.app import fitting, observations, runs, tasks
from dip_jax.app.commands import fit_options

EXPERIMENTS: dict[str, tuple[dict, str]] = {
    "denoising": ({"sigma25": "denoising", "sigma50": "denoising_sigma50", "real": "denoising_real"}, "sigma25"),
    "jpeg": ({"snail": "jpeg"}, "snail"),
    "super_resolution": ({"x4": "sr_x4", "x8": "sr_x8"}, "x4"),
    # Joint denoising + super-resolution (not in the paper): noise sigma 25 on the low-resolution image.
    "sr_noisy": ({"x4": "sr_x4_noisy", "x8": "sr_x8_noisy"}, "x4"),
    "text_inpainting": ({"kate": "text_inpainting"}, "kate"),
    "large_hole": ({"vase": "large_hole_vase", "library": "large_hole_library",
                    "library_unet": "large_hole_library_unet", "library_resnet": "large_hole_library_resnet"},
                   "vase"),
    "restoration": ({"50": "restoration_50", "98": "restoration_98"}, "50"),
    "flash_no_flash": ({"cave": "flash_no_flash"}, "cave"),
    "feature_inversion": ({"alexnet_fc6": "feature_inversion"}, "alexnet_fc6"),
    "activation_maximization": ({"conv4": "activation_maximization", "fc8": "activation_maximization_fc8"},
                                "conv4"),
    "sr_prior": ({"all": ("sr_prior_none", "sr_prior_tv", "sr_prior_deep"), "none": "sr_prior_none",
                  "tv": "sr_prior_tv", "deep": "sr_prior_deep"}, "all"),
}

# Every experiment of the paper, as NAME or NAME:VARIANT (`dip-jax run-all`, experiments/run_all.py).
ALL_RUNS = (
    "denoising:sigma25", "denoising:sigma50", "denoising:real", "jpeg", "super_resolution:x4",
    "super_resolution:x8", "text_inpainting", "large_hole:vase", "large_hole:library", "large_hole:library_unet",
    "large_hole:library_resnet", "restoration:50", "restoration:98", "flash_no_flash", "feature_inversion",
    "activation_maximization:conv4", "activation_maximization:fc8", "sr_prior:all",
)
NEEDS_WEIGHTS = ("feature_inversion", "activation_maximization")


def run_all(args, run_one: Callable[[str, Sequence[str]], int], prog: str) -> int:
    """Run the selected entries with `run_one(name, argv)`; 0 when none failed (skipped ones do not count)."""
    selected = args.only or list(ALL_RUNS)
    for entry in selected:
        name, _, variant = entry.partition(":")
        if name not in EXPERIMENTS or (variant and variant not in EXPERIMENTS[name][0]):
            raise ValueError(f"--only {entry!r} names no experiment; choose from {', '.join(ALL_RUNS)}")
    summary = {}
    out = Path(args.out)
    for entry in selected:
        name, _, variant = entry.partition(":")
        argv = ["--out", str(out), "--seed", str(args.seed), "--restarts", str(args.restarts), "--no-progress"]
        if variant:
            argv += ["--variant", variant]
        if args.quick:
            argv.append("--quick")
        if args.data:
            argv += ["--data", args.data]
        if name in NEEDS_WEIGHTS:
            if args.weights:
                argv += ["--weights", args.weights]
            elif not args.quick:
                summary[entry] = {"status": "skipped", "reason": "needs --weights"}
                print(f"{prog}: {entry}: skipped (needs --weights)", flush=True)
                continue
        t0 = time.perf_counter()
        try:
            code = run_one(name, argv)
            status = {"status": "ok" if code == 0 else "failed", "exit_code": code}
        except Exception:  # keep going: one broken experiment must not hide the others
            status = {"status": "failed", "error": traceback.format_exc()}
        status["seconds"] = round(time.perf_counter() - t0, 1)
        summary[entry] = status
        print(f"{prog}: {entry}: {status['status']} ({status['seconds']} s)", flush=True)
        if "error" in status:
            print(status["error"], file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run_all.json").write_text(json.dumps(summary, indent=2) + "\n")
    try:
        (out / "report.md").write_text(runs.report([out]))
    except ValueError as err:
        print(f"{prog}: no report: {err}", file=sys.stderr)
    return 0 if all(s["status"] != "failed" for s in summary.values()) else 1


def run(args, task_names) -> int:
    """Run `task_names` (one name or several) as the parsed experiment options `args` say; exit status 0."""
    if args.restarts < 1:
        raise ValueError(f"--restarts must be >= 1, got {args.restarts}")
    checkpoint_every = getattr(args, "checkpoint_every", None)
    resume, overwrite = getattr(args, "resume", False), getattr(args, "overwrite", False)
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be a positive number of steps, got {checkpoint_every}")
    if resume and overwrite:
        raise ValueError("--resume continues the checkpoints and --overwrite deletes them; pass one of them")
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    key = jax.random.key(args.seed)
    out_root = Path(args.out)
    io.check_writable_folder(out_root, what=f"--out {args.out!r}")  # before any data is made or fitted
    names = (task_names,) if isinstance(task_names, str) else tuple(task_names)
    with tempfile.TemporaryDirectory(prefix="dip_jax_") as tmp:
        for t, name in enumerate(names):
            task = tasks.task(name)
            if args.quick:
                task = task.quick_variant()
            task = fit_options(task.with_steps(args.steps, args.lr), args)
            k_data, k_fit = jax.random.split(jax.random.fold_in(key, t))
            samples = observations.prepare_samples(k_data, task, images=args.image, masks=args.mask, guides=args.guide,
                                      units=args.unit, data=args.data, quick=args.quick)
            classifier, weights_note = None, None
            if task.classifier is not None:
                model, params, weights_note = fitting.classifier_for(task, args.weights, quick=args.quick, workdir=Path(tmp))
                classifier = (model, params)
            checkpoint = None
            task_dir = out_root / task.name
            if checkpoint_every is not None or resume or (overwrite and task_dir.is_dir()):
                # Only the checkpoints are guarded here (an unfinished run needs --resume or --overwrite):
                # the finished runs live one level down, TASK/IMAGE/metrics.json, and are rewritten as before.
                checkpoint_lib.prepare_output_dir(task_dir, overwrite=overwrite, resume=resume,
                                                  marker="no-finished-marker-at-this-level")
            if checkpoint_every is not None or resume:
                checkpoint = fitting.CheckpointOptions(task_dir, every=checkpoint_every, resume=resume)
            fitting.enable_compile_cache()
            t0 = time.perf_counter()
            try:
                from dip_jax.app.commands import announce_fresh_start

                with announce_fresh_start(f"experiment {task.name}"):  # 'starting fresh' as one line
                    results = fitting.fit_samples(k_fit, task, samples, restarts=args.restarts, progress=progress,
                                                  classifier=classifier, checkpoint=checkpoint,
                                                  handle_signals=True if checkpoint is not None else None)
            except dj.Interrupted as stop:
                options = {"quick": args.quick, "seed": args.seed, "restarts": args.restarts,
                           "backend": jax.default_backend(), "weights": weights_note}
                for sample, result, partial in zip(samples, stop.results, stop.partial):
                    run_dir = out_root / task.name / sample.name
                    if result is not None and not partial:
                        runs.write_run(run_dir, task, sample, result, options=options)
                    elif result is not None and np.all(np.isfinite(result.restored)):
                        run_dir.mkdir(parents=True, exist_ok=True)
                        io.save_image(run_dir / "result.partial.png", result.restored)
                raise
            options = {"quick": args.quick, "seed": args.seed, "restarts": args.restarts,
                       "backend": jax.default_backend(), "weights": weights_note,
                       "wall_seconds": round(time.perf_counter() - t0, 3)}
            for sample, result in zip(samples, results):
                run_dir = out_root / task.name / sample.name
                found = runs.write_run(run_dir, task, sample, result, options=options)
                print(_summary_line(task, found, run_dir))
    return 0


def _summary_line(task, found: dict, run_dir: Path) -> str:
    parts = [f"{task.name}/{found['image']}: {found['steps']} steps"]
    if "psnr" in found:
        parts.append(f"PSNR {found['psnr']:.2f} dB")
    if "psnr_observation" in found:
        parts.append(f"(observation {found['psnr_observation']:.2f} dB)")
    if "baselines" in found:
        parts.append(f"(bicubic {found['baselines']['bicubic']['psnr']:.2f} dB)")
    if "psnr" not in found:
        parts.append(f"loss {found['final_loss']:.4g}")
    parts.append(f"-> {run_dir}")
    return " ".join(parts)
