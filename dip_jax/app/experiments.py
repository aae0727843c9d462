"""The paper's experiments: which tasks each `experiments/NAME.py` script (and `dip-jax experiment NAME`) runs.

`EXPERIMENTS[name] = (variants, default variant)`, a variant naming one task
or several run in turn. `run(args, task_names)` fits each task's default (or
given) inputs and writes one run folder per image, OUT/TASK/IMAGE/, with a
summary line each.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from dip_jax import checkpoint as checkpoint_lib
from dip_jax import engine, io
from dip_jax.app import fitting, observations, runs, tasks

EXPERIMENTS: dict[str, tuple[dict, str]] = {
    "denoising": ({"sigma25": "denoising", "sigma50": "denoising_sigma50", "real": "denoising_real"}, "sigma25"),
    "jpeg": ({"snail": "jpeg"}, "snail"),
    "super_resolution": ({"x4": "sr_x4", "x8": "sr_x8"}, "x4"),
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
            task = task.with_steps(args.steps, args.lr)
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
                results = fitting.fit_samples(k_fit, task, samples, restarts=args.restarts, progress=progress,
                                      classifier=classifier, checkpoint=checkpoint,
                                      handle_signals=True if checkpoint is not None else None)
            except engine.Interrupted as stop:
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
