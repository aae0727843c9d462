"""ES-WMV on the paper's denoising (sigma 25, 128 px): the auto-stopped PSNR against the best PSNR seen
at any step, and the steps saved (issue 15 item 1). CPU-sized: the --quick (narrow) denoising net.

One batched fit per run with the ES-WMV transform in it but a patience longer than the run, so the
whole trajectory is recorded (its per-step windowed variance `es_variance` and PSNR `psnr_gt`); the
stop for each patience P is then the transform's rule applied to that record (the first step at which
P consecutive full-window steps brought no new variance minimum; the result is the output at the
minimum). `tests/test_stopping.py` checks that a fit that really stops equals this.

    python benchmarks/auto_stop.py --steps 1200 --window 50 --patience 200 400
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

import dip_jax as dj
from dip_jax import io
from dip_jax.app import tasks

DATA = Path(__file__).resolve().parent.parent / "data"
SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "dip_data" / "denoising" / "F16_GT.png"


def images(size: int) -> dict[str, np.ndarray]:
    out = {"astronaut_128": io.load_image(DATA / "astronaut_128.png").image,
           "camera_128": io.load_image(DATA / "camera_128.png").image}
    if SHARED.exists():  # the paper's F16, centre crop (not committed)
        f16 = io.load_image(SHARED).image
        top, left = (f16.shape[0] - size) // 2, (f16.shape[1] - size) // 2
        out["F16_crop"] = f16[top:top + size, left:left + size]
    return {k: (np.repeat(v, 3, axis=-1) if v.shape[-1] == 1 else v[..., :3]).astype(np.float32)
            for k, v in out.items()}


def stop_of(variance: np.ndarray, patience: int) -> tuple[int, int]:
    """(stop step, result step), 1-based, of ES-WMV's rule on one item's recorded variance (-1: no stop)."""
    best, best_step, wait = np.inf, -1, 0
    for t, v in enumerate(variance, start=1):
        if np.isnan(v):
            continue
        if v < best:
            best, best_step, wait = v, t, 0
        else:
            wait += 1
            if wait >= patience:
                return t, best_step
    return -1, best_step


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--patience", type=int, nargs="+", default=[200, 400])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)
    task = tasks.task("denoising").quick_variant()
    cfg = dataclasses.replace(task.fit, num_steps=args.steps, chunk_size=100, auto_stop=True,
                              auto_stop_window=args.window, auto_stop_patience=args.steps + 1)
    clean = images(128)
    names, ys, gts, keys = [], [], [], []
    for name, gt in clean.items():
        for seed in range(args.seeds):
            noisy = np.clip(gt + np.random.default_rng(seed).normal(0, 25 / 255, gt.shape), 0, 1).astype(np.float32)
            names.append(f"{name} seed {seed}")
            ys.append(noisy)
            gts.append(gt)
            keys.append(jax.random.key(seed))
    t0 = time.time()
    result = dj.fit(jax.numpy.stack(keys), task.net, cfg, np.stack(ys), ground_truth=np.stack(gts))
    seconds = time.time() - t0
    var = result.history["es_variance"][:, :, 0]
    psnr = result.history["psnr_gt"][:, :, 0]
    rows = []
    for P in args.patience:
        for i, name in enumerate(names):
            stop, at = stop_of(var[:, i], P)
            rows.append({"patience": P, "fit": name, "stop_step": stop, "result_step": at,
                         "psnr_auto": float(psnr[at - 1, i]), "psnr_best": float(np.nanmax(psnr[:, i])),
                         "best_step": int(np.nanargmax(psnr[:, i]) + 1), "psnr_last": float(psnr[-1, i])})
    print(f"{len(names)} fits, {args.steps} steps, window {args.window}, {seconds:.0f} s")
    for P in args.patience:
        sel = [r for r in rows if r["patience"] == P]
        gaps = [r["psnr_best"] - r["psnr_auto"] for r in sel]
        stops = [r["stop_step"] if r["stop_step"] > 0 else args.steps for r in sel]
        for r in sel:
            print(f"P={P} {r['fit']}: stop {r['stop_step']} (result step {r['result_step']}) "
                  f"{r['psnr_auto']:.2f} dB; best {r['psnr_best']:.2f} dB at step {r['best_step']}; "
                  f"last {r['psnr_last']:.2f} dB")
        print(f"P={P}: median gap {np.median(gaps):.2f} dB (max {np.max(gaps):.2f}); steps run {np.mean(stops):.0f} "
              f"on average of {args.steps} ({100 * (1 - np.mean(stops) / args.steps):.0f}% saved)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "seconds": seconds, "window": args.window,
                                               "steps": args.steps}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
