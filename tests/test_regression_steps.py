"""Numbers unchanged: the first steps of a few fixed-seed fits match the pre-redesign fixture.

`tests/fixtures/regression_steps.npz` holds, for each case below, the inputs,
the per-step history (loss, PSNRs, backtracks) of the first `STEPS` steps and
the outputs after the last one (the read-out f(z) and the averaged output),
computed once by `tests/fixtures/make_regression_steps.py` from the code
before issue 14's redesign (its `config` entry records the settings). The
cases use only what a user calls: the task registry, `experiment.prepare_samples`
/ `fit_samples` and `dj.fit`. If the public API changes, port `run_case`
and `make_inputs` here; never regenerate the fixture from the new code.

Tolerances: outputs 1e-5 absolute; per-step history 1e-5 relative.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform

import jax
import numpy as np
import pytest

import dip_jax as dj
from dip_jax.app import fitting, observations, tasks

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "regression_steps.npz"
DATA = pathlib.Path(__file__).resolve().parents[1] / "data"
STEPS = 10
OUTPUT_ATOL = 1e-5
HISTORY_RTOL = 1e-5

# name -> (task, images (repo data/), masks, restarts, how it is fitted, FitConfig changes)
CASES = {
    # Averaging (quick ema 0.9), backtracking and reg_noise_std 1/30 as the task's.
    "denoising": ("denoising", ["astronaut_128.png"], None, 1, "fit_samples", {}),
    # In 10 steps neither backtracking (5 dB) nor divergence rollback (15 dB) fires
    # at the task's settings; a large step and low thresholds make each fire
    # (a rollback at step 2, a backtrack at step 4, both well past the threshold).
    "denoising_rollback_backtrack": ("denoising", ["astronaut_128.png"], None, 1, "fit_samples",
                                     {"learning_rate": 0.5, "backtrack_drop_db": 1.0, "divergence_drop_db": 2.0}),
    "text_inpainting": ("text_inpainting", ["astronaut_128.png"], ["mask_text_128.png"], 1, "fit_samples", {}),
    "sr_x4": ("sr_x4", ["astronaut_128.png"], None, 1, "fit_samples", {}),
    # 2 images x 2 restarts in one dj.fit call.
    "batch_vmap": ("denoising", ["astronaut_128.png", "camera_128.png"], None, 2, "vmap", {}),
    "batch_map": ("denoising", ["astronaut_128.png", "camera_128.png"], None, 2, "map", {}),
}
INPUT_SEED = 0
FIT_SEED = 1


def case_task(name: str) -> tasks.TaskConfig:
    """The task's quick variant (64 px, narrow net) cut to `STEPS` steps (one chunk), with the case's changes."""
    task = tasks.task(CASES[name][0]).quick_variant().with_steps(STEPS)
    return dataclasses.replace(task, fit=dataclasses.replace(task.fit, **CASES[name][5]))


def make_inputs(name: str) -> dict[str, np.ndarray]:
    """The case's observation (and ground truth, mask) as a user makes them: `prepare_samples(..., quick=True)`."""
    task_name, images, masks = CASES[name][:3]
    samples = observations.prepare_samples(
        jax.random.key(INPUT_SEED), case_task(name),
        images=[str(DATA / f) for f in images],
        masks=None if masks is None else [str(DATA / f) for f in masks],
        quick=True,
    )
    out = {
        "observation": np.stack([s.observation for s in samples]),
        "ground_truth": np.stack([s.ground_truth for s in samples]),
    }
    if samples[0].mask is not None:
        out["mask"] = np.stack([s.mask for s in samples])
    return out


