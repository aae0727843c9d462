"""The `dip-jax` command's checks before any work: every file read or written, the kernel, the factor.

Every refusal is a `UsageError` (a ValueError) whose message names the
option or file and says what to do; `cli.main` prints it as one line.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from dip_jax import io
from dip_jax.app import observations


class UsageError(ValueError):
    """A user error found by the command line itself."""



def partial_path(out: Path) -> Path:
    """Where an interrupted run's result goes: `x.png` -> `x.partial.png` (the final name means finished)."""
    return out.with_name(f"{out.stem}.partial{out.suffix}")


def prepare_checkpoint_dir(args, directory: Path, *, marker: str | None = None) -> None:
    """Refuse (before fitting) to start over on an unfinished run's checkpoints; --overwrite deletes them."""
    from dip_jax.runtime import checkpoint

    checkpointing = args.checkpoint_every is not None or args.resume
    if checkpointing or (args.overwrite and directory.is_dir()):
        checkpoint.prepare_output_dir(directory, overwrite=args.overwrite, resume=args.resume, marker=marker)
    if not checkpointing and args.overwrite:
        with contextlib.suppress(OSError):  # only an emptied checkpoint folder goes, never anything else
            directory.rmdir()


def refuse_existing(paths: Sequence[Path], args) -> None:
    """A finished run's output image is never replaced silently (checked before any fitting)."""
    from dip_jax.runtime import checkpoint

    if args.overwrite:
        return
    existing = [p for p in paths if p.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise checkpoint.OutputExistsError(
            f"{str(existing[0])!r}{more} already exists; choose another --out, or pass --overwrite to replace "
            "it"
        )


# --------------------------------------------------------------------------- checks before any work

# What `runs.write_run` writes into a --run-dir (restart_R.png and baseline_NAME.png too).
RUN_FILES = ("result.png", "observation.png", "mask.png", "target.png", "ground_truth.png", "comparison.png",
             "psnr.png", "history.npz", "config.json", "metrics.json")
# What it adds for --restarts R > 1: the per-pixel std map over restarts (image, raw array).
ENSEMBLE_RUN_FILES = ("std.png", "std.npy")


def std_outputs(out: Path) -> tuple[Path, Path]:
    """The std map a command writes next to its output image OUT for R > 1: OUT_STEM.std.png, OUT_STEM.std.npy."""
    out = Path(out)
    return out.with_name(f"{out.stem}.std.png"), out.with_name(f"{out.stem}.std.npy")


def check_noise_sigma(sigma: float | None, option: str = "--noise-sigma") -> None:
    """A noise level in 0..255 units (as --add-noise): positive and at most 255."""
    if sigma is not None and not 0 < sigma <= 255:
        raise UsageError(f"{option} {sigma:g} is outside (0, 255]; give the noise's standard deviation in 0..255 "
                         "pixel units, e.g. 25")


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


class FilePlan:
    """Every file a command reads and writes, checked together before anything is compiled or fitted.

    `check()` refuses (one `UsageError` naming the file and the option) an output
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
                    raise UsageError(f"{option} {str(out)!r} is also the input given as {source_option}; an input is "
                                 f"never replaced: choose another {option.split()[0]}")
        for i, (a, option_a) in enumerate(self.outputs):
            for b, option_b in self.outputs[:i]:
                if _same_path(a, b):
                    raise UsageError(f"{option_a} and {option_b} would both write {str(a)!r}; give them different paths")
        for folder, option in self.folders:
            try:
                io.check_writable_folder(folder, what=f"{option} {str(folder)!r}")
            except io.ImageIOError as err:
                raise UsageError(str(err)) from None
        for path, option, loaded in self.images:
            channels, bit_depth, alpha = 3, 8, False
            if loaded is not None:
                channels, bit_depth, alpha = loaded.image.shape[-1], loaded.bit_depth, loaded.alpha is not None
            try:
                io.check_can_save(path, channels=channels, bit_depth=bit_depth, alpha=alpha)
            except io.ImageIOError as err:
                raise UsageError(f"{option}: {err}") from None


def single_plan(args, out: Path, ckpt_dir: Path, loaded: io.LoadedImage) -> FilePlan:
    """The files of a one-image command: its inputs, --out (and its .partial), --run-dir, checkpoints."""
    plan = FilePlan()
    plan.input_files(args)
    plan.image(out, "--out", loaded)
    plan.image(partial_path(out), "--out (its .partial file)", loaded)
    ensemble = getattr(args, "restarts", 1) > 1
    if ensemble:
        for path in std_outputs(out):
            plan.output(path, "--out (its std map over --restarts)")
    if args.run_dir:
        run_dir = Path(args.run_dir)
        plan.folder(run_dir, "--run-dir")
        for name in RUN_FILES + (ENSEMBLE_RUN_FILES if ensemble else ()):
            plan.output(run_dir / name, "--run-dir")
        for source, option in plan.inputs:
            if (source.name.startswith(("restart_", "baseline_")) and source.suffix == ".png"
                    and _same_path(source.parent, run_dir)):
                raise UsageError(f"--run-dir {args.run_dir!r} may write over the input {option} {str(source)!r}; "
                             "choose another --run-dir")
    if args.checkpoint_every is not None or args.resume:
        plan.folder(ckpt_dir, "--checkpoint-dir")
        for name in ("ckpt.npz", "ckpt.prev.npz"):
            plan.output(ckpt_dir / name, "--checkpoint-dir")
    return plan



def ground_truth_arg(args, shape) -> np.ndarray | None:
    if not getattr(args, "ground_truth", None):
        return None
    gt = io.load_image(args.ground_truth).image
    if gt.shape != shape:
        raise UsageError(f"--ground-truth is {gt.shape[0]}x{gt.shape[1]}x{gt.shape[2]} but the result will be "
                     f"{shape[0]}x{shape[1]}x{shape[2]}; give the clean image of the same size and channels")
    return gt



def check_factor(factor: int, kernel_type: str, shape: tuple[int, ...], *, simulate: bool) -> None:
    """Refuse, in --factor / --kernel-type terms, a super-resolution the operator or memory cannot take."""
    from dip_jax import operators

    h, w = shape[:2]
    if simulate:
        h, w = h // factor, w // factor
        if h < 1 or w < 1:
            raise UsageError(f"--simulate at --factor {factor} leaves nothing of the {shape[0]}x{shape[1]} image; "
                         "use a smaller --factor")
    if h * factor * w * factor > io.DEFAULT_MAX_PIXELS:
        raise UsageError(f"--factor {factor} would make a {h * factor}x{w * factor} result, more than the "
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
        raise UsageError(f"--factor {factor} does not work with --kernel-type {kernel_type} (the original's padding "
                     f"loses a pixel for even-sized kernels at odd factors); use an even --factor, or {tip}")



def load_kernel(spec: str, image_shape: tuple[int, ...]) -> np.ndarray:
    """The --kernel of `deblur`, normalised to sum 1; its size is checked against the image before it is built."""
    h, w = image_shape[:2]

    def check_size(kh: int, kw: int, what: str) -> None:
        if kh > h or kw > w:
            raise UsageError(f"--kernel {spec!r} gives a {kh}x{kw} kernel ({what}), larger than the {h}x{w} image; "
                         "use a smaller blur")

    if spec.startswith("gauss:"):
        try:
            sigma = float(spec.partition(":")[2])
        except ValueError:
            raise UsageError(f"--kernel {spec!r}: give gauss:SIGMA with a number, e.g. gauss:2") from None
        if not (math.isfinite(sigma) and sigma > 0):
            raise UsageError(f"--kernel {spec!r}: the blur's sigma must be a positive finite number of pixels, e.g. "
                         "gauss:2")
        size = 2 * math.ceil(3 * sigma) + 1  # what observations.blur_kernel builds
        check_size(size, size, f"sigma {sigma:g} spans 3 sigma each way")
        return observations.blur_kernel(sigma)
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"--kernel {spec!r} is neither gauss:SIGMA nor an existing file; give e.g. gauss:2 or kernel.npy")
    if path.suffix.lower() == ".npy":
        try:
            header = np.load(path, mmap_mode="r", allow_pickle=False)
            if header.ndim == 2:
                check_size(*header.shape, "its array's shape")
            if header.dtype.kind not in "biuf":
                raise UsageError(f"--kernel {spec!r} holds {header.dtype} values; save a 2-D array of real numbers")
            kernel = np.array(header, dtype=np.float32)
        except UsageError:
            raise
        except Exception as err:  # noqa: BLE001 - numpy raises many types for a file that is not .npy
            raise UsageError(f"--kernel {spec!r} is not a readable .npy array ({type(err).__name__}: {err}); save it "
                         "with numpy.save") from None
    else:
        image = io.load_image(path).image
        kernel = image.mean(axis=-1)
    if kernel.ndim != 2 or not np.all(np.isfinite(kernel)) or kernel.sum() <= 0:
        raise UsageError(f"--kernel {spec!r} must hold a 2-D array of finite values with a positive sum, got shape "
                     f"{kernel.shape}")
    check_size(*kernel.shape, "its array's shape")
    return (kernel / kernel.sum()).astype(np.float32)
