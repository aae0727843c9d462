"""`dip-jax quality`: each addition to the paper measured against the paper's default, on the project's images.

Contract:
- `VARIANTS`: the rows, one `Variant` per addition (data: adding a row is
  one entry). A variant names a generator preset (`nets.PRESETS`), a number
  of restarts and/or a change of the task (`change(task) -> task`, e.g. a
  stopping rule or a sampler's FitConfig fields).
- `default_images(data)`: this repository's `data/` photos, and the
  original's clean images when its data folder is present (`observations.data_dir`).
- `measure(images, variants, *, size, steps, seeds, width, scales, sigma, progress)`:
  denoising at noise `sigma` (0..255 units) of a centre `size` x `size` crop
  of every image (greyscale ones as RGB), for every seed: seed s draws the
  noise of every image and the nets' initialisation, the same for every
  variant. Every image of one seed goes through one `fitting.fit_samples`
  call per variant. Returns one `Row` per variant (PSNRs per image and
  seed, seconds; `on_row(row)` is called as each is done) and, for
  variants with restarts, the ensemble numbers per image and seed
  (`ensemble.ensemble_metrics`).
- `markdown(rows, ensembles, settings)`: the tables.

The baseline is the denoising task of the paper (`tasks.task('denoising')`:
its skip net, learning rate, input noise, output averaging, backtracking);
`width` / `scales` narrow its skip net (`nets.narrow`) so a CPU can run it;
the generator rows use their presets as they are, with `TaskConfig.with_net`'s
learning-rate cap (0.001 for ConvDecoder and the attention U-Net).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np

from dip_jax import io, metrics, nets
from dip_jax.app import ensemble, fitting, observations, tasks


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row: what it changes against the paper's default, and where it comes from."""

    key: str  # what --variant names
    name: str
    source: str
    net: str | None = None  # a nets.PRESETS name; None: the baseline's skip net
    restarts: int = 1
    change: Callable | None = None  # task -> task (FitConfig fields of a stopping rule, a sampler ...)


# TV is summed over pixels (the original's tv_loss): at 64 px with sigma 25 noise, 1e-6 x TV is about a tenth
# of the data term at the noise level.
TV_WEIGHT = 1e-6


def _tv(task):
    return dataclasses.replace(task, fit=dataclasses.replace(task.fit, tv_weight=TV_WEIGHT))