def run_case(name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Fit the case from `inputs`; the history (steps, N, R) and outputs (N, R, H, W, C) to compare."""
    restarts, how = CASES[name][3:5]
    task = case_task(name)
    key = jax.random.key(FIT_SEED)
    if how == "fit_samples":
        samples = [
            observations.Sample(name=f"image{i}", observation=inputs["observation"][i],
                              ground_truth=inputs["ground_truth"][i],
                              mask=None if "mask" not in inputs else inputs["mask"][i])
            for i in range(inputs["observation"].shape[0])
        ]
        results = fitting.fit_samples(key, task, samples, restarts=restarts)
        out = {f"history/{k}": np.stack([r.history[k] for r in results], axis=1) for k in results[0].history}
        out["output"] = np.stack([r.outputs for r in results])
        out["restored"] = np.stack([r.per_restart for r in results])
        out["num_backtracks"] = np.stack([r.num_backtracks for r in results])
        out["num_rollbacks"] = np.stack([r.num_rollbacks for r in results])
        return out
    fit_config = dataclasses.replace(task.fit, batch_mode=how)
    result = dj.fit(key, task.net, fit_config, inputs["observation"], ground_truth=inputs["ground_truth"],
                    restarts=restarts)
    out = {f"history/{k}": np.asarray(v) for k, v in result.history.items()}
    out["output"] = np.asarray(result.output)
    out["restored"] = np.asarray(result.output_avg)
    out["num_backtracks"] = np.asarray(result.num_backtracks)
    out["num_rollbacks"] = np.asarray(result.num_rollbacks)
    return out


def case_config(name: str) -> dict:
    """What produced the case (stored in the fixture's `config`)."""
    task_name, images, masks, restarts, how, changes = CASES[name]
    task = case_task(name)
    return {
        "task": f"tasks.task({task_name!r}).quick_variant().with_steps({STEPS})"
                + (f" with fit=dataclasses.replace(task.fit, **{changes!r})" if changes else ""),
        "inputs": {"call": "experiment.prepare_samples(jax.random.key(%d), task, images=..., masks=..., quick=True)"
                           % INPUT_SEED, "images": [f"data/{f}" for f in images],
                   "masks": None if masks is None else [f"data/{f}" for f in masks]},
        "fit": ("experiment.fit_samples(jax.random.key(%d), task, samples, restarts=%d)" % (FIT_SEED, restarts)
                if how == "fit_samples" else
                "dj.fit(jax.random.key(%d), task.net, dataclasses.replace(task.fit, batch_mode=%r), "
                "observation, ground_truth=ground_truth, restarts=%d)" % (FIT_SEED, how, restarts)),
        "task_config": task.to_dict(),
    }


def load_fixture(name: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs, expected) of one case from the fixture file."""
    with np.load(FIXTURE, allow_pickle=False) as f:
        prefix = f"{name}/"
        arrays = {k[len(prefix):]: f[k] for k in f.files if k.startswith(prefix)}
    inputs = {k[len("input/"):]: v for k, v in arrays.items() if k.startswith("input/")}
    expected = {k: v for k, v in arrays.items() if not k.startswith("input/")}
    return inputs, expected


# The one case held to looser bounds after its first step: under 'vmap' the redesign's state (each
# transform's own, no always-present average and backup) changes how XLA fuses the vmapped program,
# which rounds the mathematically zero gradients of the biases before BatchNorm differently, and
# Adam's first ~lr*sign(g) updates amplify that (10 steps: losses 0.7%, PSNRs 0.034 dB, outputs 0.029
# apart). The first step still agrees exactly; the 'map' cases
# (the CPU default) are bit-for-bit. At 300 steps the old code's own vmap and map runs of this case
# differ by up to 0.31 dB per restart, and the redesign's vmap run lies within that spread
# (docs/performance.md, "Numbers across the redesign").
LOOSE_AFTER_FIRST_STEP = {"batch_vmap": (1e-2, 0.05)}  # (history rtol, output atol) from step 2 on


def compare(expected: dict[str, np.ndarray], got: dict[str, np.ndarray], *, loose=None) -> list[str]:
    """The fields that differ beyond the tolerances (empty when the numbers are unchanged)."""
    problems = []
    if set(expected) != set(got):
        problems.append(f"fields differ: fixture {sorted(expected)}, now {sorted(got)}")
    for k in sorted(set(expected) & set(got)):
        e, g = np.asarray(expected[k]), np.asarray(got[k])
        if e.shape != g.shape:
            problems.append(f"{k}: shape {g.shape}, fixture {e.shape}")
            continue
        if k.startswith("history/") and loose is not None:
            ok = (np.allclose(g[:1], e[:1], rtol=HISTORY_RTOL, atol=0.0, equal_nan=True)
                  and np.allclose(g, e, rtol=loose[0], atol=0.0, equal_nan=True))
        elif k.startswith("history/"):
            ok = np.allclose(g, e, rtol=HISTORY_RTOL, atol=0.0, equal_nan=True)
        elif k in ("num_backtracks", "num_rollbacks"):
            ok = np.array_equal(g, e)
        else:
            ok = np.allclose(g, e, rtol=0.0, atol=OUTPUT_ATOL if loose is None else loose[1])
        if not ok:
            diff = np.abs(g.astype(np.float64) - e.astype(np.float64))
            problems.append(f"{k}: max abs diff {np.nanmax(diff):.3g}")
    return problems


def test_fixture_records_its_settings():
    with np.load(FIXTURE, allow_pickle=False) as f:
        config = json.loads(str(f["config"]))
    # `task_config` is the pre-redesign TaskConfig.to_dict(), kept for people to
    # read; the redesign changes that schema, so it is not compared here.
    assert set(config["cases"]) == set(CASES)
    assert config["steps"] == STEPS
    assert all(config["cases"][name]["task_config"]["fit"]["num_steps"] == STEPS for name in CASES)
    # The guarded features really act within the fixture's steps.
    with np.load(FIXTURE, allow_pickle=False) as f:
        assert f["denoising_rollback_backtrack/num_backtracks"].sum() > 0
        assert f["denoising_rollback_backtrack/num_rollbacks"].sum() > 0
        assert "denoising/history/psnr_gt_avg" in f.files  # output averaging on


@pytest.mark.parametrize("name", list(CASES))
def test_inputs_unchanged(name):
    inputs, _ = load_fixture(name)
    made = make_inputs(name)
    assert set(made) == set(inputs)
    for k in inputs:
        np.testing.assert_allclose(made[k], inputs[k], rtol=0, atol=1e-6, err_msg=f"{name} {k}")


def _platform_differs() -> str | None:
    """Why this process cannot reproduce the fixture's rounding, or None.

    Adam's first updates are ~lr * sign(gradient), so rounding-level changes
    in near-zero gradients become O(lr) weight changes within a few steps
    (measured: XLA's default optimisation level instead of level 0, or 128-bit
    instead of 256-bit vectors, moves 10-step outputs by up to 0.15). The
    fixture was computed on an x86-64 CPU with AVX2 under the suite's XLA_FLAGS.
    """
    if jax.default_backend() != "cpu":
        return f"the fixture is from the CPU backend, this is {jax.default_backend()}"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the fixture is from an x86-64 CPU, this is {platform.machine()}"
    if "--xla_backend_optimization_level=0" not in os.environ.get("XLA_FLAGS", ""):
        return "the fixture was computed with XLA_FLAGS=--xla_backend_optimization_level=0 (tests/conftest.py)"
    return None


# 'auto' is 'map' on CPU, so the single-item cases already run under 'map'.
SLOW_CASES = {"batch_map"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_CASES else n for n in CASES]
)
def test_first_steps_unchanged(name):
    reason = _platform_differs()
    if reason:
        pytest.skip(reason)
    inputs, expected = load_fixture(name)
    got = run_case(name, inputs)
    problems = compare(expected, got, loose=LOOSE_AFTER_FIRST_STEP.get(name))
    assert not problems, f"{name}: " + "; ".join(problems)
