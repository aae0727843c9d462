"""The top-level API a user imports: `import dip_jax as dj; dj.fit(...)`."""

import jax
import numpy as np

import dip_jax as dj


def test_the_public_names_are_few_and_importable():
    assert len(dj.__all__) <= 16
    for name in dj.__all__:
        assert getattr(dj, name) is not None, name


def test_fit_from_the_top_level_with_an_operator_and_a_regulariser():
    rng = np.random.default_rng(0)
    clean = rng.uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
    mask = (rng.uniform(0, 1, (2, 16, 16, 1)) > 0.3).astype(np.float32)
    net = dj.nets.narrow(dj.nets.preset("default", num_input_channels=4), width=8, scales=3)
    result = dj.fit(jax.random.split(jax.random.key(0), 2), net, dj.FitConfig(num_steps=3, chunk_size=3),
                    clean * mask, op=dj.operators.Mask(), op_args=mask, ground_truth=clean,
                    regularisers=[(1e-4, dj.losses.TotalVariation())])
    assert isinstance(result, dj.FitResult)
    assert result.restored.shape == (2, 16, 16, 3) and np.all(np.isfinite(result.restored))
    assert result.history["loss"].shape == (3, 2, 1)
