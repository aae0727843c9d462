"""The `dip-jax` command: restore images with a Deep Image Prior from the command line.

Subcommands (each prints `dip-jax <command> --help`):
- `demo`: denoise a built-in photo (no files needed) into ./dip_jax_demo/.
- `denoise IMAGE`, `super-resolve IMAGE --factor F`, `inpaint IMAGE (--mask FILE | --keep-fraction F)`,
  `deblur IMAGE --kernel gauss:SIGMA|FILE`, `flash --flash F --no-flash G`: one image in, one out.
- `batch DIR`: every image of a folder; images of one size go through one
  compiled, batched call (`--batch-size` at a time).
- `report RUN_DIR...`: the markdown report of experiment run folders.

Files: greyscale, RGB and RGBA (the alpha channel is kept aside and put back,
resized for super-resolution), 8- and 16-bit; the result is written at the
input's bit depth. Sizes the net cannot take are padded (reflection) and the
result cropped back, so no border pixel is lost (the original crops).

Every problem with the inputs (unreadable file, wrong sizes, bad options,
a damaged or foreign checkpoint) ends the command with one line
`dip-jax: error: ...` on stderr and exit status 2, never a traceback.

Long runs (every fitting command): `--checkpoint-every N` checkpoints every
N steps (single-image commands into `OUT_STEM.ckpt/` next to the output, or
`--checkpoint-dir`; `demo` and `batch` into their `--out` folder, one file
per compiled call); `--resume` continues from there bit for bit. A finished
result (the output image, a folder with its metrics.json / batch.json) is
never replaced without `--overwrite`; the check runs before any fitting.
Ctrl-C / SIGTERM finishes the current chunk, writes the checkpoint and the
result so far as `*.partial.png` (never a NaN image, no metrics.json), says
how to resume and exits with status 130.

The settings are the paper's (`dip_jax.tasks`): they assume a GPU. On a CPU
use `--quick` (narrow net, few steps) or lower `--steps`. Compiled programs
are cached on disk (see `experiment.enable_compile_cache`), so a second run
of the same problem starts at once.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from dip_jax import io, nets, tasks

PROG = "dip-jax"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".ppm", ".pgm")
DEMO_SIZE = 128
DEMO_SIGMA = 25.0
DEMO_STEPS = 600
BATCH_MARKER = "batch.json"  # written last by a finished `batch`


class _Error(ValueError):
    """A user error found by the CLI itself."""


# --------------------------------------------------------------------------- argument parsing


# argparse names a type function in its own "invalid <name> value" message, so each of these raises
# ArgumentTypeError with a message a user can act on.


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _number(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


SEED_LIMIT = 2**63  # JAX seeds are 64-bit integers


def _seed(text: str) -> int:
    value = _integer(text)
    if not -SEED_LIMIT <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be between -2**63 and 2**63 - 1, got {text}")
    return value


def _defaults(*names: str) -> str:
    """The paper's steps and learning rate of tasks `names` (and their --quick steps), for --help."""
    parts = []
    for name in names:
        task = tasks.task(name)
        parts.append(f"{name}: {task.fit.num_steps} steps at lr {task.fit.learning_rate:g} "
                     f"(--quick: {task.quick_variant().fit.num_steps})")
    return "; ".join(parts)


