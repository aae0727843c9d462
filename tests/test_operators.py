"""dip_jax.operators: forward models, exact adjoints, eager = jit = vmap, validation."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
import scipy.signal
from hypothesis import given, settings, strategies as st

from dip_jax import kernels
from dip_jax.operators import Blur, Compose, Downsample, Identity, Mask, bernoulli_mask

GOLDEN = np.load(pathlib.Path(__file__).parent / "golden" / "downsampler.npz")


# Test data come from numpy: jax.random compiles anew for every shape, which dominates run time.
def random_images(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


def random_normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def make_case(name, seed, image_shape):
    """(operator, args) for the operator `name` on images of `image_shape`."""
    n, h, w, c = image_shape
    rng = np.random.default_rng(seed)
    if name == "identity":
        op = Identity()
        return op, op.make_args()
    if name == "mask":
        op = Mask()
        return op, op.make_args(rng.uniform(size=(n, h, w, 1)) >= 0.5)
    if name == "mask_soft_per_channel":
        op = Mask()
        return op, op.make_args(rng.uniform(size=(n, h, w, c)))
    if name.startswith("downsample"):
        op = Downsample(2, kernel_type=name.split("_")[1])
        # Perturbed per image, so that batching over kernels is exercised.
        kernel = op.make_args() * (1 + 0.2 * rng.uniform(size=op.make_args().shape))
        return op, kernel / kernel.sum()
    if name.startswith("blur"):
        op = Blur(padding=name.split("_")[1])
        return op, op.make_args(rng.uniform(size=(3, 4)))
    if name == "compose":
        op = Compose((Blur(padding="circular"), Mask(), Downsample(2)))
        return op, op.make_args((rng.uniform(size=(3, 3)),), (rng.uniform(size=(1, h, w, 1)) >= 0.3,), ())
    raise KeyError(name)


OPERATOR_NAMES = ["identity", "mask", "mask_soft_per_channel", "downsample_lanczos2", "downsample_lanczos3",
                  "downsample_gauss12", "downsample_box", "blur_reflect", "blur_symmetric", "blur_edge",
                  "blur_circular", "blur_zero", "blur_valid", "compose"]


def assert_adjoint(op, args, x, y, apply=None, adjoint=None):
    """<A x, y> = <x, A^T y>, relative to |A x| |y| (so a sum near 0 cannot hide an error)."""
    ax = np.asarray((apply or op.apply)(x, args), np.float64)
    aty = np.asarray((adjoint or op.adjoint)(y, args), np.float64)
    assert aty.shape == x.shape and ax.shape == y.shape
    y = np.asarray(y, np.float64)
    lhs = np.sum(ax * y)
    rhs = np.sum(np.asarray(x, np.float64) * aty)
    assert abs(lhs - rhs) <= 1e-5 * np.sqrt(np.sum(ax**2) * np.sum(y**2)), (lhs, rhs)


# eager = jit = vmap for each operator (one representative per code path; the
# adjoint identity below covers every configuration).
TRANSFORM_NAMES = ["identity", "mask", "downsample_lanczos2", "downsample_gauss12", "blur_reflect",
                   "blur_valid", "compose"]


def batched_case(name, seed, batch=2, image_shape=(1, 16, 12, 3)):
    cases = [make_case(name, seed + i, image_shape) for i in range(batch)]
    args = [a for _, a in cases]
    stacked = None if args[0] is None else jax.tree.map(lambda *a: jnp.stack(a), *args)
    return cases[0][0], args, stacked


@pytest.mark.parametrize("name", TRANSFORM_NAMES)
def test_apply_eager_jit_vmap(name):
    image_shape = (1, 16, 12, 3)
    op, args, stacked = batched_case(name, 3)
    xs = random_images(4, (2,) + image_shape)
    eager = jnp.stack([op.apply(xs[i], args[i]) for i in range(2)])
    jitted = jnp.stack([jax.jit(op.apply)(xs[i], args[i]) for i in range(2)])
    vmapped = jax.vmap(op.apply)(xs, stacked)
    jit_vmapped = jax.jit(jax.vmap(op.apply))(xs, stacked)
    assert eager.shape == (2,) + op.output_shape(image_shape, args[0])
    assert eager.dtype == jnp.float32
    if name != "identity":  # per-image args really differ
        assert not np.allclose(eager[0], op.apply(xs[0], args[1]))
    np.testing.assert_allclose(jitted, eager, atol=1e-6)
    np.testing.assert_allclose(vmapped, eager, atol=1e-6)
    np.testing.assert_allclose(jit_vmapped, eager, atol=1e-6)


@pytest.mark.parametrize("name", TRANSFORM_NAMES)
def test_adjoint_eager_jit_vmap(name):
    image_shape = (1, 16, 12, 3)
    op, args, stacked = batched_case(name, 5)
    ys = random_images(8, (2,) + op.output_shape(image_shape, args[0])) - 0.5
    eager = jnp.stack([op.adjoint(ys[i], args[i]) for i in range(2)])
    assert eager.shape == (2,) + image_shape
    np.testing.assert_allclose(jnp.stack([jax.jit(op.adjoint)(ys[i], args[i]) for i in range(2)]),
                               eager, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(op.adjoint)(ys, stacked), eager, atol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.vmap(op.adjoint))(ys, stacked), eager, atol=1e-6)


@pytest.mark.parametrize("name", OPERATOR_NAMES)
def test_adjoint_identity(name):
    image_shape = (1, 16, 12, 3)
    op, args = make_case(name, 9, image_shape)
    assert op.linear
    x = random_images(6, image_shape)
    y = random_images(8, op.output_shape(image_shape, args)) - 0.5
    assert_adjoint(op, args, x, y)


def test_operators_are_hashable_static_config():
    ops = [Identity(), Mask(), Downsample(4), Blur(), Compose([Blur(), Downsample(2)])]
    assert len(set(ops)) == len(ops)  # hashable, and distinct ops compare unequal
    assert Identity() != Mask() and Downsample(4) != Downsample(2)
    assert Compose([Blur(), Downsample(2)]) == Compose((Blur(), Downsample(2)))
    op = Downsample(2)
    apply = jax.jit(lambda op, x, args: op.apply(x, args), static_argnums=0)
    assert apply(op, jnp.zeros((1, 8, 8, 1)), op.make_args()).shape == (1, 4, 4, 1)


def test_downsample_is_the_original_downsampler():
    op = Downsample(4, kernel_type="lanczos3")
    out = op.apply(jnp.asarray(GOLDEN["image"]), op.make_args())
    np.testing.assert_allclose(out, GOLDEN["lanczos3_x4/output"], atol=1e-6)
    op = Downsample(4, kernel_type="gauss12")
    np.testing.assert_allclose(op.make_args(), GOLDEN["gauss12_x4_phase0/kernel"], atol=1e-7)


def test_mask_apply_and_broadcast():
    x = random_images(9, (2, 4, 5, 3))
    mask = np.zeros((4, 5))
    mask[1, 2] = 1
    op = Mask()
    out = np.array(op.apply(x, op.make_args(mask)))
    assert out.shape == (2, 4, 5, 3)
    np.testing.assert_array_equal(out[:, 1, 2], np.asarray(x)[:, 1, 2])
    out[:, 1, 2] = 0
    assert not out.any()


@pytest.mark.parametrize("padding,boundary", [("circular", "wrap"), ("symmetric", "symm"), ("zero", "fill")])
@pytest.mark.parametrize("kernel_shape", [(5, 4), (3, 3), (4, 6)])
def test_blur_is_scipy_convolve2d_same(padding, boundary, kernel_shape):
    kernel = np.random.default_rng(11).standard_normal(kernel_shape)
    x = random_images(10, (1, 13, 11, 2))
    out = np.asarray(Blur(padding=padding).apply(x, jnp.asarray(kernel)))
    for ch in range(2):
        expected = scipy.signal.convolve2d(np.asarray(x[0, :, :, ch], np.float64), kernel,
                                           mode="same", boundary=boundary)
        np.testing.assert_allclose(out[0, :, :, ch], expected, atol=1e-5)


@pytest.mark.parametrize("padding,mode", [("reflect", "mirror"), ("edge", "nearest"),
                                          ("symmetric", "reflect"), ("circular", "wrap"),
                                          ("zero", "constant")])
def test_blur_is_ndimage_convolve_for_odd_kernels(padding, mode):
    kernel = np.random.default_rng(12).standard_normal((5, 3))
    x = random_images(13, (1, 12, 10, 1))
    out = np.asarray(Blur(padding=padding).apply(x, jnp.asarray(kernel)))
    expected = scipy.ndimage.convolve(np.asarray(x[0, :, :, 0], np.float64), kernel, mode=mode)
    np.testing.assert_allclose(out[0, :, :, 0], expected, atol=1e-5)


def test_blur_valid():
    kernel = np.random.default_rng(14).standard_normal((4, 3))
    x = random_images(15, (1, 12, 10, 1))
    op = Blur(padding="valid")
    out = np.asarray(op.apply(x, jnp.asarray(kernel)))
    assert out.shape == op.output_shape(x.shape, kernel) == (1, 9, 8, 1)
    expected = scipy.signal.convolve2d(np.asarray(x[0, :, :, 0], np.float64), kernel, mode="valid")
    np.testing.assert_allclose(out[0, :, :, 0], expected, atol=1e-5)


def test_adjoint_check_detects_a_wrong_adjoint():
    op, args = make_case("blur_zero", 9, (1, 16, 12, 3))
    x, y = random_images(6, (1, 16, 12, 3)), random_images(8, (1, 16, 12, 3)) - 0.5
    with pytest.raises(AssertionError):
        assert_adjoint(op, args, x, y, adjoint=op.apply)  # the kernel is asymmetric: A is not A^T


def test_blur_circular_adjoint_is_correlation():
    kernel = np.random.default_rng(16).standard_normal((3, 5))
    y = random_images(17, (1, 9, 8, 1))
    adj = np.asarray(Blur(padding="circular").adjoint(y, jnp.asarray(kernel)))
    expected = scipy.signal.correlate2d(np.asarray(y[0, :, :, 0], np.float64), kernel, mode="same",
                                        boundary="wrap")
    # convolve2d('same') centres at (K-1)//2 in the full output, so its correlation partner is shifted
    # by one pixel along even axes; with odd (3, 5) kernels the two coincide.
    np.testing.assert_allclose(adj[0, :, :, 0], expected, atol=1e-5)


def test_compose_order_and_shapes():
    blur, down = Blur(padding="edge"), Downsample(2)
    op = Compose((blur, down))
    blur_kernel = jnp.asarray(kernels.gaussian_blur_kernel(5, 1.0), jnp.float32)
    args = op.make_args((blur_kernel,), ())
    x = random_images(18, (1, 16, 16, 3))
    np.testing.assert_allclose(op.apply(x, args), down.apply(blur.apply(x, args[0]), args[1]), atol=1e-7)
    y = random_images(19, (1, 8, 8, 3))
    np.testing.assert_allclose(op.adjoint(y, args), blur.adjoint(down.adjoint(y, args[1]), args[0]),
                               atol=1e-7)
    assert op.output_shape((1, 16, 16, 3)) == (1, 8, 8, 3)
    op.validate((1, 16, 16, 3), args)
    valid = Compose((Blur(padding="valid"), Identity()))
    assert valid.output_shape((1, 16, 16, 3), (blur_kernel, None)) == (1, 12, 12, 3)


def test_output_shapes():
    assert Identity().output_shape((2, 5, 7, 3)) == (2, 5, 7, 3)
    assert Mask().output_shape((2, 5, 7, 3)) == (2, 5, 7, 3)
    assert Downsample(4).output_shape((2, 32, 16, 3)) == (2, 8, 4, 3)
    assert Blur().output_shape((2, 5, 7, 3)) == (2, 5, 7, 3)
    assert Blur(padding="valid").output_shape((2, 5, 7, 3), jnp.ones((3, 2))) == (2, 3, 6, 3)


def test_bernoulli_mask():
    key, other_key = jax.random.PRNGKey(20), jax.random.PRNGKey(21)
    shape = (2, 32, 32, 1)
    mask = bernoulli_mask(key, shape, 0.3)
    assert mask.shape == shape and mask.dtype == jnp.float32
    assert set(np.unique(np.asarray(mask))) <= {0.0, 1.0}
    assert abs(float(mask.mean()) - 0.3) < 0.04  # 4 standard deviations for 2048 pixels
    np.testing.assert_array_equal(mask, bernoulli_mask(key, shape, 0.3))
    assert not np.array_equal(mask, bernoulli_mask(other_key, shape, 0.3))
    assert float(bernoulli_mask(key, shape, 0.0).max()) == 0.0
    assert float(bernoulli_mask(key, shape, 1.0).min()) == 1.0
    per_channel = np.asarray(bernoulli_mask(key, (1, 32, 32, 3), 0.5))
    assert not np.array_equal(per_channel[..., 0], per_channel[..., 1])
    jitted = jax.jit(bernoulli_mask, static_argnums=(1, 2))(key, shape, 0.3)
    np.testing.assert_array_equal(jitted, mask)
    batched = jax.vmap(lambda k: bernoulli_mask(k, shape, 0.3))(jnp.stack([key, other_key]))
    np.testing.assert_array_equal(batched[0], mask)
    np.testing.assert_array_equal(batched[1], bernoulli_mask(other_key, shape, 0.3))


IMAGE = (1, 16, 16, 3)


@pytest.mark.parametrize("op,image_shape,args,message", [
    (Identity(), (16, 16, 3), None, r"\(N, H, W, C\)"),
    (Identity(), IMAGE, jnp.ones(3), "takes no args"),
    (Mask(), IMAGE, jnp.ones((1, 16, 15, 1)), "mask is 16x15 but the image is 16x16"),
    (Mask(), IMAGE, jnp.ones((1, 16, 16, 2)), "channels"),
    (Mask(), IMAGE, jnp.ones((3, 16, 16, 1)), "batch size"),
    (Mask(), IMAGE, jnp.ones((16, 16, 1)), "build it with"),
    (Mask(), IMAGE, jnp.full((1, 16, 16, 1), 2.0), r"in \[0, 1\]"),
    (Mask(), IMAGE, jnp.full((1, 16, 16, 1), jnp.nan), "NaN"),
    (Mask(), IMAGE, None, "mask array"),
    (Downsample(3), IMAGE, jnp.ones((3, 3)) / 9, "not divisible by the factor 3"),
    (Downsample(2), IMAGE, jnp.ones((18, 18)), "bigger than the 16x16 image"),
    (Downsample(4, kernel_type="lanczos3"), IMAGE, Downsample(4, kernel_type="lanczos3").make_args(),
     "kernel 24x24 is bigger"),
    (Downsample(2), IMAGE, jnp.ones((4, 4, 1)), "2-D"),
    (Downsample(2), IMAGE, jnp.full((4, 4), jnp.inf), "NaN or infinite"),
    (Downsample(3), (1, 24, 24, 1), Downsample(3).make_args(), "even factor"),
    (Blur(), IMAGE, jnp.ones((17, 3)), "bigger than"),
    (Blur(), IMAGE, jnp.full((3, 3), jnp.nan), "NaN"),
    (Blur(), IMAGE, None, "kernel array"),
    (Compose((Blur(), Downsample(2))), IMAGE, (jnp.ones((3, 3)),), "needs a tuple of 2"),
    (Compose((Downsample(2), Downsample(4))), (1, 12, 12, 3),
     (Downsample(2).make_args(), Downsample(4).make_args()), "6x6 is not divisible by the factor 4"),
])
def test_validation_errors(op, image_shape, args, message):
    with pytest.raises(ValueError, match=message):
        op.validate(image_shape, args)


def test_valid_configurations_pass_validation():
    Identity().validate(IMAGE, None)
    Mask().validate(IMAGE, Mask().make_args(np.ones((16, 16))))
    Mask().validate(IMAGE, jnp.full((1, 16, 16, 3), 0.5))
    lanczos3 = Downsample(4, kernel_type="lanczos3")
    lanczos3.validate((1, 32, 24, 3), lanczos3.make_args())
    gauss_odd_factor = Downsample(3, kernel_type="gauss12")
    gauss_odd_factor.validate((1, 24, 24, 1), gauss_odd_factor.make_args())
    Blur(padding="valid").validate(IMAGE, jnp.ones((16, 16)))


@pytest.mark.parametrize("make,message", [
    (lambda: Downsample(0), "positive int"),
    (lambda: Downsample(2, kernel_type="bicubic"), "not one of"),
    (lambda: Downsample(2, phase=0.3), "phase"),
    (lambda: Blur(padding="mirror"), "not one of"),
    (lambda: Compose(()), "at least one"),
    (lambda: bernoulli_mask(jax.random.PRNGKey(0), (1, 4, 4, 1), 1.5), "keep_fraction"),
    (lambda: bernoulli_mask(jax.random.PRNGKey(0), (4, 4, 1), 0.5), r"\(N, H, W, C\)"),
    (lambda: Mask().make_args(np.ones(4)), "mask must be"),
    (lambda: Blur().make_args(np.ones((3, 3, 1))), "2-D"),
    (lambda: Blur(padding="valid").output_shape(IMAGE), "pass args"),
    (lambda: Compose((Identity(), Identity())).make_args(()), "make_args got 1 entries for 2 ops"),
    (lambda: Downsample(3).adjoint(jnp.zeros((1, 4, 4, 1)), Downsample(3).make_args()), "even factor"),
])
def test_construction_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# Property tests: random shapes and contents; few examples since every new shape compiles
# (jitted with the operator static, so each (operator, shape) compiles once).
jit_apply = jax.jit(lambda op, x, args: op.apply(x, args), static_argnums=0)
jit_adjoint = jax.jit(lambda op, y, args: op.adjoint(y, args), static_argnums=0)
shapes = st.tuples(st.integers(1, 2), st.sampled_from([2, 5]), st.sampled_from([3, 4]),
                   st.sampled_from([1, 3]))
HYPOTHESIS = settings(max_examples=6, deadline=None)


def property_case(kind, shape, seed):
    n, h, w, c = shape
    rng = np.random.default_rng(seed)
    if kind == "mask":
        return Mask(), jnp.asarray(rng.uniform(size=(n, h, w, 1)), jnp.float32), shape
    if kind == "downsample":
        factor = 2
        shape = (n, h * factor * 2, w * factor * 2, c)
        return Downsample(factor, kernel_type="lanczos2"), Downsample(factor).make_args(), shape
    kernel = jnp.asarray(rng.standard_normal((min(h, 3), min(w, 4))), jnp.float32)
    return Blur(padding=kind), kernel, shape


KINDS = st.sampled_from(["mask", "downsample", "reflect", "symmetric", "edge", "circular", "zero", "valid"])


@HYPOTHESIS
@given(kind=KINDS, shape=shapes, seed=st.integers(0, 2**16), a=st.floats(-3, 3), b=st.floats(-3, 3))
def test_property_linearity(kind, shape, seed, a, b):
    op, args, shape = property_case(kind, shape, seed)
    x1, x2 = random_normal(seed + 1, shape), random_normal(seed + 2, shape)
    lhs = jit_apply(op, a * x1 + b * x2, args)
    rhs = a * jit_apply(op, x1, args) + b * jit_apply(op, x2, args)
    np.testing.assert_allclose(lhs, rhs, atol=1e-4 * (1 + abs(a) + abs(b)))


@HYPOTHESIS
@given(kind=KINDS, shape=shapes, seed=st.integers(0, 2**16))
def test_property_adjoint_identity(kind, shape, seed):
    op, args, shape = property_case(kind, shape, seed)
    x = random_normal(seed + 1, shape)
    y = random_normal(seed + 2, op.output_shape(shape, args))
    assert_adjoint(op, args, x, y, apply=lambda x, a: jit_apply(op, x, a),
                   adjoint=lambda y, a: jit_adjoint(op, y, a))


def test_protocol_image_like_and_input_size():
    from dip_jax import operators

    image_ops = [Identity(), Mask(), Downsample(2), Blur(), Compose((Blur(), Downsample(2))),
                 operators.PerImageKernel(Downsample(4)), operators.PerImageKernel(Blur())]
    assert all(op.image_like for op in image_ops)
    classifier_ops = [operators.ClassifierFeatures("alexnet", "fc6", 8), operators.ClassifierUnit("alexnet", "fc8", 8)]
    assert not any(op.image_like for op in classifier_ops)
    assert not Compose((Identity(), classifier_ops[0])).image_like
    assert operators.input_size(Identity(), (5, 6)) == (5, 6)
    assert operators.input_size(Compose((Blur(), Downsample(2), Downsample(3))), (5, 6)) == (30, 36)
    assert operators.input_size(operators.PerImageKernel(Downsample(4)), (3, 5)) == (12, 20)
    with pytest.raises(ValueError, match="image_size"):
        operators.input_size(Compose((Blur("valid"),)), (5, 6))
    with pytest.raises(ValueError, match="at least 8x8"):
        classifier_ops[0].validate((1, 4, 16, 3), None)


def test_per_image_kernel_takes_a_stacked_kernel_slice():
    from dip_jax import operators

    op = operators.PerImageKernel(Blur("valid"))
    kernel = jnp.asarray(np.random.default_rng(0).uniform(size=(3, 3)), jnp.float32)
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(1, 8, 8, 2)), jnp.float32)
    np.testing.assert_array_equal(op.apply(x, kernel[None]), Blur("valid").apply(x, kernel))
    assert op.output_shape(x.shape, kernel[None]) == (1, 6, 6, 2)
    y = op.apply(x, kernel[None])
    np.testing.assert_allclose(op.adjoint(y, kernel[None]), Blur("valid").adjoint(y, kernel), atol=1e-6)
    with pytest.raises(ValueError, match="bigger than"):
        op.validate((1, 2, 2, 1), kernel[None])
