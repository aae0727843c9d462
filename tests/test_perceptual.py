"""The VGG perceptual loss (losses.Perceptual) with random weights in the classifier's layout; TV as a named
regulariser is covered in tests/test_transforms.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dip_jax as dj
from dip_jax import classifiers, losses, nets
from dip_jax.fit.objective import Terms

LOSS = losses.Perceptual(arch="vgg16", layers=("relu1_2", "relu2_2"))
_rng = np.random.default_rng(0)
A = jnp.asarray(_rng.uniform(0, 1, (1, 32, 32, 3)).astype(np.float32))
B = jnp.asarray(_rng.uniform(0, 1, (1, 32, 32, 3)).astype(np.float32))


@pytest.fixture(scope="module")
def params():
    # Random weights of the layers the loss runs, in load_classifier's layout (trim keeps exactly these).
    model = classifiers.TorchvisionClassifier(arch="vgg16")
    return model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), layer=LOSS.deepest)


def _terms(out, pred, target, shared):
    return Terms(out, pred, target, None, shared)


def test_zero_for_identical_images_positive_otherwise_and_gradients_flow(params):
    assert float(LOSS(_terms(A, A, A, params))) == 0.0
    assert float(LOSS(_terms(A, A, B, params))) > 0
    grad = jax.grad(lambda x: LOSS(_terms(x, x, B, params)))(A)
    assert np.isfinite(np.asarray(grad)).all() and np.abs(np.asarray(grad)).max() > 0
    # As a regulariser: the net output against shared['reference'].
    reg = losses.Perceptual(arch="vgg16", layers=("relu2_2",), against="reference", params_key="vgg")
    shared = {"vgg": params, "reference": B}
    assert float(reg(_terms(B, A, A, shared))) == 0.0 and float(reg(_terms(A, A, A, shared))) > 0


def test_trim_keeps_the_layers_it_runs():
    full = classifiers.TorchvisionClassifier(arch="vgg16").init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)),
                                                                layer="relu3_3")
    trimmed = LOSS.trim(full)
    assert sorted(trimmed["params"]) == ["features_0", "features_2", "features_5", "features_7"]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="vgg16"):
        losses.Perceptual(arch="alexnet")
    with pytest.raises(ValueError, match="against"):
        losses.Perceptual(against="noisy")


TINY = nets.narrow(nets.preset("default", num_input_channels=4), width=8, scales=3)
CFG = dj.FitConfig(num_steps=3, chunk_size=3, batch_mode="map")
KEY = jax.random.split(jax.random.key(2), 1)


@pytest.mark.slow  # ~45 s on the loaded 2-core CPU (VGG backward compile)
def test_a_three_step_fit_with_the_perceptual_data_term(params):
    result = dj.fit(KEY, TINY, CFG, np.asarray(B), loss_fn=LOSS, shared=params)
    loss = result.history["loss"][:, 0, 0]
    assert np.isfinite(loss).all() and loss[-1] < loss[0]


@pytest.mark.slow
def test_a_three_step_fit_with_a_perceptual_regulariser(params):
    reg = losses.Perceptual(arch="vgg16", layers=("relu1_2",), against="reference", params_key="vgg")
    result = dj.fit(KEY, TINY, CFG, np.asarray(B), regularisers=[(0.1, reg)],
                    shared={"vgg": params, "reference": B})
    loss, psnr_fit = result.history["loss"][:, 0, 0], result.history["psnr_fit"][:, 0, 0]
    assert np.isfinite(loss).all()
    # The loss is the MSE (from the data-fit PSNR) plus the positive perceptual term.
    assert (loss > 10 ** (-psnr_fit / 10) * 1.001).all()


@pytest.mark.slow  # ~1 min: writes a random VGG-16 file and runs 3 short batched fits
def test_the_measurement_script_prints_one_row_per_objective(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "perceptual.py"
    out = tmp_path / "perceptual.json"
    done = subprocess.run([sys.executable, str(script), "--steps", "2", "--size", "32", "--weight", "0.1",
                           "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "random He-normal weights (not a pretrained VGG)" in done.stdout
    rows = json.loads(out.read_text())["rows"]
    assert list(rows) == ["mse", "mse + 0.1 * perceptual", "perceptual"]
    for row in rows.values():
        assert len(row["psnr"]) == 5 and np.isfinite(row["psnr"]).all()