def _common(p: argparse.ArgumentParser, *task_names: str) -> None:
    g = p.add_argument_group("fitting", f"defaults: {_defaults(*task_names)}" if task_names else None)
    g.add_argument("--steps", type=_positive_int, metavar="N",
                   help="optimisation steps (default: the paper's, above; with --resume, more steps than the "
                        "checkpoint's continue it)")
    g.add_argument("--lr", type=_positive_float, metavar="LR", help="learning rate (default: the paper's, above)")
    g.add_argument("--net", metavar="PRESET", choices=sorted(nets.PRESETS),
                   help=f"generator preset, one of: {', '.join(sorted(nets.PRESETS))}")
    g.add_argument("--restarts", type=_positive_int, default=1, metavar="R",
                   help="independent fits averaged into the result (default 1)")
    g.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    g.add_argument("--quick", action="store_true", help="narrow net and few steps: a fast, rough result on a CPU")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show the progress bar (default: on)")
    g = p.add_argument_group("long runs")
    g.add_argument("--checkpoint-every", type=_positive_int, metavar="N",
                   help="write a checkpoint every N steps (also at the end and on Ctrl-C), to continue with --resume")
    how = g.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true",
                     help="continue an interrupted run from its checkpoint (same command line otherwise)")
    how.add_argument("--overwrite", action="store_true",
                     help="replace the results and delete the checkpoints of an earlier run")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Deep Image Prior in JAX: restore images with an untrained network.",
        epilog="Run `dip-jax demo` for a first result; `dip-jax COMMAND --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", help="denoise a built-in photo (about a minute on a laptop CPU)",
                       description=f"Add noise (sigma {DEMO_SIGMA:g}) to a built-in {DEMO_SIZE} px photo and "
                                   "restore it; writes the images, a comparison figure and the PSNRs. "
                                   f"Default: {DEMO_STEPS} steps at lr {tasks.task('denoising').fit.learning_rate:g} "
                                   "with a narrow net (--quick: the denoise command's quick setting).")
    p.add_argument("--out", default="dip_jax_demo", metavar="DIR", help="output folder (default: ./dip_jax_demo)")
    p.add_argument("--image", default="astronaut", metavar="NAME",
                   help="built-in photo: astronaut, camera, chelsea, coffee, coins, rocket (default astronaut)")
    _common(p)

    p = sub.add_parser("denoise", help="remove noise from a photo")
    p.add_argument("image", help="the noisy image")
    p.add_argument("--add-noise", type=_positive_float, metavar="SIGMA",
                   help="first add Gaussian noise of this sigma (0..255 units) and report the PSNR against the input")
    _single_outputs(p)
    _common(p, "denoising")

    p = sub.add_parser("super-resolve", help="upscale an image by an integer factor")
    p.add_argument("image", help="the low-resolution image")
    p.add_argument("--factor", type=_positive_int, default=4, help="upscaling factor (default 4)")
    p.add_argument("--kernel-type", default="lanczos2", choices=("lanczos2", "lanczos3", "box", "gauss12"),
                   help="downsampler the result must be consistent with (default lanczos2, the paper's)")
    p.add_argument("--simulate", action="store_true",
                   help="treat the input as the high-resolution truth: downscale it first, report the PSNR")
    _single_outputs(p)
    _common(p, "sr_x4", "sr_x8")

    p = sub.add_parser("inpaint", help="fill in missing pixels (a mask file, or a random fraction)")
    p.add_argument("image", help="the image with missing pixels")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--mask", metavar="FILE",
                     help="mask image of the same size: white = known, black = missing; grey values are "
                          "thresholded at half brightness (>= 0.5 known, < 0.5 missing) and the command says how "
                          "many pixels were grey")
    how.add_argument("--keep-fraction", type=_fraction, metavar="F",
                     help="drop pixels at random, keeping this fraction, and report the PSNR against the input")
    _single_outputs(p)
    _common(p, "text_inpainting", "restoration_50")

    p = sub.add_parser("deblur", help="remove a known blur (not in the original paper)")
    p.add_argument("image", help="the blurred image")
    p.add_argument("--kernel", required=True, metavar="gauss:SIGMA|FILE",
                   help="the blur: gauss:SIGMA (a Gaussian of that sigma in pixels), or a kernel file "
                        "(.npy array, or a greyscale image; normalised to sum 1)")
    p.add_argument("--simulate", action="store_true",
                   help="treat the input as sharp: blur it first and report the PSNR against it")
    _single_outputs(p)
    _common(p, "deblur")

    p = sub.add_parser("flash", help="flash / no-flash: the no-flash light without its noise")
    p.add_argument("--flash", required=True, metavar="FILE", help="the photo taken with flash (the net's input)")
    p.add_argument("--no-flash", required=True, metavar="FILE", help="the photo taken without flash (the target)")
    _single_outputs(p)
    _common(p, "flash_no_flash")

    p = sub.add_parser("batch", help="restore every image of a folder, many per compiled call")
    p.add_argument("folder", help="folder of images (not searched recursively)")
    p.add_argument("--out", default="dip_jax_batch", metavar="DIR",
                   help="output folder (default ./dip_jax_batch): one STEM.png per image (16-bit and alpha kept); "
                        "images that share a stem (a.png, a.jpg) are written as STEM_EXT.png (a_png.png, a_jpg.png)")
    p.add_argument("--task", default="denoise", choices=("denoise", "super-resolve", "inpaint"),
                   help="what to do to each image (default denoise)")
    p.add_argument("--factor", type=_positive_int, default=4, help="super-resolve: upscaling factor (default 4)")
    p.add_argument("--keep-fraction", type=_fraction, metavar="F",
                   help="inpaint: drop pixels at random keeping this fraction (required for --task inpaint)")
    p.add_argument("--add-noise", type=_positive_float, metavar="SIGMA",
                   help="denoise: first add noise of this sigma and report PSNRs against the inputs")
    p.add_argument("--batch-size", type=_positive_int, default=8, metavar="B",
                   help="images per compiled call (default 8)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out images that cannot be read (listed under 'skipped' in batch.json) and restore "
                        "the rest; without it an unreadable image stops the batch before any fitting")
    _common(p, "denoising", "sr_x4", "sr_x8", "restoration_50")

    p = sub.add_parser("report", help="markdown report of experiment run folders")
    p.add_argument("runs", nargs="+", help="run folders or folders containing them")
    p.add_argument("--out", metavar="FILE", help="write the report here instead of printing it")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("dip_jax")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _single_outputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="FILE",
                   help="output image (.png/.tif/.jpg; default ./STEM_denoised.png, ./STEM_upscaled.png ...); "
                        "same bit depth as the input")
    p.add_argument("--run-dir", metavar="DIR",
                   help="also write a run folder there: comparison figure, PSNR plot, config and metrics")
    p.add_argument("--ground-truth", metavar="FILE", help="the clean image, to report the PSNR of the result")
    p.add_argument("--checkpoint-dir", metavar="DIR",
                   help="where --checkpoint-every / --resume keep the checkpoint (default: OUT_STEM.ckpt/ next to "
                        "the output image)")


# --------------------------------------------------------------------------- helpers


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


def _configure(task: tasks.TaskConfig, args, *, channels: int, guide_channels: int | None = None,
               **changes) -> tasks.TaskConfig:
    """The task for this command line: quick variant, channels, --net, --steps, --lr and `changes`."""
    if args.quick:
        task = task.quick_variant()
    net = _adapt_net(task.net, channels=channels, input_channels=guide_channels, preset_name=args.net)
    task = dataclasses.replace(task, net=net, channels=channels, **changes)
    return task.with_steps(args.steps, args.lr)


