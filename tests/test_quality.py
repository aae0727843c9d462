"""`dip-jax quality` (issue 15, item 7): the variants are data, the table says what was measured, and the
command checks its inputs and output before fitting."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from dip_jax import io, nets
from dip_jax.app import cli, fitting, quality

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RGB = os.path.join(ROOT, "data", "chelsea_64.png")
GREY = os.path.join(ROOT, "data", "camera_128.png")


def test_every_new_generator_preset_has_a_row_and_rows_are_one_entry_each():
    keys = [v.key for v in quality.VARIANTS]
    assert len(set(keys)) == len(keys) and keys[0] == "default"
    for preset in ("deep_decoder", "convdecoder", "attention_unet", "texture_nets", "dcgan"):
        assert preset in nets.PRESETS and any(v.net == preset for v in quality.VARIANTS), preset
    assert any(v.restarts == 4 for v in quality.VARIANTS)
    from dip_jax.app import tasks

    # Each change row switches on what it names, and only that.
    base = tasks.task("denoising")
    changed = {v.key: v.change(base).fit for v in quality.VARIANTS if v.change is not None}
    assert changed["tv"].tv_weight == quality.TV_WEIGHT > 0 and base.fit.tv_weight == 0
    assert changed["es_wmv"].auto_stop and changed["sgld"].sgld
    with pytest.raises(ValueError, match="--variant 'nope'"):
        quality.find_variants(["nope"])
    assert [v.key for v in quality.find_variants(["ensemble", "default"])] == ["ensemble", "default"]


def test_default_images_are_the_project_photos_and_the_originals_when_present(tmp_path):
    (tmp_path / "denoising").mkdir()
    io.save_image(tmp_path / "denoising" / "F16_GT.png", np.zeros((8, 8, 3), np.float32))
    images = quality.default_images(str(tmp_path))
    assert [p.name for p in images[:-1]] == list(quality.PROJECT_IMAGES) and images[-1].name == "F16_GT.png"
    assert all(p.is_file() for p in quality.default_images("none"))


def _fake_fit(key, task, samples, *, restarts=1, **options):
    """A 'fit' that returns the clean image plus restart-dependent offsets: no compile, known PSNRs."""
    out = []
    for s in samples:
        per = np.stack([np.clip(s.ground_truth + 0.02 * (r + 1) * (-1) ** r, 0, 1) for r in range(restarts)])
        per = per.astype(np.float32)
        out.append(fitting.SampleResult(restored=per.mean(0), per_restart=per, outputs=per,
                                        history={"loss": np.zeros((1, restarts))}, seconds=0.0,
                                        images_in_call=len(samples), num_backtracks=np.zeros(restarts)))
    return out


def test_measure_and_table(monkeypatch):
    seen = []
    monkeypatch.setattr(fitting, "fit_samples", lambda *a, **k: seen.append((a[1], k["restarts"])) or _fake_fit(*a, **k))
    variants = quality.find_variants(["default", "dcgan", "ensemble"])
    rows, ensembles = quality.measure([quality.Path(RGB), quality.Path(GREY)], variants, size=32, steps=7, seeds=2,
                                      width=8, scales=2)
    assert [r.variant.key for r in rows] == ["default", "dcgan", "ensemble"]
    assert all(len(r.psnr) == 4 and r.steps == 7 for r in rows)  # 2 images x 2 seeds
    assert seen[0][0].net.num_channels_down == (8, 8) and seen[0][0].fit.ema_decay == 0.99  # the paper's loop
    assert seen[2][0].net.kind == "dcgan" and seen[-1][1] == 4
    assert len(ensembles) == 4 and all(e["ensemble_gain_db"] > 0 for e in ensembles)
    text = quality.markdown(rows, ensembles, {"sigma": 25, "size": 32, "images": 2, "seeds": 2, "net": "narrow"})
    assert "| paper default (skip net) |" in text and "| ensemble R=4 |" in text and "Spearman" in text
    assert "+0.00" in text  # the default's own delta


def test_a_variant_can_change_the_fit(monkeypatch):
    """What a later row (a stopping rule, a sampler) adds: one entry with a task change."""
    seen = []
    monkeypatch.setattr(fitting, "fit_samples", lambda *a, **k: seen.append(a[1]) or _fake_fit(*a, **k))
    lr_row = quality.Variant("slow_lr", "lr 0.001", "test", change=lambda t: dataclasses.replace(
        t, fit=dataclasses.replace(t.fit, learning_rate=0.001)))
    quality.measure([quality.Path(RGB)], [lr_row], size=32, steps=3, seeds=1, width=8, scales=2)
    assert seen[0].fit.learning_rate == 0.001


def test_quality_command_writes_its_table_and_refuses_before_fitting(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fitting, "fit_samples", _fake_fit)
    monkeypatch.setenv("DIP_JAX_COMPILE_CACHE", "0")
    out = tmp_path / "q.md"
    argv = ["quality", "--image", RGB, "--variant", "default", "--variant", "ensemble", "--size", "32", "--steps",
            "5", "--seeds", "1", "--width", "8", "--scales", "2", "--out", str(out)]
    assert cli.main(argv) == 0
    assert "| ensemble R=4 |" in out.read_text() and out.read_text() in capsys.readouterr().out
    assert cli.main(argv) == 2  # an existing --out needs --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(argv + ["--overwrite"]) == 0
    capsys.readouterr()

    def refuse(*args, **kwargs):
        raise AssertionError("fitted before refusing")

    monkeypatch.setattr(fitting, "fit_samples", refuse)
    for bad, named in ((["--size", "4096"], "--size"), (["--variant", "nope"], "--variant"),
                       (["--image", str(tmp_path / "missing.png")], "missing.png"),
                       (["--scales", "2"], "--width")):
        base = ["quality", "--seeds", "1"] + ([] if "--image" in bad else ["--image", RGB])
        assert cli.main(base + bad) == 2, bad
        assert named in capsys.readouterr().err.strip().splitlines()[-1], bad
