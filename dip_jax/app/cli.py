"""The `dip-jax` command: restore images with a Deep Image Prior from the command line.

Subcommands (each prints `dip-jax <command> --help`):
- `demo`: denoise a built-in photo (no files needed) into ./dip_jax_demo/.
- `denoise IMAGE`, `super-resolve IMAGE --factor F`, `inpaint IMAGE (--mask FILE | --keep-fraction F)`,
  `deblur IMAGE --kernel gauss:SIGMA|FILE`, `flash --flash F --no-flash G`: one image in, one out.
- `batch DIR`: every image of a folder; images of one size go through one
  compiled, batched call (`--batch-size` at a time).
- `experiment NAME [--variant V]`: one of the paper's experiments into run
  folders OUT/TASK/IMAGE/ (`experiments/NAME.py` is the same command line,
  `script_main`).
- `run-all [--only NAME[:VARIANT]]`: every experiment, then the report
  (`experiments/run_all.py`).
- `report RUN_DIR...`: the markdown report of experiment run folders.
- `quality`: each addition (generator presets, ensembles ...) against the
  paper's default on the project's images (`quality`).

This module only parses; the commands live in `commands`, `batch` and
`experiments`, the checks before any work in `checks`.

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

The settings are the paper's (`dip_jax.app.task_table`): they assume a GPU. On a CPU
use `--quick` (narrow net, few steps) or lower `--steps`. Compiled programs
are cached on disk (see `fitting.enable_compile_cache`), so a second run
of the same problem starts at once.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Sequence

from dip_jax import nets
from dip_jax.app import batch, commands, experiments, multiprocess, tasks
from dip_jax.app import quality
from dip_jax.app.commands import DEMO_SIGMA, DEMO_SIZE, DEMO_STEPS

PROG = "dip-jax"

# --------------------------------------------------------------------------- argument parsing


# argparse names a type function in its own "invalid <name> value" message, so each of these raises
# ArgumentTypeError with a message a user can act on.


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def fraction(text: str) -> float:
    value = number(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


SEED_LIMIT = 2**63  # JAX seeds are 64-bit integers


def seed_value(text: str) -> int:
    value = integer(text)
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
    g.add_argument("--steps", type=positive_int, metavar="N",
                   help="optimisation steps (default: the paper's, above; with --resume, more steps than the "
                        "checkpoint's continue it)")
    g.add_argument("--lr", type=positive_float, metavar="LR",
                   help="learning rate (default: the paper's, above; --net convdecoder and attention_unet cap it at 0.001)")
    g.add_argument("--net", metavar="PRESET", choices=sorted(nets.PRESETS),
                   help=f"generator preset, one of: {', '.join(sorted(nets.PRESETS))}")
    g.add_argument("--restarts", type=positive_int, default=1, metavar="R",
                   help="independent fits averaged into the result (default 1); for R > 1 the per-pixel standard "
                        "deviation across them is also written: OUT_STEM.std.npy (raw values) and OUT_STEM.std.png "
                        "(mean over channels divided by its maximum, so the most uncertain pixel is white); in a "
                        "run folder std.npy / std.png")
    g.add_argument("--seed", type=seed_value, default=0, help="random seed (default 0)")
    g.add_argument("--auto-stop", action="store_true",
                   help="stop each image (each restart) on its own when its output has settled (ES-WMV, Wang et al. "
                        "2023) and return its output at the settling point; --steps is then the maximum")
    g.add_argument("--auto-stop-window", type=positive_int, metavar="W",
                   help="--auto-stop: outputs in the moving-variance window (default 100)")
    g.add_argument("--auto-stop-patience", type=positive_int, metavar="P",
                   help="--auto-stop: steps without a new variance minimum before stopping (default 1000)")
    g.add_argument("--sgld", action="store_true",
                   help="Langevin noise in the updates; the result is the posterior mean of the outputs after "
                        "--sgld-burn-in steps (Cheng et al. 2019)")
    g.add_argument("--sgld-burn-in", type=positive_int, metavar="N",
                   help="--sgld: steps before the first sample (default 7000, the reference's; one sample every "
                        "50 steps)")
    g.add_argument("--tv-weight", type=positive_float, metavar="W",
                   help="add W x total variation of the net output to the loss (DIP-TV, Liu et al. 2019)")
    g.add_argument("--quick", action="store_true", help="narrow net and few steps: a fast, rough result on a CPU")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show the progress bar (default: on)")
    g = p.add_argument_group("long runs")
    g.add_argument("--checkpoint-every", type=positive_int, metavar="N",
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
    p.add_argument("--add-noise", type=positive_float, metavar="SIGMA",
                   help="first add Gaussian noise of this sigma (0..255 units) and report the PSNR against the input")
    _single_outputs(p)
    _common(p, "denoising")

    p = sub.add_parser("super-resolve", help="upscale an image by an integer factor")
    p.add_argument("image", help="the low-resolution image")
    p.add_argument("--factor", type=positive_int, default=4, help="upscaling factor (default 4)")
    p.add_argument("--kernel-type", default="lanczos2", choices=("lanczos2", "lanczos3", "box", "gauss12"),
                   help="downsampler the result must be consistent with (default lanczos2, the paper's)")
    p.add_argument("--simulate", action="store_true",
                   help="treat the input as the high-resolution truth: downscale it first, report the PSNR")
    p.add_argument("--noise-sigma", type=positive_float, metavar="S",
                   help="the low-resolution image is noisy (noise sigma S in 0..255 units): fit with the joint "
                        "denoising + super-resolution settings (task sr_x4_noisy / sr_x8_noisy: the SR settings "
                        "plus the denoising task's output averaging and backtracking); with --simulate, also add "
                        "that noise to the downscaled image (the PSNR is still against the input)")
    _single_outputs(p)
    _common(p, "sr_x4", "sr_x8")

    p = sub.add_parser("inpaint", help="fill in missing pixels (a mask file, or a random fraction)")
    p.add_argument("image", help="the image with missing pixels")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--mask", metavar="FILE",
                     help="mask image of the same size: white = known, black = missing; grey values are "
                          "thresholded at half brightness (>= 0.5 known, < 0.5 missing) and the command says how "
                          "many pixels were grey")
    how.add_argument("--keep-fraction", type=fraction, metavar="F",
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
    p.add_argument("--factor", type=positive_int, default=4, help="super-resolve: upscaling factor (default 4)")
    p.add_argument("--keep-fraction", type=fraction, metavar="F",
                   help="inpaint: drop pixels at random keeping this fraction (required for --task inpaint)")
    p.add_argument("--add-noise", type=positive_float, metavar="SIGMA",
                   help="denoise: first add noise of this sigma and report PSNRs against the inputs")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="B",
                   help="images per compiled call (default 8)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out images that cannot be read (listed under 'skipped' in batch.json) and restore "
                        "the rest; without it an unreadable image stops the batch before any fitting")
    _common(p, "denoising", "sr_x4", "sr_x8", "restoration_50")
    multiprocess.add_options(p)

    EXPERIMENTS = experiments.EXPERIMENTS
    p = sub.add_parser("experiment", help="run an experiment of the paper into run folders (as experiments/NAME.py)",
                       description="Run one of the paper's experiments (the scripts in experiments/ call this): "
                                   + "; ".join(f"{n} (variants {', '.join(v)}; default {d})"
                                               for n, (v, d) in EXPERIMENTS.items()))
    p.add_argument("name", choices=sorted(EXPERIMENTS), metavar="NAME",
                   help=f"the experiment: {', '.join(sorted(EXPERIMENTS))}")
    p.add_argument("--variant", help="which setting of the paper (default: the experiment's first)")
    experiment_options(p)

    p = sub.add_parser("run-all", help="run every experiment of the paper (or --only some), then the report",
                       description="Run the experiments one after another into OUT/TASK/IMAGE/, write OUT/run_all.json "
                                   "and OUT/report.md. Those that need classifier weights are skipped without "
                                   "--weights unless --quick (random weights).")
    run_all_options(p)

    p = sub.add_parser("quality", help="each addition (generators, ensembles ...) against the paper's default",
                       description="Denoise centre crops of this repository's photos (data/, and the original's "
                                   "clean images when its data folder is present) with each variant of "
                                   "dip_jax.app.quality.VARIANTS, for several seeds, and print a markdown table: "
                                   "PSNR mean +- std, steps, seconds, parameters; plus the ensembles' per-image "
                                   "gain over one restart and Spearman(std, |error|).")
    p.add_argument("--image", action="append", metavar="FILE", help="clean image (repeatable; default: data/ ...)")
    p.add_argument("--data", metavar="DIR", help="the original's data folder ('none': data/ only)")
    p.add_argument("--variant", action="append", metavar="NAME",
                   help="only these rows (repeatable): " + ", ".join(v.key for v in quality.VARIANTS))
    p.add_argument("--size", type=positive_int, default=64, help="crop size in pixels (default 64)")
    p.add_argument("--steps", type=positive_int, default=300, metavar="N", help="steps per fit (default 300)")
    p.add_argument("--seeds", type=positive_int, default=2, metavar="S", help="seeds 0..S-1 (default 2)")
    p.add_argument("--sigma", type=positive_float, default=25.0, help="noise sigma, 0..255 units (default 25)")
    p.add_argument("--width", type=positive_int, metavar="W",
                   help="narrow the default skip net to W channels per layer (default: the paper's 128)")
    p.add_argument("--scales", type=positive_int, metavar="K", help="with --width: K scales instead of 5")
    p.add_argument("--out", metavar="FILE", help="also write the markdown here")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False,
                   help="show progress bars (default off)")

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



def experiment_options(p: argparse.ArgumentParser) -> None:
    """The options of `dip-jax experiment` and of the scripts in experiments/."""
    p.add_argument("--image", action="append", metavar="FILE",
                   help="input image (repeatable: several images are fitted in one batched call); "
                        "default: the task's image from the original's data folder, else a stand-in")
    p.add_argument("--mask", action="append", metavar="FILE", help="mask per --image (white = known pixel)")
    p.add_argument("--guide", action="append", metavar="FILE", help="flash photo per --image (flash/no-flash)")
    p.add_argument("--unit", action="append", type=int, metavar="N",
                   help="unit (channel or class index) to maximise; repeatable")
    p.add_argument("--weights", metavar="FILE", help="classifier weights (torchvision layout, .npz/.safetensors)")
    p.add_argument("--data", metavar="DIR",
                   help="the original's data folder (default: $DIP_DATA, else /work/shared/dip_data if present); "
                        "'none': use the stand-in images")
    p.add_argument("--restarts", type=positive_int, default=1, metavar="R",
                   help="independent fits per image (default 1)")
    p.add_argument("--steps", type=positive_int, metavar="N",
                   help="number of steps (default: the paper's, or quick's)")
    p.add_argument("--lr", type=positive_float, metavar="LR", help="learning rate (default: the paper's)")
    p.add_argument("--seed", type=seed_value, default=0, help="random seed (default 0)")
    p.add_argument("--quick", action="store_true", help="tiny images, few steps, narrow net (a smoke test)")
    p.add_argument("--out", default="runs", metavar="DIR", help="output folder (default: runs/)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: when the terminal is interactive)")
    p.add_argument("--checkpoint-every", type=positive_int, metavar="N",
                   help="write a checkpoint every N steps into OUT/TASK/ (also at the end and on Ctrl-C)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in OUT/TASK/")
    p.add_argument("--overwrite", action="store_true", help="delete earlier checkpoints in OUT/TASK/ and start over")


def run_all_options(p: argparse.ArgumentParser) -> None:
    """The options of `dip-jax run-all` and experiments/run_all.py."""
    p.add_argument("--only", action="append", metavar="NAME[:VARIANT]",
                   help=f"run only these (repeatable); default all: {', '.join(experiments.ALL_RUNS)}")
    p.add_argument("--quick", action="store_true", help="quick mode for every experiment")
    p.add_argument("--out", default="runs", metavar="DIR", help="output folder (default runs/)")
    p.add_argument("--weights", metavar="FILE",
                   help="AlexNet weights for feature inversion / activation maximisation")
    p.add_argument("--data", metavar="DIR", help="the original's data folder ('none': stand-in images)")
    p.add_argument("--seed", type=seed_value, default=0, help="random seed (default 0)")
    p.add_argument("--restarts", type=positive_int, default=1, metavar="R", help="fits per image (default 1)")


def _cmd_run_all(args, prog: str = PROG) -> int:
    return experiments.run_all(args, lambda name, argv: script_main(name, argv, description=""), prog)


def run_all_main(argv: Sequence[str] | None = None, *, description: str, prog: str = "run_all.py") -> int:
    """experiments/run_all.py: `dip-jax run-all` under the script's name (errors: one line, exit 2)."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    run_all_options(p)
    args = p.parse_args(argv)
    try:
        return _cmd_run_all(args, prog)
    except ValueError as err:
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