def _load(path: str) -> io.LoadedImage:
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


def _save(path: Path, image: np.ndarray, loaded: io.LoadedImage) -> None:
    alpha = None if loaded.alpha is None else _resize_alpha(loaded.alpha, image.shape[:2])
    io.save_image(path, image, bit_depth=loaded.bit_depth, alpha=alpha)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    from dip_jax import metrics

    return float(metrics.psnr(a, b))


def _load_kernel(spec: str, image_shape: tuple[int, ...]) -> np.ndarray:
    """The --kernel of `deblur`, normalised to sum 1; its size is checked against the image before it is built."""
    from dip_jax import experiment

    h, w = image_shape[:2]

    def check_size(kh: int, kw: int, what: str) -> None:
        if kh > h or kw > w:
            raise _Error(f"--kernel {spec!r} gives a {kh}x{kw} kernel ({what}), larger than the {h}x{w} image; "
                         "use a smaller blur")

    if spec.startswith("gauss:"):
        try:
            sigma = float(spec.partition(":")[2])
        except ValueError:
            raise _Error(f"--kernel {spec!r}: give gauss:SIGMA with a number, e.g. gauss:2") from None
        if not (math.isfinite(sigma) and sigma > 0):
            raise _Error(f"--kernel {spec!r}: the blur's sigma must be a positive finite number of pixels, e.g. "
                         "gauss:2")
        size = 2 * math.ceil(3 * sigma) + 1  # what experiment.blur_kernel builds
        check_size(size, size, f"sigma {sigma:g} spans 3 sigma each way")
        return experiment.blur_kernel(sigma)
    path = Path(spec)
    if not path.is_file():
        raise _Error(f"--kernel {spec!r} is neither gauss:SIGMA nor an existing file; give e.g. gauss:2 or kernel.npy")
    if path.suffix.lower() == ".npy":
        try:
            header = np.load(path, mmap_mode="r", allow_pickle=False)
            if header.ndim == 2:
                check_size(*header.shape, "its array's shape")
            if header.dtype.kind not in "biuf":
                raise _Error(f"--kernel {spec!r} holds {header.dtype} values; save a 2-D array of real numbers")
            kernel = np.array(header, dtype=np.float32)
        except _Error:
            raise
        except Exception as err:  # noqa: BLE001 - numpy raises many types for a file that is not .npy
            raise _Error(f"--kernel {spec!r} is not a readable .npy array ({type(err).__name__}: {err}); save it "
                         "with numpy.save") from None
    else:
        image = io.load_image(path).image
        kernel = image.mean(axis=-1)
    if kernel.ndim != 2 or not np.all(np.isfinite(kernel)) or kernel.sum() <= 0:
        raise _Error(f"--kernel {spec!r} must hold a 2-D array of finite values with a positive sum, got shape "
                     f"{kernel.shape}")
    check_size(*kernel.shape, "its array's shape")
    return (kernel / kernel.sum()).astype(np.float32)


def _report_line(command: str, source: str, out: Path, task, found: dict, seconds: float,
                 resumed_from: int | None = None) -> str:
    text = f"{PROG} {command}: {source} -> {out} ({_steps_note(task, resumed_from)}, {seconds:.1f} s)"
    if "psnr" in found:
        text += f"; PSNR {found['psnr']:.2f} dB"
        if "psnr_observation" in found:
            text += f" (input to the net: {found['psnr_observation']:.2f} dB)"
        if "baselines" in found:
            text += f" (bicubic: {found['baselines']['bicubic']['psnr']:.2f} dB)"
    return text + _rollback_note(found.get("num_rollbacks"))


def _steps_note(task, resumed_from: int | None) -> str:
    """'N steps', or for a resumed run 'N steps, resumed at step K: M run now' (the time is this run's)."""
    total = task.fit.num_steps
    if resumed_from is None:
        return f"{total} steps"
    return f"{total} steps, resumed at step {resumed_from}: {total - resumed_from} run now"


@contextlib.contextmanager
def _announce_fresh_start(command: str):
    """The library's 'resume asked, no checkpoint: starting fresh' warning as one line of this command."""
    import warnings

    from dip_jax import checkpoint

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


def _rollback_note(rollbacks) -> str:
    count = 0 if rollbacks is None else int(np.sum(rollbacks))
    return f"; {count} divergence recover{'y' if count == 1 else 'ies'}" if count else ""


# --------------------------------------------------------------------------- long runs


def _partial_path(out: Path) -> Path:
    """Where an interrupted run's result goes: `x.png` -> `x.partial.png` (the final name means finished)."""
    return out.with_name(f"{out.stem}.partial{out.suffix}")


def _checkpoint_options(args, directory: Path, *, name: str = "ckpt"):
    """The `experiment.CheckpointOptions` of this command line, None when it asks for no checkpoints."""
    from dip_jax import experiment

    if args.checkpoint_every is None and not args.resume:
        return None
    return experiment.CheckpointOptions(directory, every=args.checkpoint_every, resume=args.resume, name=name)


def _prepare_checkpoint_dir(args, directory: Path, *, marker: str | None = None) -> None:
    """Refuse (before fitting) to start over on an unfinished run's checkpoints; --overwrite deletes them."""
    from dip_jax import checkpoint

    checkpointing = args.checkpoint_every is not None or args.resume
    if checkpointing or (args.overwrite and directory.is_dir()):
        checkpoint.prepare_output_dir(directory, overwrite=args.overwrite, resume=args.resume, marker=marker)
    if not checkpointing and args.overwrite:
        with contextlib.suppress(OSError):  # only an emptied checkpoint folder goes, never anything else
            directory.rmdir()


