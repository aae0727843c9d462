"""Ensembles of restarts (issue 15, item 2): the mean restoration, the per-pixel std map over restarts
written as an image and an array, and the metrics that say whether the spread predicts the error."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from dip_jax import io
from dip_jax.app import cli, ensemble, fitting

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RGB = os.path.join(ROOT, "data", "chelsea_64.png")


def test_spearman_matches_a_rank_correlation_with_ties(monkeypatch):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 200).astype(float)  # many ties
    b = a + rng.normal(0, 2, 200)
    with_scipy = ensemble.spearman(a, b)
    # The fallback: average ranks, then Pearson's r of the ranks.
    monkeypatch.setitem(__import__("sys").modules, "scipy", None)
    fallback = ensemble.spearman(a, b)
    assert fallback == pytest.approx(with_scipy, abs=1e-12)
    assert 0.3 < fallback < 1
    assert ensemble.spearman(np.arange(10), -np.arange(10.0)) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="same size"):
        ensemble.spearman(np.zeros(3), np.zeros(4))


def test_std_map_image_and_metrics():
    rng = np.random.default_rng(1)
    gt = rng.random((8, 8, 3)).astype(np.float32)
    per_restart = np.stack([gt, gt, gt])
    per_restart[:, :4] += rng.normal(0, 0.1, (3, 4, 8, 3)).astype(np.float32)  # top half disagrees
    std = ensemble.std_map(per_restart)
    np.testing.assert_allclose(std, np.std(per_restart, axis=0), rtol=1e-5, atol=1e-7)
    assert np.all(std[4:] == 0) and np.all(std[:4] > 0)  # zero where the restarts agree
    image = ensemble.std_image(std)
    assert image.shape == (8, 8, 1) and image.max() == pytest.approx(1.0) and image.min() == 0.0
    assert np.all(ensemble.std_image(np.zeros((4, 4, 3))) == 0)
    found = ensemble.ensemble_metrics(per_restart, gt)
    assert found["std_max"] == pytest.approx(float(std.mean(axis=-1).max()))
    # The error lives where the restarts disagree: a clearly positive rank correlation.
    assert found["uncertainty_spearman"] > 0.5
    assert found["ensemble_gain_db"] > 0  # the mean of independent errors is closer
    assert ensemble.ensemble_metrics(per_restart[:1], gt) == {}


def test_cli_restarts_write_the_std_map_next_to_the_output_and_in_the_run_folder(tmp_path, capsys):
    image = tmp_path / "in.png"  # 32 px: a small fit (the compile dominates)
    io.save_image(image, io.load_image(RGB).image[16:48, 16:48])
    out, run_dir = tmp_path / "x.png", tmp_path / "run"
    argv = ["denoise", str(image), "--quick", "--steps", "12", "--restarts", "3", "--add-noise", "25", "--out", str(out),
            "--run-dir", str(run_dir), "--no-progress"]
    assert cli.main(argv) == 0
    line = capsys.readouterr().out
    assert "std over 3 restarts" in line and "Spearman" in line
    raw = np.load(tmp_path / "x.std.npy")
    assert raw.shape == (32, 32, 3) and raw.dtype == np.float32 and np.all(raw >= 0) and raw.max() > 0
    shown = io.load_image(tmp_path / "x.std.png").image
    assert shown.shape == (32, 32, 1)
    np.testing.assert_allclose(shown, ensemble.std_image(raw), atol=1 / 255)
    # The run folder: the same map, each restart, and the ensemble numbers.
    np.testing.assert_array_equal(np.load(run_dir / "std.npy"), raw)
    restarts = np.stack([io.load_image(run_dir / f"restart_{r}.png").image for r in range(3)])
    np.testing.assert_allclose(raw, np.std(restarts, axis=0), atol=2 / 255)  # the PNGs are 8-bit
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["restarts"] == 3
    assert metrics["psnr_restart_mean"] == pytest.approx(np.mean(metrics["psnr_restarts"]))
    assert metrics["ensemble_gain_db"] == pytest.approx(metrics["psnr"] - metrics["psnr_restart_mean"])
    assert -1 <= metrics["uncertainty_spearman"] <= 1
    # A second run refuses to replace the std map it wrote, like the output image.
    out.unlink()
    assert cli.main(argv[:-3] + ["--no-progress"]) == 2
    assert "x.std" in capsys.readouterr().err


def test_sample_result_std_is_the_std_over_restarts():
    rng = np.random.default_rng(2)
    per_restart = rng.random((2, 4, 4, 3)).astype(np.float32)
    result = fitting.SampleResult(restored=per_restart.mean(0), per_restart=per_restart, outputs=per_restart,
                                  history={}, seconds=0.0, images_in_call=1, num_backtracks=np.zeros(2))
    np.testing.assert_allclose(result.std, np.std(per_restart, axis=0), rtol=1e-5, atol=1e-7)


def test_batch_restarts_write_std_maps_and_refuse_a_collision(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DIP_JAX_COMPILE_CACHE", "0")
    rng = np.random.default_rng(3)
    folder = tmp_path / "in"
    folder.mkdir()
    io.save_image(folder / "a.png", rng.random((32, 32, 3)).astype(np.float32))

    def fake_fit(key, task, samples, *, restarts=1, **options):
        out = []
        for s in samples:
            per = np.stack([np.clip(s.observation + 0.05 * r, 0, 1) for r in range(restarts)]).astype(np.float32)
            out.append(fitting.SampleResult(restored=per.mean(0), per_restart=per, outputs=per,
                                            history={"loss": np.zeros((1, restarts))}, seconds=0.0,
                                            images_in_call=len(samples), num_backtracks=np.zeros(restarts)))
        return out

    monkeypatch.setattr(fitting, "fit_samples", fake_fit)
    out_dir = tmp_path / "out"
    assert cli.main(["batch", str(folder), "--out", str(out_dir), "--restarts", "2", "--add-noise", "25",
                     "--no-progress"]) == 0
    summary = json.loads((out_dir / "batch.json").read_text())
    entry = summary["images"][0]
    assert entry["std"] == [str(out_dir / "a.std.png"), str(out_dir / "a.std.npy")]
    assert "psnr_restart_mean" in entry and "uncertainty_spearman" in entry
    assert np.load(out_dir / "a.std.npy").shape == (32, 32, 3)
    # An input named a.std.png would be written by two outputs: refused before any fit.
    io.save_image(folder / "a.std.png", rng.random((32, 32, 3)).astype(np.float32))
    assert cli.main(["batch", str(folder), "--out", str(tmp_path / "out2"), "--restarts", "2",
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "a.std.png" in err and "would both write" in err