def _experiment_variant(args, name: str, prog: str):
    variants, default = experiments.EXPERIMENTS[name]
    variant = args.variant or default
    if variant not in variants:
        raise ValueError(f"--variant {variant!r} is not one of {name}'s: {', '.join(sorted(variants))}")
    return variants[variant]


def _run_experiment(args, task_names, prog: str) -> int:
    """Run an experiment's tasks; one error line (exit 2) or the interruption's line (exit 130)."""
    import dip_jax as dj

    try:
        return experiments.run(args, task_names)
    except ValueError as err:  # io.ImageIOError and checkpoint.CheckpointError are ValueErrors
        message = " ".join(str(getattr(err, "cli_message", None) or err).split())
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except dj.Interrupted as stop:
        where = (f"checkpoint {str(stop.checkpoint_path)!r}; run the same command with --resume to continue"
                 if stop.checkpoint_path is not None else "no checkpoint (use --checkpoint-every N to be able to resume)")
        print(f"{prog}: interrupted after step {stop.step}; partial results written as result.partial.png; {where}",
              file=sys.stderr)
        return 130


def experiment_main(argv: Sequence[str] | None = None, *, variants: dict, default_variant: str, description: str,
                    prog: str | None = None) -> int:
    """The command line of an experiment script: run its task(s), write run folders, print a summary."""
    from pathlib import Path

    prog = prog or Path(sys.argv[0]).name
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if len(variants) > 1:
        p.add_argument("--variant", choices=sorted(variants), default=default_variant,
                       help=f"which setting of the paper (default: {default_variant})")
    experiment_options(p)
    args = p.parse_args(argv)
    return _run_experiment(args, variants[getattr(args, "variant", default_variant)], prog)


def script_main(name: str, argv: Sequence[str] | None = None, *, description: str) -> int:
    """`experiments/NAME.py`: `experiment_main` with the experiment's variants (see `experiments.EXPERIMENTS`)."""
    variants, default = experiments.EXPERIMENTS[name]
    return experiment_main(argv, variants=variants, default_variant=default, description=description,
                           prog=f"{name}.py")


def _cmd_experiment(args) -> int:
    return _run_experiment(args, _experiment_variant(args, args.name, PROG), PROG)


COMMANDS = {
    "demo": commands.cmd_demo,
    "denoise": commands.cmd_denoise,
    "super-resolve": commands.cmd_super_resolve,
    "inpaint": commands.cmd_inpaint,
    "deblur": commands.cmd_deblur,
    "flash": commands.cmd_flash,
    "batch": batch.cmd_batch,
    "report": commands.cmd_report,
    "experiment": _cmd_experiment,
    "run-all": _cmd_run_all,
    "quality": quality.cmd_quality,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dip-jax` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    args.argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]  # `batch --processes` re-runs it
    try:
        commands.check_fit_options(args)  # before any image is read
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
