"""Image files <-> arrays: the only place where files become arrays and back.

Contract
--------
* In memory an image is ``float32`` with values in ``[0, 1]``, shaped
  ``(H, W, C)`` (one image) or ``(N, H, W, C)`` (a batch), ``C`` in ``{1, 3}``
  (greyscale or RGB). Alpha never travels inside the image: ``load_image``
  returns it separately as ``float32 (H, W, 1)`` and ``save_image`` takes it
  as a keyword argument, so the models only ever see grey or RGB.
* ``load_image`` reads anything Pillow can identify (PNG, TIFF, JPEG, BMP,
  GIF, WebP, PNM...), first frame only, and normalises it:

  ==================================  =============================  =========
  file pixel mode (Pillow name)       ``image`` channels / ``alpha``  bit depth
  ==================================  =============================  =========
  ``1``, ``L``                        1 / None                        8
  ``LA`` (``La``)                     1 / alpha                       8 or 16
  ``I;16``, ``I;16B``, ``I;16L``      1 / None                        16
  ``I`` (values within 0..65535)      1 / None                        16
  ``RGB``, ``RGBX``, ``YCbCr``        3 / None                        8 or 16
  ``RGBA`` (``RGBa``)                 3 / alpha                       8 or 16
  ``P``, ``PA`` (palette)             3 / alpha if transparent        8
  ``CMYK``                            3 / None (Pillow's conversion)  8
  ==================================  =============================  =========

  A PNG/TIFF ``transparency`` colour key becomes an alpha channel. The EXIF
  orientation tag is applied, so arrays are upright as viewers show them.
  Colour profiles (ICC) are ignored. Floating-point (``F``), ``LAB``,
  ``HSV`` and other modes raise :class:`ImageIOError`.
* Size limit: ``load_image`` refuses images above ``max_pixels`` (default
  64 million) after reading only the header, so decompression bombs never
  get decoded. Pillow's own ``Image.MAX_IMAGE_PIXELS`` check is set to the
  same limit for the call and its warning is turned into the same
  :class:`ImageIOError`. That global (and ``ImageFile.LOAD_TRUNCATED_IMAGES``,
  forced off so truncated files fail) is set per call under a lock and
  restored afterwards; code using Pillow directly in another thread at that
  moment sees these values.
* 16-bit colour: Pillow keeps only the high byte of 16-bit RGB/RGBA/LA PNGs,
  so those are decoded twice through Pillow's own PNG decoder (high bytes,
  then low bytes); 16-bit colour TIFFs are read and written with
  ``tifffile`` (a scikit-image dependency); 16-bit colour PNGs are written
  by a small encoder here. 8-bit files and 16-bit greyscale use Pillow.
* ``save_image`` quantises ``round(clip(x, 0, 1) * (2**bit_depth - 1))``, so an
  8/16-bit file loaded and saved again at its own bit depth is unchanged.
  It refuses NaN/inf, creates missing parent directories and writes
  atomically (a temporary file in the target directory, then ``os.replace``),
  so a crash never leaves a half-written image under the final name.
  Formats by extension: ``.png`` (8/16 bit, alpha), ``.tif``/``.tiff``
  (8/16 bit, alpha), ``.jpg``/``.jpeg`` (8 bit, no alpha, quality 95, no
  chroma subsampling).
* Masks (``load_mask``) are ``float32 (H, W, 1)`` with values in ``{0, 1}``;
  1 marks a known pixel and 0 a missing one, as in the original DIP code.
* Every problem with a file (missing, empty, truncated, not an image, zero
  sized, too large, unsupported mode, NaN data, unwritable location) raises
  :class:`ImageIOError` (a ``ValueError``) with one sentence naming the file,
  what is wrong and what to do. Wrong arguments (shapes, dtypes, bit depths)
  raise plain ``ValueError``.
* ``pad_to_multiple`` / ``crop_back`` pad ``(H, W, C)`` or ``(N, H, W, C)``
  arrays (NumPy or JAX; JAX inputs stay JAX and are jit/vmap friendly) so H
  and W are multiples of the network's total stride, and undo it exactly.
  Deliberate difference from the original DIP code, which crops images to a
  multiple of 32 (``crop_image(img, d=32)``) and so loses border pixels: we
  pad instead, so every output pixel corresponds to an input pixel.
"""


from dip_jax.io._common import DEFAULT_MAX_PIXELS, Crop, ImageIOError, LoadedImage
from dip_jax.io.read import load_image, load_mask
from dip_jax.io.shapes import crop_back, pad_to_multiple, to_batch
from dip_jax.io.write import check_can_save, check_writable_folder, save_image

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "Crop",
    "ImageIOError",
    "LoadedImage",
    "check_can_save",
    "check_writable_folder",
    "crop_back",
    "load_image",
    "load_mask",
    "pad_to_multiple",
    "save_image",
    "to_batch",
]
