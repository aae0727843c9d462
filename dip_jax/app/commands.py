"""The `dip-jax` commands that restore one image (denoise, super-resolve, inpaint, deblur, flash), demo, report.

Each `cmd_NAME(args)` takes the parsed arguments, checks every input and
output first (`checks`), fits through `fitting.fit_samples`, writes the
result and prints one summary line; it returns the exit status (130 when
interrupted, after writing the partial result).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

import dip_jax as dj
from dip_jax import io, nets
from dip_jax.app import checks, ensemble, fitting, measurements, observations, runs, tasks
from dip_jax.app.checks import (
    FilePlan,
    UsageError,
    check_factor,
    check_noise_sigma,
    ground_truth_arg,
    load_kernel,
    partial_path,
    prepare_checkpoint_dir,
    refuse_existing,
    single_plan,
    std_outputs,
)

PROG = "dip-jax"
DEMO_SIZE = 128
DEMO_SIGMA = 25.0
DEMO_STEPS = 600


def _adapt_net(net, *, channels: int, input_channels: int | None, preset_name: str | None):
    """The task's net (or a named preset) for images with `channels` channels."""
    if preset_name is not None:
        return nets.preset(preset_name, num_output_channels=channels, num_input_channels=input_channels)
    changes = {"num_output_channels": channels}
    if input_channels is not None:
        changes["num_input_channels"] = input_channels
    if isinstance(net, tasks.PixelsConfig):
        changes["num_input_channels"] = channels
    return dataclasses.replace(net, **changes)


def configure(task: tasks.TaskConfig, args, *, channels: int, guide_channels: int | None = None,
               **changes) -> tasks.TaskConfig:
    """The task for this command line: quick variant, channels, --net, --steps, --lr and `changes`."""
    if args.quick:
        task = task.quick_variant()
    net = _adapt_net(task.net, channels=channels, input_channels=guide_channels, preset_name=args.net)
    # Net and channels change together: a task checks that they agree.
    task = task.with_net(net, channels=channels, **changes)
    return fit_options(task.with_steps(args.steps, args.lr), args)


def check_fit_options(args) -> None:
    """Up front: --auto-stop-window/--auto-stop-patience need --auto-stop, --sgld-burn-in needs --sgld."""
    for option, needs in (("auto_stop_window", "auto_stop"), ("auto_stop_patience", "auto_stop"),
                          ("sgld_burn_in", "sgld")):
        if getattr(args, option, None) is not None and not getattr(args, needs, False):
            flag, other = "--" + option.replace("_", "-"), "--" + needs.replace("_", "-")
            raise checks.UsageError(f"{flag} applies to {other}; add {other} or drop {flag}")
    if getattr(args, "auto_stop_window", None) == 1:
        raise checks.UsageError("--auto-stop-window must be >= 2 outputs (the variance of one output is 0)")


def fit_options(task: tasks.TaskConfig, args) -> tasks.TaskConfig:
    """--auto-stop (window, patience), --sgld (burn-in) and --tv-weight on the task's FitConfig."""
    check_fit_options(args)
    # Each option is the FitConfig field of its name; unset ones (None, or False for a switch) keep the task's.
    names = ("auto_stop", "auto_stop_window", "auto_stop_patience", "sgld", "sgld_burn_in", "tv_weight")
    given = {name: getattr(args, name, None) for name in names}
    changes = {name: value for name, value in given.items() if value is not None and value is not False}
    return dataclasses.replace(task, fit=dataclasses.replace(task.fit, **changes)) if changes else task


def load(path: str) -> io.LoadedImage:
    return io.load_image(path)


def _default_out(source: str, command: str) -> Path:
    suffix = {"denoise": "denoised", "super-resolve": "upscaled", "inpaint": "inpainted", "deblur": "deblurred",
              "flash": "flash_no_flash"}[command]
    return Path.cwd() / f"{Path(source).stem}_{suffix}.png"


