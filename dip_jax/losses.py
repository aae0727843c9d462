"""Losses of the DIP fitting loop.

Contract: data terms and `total_variation` take float arrays of matching shape, images NHWC (N, H, W, C);
outputs are float32 scalars (sums/means over every element, batch included,
as the original). Fit one image per call and `vmap` for per-image losses.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def mse(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean of `(pred - target)**2` over all elements (the original's `torch.nn.MSELoss`).

    For inpainting pass `A(out) = out * mask` and `y * mask`: the mean stays
    over all elements, masked-out ones included, as in the original (so the
    loss scale depends on the fraction of observed pixels).
    """
    pred = jnp.asarray(pred)
    target = jnp.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} must have the same shape; "
                         f"apply the operator to the output before comparing with the observation")
    return jnp.mean(jnp.square(pred - target))


def total_variation(x: jax.Array, *, beta: float = 0.5) -> jax.Array:
    """`sum((dx**2 + dy**2) ** beta)` with forward differences (the original's `tv_loss`).

    `x` (N, H, W, C); per channel, on the common (H-1, W-1) region where both
    differences exist, summed over everything. At pixels where both
    differences are 0 the value is exactly 0 and the gradient is 0 (for
    beta < 1 the power is not differentiable there: the original's PyTorch
    backward gives NaN; we take the subgradient 0 instead, with a guarded
    power rather than an epsilon, so values equal the original's exactly).
    """
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be (N, H, W, C), got shape {x.shape}; add a batch axis with x[None]")
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta!r} (the original uses 0.5)")
    dx = x[:, :-1, 1:, :] - x[:, :-1, :-1, :]
    dy = x[:, 1:, :-1, :] - x[:, :-1, :-1, :]
    squared = jnp.square(dx) + jnp.square(dy)
    positive = squared > 0
    # Double `where`: the unused branch must not see 0 ** (beta - 1) either.
    powered = jnp.where(positive, jnp.where(positive, squared, 1.0) ** beta, 0.0)
    return jnp.sum(powered)


@dataclasses.dataclass(frozen=True)
class TotalVariation:
    """TV of the network output as a regulariser of an objective (`dip_jax.fit.objective`).

    A frozen dataclass rather than a closure: equal settings compare equal,
    so fits with the same regularisers share one compiled program.
    """

    beta: float = 0.5

    def __call__(self, terms) -> jax.Array:
        return total_variation(terms.out, beta=self.beta)


@dataclasses.dataclass(frozen=True)
class Perceptual:
    """VGG perceptual loss: the mean squared difference of VGG-16/19 activations (`dip_jax.classifiers`).

    The original's `utils/perceptual_loss` idea (features of a pretrained
    VGG compared instead of pixels). A callable of the objective's `Terms`,
    usable as the data term (`fit(..., loss_fn=Perceptual(...))`: compares
    the operator output `pred` with the observation `target`) or as a
    regulariser (`regularisers=[(w, Perceptual(..., against='reference'))]`:
    compares the net output `out` with `shared['reference']`, (1, H, W, 3)).
    The classifier's parameters come from the fit's `shared` argument (never
    baked into the compiled program): `shared` itself, or
    `shared[params_key]` when `params_key` is set (e.g. a dict that also holds
    the reference). Only the convolutions up to the deepest layer are used,
    so `trim(params)` of `classifiers.load_classifier`'s parameters (or
    random ones from `model.init(key, x, layer=deepest)`) suffices.

    Value: the mean over `layers` of mean((phi(a) - phi(b))^2); 0 when the
    images are equal. Grey images are repeated to RGB. Inputs must be at least
    `classifiers.min_input_size(arch)` pixels (32 for VGG).
    """

    arch: str = "vgg16"
    layers: tuple = ("relu1_2", "relu2_2", "relu3_3")
    against: str = "target"
    style: str = "torchvision"
    params_key: str | None = None

    # objective.value calls a data term with this flag as `term(terms)` (it needs `shared`).
    takes_terms = True

    def __post_init__(self):
        from dip_jax import classifiers

        if self.arch not in ("vgg16", "vgg19"):
            raise ValueError(f"the perceptual loss uses 'vgg16' or 'vgg19', got {self.arch!r}")
        if self.against not in ("target", "reference"):
            raise ValueError(f"against must be 'target' (pred vs the observation) or 'reference' (out vs "
                             f"shared['reference']), got {self.against!r}")
        if not self.layers:
            raise ValueError("give at least one VGG layer, e.g. layers=('relu2_2',)")
        object.__setattr__(self, "layers", tuple(classifiers.resolve_layer(self.arch, name) for name in self.layers))

    @property
    def deepest(self) -> str:
        from dip_jax import classifiers

        order = classifiers.layer_names(self.arch)
        return max(self.layers, key=order.index)

    def trim(self, params) -> dict:
        """`params` (flax layout of `classifiers.load_classifier`) keeping only the layers this loss runs."""
        from dip_jax import classifiers

        model = classifiers.TorchvisionClassifier(arch=self.arch)
        size = classifiers.min_input_size(self.arch)
        needed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                                   layer=self.deepest))
        inner = params["params"] if "params" in params else params
        return {"params": {k: inner[k] for k in needed["params"]}}

    def __call__(self, terms) -> jax.Array:
        from dip_jax import classifiers

        shared = terms.shared
        if shared is None:
            raise ValueError("the perceptual loss needs the classifier's parameters: pass shared=... to fit")
        params = shared[self.params_key] if self.params_key is not None else shared
        if self.against == "target":
            a, b = terms.pred, terms.target
        else:
            a, b = terms.out, shared["reference"]
        a, b = _rgb(jnp.asarray(a)), _rgb(jnp.asarray(b))
        if a.shape != b.shape:
            raise ValueError(f"the perceptual loss compares images of one shape, got {a.shape} and {b.shape}")
        model = classifiers.TorchvisionClassifier(arch=self.arch)
        both = jnp.concatenate([a, b.astype(a.dtype)], axis=0)  # one pass for both images
        total = 0.0
        for layer in self.layers:
            f = classifiers.features(model, params, both, layer, style=self.style)
            fa, fb = f[: a.shape[0]], f[a.shape[0]:]
            total = total + jnp.mean(jnp.square(fa - fb))
        return total / len(self.layers)


def _rgb(x: jax.Array) -> jax.Array:
    if x.ndim == 3:
        x = x[None]
    return jnp.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x