def _refuse_existing(paths: Sequence[Path], args) -> None:
    """A finished run's output image is never replaced silently (checked before any fitting)."""
    from dip_jax import checkpoint

    if args.overwrite:
        return
    existing = [p for p in paths if p.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise checkpoint.OutputExistsError(
            f"{str(existing[0])!r}{more} already exists; choose another --out, or pass --overwrite to replace "
            "it"
        )


def _write_partial(path: Path, result, loaded: io.LoadedImage | None = None) -> str:
    """Save an interrupted fit's result so far (as `loaded`'s file); a non-finite one is not written."""
    if result is None:
        return ""
    if not np.all(np.isfinite(result.restored)):
        return f"{path} not written (the fit had diverged)"
    path.parent.mkdir(parents=True, exist_ok=True)
    if loaded is None:
        io.save_image(path, result.restored)
    else:
        _save(path, result.restored, loaded)
    return str(path)


def _interrupted(command: str, stop, task, written: Sequence[str]) -> int:
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


# --------------------------------------------------------------------------- checks before any work

# What `experiment.write_run` writes into a --run-dir (restart_R.png and baseline_NAME.png too).
RUN_FILES = ("result.png", "observation.png", "mask.png", "target.png", "ground_truth.png", "comparison.png",
             "psnr.png", "history.npz", "config.json", "metrics.json")
# The option names of input files, by argparse destination.
INPUT_OPTIONS = {"image": "IMAGE", "mask": "--mask", "ground_truth": "--ground-truth", "kernel": "--kernel",
                 "flash": "--flash", "no_flash": "--no-flash"}


def _same_path(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


class _Plan:
    """Every file a command reads and writes, checked together before anything is compiled or fitted.

    `check()` refuses (one `_Error` naming the file and the option) an output
    that is also an input, two outputs at one path, an image format that
    cannot hold the result (bit depth, alpha), and a folder that cannot be
    created or written.
    """

    def __init__(self) -> None:
        self.inputs: list[tuple[Path, str]] = []
        self.outputs: list[tuple[Path, str]] = []
        self.images: list[tuple[Path, str, io.LoadedImage | None]] = []
        self.folders: list[tuple[Path, str]] = []

    def input(self, path, option: str) -> None:
        self.inputs.append((Path(path), option))

    def input_files(self, args) -> None:
        for dest, option in INPUT_OPTIONS.items():
            value = getattr(args, dest, None)
            if value and Path(value).exists():
                self.input(value, option)

    def image(self, path, option: str, loaded: io.LoadedImage | None) -> None:
        self.images.append((Path(path), option, loaded))
        self.outputs.append((Path(path), option))

    def output(self, path, option: str) -> None:
        self.outputs.append((Path(path), option))

    def folder(self, path, option: str) -> None:
        self.folders.append((Path(path), option))

    def check(self) -> None:
        for out, option in self.outputs:
            for source, source_option in self.inputs:
                if _same_path(out, source):
                    raise _Error(f"{option} {str(out)!r} is also the input given as {source_option}; an input is "
                                 f"never replaced: choose another {option.split()[0]}")
        for i, (a, option_a) in enumerate(self.outputs):
            for b, option_b in self.outputs[:i]:
                if _same_path(a, b):
                    raise _Error(f"{option_a} and {option_b} would both write {str(a)!r}; give them different paths")
        for folder, option in self.folders:
            try:
                io.check_writable_folder(folder, what=f"{option} {str(folder)!r}")
            except io.ImageIOError as err:
                raise _Error(str(err)) from None
        for path, option, loaded in self.images:
            channels, bit_depth, alpha = 3, 8, False
            if loaded is not None:
                channels, bit_depth, alpha = loaded.image.shape[-1], loaded.bit_depth, loaded.alpha is not None
            try:
                io.check_can_save(path, channels=channels, bit_depth=bit_depth, alpha=alpha)
            except io.ImageIOError as err:
                raise _Error(f"{option}: {err}") from None


def _single_plan(args, out: Path, ckpt_dir: Path, loaded: io.LoadedImage) -> _Plan:
    """The files of a one-image command: its inputs, --out (and its .partial), --run-dir, checkpoints."""
    plan = _Plan()
    plan.input_files(args)
    plan.image(out, "--out", loaded)
    plan.image(_partial_path(out), "--out (its .partial file)", loaded)
    if args.run_dir:
        run_dir = Path(args.run_dir)
        plan.folder(run_dir, "--run-dir")
        for name in RUN_FILES:
            plan.output(run_dir / name, "--run-dir")
        for source, option in plan.inputs:
            if (source.name.startswith(("restart_", "baseline_")) and source.suffix == ".png"
                    and _same_path(source.parent, run_dir)):
                raise _Error(f"--run-dir {args.run_dir!r} may write over the input {option} {str(source)!r}; "
                             "choose another --run-dir")
    if args.checkpoint_every is not None or args.resume:
        plan.folder(ckpt_dir, "--checkpoint-dir")
        for name in ("ckpt.npz", "ckpt.prev.npz"):
            plan.output(ckpt_dir / name, "--checkpoint-dir")
    return plan


# --------------------------------------------------------------------------- commands


def _fit_and_write(args, command: str, task, sample, loaded, *, source: str, key) -> int:
    from dip_jax import checkpoint, experiment

    out = Path(args.out) if args.out else _default_out(source, command)
    ckpt_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else out.with_name(f"{out.stem}.ckpt")
    _single_plan(args, out, ckpt_dir, loaded).check()
    _refuse_existing([out], args)
    if args.run_dir:
        checkpoint.prepare_output_dir(args.run_dir, overwrite=args.overwrite, resume=args.resume)
    _prepare_checkpoint_dir(args, ckpt_dir)
    experiment.enable_compile_cache()
    t0 = time.perf_counter()
    try:
        with _announce_fresh_start(command):
            (result,) = experiment.fit_samples(key, task, [sample], restarts=args.restarts, progress=args.progress,
                                               checkpoint=_checkpoint_options(args, ckpt_dir), handle_signals=True)
    except experiment.Interrupted as stop:
        return _interrupted(command, stop, task, [_write_partial(_partial_path(out), stop.results[0], loaded)])
    seconds = time.perf_counter() - t0
    _save(out, result.restored, loaded)
    _partial_path(out).unlink(missing_ok=True)
    found = experiment.sample_metrics(task, sample, result)
    if args.run_dir:
        found = experiment.write_run(args.run_dir, task, sample, result,
                                     options={"command": command, "quick": args.quick, "seed": args.seed})
    print(_report_line(command, source, out, task, found, seconds, result.resumed_from))
    return 0


def _ground_truth(args, shape) -> np.ndarray | None:
    if not getattr(args, "ground_truth", None):
        return None
    gt = io.load_image(args.ground_truth).image
    if gt.shape != shape:
        raise _Error(f"--ground-truth is {gt.shape[0]}x{gt.shape[1]}x{gt.shape[2]} but the result will be "
                     f"{shape[0]}x{shape[1]}x{shape[2]}; give the clean image of the same size and channels")
    return gt


def _key(args):
    import jax

    return jax.random.split(jax.random.key(args.seed))


def cmd_denoise(args) -> int:
    from dip_jax import experiment

    loaded = _load(args.image)
    c = loaded.image.shape[-1]
    task = _configure(tasks.task("denoising"), args, channels=c, noise_sigma=None)
    k_data, k_fit = _key(args)
    observation, gt = loaded.image, _ground_truth(args, loaded.image.shape)
    if args.add_noise:
        gt, observation = loaded.image, experiment.add_noise(k_data, loaded.image, args.add_noise)
    sample = experiment.Sample(name=Path(args.image).stem, observation=observation, ground_truth=gt,
                               source=args.image)
    return _fit_and_write(args, "denoise", task, sample, loaded, source=args.image, key=k_fit)


def _check_factor(factor: int, kernel_type: str, shape: tuple[int, ...], *, simulate: bool) -> None:
    """Refuse, in --factor / --kernel-type terms, a super-resolution the operator or memory cannot take."""
    from dip_jax import operators

    h, w = shape[:2]
    if simulate:
        h, w = h // factor, w // factor
        if h < 1 or w < 1:
            raise _Error(f"--simulate at --factor {factor} leaves nothing of the {shape[0]}x{shape[1]} image; "
                         "use a smaller --factor")
    if h * factor * w * factor > io.DEFAULT_MAX_PIXELS:
        raise _Error(f"--factor {factor} would make a {h * factor}x{w * factor} result, more than the "
                     f"{io.DEFAULT_MAX_PIXELS:,} pixels dip-jax fits; use a smaller --factor or a smaller image")

    def works(kind: str) -> bool:
        op = operators.Downsample(factor, kind)
        try:
            op.validate((1, 8 * factor, 8 * factor, 1), op.make_args())
        except ValueError:
            return False
        return True

    if not works(kernel_type):
        others = [k for k in ("lanczos2", "lanczos3", "box", "gauss12") if k != kernel_type and works(k)]
        tip = f"--kernel-type {' or '.join(others)}" if others else "another --factor"
        raise _Error(f"--factor {factor} does not work with --kernel-type {kernel_type} (the original's padding "
                     f"loses a pixel for even-sized kernels at odd factors); use an even --factor, or {tip}")


def cmd_super_resolve(args) -> int:
    from dip_jax import experiment

    loaded = _load(args.image)
    c = loaded.image.shape[-1]
    _check_factor(args.factor, args.kernel_type, loaded.image.shape, simulate=args.simulate)
    base = tasks.task("sr_x8" if args.factor >= 8 else "sr_x4")
    task = _configure(base, args, channels=c, factor=args.factor, kernel_type=args.kernel_type)
    k_data, k_fit = _key(args)
    sample = experiment.Sample(name=Path(args.image).stem, observation=loaded.image, source=args.image)
    if args.simulate:
        hr, lr, baselines = experiment.super_resolution_pair(loaded.image, args.factor)
        sample.observation, sample.ground_truth, sample.baselines = lr, hr, baselines
        if loaded.alpha is not None:
            loaded = dataclasses.replace(loaded, alpha=experiment.centre_crop(loaded.alpha, *hr.shape[:2]))
    else:
        h, w = loaded.image.shape[:2]
        sample.ground_truth = _ground_truth(args, (h * args.factor, w * args.factor, c))
    return _fit_and_write(args, "super-resolve", task, sample, loaded, source=args.image, key=k_fit)


def cmd_inpaint(args) -> int:
    from dip_jax import experiment, operators

    loaded = _load(args.image)
    image = loaded.image
    c = image.shape[-1]
    k_data, k_fit = _key(args)
    if args.mask:
        mask, grey = io.load_mask(args.mask, shape=image.shape, count_grey=True)
        if grey:
            print(f"{PROG} inpaint: note: --mask {args.mask!r} has {grey:,} grey pixels (neither black nor white); "
                  "those at half brightness or more count as known, the others as missing", file=sys.stderr)
        task = _configure(tasks.task("text_inpainting"), args, channels=c)
        gt = _ground_truth(args, image.shape)
    else:
        # Random missing pixels: the paper's restoration setting (its 50% task).
        task = _configure(tasks.task("restoration_50"), args, channels=c, keep_fraction=args.keep_fraction)
        mask = np.asarray(operators.bernoulli_mask(k_data, (1,) + image.shape[:2] + (1,), args.keep_fraction)[0])
        gt = image
    if mask.max() == 0 and args.mask:
        raise _Error(f"--mask {args.mask!r} marks every pixel as missing (all black); white must mark known pixels")
    if mask.max() == 0:
        raise _Error(f"--keep-fraction {args.keep_fraction:g} kept no pixel of this {image.shape[0]}x{image.shape[1]} "
                     "image; keep a larger fraction")
    sample = experiment.Sample(name=Path(args.image).stem, observation=image * mask, ground_truth=gt, mask=mask,
                               source=args.image)
    task = dataclasses.replace(task, operator="mask")
    return _fit_and_write(args, "inpaint", task, sample, loaded, source=args.image, key=k_fit)


def cmd_deblur(args) -> int:
    import jax.numpy as jnp

    from dip_jax import experiment, operators

    loaded = _load(args.image)
    c = loaded.image.shape[-1]
    kernel = _load_kernel(args.kernel, loaded.image.shape)
    task = _configure(tasks.task("deblur"), args, channels=c)
    k_data, k_fit = _key(args)
    observation, gt = loaded.image, _ground_truth(args, loaded.image.shape)
    if args.simulate:
        gt = loaded.image
        observation = np.asarray(operators.Blur(task.blur_padding).apply(jnp.asarray(gt)[None], jnp.asarray(kernel))[0])
    sample = experiment.Sample(name=Path(args.image).stem, observation=observation, ground_truth=gt, kernel=kernel,
                               source=args.image)
    return _fit_and_write(args, "deblur", task, sample, loaded, source=args.image, key=k_fit)


def cmd_flash(args) -> int:
    from dip_jax import experiment

    flash = _load(args.flash)
    no_flash = _load(args.no_flash)
    if flash.image.shape[:2] != no_flash.image.shape[:2]:
        raise _Error(f"the flash photo is {flash.image.shape[0]}x{flash.image.shape[1]} but the no-flash photo is "
                     f"{no_flash.image.shape[0]}x{no_flash.image.shape[1]}; give an aligned pair of one size")
    c = no_flash.image.shape[-1]
    task = _configure(tasks.task("flash_no_flash"), args, channels=c, guide_channels=flash.image.shape[-1])
    _, k_fit = _key(args)
    sample = experiment.Sample(name=Path(args.no_flash).stem, observation=no_flash.image, guide=flash.image,
                               ground_truth=_ground_truth(args, no_flash.image.shape), source=args.no_flash)
    return _fit_and_write(args, "flash", task, sample, no_flash, source=args.no_flash, key=k_fit)


def cmd_demo(args) -> int:
    import jax

    from dip_jax import checkpoint, experiment, sample_images

    size = 64 if args.quick else DEMO_SIZE
    # The centre of the photo at twice the size: a natural scale for a 128 px crop (a whole picture
    # shrunk to 128 px is mostly fine detail, which no prior tells from noise).
    clean = experiment.centre_crop(sample_images.sample_image(args.image, size=2 * size), size, size)
    k_data, k_fit = jax.random.split(jax.random.key(args.seed))
    noisy = experiment.add_noise(k_data, clean, DEMO_SIGMA)
    task = demo_task(quick=args.quick, net=args.net, steps=args.steps, lr=args.lr)
    sample = experiment.Sample(name=args.image, observation=noisy, ground_truth=clean,
                               source=f"sample:{args.image}")
    print(f"{PROG} demo: denoising the built-in '{args.image}' photo ({size}x{size}, noise sigma {DEMO_SIGMA:g}) "
          f"with {task.fit.num_steps} steps; the first run compiles the net (tens of seconds on a CPU)...")
    out = Path(args.out)
    plan = _Plan()
    plan.folder(out, "--out")
    plan.check()
    # Checkpoints live in the run folder, so one check covers the finished run and an unfinished one.
    checkpoint.prepare_output_dir(out, overwrite=args.overwrite, resume=args.resume)
    experiment.enable_compile_cache()
    t0 = time.perf_counter()
    try:
        with _announce_fresh_start("demo"):
            (result,) = experiment.fit_samples(k_fit, task, [sample], restarts=args.restarts,
                                               progress=args.progress, checkpoint=_checkpoint_options(args, out),
                                               handle_signals=True)
    except experiment.Interrupted as stop:
        return _interrupted("demo", stop, task, [_write_partial(out / "restored.partial.png", stop.results[0])])
    seconds = time.perf_counter() - t0
    found = experiment.write_run(out, task, sample, result,
                                 options={"command": "demo", "quick": args.quick, "seed": args.seed})
    (out / "restored.partial.png").unlink(missing_ok=True)
    for name, src in (("clean.png", out / "ground_truth.png"), ("noisy.png", out / "observation.png"),
                      ("restored.png", out / "result.png")):
        (out / name).write_bytes(src.read_bytes())
    print(f"{PROG} demo: PSNR noisy {found['psnr_observation']:.2f} dB -> restored {found['psnr']:.2f} dB "
          f"({_steps_note(task, result.resumed_from)}, {seconds:.1f} s). Wrote {out}/restored.png, noisy.png, clean.png, comparison.png, psnr.png")
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
        task = dataclasses.replace(task, net=nets.preset(net, num_output_channels=3))
    task = dataclasses.replace(task, name="demo", title="Demo: denoising a built-in photo")
    return task.with_steps(steps, lr)


def _batch_task(args, channels: int) -> tasks.TaskConfig:
    if args.task == "denoise":
        return _configure(tasks.task("denoising"), args, channels=channels, noise_sigma=None)
    if args.task == "super-resolve":
        base = tasks.task("sr_x8" if args.factor >= 8 else "sr_x4")
        return _configure(base, args, channels=channels, factor=args.factor)
    return _configure(tasks.task("restoration_50"), args, channels=channels, keep_fraction=args.keep_fraction,
                      operator="mask")


def _batch_outputs(files: Sequence[Path], out_dir: Path) -> list[Path]:
    """One output per input, STEM.png; inputs sharing a stem (a.png, a.jpg) become STEM_EXT.png (said once)."""
    stems: dict[str, list[Path]] = {}
    for path in files:
        stems.setdefault(path.stem.lower(), []).append(path)
    names, taken = [], set()
    for path in files:
        name = f"{path.stem}.png"
        if len(stems[path.stem.lower()]) > 1:
            name = f"{path.stem}_{path.suffix[1:].lower()}.png"
        base, k = name[:-4], 1
        while name.lower() in taken:  # a.png and a.PNG: same stem and extension but for case
            name, k = f"{base}_{k}.png", k + 1
        taken.add(name.lower())
        names.append(name)
    for group in stems.values():
        if len(group) > 1:
            renamed = ", ".join(f"{p.name} -> {names[files.index(p)]}" for p in group)
            print(f"{PROG} batch: these images share a name, so their results are named apart: {renamed}")
    return [out_dir / name for name in names]


def cmd_batch(args) -> int:
    import jax

    from dip_jax import checkpoint, experiment, operators

    folder = Path(args.folder)
    if not folder.is_dir():
        raise _Error(f"{args.folder!r} is not a folder; give a folder of images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise _Error(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {args.folder!r}")
    if args.task == "inpaint" and args.keep_fraction is None:
        raise _Error("--task inpaint needs --keep-fraction F (the fraction of pixels kept at random)")
    all_files, files, loaded, skipped = files, [], [], []
    for path in all_files:
        try:
            loaded.append(_load(str(path)))
        except io.ImageIOError as err:
            message = " ".join(str(getattr(err, "cli_message", None) or err).split())
            if not args.skip_bad:
                raise _Error(f"{message} (pass --skip-bad to leave unreadable images out and restore the rest)") \
                    from None
            skipped.append({"image": path.name, "error": message})
            print(f"{PROG} batch: skipping {path.name}: {message}", file=sys.stderr)
            continue
        files.append(path)
    if not files:
        raise _Error(f"none of the {len(all_files)} images in {args.folder!r} could be read (see above)")
    k_data, k_fit = jax.random.split(jax.random.key(args.seed))
    samples = []
    for i, (path, item) in enumerate(zip(files, loaded)):
        k = jax.random.fold_in(k_data, i)
        image = item.image
        sample = experiment.Sample(name=path.stem, observation=image, source=str(path))
        if args.task == "denoise" and args.add_noise:
            sample.ground_truth, sample.observation = image, experiment.add_noise(k, image, args.add_noise)
        elif args.task == "inpaint":
            mask = np.asarray(operators.bernoulli_mask(k, (1,) + image.shape[:2] + (1,), args.keep_fraction)[0])
            if mask.max() == 0:
                raise _Error(f"--keep-fraction {args.keep_fraction:g} kept no pixel of {path.name}; keep a larger "
                             "fraction")
            sample.mask, sample.observation, sample.ground_truth = mask, image * mask, image
        samples.append(sample)

    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.observation.shape, []).append(i)
    out_dir = Path(args.out)
    outputs = _batch_outputs(files, out_dir)
    # Everything is checked before the first fit: paths, formats, and the memory of every call.
    plan = _Plan()
    for path in all_files:
        plan.input(path, "an input image")
    plan.folder(out_dir, "--out")
    for path, item in zip(outputs, loaded):
        plan.image(path, "--out", item)
        plan.output(_partial_path(path), "--out")
    plan.output(out_dir / BATCH_MARKER, "--out")
    plan.check()
    calls = []  # (group index, chunk index, task, chunk, padded chunk)
    for g, (shape, indices) in enumerate(groups.items()):
        if args.task == "super-resolve":
            _check_factor(args.factor, "lanczos2", shape, simulate=False)
        task = _batch_task(args, shape[-1])
        chunks = [indices[i : i + args.batch_size] for i in range(0, len(indices), args.batch_size)]
        for n, chunk in enumerate(chunks):
            # A short last chunk is topped up with copies so every chunk reuses one compiled program.
            padded = chunk + [chunk[-1]] * (args.batch_size - len(chunk)) if len(chunks) > 1 else chunk
            calls.append((g, n, task, chunk, padded))
        try:
            experiment.check_memory(task, [samples[i] for i in calls[-1][4]], restarts=args.restarts)
        except ValueError as err:
            names = ", ".join(files[i].name for i in indices[:3]) + (" ..." if len(indices) > 3 else "")
            raise _Error(f"{names} ({shape[0]}x{shape[1]}): {getattr(err, 'cli_message', None) or err}") from None
    if not args.resume:
        _refuse_existing(outputs, args)
    # batch.json is written last: it marks the folder as a finished batch (replaced only with --overwrite).
    checkpoint.prepare_output_dir(out_dir, overwrite=args.overwrite, resume=args.resume, marker=BATCH_MARKER)
    experiment.enable_compile_cache()
    t_all = time.perf_counter()
    entries: dict[int, dict] = {}
    # The compiled call's index K: its checkpoint is ckpt-K.npz, found again by --resume.
    for call, (g, n, task, chunk, padded) in enumerate(calls):
        shape = samples[chunk[0]].observation.shape
        c = shape[-1]
        name = f"ckpt-{call}"
        if args.resume and all(outputs[i].exists() for i in chunk) and checkpoint.resume_step(
                out_dir / f"{name}.npz", task.fit.num_steps) in (None, task.fit.num_steps):
            # Finished before the interruption: its images were written after its last step (a
            # checkpoint of fewer steps than --steps asks for now is continued instead).
            for i in chunk:
                entries[i] = {"image": files[i].name, "output": str(outputs[i]), "kept_from_earlier_run": True}
                print(f"{PROG} batch: {files[i].name} -> {outputs[i]} (finished earlier, kept)")
            continue
        t0 = time.perf_counter()
        try:
            with _announce_fresh_start("batch"):
                results = experiment.fit_samples(jax.random.fold_in(jax.random.fold_in(k_fit, g), n), task,
                                                 [samples[i] for i in padded], restarts=args.restarts,
                                                 progress=args.progress,
                                                 checkpoint=_checkpoint_options(args, out_dir, name=name),
                                                 handle_signals=True)
        except experiment.Interrupted as stop:
            written = [_write_partial(_partial_path(outputs[i]), r, loaded[i])
                       for i, r in zip(chunk, stop.results)]
            return _interrupted("batch", stop, task, written)
        seconds = time.perf_counter() - t0
        for i, result in zip(chunk, results):
            out = outputs[i]
            _save(out, result.restored, loaded[i])
            _partial_path(out).unlink(missing_ok=True)
            count = f"{len(padded)} image{'s' if len(padded) > 1 else ''}"
            line = (f"{PROG} batch: {files[i].name} -> {out} ({shape[0]}x{shape[1]}x{c}, "
                    f"{count} in one call, {_steps_note(task, result.resumed_from)}, {seconds:.1f} s)")
            entry = {"image": files[i].name, "output": str(out), "steps": int(task.fit.num_steps),
                     "seconds": round(seconds, 3)}
            if samples[i].ground_truth is not None and samples[i].ground_truth.shape == result.restored.shape:
                entry["psnr"] = _psnr(result.restored, samples[i].ground_truth)
                entry["psnr_input"] = _psnr(samples[i].observation, samples[i].ground_truth)
                line += f"; PSNR {entry['psnr']:.2f} dB (input {entry['psnr_input']:.2f} dB)"
            if result.num_rollbacks is not None:
                entry["num_rollbacks"] = [int(r) for r in result.num_rollbacks]
                line += _rollback_note(result.num_rollbacks)
            entries[i] = entry
            print(line)
    summary = {"task": args.task, "quick": args.quick, "seed": args.seed, "restarts": args.restarts,
               "images": [entries[i] for i in sorted(entries)]}
    if skipped:
        summary["skipped"] = skipped
    (out_dir / BATCH_MARKER).write_text(json.dumps(summary, indent=2) + "\n")
    left_out = f" ({len(skipped)} unreadable, skipped)" if skipped else ""
    print(f"{PROG} batch: {len(files)} images{left_out} in {len(groups)} size group(s), "
          f"{time.perf_counter() - t_all:.1f} s -> {out_dir}")
    return 0


def cmd_report(args) -> int:
    from dip_jax import experiment

    if args.out:
        plan = _Plan()
        for run in args.runs:
            for metrics in [Path(run) / "metrics.json", *Path(run).rglob("metrics.json")] if Path(run).is_dir() else []:
                plan.input(metrics, "a run's metrics.json")
        plan.output(Path(args.out), "--out")
        plan.folder(Path(args.out).parent, "--out")
        plan.check()
        if Path(args.out).is_dir():
            raise _Error(f"--out {args.out!r} is a folder; give a file name such as report.md")
        if Path(args.out).exists() and not args.overwrite:
            raise _Error(f"--out {args.out!r} already exists; choose another file, or pass --overwrite to replace it")
    text = experiment.report(args.runs)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"{PROG} report: wrote {args.out}")
    else:
        print(text, end="")
    return 0


COMMANDS = {
    "demo": cmd_demo,
    "denoise": cmd_denoise,
    "super-resolve": cmd_super_resolve,
    "inpaint": cmd_inpaint,
    "deblur": cmd_deblur,
    "flash": cmd_flash,
    "batch": cmd_batch,
    "report": cmd_report,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dip-jax` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ValueError as err:  # io.ImageIOError and the CLI's own errors are ValueErrors
        message = " ".join(str(getattr(err, "cli_message", None) or err).split())
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