def _resize_alpha(alpha: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if alpha.shape[:2] == size:
        return alpha
    pil = Image.fromarray(np.ascontiguousarray(alpha[..., 0], np.float32))
    resized = np.asarray(pil.resize((size[1], size[0]), Image.Resampling.BICUBIC), np.float32)
    return np.clip(resized, 0.0, 1.0)[..., None]


def save(path: Path, image: np.ndarray, loaded: io.LoadedImage) -> None:
    alpha = None if loaded.alpha is None else _resize_alpha(loaded.alpha, image.shape[:2])
    io.save_image(path, image, bit_depth=loaded.bit_depth, alpha=alpha)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    from dip_jax import metrics

    return float(metrics.psnr(a, b))



def _report_line(command: str, source: str, out: Path, task, found: dict, seconds: float,
                 resumed_from: int | None = None) -> str:
    text = f"{PROG} {command}: {source} -> {out} ({steps_note(task, resumed_from)}, {seconds:.1f} s)"
    if "psnr" in found:
        text += f"; PSNR {found['psnr']:.2f} dB"
        if "psnr_observation" in found:
            text += f" (input to the net: {found['psnr_observation']:.2f} dB)"
        if "baselines" in found:
            text += f" (bicubic: {found['baselines']['bicubic']['psnr']:.2f} dB)"
    return text + stop_note(found.get("stop_step")) + rollback_note(found.get("num_rollbacks"))


def stop_note(stop_steps) -> str:
    """'; auto-stopped at step N' (per restart), or '' without --auto-stop."""
    if stop_steps is None:
        return ""
    steps = ", ".join("not stopped" if int(s) < 0 else str(int(s)) for s in np.ravel(stop_steps))
    return f"; auto-stopped at step {steps}"


def steps_note(task, resumed_from: int | None) -> str:
    """'N steps', or for a resumed run 'N steps, resumed at step K: M run now' (the time is this run's)."""
    total = task.fit.num_steps
    if resumed_from is None:
        return f"{total} steps"
    return f"{total} steps, resumed at step {resumed_from}: {total - resumed_from} run now"


@contextlib.contextmanager
def announce_fresh_start(command: str):
    """The library's 'resume asked, no checkpoint: starting fresh' warning as one line of this command."""
    import warnings

    from dip_jax.runtime import checkpoint

    with warnings.catch_warnings():
        show = warnings.showwarning

        def showwarning(message, category, *args, **kwargs):
            if issubclass(category, checkpoint.StartingFreshWarning):
                print(f"{PROG} {command}: {message}", file=sys.stderr)
            else:
                show(message, category, *args, **kwargs)

        warnings.showwarning = showwarning
        warnings.simplefilter("always", checkpoint.StartingFreshWarning)
        yield


def rollback_note(rollbacks) -> str:
    count = 0 if rollbacks is None else int(np.sum(rollbacks))
    return f"; {count} divergence recover{'y' if count == 1 else 'ies'}" if count else ""



def checkpoint_options(args, directory: Path, *, name: str = "ckpt"):
    """The `fitting.CheckpointOptions` of this command line, None when it asks for no checkpoints."""
    if args.checkpoint_every is None and not args.resume:
        return None
    return fitting.CheckpointOptions(directory, every=args.checkpoint_every, resume=args.resume, name=name)


def write_partial(path: Path, result, loaded: io.LoadedImage | None = None) -> str:
    """Save an interrupted fit's result so far (as `loaded`'s file); a non-finite one is not written."""
    if result is None:
        return ""
    if not np.all(np.isfinite(result.restored)):
        return f"{path} not written (the fit had diverged)"
    path.parent.mkdir(parents=True, exist_ok=True)
    if loaded is None:
        io.save_image(path, result.restored)
    else:
        save(path, result.restored, loaded)
    return str(path)


def interrupted(command: str, stop, task, written: Sequence[str]) -> int:
    """Tell where the partial results and the checkpoint are and how to go on; the exit status (130)."""
    parts = [f"{PROG} {command}: interrupted after step {stop.step} of {task.fit.num_steps}"]
    written = [w for w in written if w]
    if written:
        parts.append("partial result" + ("s" if len(written) > 1 else "") + ": " + ", ".join(written))
    if stop.checkpoint_path is not None:
        parts.append(f"checkpoint: {stop.checkpoint_path}; run the same command with --resume to continue")
    else:
        parts.append("no checkpoint was written (pass --checkpoint-every N to be able to resume)")
    print("; ".join(parts), file=sys.stderr)
    return 130




def _fit_and_write(args, command: str, task, sample, loaded, *, source: str, key) -> int:
    from dip_jax.runtime import checkpoint

    out = Path(args.out) if args.out else _default_out(source, command)
    ckpt_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else out.with_name(f"{out.stem}.ckpt")
    single_plan(args, out, ckpt_dir, loaded).check()
    std_files = std_outputs(out) if args.restarts > 1 else ()
    refuse_existing([out, *std_files], args)
    if args.run_dir:
        checkpoint.prepare_output_dir(args.run_dir, overwrite=args.overwrite, resume=args.resume)
    prepare_checkpoint_dir(args, ckpt_dir)
    fitting.enable_compile_cache()
    t0 = time.perf_counter()
    try:
        with announce_fresh_start(command):
            (result,) = fitting.fit_samples(key, task, [sample], restarts=args.restarts, progress=args.progress,
                                               checkpoint=checkpoint_options(args, ckpt_dir), handle_signals=True)
    except dj.Interrupted as stop:
        return interrupted(command, stop, task, [write_partial(partial_path(out), stop.results[0], loaded)])
    seconds = time.perf_counter() - t0
    save(out, result.restored, loaded)
    if std_files:
        ensemble.save_std(*std_files, result.std)
    partial_path(out).unlink(missing_ok=True)
    found = runs.sample_metrics(task, sample, result)
    if args.run_dir:
        found = runs.write_run(args.run_dir, task, sample, result,
                                     options={"command": command, "quick": args.quick, "seed": args.seed})
    line = _report_line(command, source, out, task, found, seconds, result.resumed_from)
    if std_files:
        line += f"; std over {args.restarts} restarts: {std_files[0]} (/ its max {found['std_max']:.3g}), {std_files[1]}"
        if "psnr_restart_mean" in found:
            line += (f"; one restart {found['psnr_restart_mean']:.2f} dB on average, Spearman(std, |error|) "
                     f"{found['uncertainty_spearman']:.2f}")
    print(line)
    return 0



def split_key(args):
    import jax

    return jax.random.split(jax.random.key(args.seed))


def cmd_denoise(args) -> int:
    loaded = load(args.image)
    c = loaded.image.shape[-1]
    task = configure(tasks.task("denoising"), args, channels=c, operator=measurements.Direct())
    k_data, k_fit = split_key(args)
    observation, gt = loaded.image, ground_truth_arg(args, loaded.image.shape)
    if args.add_noise:
        gt, observation = loaded.image, observations.add_noise(k_data, loaded.image, args.add_noise)
    sample = observations.Sample(name=Path(args.image).stem, observation=observation, ground_truth=gt,
                               source=args.image)
    return _fit_and_write(args, "denoise", task, sample, loaded, source=args.image, key=k_fit)



def cmd_super_resolve(args) -> int:
    loaded = load(args.image)
    c = loaded.image.shape[-1]
    check_factor(args.factor, args.kernel_type, loaded.image.shape, simulate=args.simulate)
    check_noise_sigma(args.noise_sigma)
    # --noise-sigma: the joint denoising + super-resolution task (output averaging and backtracking on
    # top of the SR settings); with --simulate that noise is also added to the low-resolution image.
    noisy = args.noise_sigma is not None
    base = tasks.task(("sr_x8" if args.factor >= 8 else "sr_x4") + ("_noisy" if noisy else ""))
    operator = dataclasses.replace(base.operator, factor=args.factor, kernel_type=args.kernel_type,
                                   noise_sigma=args.noise_sigma if args.simulate else None)
    task = configure(base, args, channels=c, operator=operator)
    k_data, k_fit = split_key(args)
    sample = observations.Sample(name=Path(args.image).stem, observation=loaded.image, source=args.image)
    if args.simulate:
        # The measurement's own simulation: PIL Lanczos downscaling (+ noise), baselines from that observation.
        task.operator.observe(task, sample, loaded.image, k_data)
        if loaded.alpha is not None:
            hr = sample.ground_truth
            loaded = dataclasses.replace(loaded, alpha=observations.centre_crop(loaded.alpha, *hr.shape[:2]))
    else:
        h, w = loaded.image.shape[:2]
        sample.ground_truth = ground_truth_arg(args, (h * args.factor, w * args.factor, c))
    return _fit_and_write(args, "super-resolve", task, sample, loaded, source=args.image, key=k_fit)


def cmd_inpaint(args) -> int:
    from dip_jax import operators

    loaded = load(args.image)
    image = loaded.image
    c = image.shape[-1]
    k_data, k_fit = split_key(args)
    if args.mask:
        mask, grey = io.load_mask(args.mask, shape=image.shape, count_grey=True)
        if grey:
            print(f"{PROG} inpaint: note: --mask {args.mask!r} has {grey:,} grey pixels (neither black nor white); "
                  "those at half brightness or more count as known, the others as missing", file=sys.stderr)
        task = configure(tasks.task("text_inpainting"), args, channels=c)
        gt = ground_truth_arg(args, image.shape)
    else:
        # Random missing pixels: the paper's restoration setting (its 50% task).
        task = configure(tasks.task("restoration_50"), args, channels=c,
                         operator=measurements.RandomMask(keep_fraction=args.keep_fraction))
        mask = np.asarray(operators.bernoulli_mask(k_data, (1,) + image.shape[:2] + (1,), args.keep_fraction)[0])
        gt = image
    if mask.max() == 0 and args.mask:
        raise UsageError(f"--mask {args.mask!r} marks every pixel as missing (all black); white must mark known pixels")
    if mask.max() == 0:
        raise UsageError(f"--keep-fraction {args.keep_fraction:g} kept no pixel of this {image.shape[0]}x{image.shape[1]} "
                     "image; keep a larger fraction")
    sample = observations.Sample(name=Path(args.image).stem, observation=image * mask, ground_truth=gt, mask=mask,
                               source=args.image)
    # The mask is drawn (or read) here, so the fit takes it as given.
    task = dataclasses.replace(task, operator=measurements.MaskFile())
    return _fit_and_write(args, "inpaint", task, sample, loaded, source=args.image, key=k_fit)


def cmd_deblur(args) -> int:
    import jax.numpy as jnp

    from dip_jax import operators

    loaded = load(args.image)
    c = loaded.image.shape[-1]
    kernel = load_kernel(args.kernel, loaded.image.shape)
    task = configure(tasks.task("deblur"), args, channels=c)
    k_data, k_fit = split_key(args)
    observation, gt = loaded.image, ground_truth_arg(args, loaded.image.shape)
    if args.simulate:
        gt = loaded.image
        observation = np.asarray(operators.Blur(task.operator.blur_padding).apply(jnp.asarray(gt)[None], jnp.asarray(kernel))[0])
    sample = observations.Sample(name=Path(args.image).stem, observation=observation, ground_truth=gt, kernel=kernel,
                               source=args.image)
    return _fit_and_write(args, "deblur", task, sample, loaded, source=args.image, key=k_fit)


def cmd_flash(args) -> int:
    flash = load(args.flash)
    no_flash = load(args.no_flash)
    if flash.image.shape[:2] != no_flash.image.shape[:2]:
        raise UsageError(f"the flash photo is {flash.image.shape[0]}x{flash.image.shape[1]} but the no-flash photo is "
                     f"{no_flash.image.shape[0]}x{no_flash.image.shape[1]}; give an aligned pair of one size")
    c = no_flash.image.shape[-1]
    task = configure(tasks.task("flash_no_flash"), args, channels=c, guide_channels=flash.image.shape[-1])
    _, k_fit = split_key(args)
    sample = observations.Sample(name=Path(args.no_flash).stem, observation=no_flash.image, guide=flash.image,
                               ground_truth=ground_truth_arg(args, no_flash.image.shape), source=args.no_flash)
    return _fit_and_write(args, "flash", task, sample, no_flash, source=args.no_flash, key=k_fit)


def cmd_demo(args) -> int:
    import jax

    from dip_jax import sample_images
    from dip_jax.runtime import checkpoint

    size = 64 if args.quick else DEMO_SIZE
    # The centre of the photo at twice the size: a natural scale for a 128 px crop (a whole picture
    # shrunk to 128 px is mostly fine detail, which no prior tells from noise).
    clean = observations.centre_crop(sample_images.sample_image(args.image, size=2 * size), size, size)
    k_data, k_fit = jax.random.split(jax.random.key(args.seed))
    noisy = observations.add_noise(k_data, clean, DEMO_SIGMA)
    task = fit_options(demo_task(quick=args.quick, net=args.net, steps=args.steps, lr=args.lr), args)
    sample = observations.Sample(name=args.image, observation=noisy, ground_truth=clean,
                               source=f"sample:{args.image}")
    print(f"{PROG} demo: denoising the built-in '{args.image}' photo ({size}x{size}, noise sigma {DEMO_SIGMA:g}) "
          f"with {task.fit.num_steps} steps; the first run compiles the net (tens of seconds on a CPU)...")
    out = Path(args.out)
    plan = FilePlan()
    plan.folder(out, "--out")
    plan.check()
    # Checkpoints live in the run folder, so one check covers the finished run and an unfinished one.
    checkpoint.prepare_output_dir(out, overwrite=args.overwrite, resume=args.resume)
    fitting.enable_compile_cache()
    t0 = time.perf_counter()
    try:
        with announce_fresh_start("demo"):
            (result,) = fitting.fit_samples(k_fit, task, [sample], restarts=args.restarts,
                                               progress=args.progress, checkpoint=checkpoint_options(args, out),
                                               handle_signals=True)
    except dj.Interrupted as stop:
        return interrupted("demo", stop, task, [write_partial(out / "restored.partial.png", stop.results[0])])
    seconds = time.perf_counter() - t0
    found = runs.write_run(out, task, sample, result,
                                 options={"command": "demo", "quick": args.quick, "seed": args.seed})
    (out / "restored.partial.png").unlink(missing_ok=True)
    for name, src in (("clean.png", out / "ground_truth.png"), ("noisy.png", out / "observation.png"),
                      ("restored.png", out / "result.png")):
        (out / name).write_bytes(src.read_bytes())
    print(f"{PROG} demo: PSNR noisy {found['psnr_observation']:.2f} dB -> restored {found['psnr']:.2f} dB "
          f"({steps_note(task, result.resumed_from)}, {seconds:.1f} s). Wrote {out}/restored.png, noisy.png, clean.png, comparison.png, psnr.png")
    return 0


def demo_task(*, quick: bool = False, net: str | None = None, steps: int | None = None,
              lr: float | None = None) -> tasks.TaskConfig:
    """The demo's denoising setting: the paper's, with a narrow net sized for about a minute on a 2-core CPU.

    `quick` is exactly `dip-jax denoise --quick` (the denoising task's quick variant).
    """
    base = tasks.task("denoising")
    if quick:
        task = base.quick_variant()
    else:
        fit = dataclasses.replace(base.fit, num_steps=DEMO_STEPS, chunk_size=100)
        task = dataclasses.replace(base, net=nets.narrow(base.net, width=16, scales=3), fit=fit)
    if net is not None:
        task = task.with_net(nets.preset(net, num_output_channels=3))
    task = dataclasses.replace(task, name="demo", title="Demo: denoising a built-in photo")
    return task.with_steps(steps, lr)



def cmd_report(args) -> int:
    if args.out:
        plan = FilePlan()
        for run in args.runs:
            for metrics in [Path(run) / "metrics.json", *Path(run).rglob("metrics.json")] if Path(run).is_dir() else []:
                plan.input(metrics, "a run's metrics.json")
        plan.output(Path(args.out), "--out")
        plan.folder(Path(args.out).parent, "--out")
        plan.check()
        if Path(args.out).is_dir():
            raise UsageError(f"--out {args.out!r} is a folder; give a file name such as report.md")
        if Path(args.out).exists() and not args.overwrite:
            raise UsageError(f"--out {args.out!r} already exists; choose another file, or pass --overwrite to replace it")
    text = runs.report(args.runs)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"{PROG} report: wrote {args.out}")
    else:
        print(text, end="")
    return 0
