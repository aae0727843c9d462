"""The VGG perceptual loss (`dj.losses.Perceptual`) measured on denoising, against the task's plain MSE.

Denoising, sigma 25, centre crops of this repository's photos, the --quick (narrow) denoising net and
its settings (input noise, output averaging, backtracking), the same noise and seeds in every row:

- `mse`: the task as it is (the paper's loss);
- `mse + w * perceptual`: plus `w` times the perceptual loss between the net's output and the noisy
  observation (`Perceptual(against='reference')`, `shared['reference']` = the observation);
- `perceptual`: the perceptual loss alone as the data term.

The VGG weights: `--weights FILE` (torchvision's VGG-16 state dict as `python -m dip_jax.classifiers
convert` writes it); without it, random weights in that layout (`classifiers.random_weights_file`,
He-normal): a measurement of the loss's mechanics, not of a pretrained VGG, and the printout says so.

    python benchmarks/perceptual.py --steps 300 --size 64 --weight 0.01 0.1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import dip_jax as dj
from dip_jax import classifiers, io, metrics
from dip_jax.app import tasks

DATA = Path(__file__).resolve().parent.parent / "data"
PHOTOS = ("astronaut_128.png", "camera_128.png", "chelsea_64.png", "coffee_64_16bit.png", "rocket_64_rgba.png")


def crops(size: int) -> dict[str, np.ndarray]:
    out = {}
    for name in PHOTOS:
        image = io.load_image(DATA / name).image
        image = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
        top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
        out[name.split(".")[0]] = image[top:top + size, left:left + size].astype(np.float32)
    return out


def vgg_params(loss: dj.losses.Perceptual, weights: str | None) -> tuple[dict, str]:
    if weights is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = classifiers.random_weights_file(jax.random.key(0), loss.arch, Path(tmp) / "vgg.npz")
            _, params = classifiers.load_classifier(loss.arch, path)
        return loss.trim(params), "random He-normal weights (not a pretrained VGG)"
    _, params = classifiers.load_classifier(loss.arch, weights)
    return loss.trim(params), f"weights from {weights}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--size", type=int, default=64, help="crop size (at least 32, VGG's minimum)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--weight", type=float, nargs="+", default=[0.01, 0.1], help="regulariser weights w")
    p.add_argument("--layers", nargs="+", default=["relu1_2", "relu2_2"])
    p.add_argument("--weights", metavar="FILE", help="torchvision VGG-16 weights (default: random ones)")
    p.add_argument("--no-data-term", action="store_true", help="skip the perceptual-only row")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)
    task = tasks.task("denoising").quick_variant()
    cfg = dataclasses.replace(task.fit, num_steps=args.steps, chunk_size=min(100, args.steps))
    clean = crops(args.size)
    names, ys, gts, keys = [], [], [], []
    for name, gt in clean.items():
        for seed in range(args.seeds):
            noise = np.random.default_rng(seed).normal(0, 25 / 255, gt.shape)
            names.append(f"{name} seed {seed}")
            ys.append(np.clip(gt + noise, 0, 1).astype(np.float32))
            gts.append(gt)
            keys.append(jax.random.key(seed))
    y, gt, key = np.stack(ys), np.stack(gts), jnp.stack(keys)
    reg = dj.losses.Perceptual(arch="vgg16", layers=tuple(args.layers), against="reference", params_key="vgg")
    params, source = vgg_params(reg, args.weights)

    rows = {}

    def measure(label, calls):
        """One row: `calls` lists (items, dj.fit keyword arguments); every item is fitted once."""
        t0, psnr = time.time(), []
        for items, kwargs in calls:
            result = dj.fit(key[items], task.net, cfg, y[items], ground_truth=gt[items], **kwargs)
            psnr += [float(metrics.psnr(r, g)) for r, g in zip(result.restored, gt[items])]
        rows[label] = {"psnr": psnr, "mean": float(np.mean(psnr)), "seconds": time.time() - t0}
        print(f"{label}: {np.mean(psnr):.2f} dB ({time.time() - t0:.0f} s)", flush=True)

    every = slice(None)
    measure("mse", [(every, {})])
    # The reference is one image per fit; fit each image on its own for the regulariser rows.
    for w in args.weight:
        measure(f"mse + {w:g} * perceptual",
                [(slice(i, i + 1), {"regularisers": [(w, reg)], "shared": {"vgg": params, "reference": y[i:i + 1]}})
                 for i in range(len(names))])
    if not args.no_data_term:
        data_term = dataclasses.replace(reg, against="target", params_key=None)
        measure("perceptual", [(every, {"loss_fn": data_term, "shared": params})])
    base = np.asarray(rows["mse"]["psnr"])
    print(f"\nDenoising sigma 25, {args.size} px crops of {len(clean)} photos x {args.seeds} seed(s), "
          f"{args.steps} steps of the quick denoising net; VGG-16 {', '.join(args.layers)}: {source}.")
    print("| objective | PSNR (dB) | vs mse (dB) | better on |")
    print("| --- | --- | --- | --- |")
    for label, row in rows.items():
        diff = np.asarray(row["psnr"]) - base
        print(f"| {label} | {row['mean']:.2f} | {diff.mean():+.2f} | {int((diff > 0).sum())}/{len(diff)} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "fits": names, "weights": source,
                                               "steps": args.steps, "size": args.size}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
