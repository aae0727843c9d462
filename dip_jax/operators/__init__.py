"""Forward models `A` (corruption operators) for Deep Image Prior fitting.

The protocol (every operator is a frozen, hashable dataclass holding static
configuration only, so it can be a jit static argument; per-image data such
as a mask or a kernel travel separately as `args`, a pytree of arrays or
None, so `jax.vmap(op.apply)(images, args)` fits many images):

- `apply(x, args)`: `x` float32 (N, H, W, C) -> the observation `A x`.
  Operators that need parameters shared by every image (a classifier's
  weights) take them as a third argument, `apply(x, args, shared)`.
- `output_shape(image_shape, args=None)`: the observation's shape (`args` is
  only needed where the shape depends on them: `Blur(padding='valid')`).
- `validate(image_shape, args)`: host-side checks before fitting; raises
  ValueError saying what is wrong and how to fix it.
- `adjoint(y, args)` (optional): the exact adjoint `A^T y`, where `linear`.
- `input_size(output_size)` (optional): the image size (H, W) that maps to an
  observation of `output_size`; without it, the same size.
- `image_like: bool` (class attribute): True when the observation is an image
  in [0, 1] (the engine checks its range); False for feature or unit outputs.

Operators: `Identity` (denoising), `Mask` (inpainting; `bernoulli_mask` draws
random pixel masks), `Downsample` (super-resolution, the original's
downsampler), `Blur` (deblurring; not in the original), `Compose`,
`PerImageKernel` (one kernel per image for `Downsample`/`Blur`), and through a
classifier `ClassifierFeatures` (feature inversion) and `ClassifierUnit`
(activation maximisation, with its `UnitLoss`). A new operator is one class
with these methods, in any file; nothing registers it.
"""

from dip_jax.operators.classifier import ClassifierFeatures, ClassifierUnit, UnitLoss
from dip_jax.operators.image import (
    BLUR_PADDINGS,
    Blur,
    Compose,
    Downsample,
    Identity,
    Mask,
    bernoulli_mask,
    input_size,
)
from dip_jax.operators.per_image import PerImageKernel

__all__ = [
    "BLUR_PADDINGS", "Blur", "ClassifierFeatures", "ClassifierUnit", "Compose", "Downsample", "Identity", "Mask",
    "PerImageKernel", "UnitLoss", "bernoulli_mask", "input_size",
]
