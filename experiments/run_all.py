"""Run every experiment of the paper (or a selection) and write the report.

Each entry is SCRIPT or SCRIPT:VARIANT (see ALL_RUNS). Experiments that need
classifier weights are skipped without --weights unless --quick (random
weights). The summary goes to OUT/run_all.json, the report to OUT/report.md.

    python experiments/run_all.py --quick --out runs_quick      # every task, tiny (minutes on a CPU)
    python experiments/run_all.py --out runs --weights alexnet.safetensors
    python experiments/run_all.py --quick --only denoising:sigma25 --only sr_prior:all
"""

import argparse
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path

from dip_jax.app import runs

HERE = Path(__file__).resolve().parent

ALL_RUNS = (
    "denoising:sigma25",
    "denoising:sigma50",
    "denoising:real",
    "jpeg",
    "super_resolution:x4",
    "super_resolution:x8",
    "text_inpainting",
    "large_hole:vase",
    "large_hole:library",
    "large_hole:library_unet",
    "large_hole:library_resnet",
    "restoration:50",
    "restoration:98",
    "flash_no_flash",
    "feature_inversion",
    "activation_maximization:conv4",
    "activation_maximization:fc8",
    "sr_prior:all",
)
NEEDS_WEIGHTS = ("feature_inversion", "activation_maximization")


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"dip_jax_experiment_{name}", HERE / f"{name}.py")
    if spec is None or not (HERE / f"{name}.py").is_file():
        raise ValueError(f"no experiment script {name}.py in {HERE}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="run_all.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", metavar="SCRIPT[:VARIANT]",
                        help=f"run only these (repeatable); default all: {', '.join(ALL_RUNS)}")
    parser.add_argument("--quick", action="store_true", help="quick mode for every experiment")
    parser.add_argument("--out", default="runs", help="output folder (default runs/)")
    parser.add_argument("--weights", help="AlexNet weights for feature inversion / activation maximisation")
    parser.add_argument("--data", help="the original's data folder ('none': stand-in images)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--restarts", type=int, default=1)
    args = parser.parse_args(argv)
    selected = args.only or list(ALL_RUNS)
    summary = {}
    out = Path(args.out)
    for entry in selected:
        script, _, variant = entry.partition(":")
        argv_run = ["--out", str(out), "--seed", str(args.seed), "--restarts", str(args.restarts), "--no-progress"]
        if variant:
            argv_run += ["--variant", variant]
        if args.quick:
            argv_run.append("--quick")
        if args.data:
            argv_run += ["--data", args.data]
        if script in NEEDS_WEIGHTS:
            if args.weights:
                argv_run += ["--weights", args.weights]
            elif not args.quick:
                summary[entry] = {"status": "skipped", "reason": "needs --weights"}
                print(f"run_all: {entry}: skipped (needs --weights)", flush=True)
                continue
        t0 = time.perf_counter()
        try:
            code = _load_script(script).main(argv_run)
            status = {"status": "ok" if code == 0 else "failed", "exit_code": code}
        except Exception:  # keep going: one broken experiment must not hide the others
            status = {"status": "failed", "error": traceback.format_exc()}
        status["seconds"] = round(time.perf_counter() - t0, 1)
        summary[entry] = status
        print(f"run_all: {entry}: {status['status']} ({status['seconds']} s)", flush=True)
        if "error" in status:
            print(status["error"], file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run_all.json").write_text(json.dumps(summary, indent=2) + "\n")
    try:
        (out / "report.md").write_text(runs.report([out]))
    except ValueError as err:
        print(f"run_all: no report: {err}", file=sys.stderr)
    return 0 if all(s["status"] != "failed" for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