def _es_wmv(task):
    # The paper's W = 100, P = 1000 suit runs of thousands of steps; a CPU-sized run scales them down.
    n = task.fit.num_steps
    return dataclasses.replace(task, fit=dataclasses.replace(
        task.fit, auto_stop=True, auto_stop_window=min(100, max(10, n // 10)),
        auto_stop_patience=min(1000, max(20, n // 5))))


def _sgld(task):
    # The reference's burn-in 7000 and a sample every 50 steps, scaled to a short run.
    n = task.fit.num_steps
    return dataclasses.replace(task, fit=dataclasses.replace(
        task.fit, sgld=True, sgld_burn_in=min(7000, n // 2), sgld_every=max(1, min(50, n // 40))))


VARIANTS: tuple[Variant, ...] = (
    Variant("default", "paper default (skip net)", "Ulyanov et al., CVPR 2018"),
    Variant("deep_decoder", "Deep Decoder", "Heckel & Hand, ICLR 2019", net="deep_decoder"),
    Variant("convdecoder", "ConvDecoder", "Darestani & Heckel 2021", net="convdecoder"),
    Variant("attention_unet", "attention U-Net", "Oktay et al. 2018 (gates on the original's UNet)",
            net="attention_unet"),
    Variant("texture_nets", "texture_nets", "the original's get_net('texture_nets')", net="texture_nets"),
    Variant("dcgan", "DCGAN decoder", "the original's models/dcgan.py", net="dcgan"),
    Variant("ensemble", "ensemble R=4", "mean of 4 restarts of the default", restarts=4),
    Variant("es_wmv", "ES-WMV auto-stop (steps = the maximum)", "Wang et al., TMLR 2023",
            change=_es_wmv),
    Variant("sgld", "SGLD posterior mean", "Cheng et al., CVPR 2019", change=_sgld),
    Variant("tv", f"DIP-TV (TV weight {TV_WEIGHT:g})", "Liu et al. 2019", change=_tv),
)


# The original's clean photos used when its data folder is present (relative to it).
DIP_DATA_IMAGES = ("denoising/F16_GT.png", "sr/zebra_GT.png", "restoration/barbara.png", "inpainting/kate.png")
# This repository's photos (data/; the masks are not photos).
PROJECT_IMAGES = ("astronaut_128.png", "camera_128.png", "chelsea_64.png", "coffee_64_16bit.png",
                  "rocket_64_rgba.png")


@dataclasses.dataclass
class Row:
    variant: Variant
    steps: int
    psnr: dict  # (image, seed) -> PSNR of the restoration (dB)
    seconds: float
    params: int


def default_images(data: str | None = None) -> list[Path]:
    images = [observations.PROJECT_DATA / name for name in PROJECT_IMAGES]
    dip = observations.data_dir(data)
    if dip is not None:
        images += [dip / rel for rel in DIP_DATA_IMAGES if (dip / rel).is_file()]
    return images


def find_variants(names: Sequence[str] | None) -> list[Variant]:
    if not names:
        return list(VARIANTS)
    by_name = {v.key: v for v in VARIANTS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"--variant {unknown[0]!r} is not a row of the quality report; choose from "
                         f"{', '.join(by_name)}")
    return [by_name[n] for n in names]


def _clean_crop(path: Path, size: int) -> np.ndarray:
    image = io.load_image(path).image
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    h, w = image.shape[:2]
    if min(h, w) < size:
        raise ValueError(f"{str(path)!r} is {h}x{w}, smaller than --size {size}; use a smaller --size or leave it out")
    return observations.centre_crop(image, size, size)


def _task(variant: Variant, *, steps: int, width: int | None, scales: int | None) -> tasks.TaskConfig:
    base = tasks.task("denoising")
    net = base.net if width is None else nets.narrow(base.net, width=width, scales=scales)
    if variant.net is not None:
        net = nets.preset(variant.net, num_output_channels=3)
    task = base.with_net(net).with_steps(steps)
    return variant.change(task) if variant.change is not None else task


def measure(images: Sequence[Path], variants: Sequence[Variant], *, size: int = 64, steps: int = 300,
            seeds: int = 2, width: int | None = None, scales: int | None = None, sigma: float = 25.0,
            progress: bool = False, on_row: Callable | None = None) -> tuple[list[Row], list[dict]]:
    """Fit every variant on every image and seed (see the module docstring)."""
    clean = [(_display(p), _clean_crop(p, size)) for p in images]
    by_seed = []
    for seed in range(seeds):
        key = jax.random.fold_in(jax.random.key(seed), 1)
        by_seed.append([observations.Sample(name=name, observation=observations.add_noise(
            jax.random.fold_in(key, i), image, sigma), ground_truth=image, source=name)
            for i, (name, image) in enumerate(clean)])
    rows, ensembles = [], []
    for variant in variants:
        task = _task(variant, steps=steps, width=width, scales=scales)
        psnr, t0 = {}, time.perf_counter()
        for seed, samples in enumerate(by_seed):
            results = fitting.fit_samples(jax.random.key(seed), task, samples, restarts=variant.restarts,
                                          progress=progress)
            for sample, result in zip(samples, results):
                psnr[(sample.name, seed)] = float(metrics.psnr(result.restored, sample.ground_truth))
                if variant.restarts > 1:
                    ensembles.append({"variant": variant.name, "image": sample.name, "seed": seed,
                                      "psnr": psnr[(sample.name, seed)],
                                      **ensemble.ensemble_metrics(result.per_restart, sample.ground_truth)})
        rows.append(Row(variant, task.fit.num_steps, psnr, time.perf_counter() - t0,
                        nets.count_params(task.net, convention="dip_jax")))
        if on_row is not None:
            on_row(rows[-1])
    return rows, ensembles


def _display(path: Path) -> str:
    return path.stem


def markdown(rows: Sequence[Row], ensembles: Sequence[dict], settings: dict) -> str:
    lines = [
        "# dip_jax quality report",
        "",
        f"Denoising, noise sigma {settings['sigma']:g}, centre {settings['size']} px crops of "
        f"{settings['images']} images x {settings['seeds']} seeds; {settings['net']}. "
        "PSNR in dB against the clean crop: mean +- std over images x seeds. Seconds: all fits of the row "
        "(compiling included) on this machine.",
        "",
        "| variant | source | PSNR (dB) | vs default (dB) | steps | seconds | parameters |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    base = None
    for row in rows:
        values = np.array(list(row.psnr.values()))
        if base is None:
            base = row
        common = [k for k in row.psnr if k in base.psnr]
        delta = np.mean([row.psnr[k] - base.psnr[k] for k in common]) if common else float("nan")
        lines.append(f"| {row.variant.name} | {row.variant.source} | {values.mean():.2f} +- {values.std():.2f} "
                     f"| {delta:+.2f} | {row.steps} | {row.seconds:.0f} | {row.params:,} |")
    if ensembles:
        lines += [
            "",
            "Ensembles: the mean restoration's PSNR against the mean single-restart PSNR, and Spearman's rho "
            "between the per-pixel std over restarts and the absolute error of the mean.",
            "",
            "| variant | image | seed | ensemble PSNR | mean single-restart PSNR | gain (dB) | Spearman rho |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for e in ensembles:
            lines.append(f"| {e['variant']} | {e['image']} | {e['seed']} | {e['psnr']:.2f} "
                         f"| {e['psnr_restart_mean']:.2f} | {e['ensemble_gain_db']:+.2f} "
                         f"| {e['uncertainty_spearman']:.3f} |")
    return "\n".join(lines) + "\n"


def cmd_quality(args) -> int:
    """`dip-jax quality`: measure, print the markdown tables, and write them to --out (checked first)."""
    import sys

    from dip_jax.app.checks import FilePlan, UsageError

    variants = find_variants(args.variant)
    images = [Path(p) for p in args.image] if args.image else default_images(args.data)
    plan = FilePlan()
    for path in images:
        if not path.is_file():
            raise UsageError(f"--image {str(path)!r} does not exist; give an image file")
        plan.input(path, "--image")
    if args.out:
        out = Path(args.out)
        plan.output(out, "--out")
        plan.folder(out.parent, "--out")
        plan.check()
        if out.is_dir():
            raise UsageError(f"--out {args.out!r} is a folder; give a file name such as quality.md")
        if out.exists() and not args.overwrite:
            raise UsageError(f"--out {args.out!r} already exists; choose another file, or pass --overwrite")
    for path in images:  # unreadable or too small: one error line before anything is fitted
        _clean_crop(path, args.size)
    if args.width is None and args.scales is not None:
        raise UsageError("--scales narrows the default skip net together with --width; give --width too")
    fitting.enable_compile_cache()
    print(f"dip-jax quality: {len(variants)} variants x {len(images)} images x {args.seeds} seeds, "
          f"{args.steps} steps at {args.size} px...", file=sys.stderr, flush=True)
    rows, ensembles = measure(images, variants, size=args.size, steps=args.steps, seeds=args.seeds,
                              width=args.width, scales=args.scales, sigma=args.sigma, progress=args.progress,
                              on_row=lambda row: print(f"dip-jax quality: {row.variant.name}: "
                                                       f"{np.mean(list(row.psnr.values())):.2f} dB, "
                                                       f"{row.seconds:.0f} s", file=sys.stderr, flush=True))
    net = ("the paper's skip net" if args.width is None
           else f"the paper's skip net narrowed to width {args.width}" + (f", {args.scales} scales" if args.scales else ""))
    text = markdown(rows, ensembles, {"sigma": args.sigma, "size": args.size, "images": len(images),
                                      "seeds": args.seeds, "net": net})
    print(text, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"dip-jax quality: wrote {args.out}", file=sys.stderr)
    return 0
