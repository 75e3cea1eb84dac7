"""On-accelerator data augmentation: pure, jittable JAX functions driven by `jax.random` keys.

The host input pipeline only decodes and batches uint8 images; every random transformation runs inside the
(pmapped) train step, so the host never becomes the bottleneck and the augmentation is exactly reproducible
from the step's key. The layout follows deepmind byol's `utils/augmentations.py`: each transformation is
written for a single image with its own key and the batch versions are `jax.vmap`s of those, so every image
gets independent randomness. Probabilistic steps use `lax.cond`; under `vmap` the predicate is batched and
JAX lowers the `cond` to a `select`, which is what an accelerator wants anyway (no data-dependent control
flow).

Two recipes are provided:

* `simsiam_view` / `simsiam_views`: the SimSiam CIFAR recipe, with torchvision semantics,
  RandomResizedCrop -> RandomHorizontalFlip -> ColorJitter (p=0.8) -> RandomGrayscale (p=0.2) -> Normalize.
* `pad_crop_flip_view` / `pad_crop_flip`: the standard supervised CIFAR recipe,
  RandomCrop(padding=4) -> RandomHorizontalFlip -> Normalize.

Images enter as uint8 in [0, 255] (or floats already scaled to [0, 1]) with layout [..., H, W, 3]; all
intermediate work is float32 in [0, 1] and only the final normalisation leaves that range. Keys may be
new-style typed keys (`jax.random.key`) or legacy uint32 keys (`jax.random.PRNGKey`); batched functions take
one key per image.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Union

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Number = Union[float, int]


# ITU-R 601-2 luma weights, the ones torchvision's `rgb_to_grayscale` uses.
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


# ----------------------------------------------------------------------------------------------------------
# Dtype handling and normalisation.
# ----------------------------------------------------------------------------------------------------------


def to_unit_float(images: Array) -> Array:
  """Converts images to float32 in [0, 1].

  Args:
    images: uint8 [..., H, W, 3] in [0, 255], or a floating array [..., H, W, 3] already in [0, 1].

  Returns:
    float32 [..., H, W, 3] in [0, 1].

  Raises:
    TypeError: for any other dtype (an int32 image would be ambiguous: 0..255 or 0..1?).
  """
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  if jnp.issubdtype(images.dtype, jnp.floating):
    return images.astype(jnp.float32)
  raise TypeError(f'images must be uint8 (0..255) or floating (0..1), got {images.dtype}')


def normalize(images: Array, mean: Sequence[float], std: Sequence[float]) -> Array:
  """Per-channel standardisation, as torchvision's `ToTensor` followed by `Normalize(mean, std)`.

  Args:
    images: uint8 [..., H, W, 3] in [0, 255] (divided by 255 first), or floating [..., H, W, 3] already in
      [0, 1] (used as is).
    mean: length-3 channel means in [0, 1] units, e.g. `data.CIFAR10_MEAN`.
    std: length-3 channel standard deviations in [0, 1] units, e.g. `data.CIFAR10_STD`.

  Returns:
    float32 [..., H, W, 3]: `(x - mean) / std` with `x` the image in [0, 1].
  """
  x = to_unit_float(images)
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (x - mean) / std


def on_uint8_images(apply: Callable, mean: Sequence[float], std: Sequence[float]) -> Callable:
  """`apply(variables, float images)` as a function of uint8 images, normalised with (mean, std) first."""

  def apply_on_uint8(variables, images):
    return apply(variables, normalize(images, mean, std))

  return apply_on_uint8


# ----------------------------------------------------------------------------------------------------------
# Small helpers.
# ----------------------------------------------------------------------------------------------------------


def _static_value(x) -> float | None:
  """The Python value of `x` when it is a plain number known at trace time, else None."""
  if isinstance(x, (int, float)) and not isinstance(x, bool):
    return float(x)
  return None


def _maybe_apply(u: Array, prob, fn: Callable[[Array], Array], x: Array) -> Array:
  """Applies `fn` to `x` when the uniform sample `u` falls below `prob`, i.e. with probability `prob`.

  Callers draw their coin flips together in one `jax.random.uniform` call: every separate draw is another
  threefry instance, which costs runtime on the accelerator and, more noticeably, compile time. When `prob`
  is a Python number of 0 or 1 the decision is made at trace time, so a switched-off step costs nothing
  (under `vmap` a `cond` evaluates both branches); the coin is drawn either way, so switching one step off
  does not change the randomness of the others.

  Args:
    u: float32 scalar, uniform on [0, 1).
    prob: probability of applying `fn`; a Python number or a scalar array.
    fn: image -> image of the same shape and dtype.
    x: the image.

  Returns:
    `fn(x)` if `u < prob`, else `x`.
  """
  p = _static_value(prob)
  if p is not None and p <= 0.0:
    return x
  if p is not None and p >= 1.0:
    return fn(x)
  return lax.cond(u < prob, fn, lambda y: y, x)


def _lerp(low, high, u: Array) -> Array:
  """Maps a uniform sample on [0, 1) to [low, high); exact at `low` when `low == high`."""
  return low + (high - low) * u


def _blend(image: Array, other: Array, factor: Array) -> Array:
  """torchvision's `_blend`: `factor * image + (1 - factor) * other`, clipped to [0, 1]."""
  return jnp.clip(factor * image + (1.0 - factor) * other, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------------------
# Geometry: flips, random resized crop, pad-and-crop.
# ----------------------------------------------------------------------------------------------------------


def horizontal_flip(image: Array) -> Array:
  """Mirrors an image left-right.

  Args:
    image: [H, W, C].

  Returns:
    [H, W, C] with columns reversed.
  """
  return image[:, ::-1, :]


def sample_crop_box(
    key: Array,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[Array, Array, Array, Array]:
  """Draws a RandomResizedCrop box in continuous pixel coordinates.

  torchvision retries up to 10 times for a box that fits and then falls back to a centre crop; a data-
  dependent loop is a poor fit for an accelerator, so this takes a single draw and clips the box to the
  image instead. The area fraction is uniform on `scale`, the log aspect ratio (w / h) uniform on
  `log(ratio)`, and `w = sqrt(area * ratio * H * W)`, `h = sqrt(area / ratio * H * W)` as in torchvision
  (for square images, as CIFAR's, `w = sqrt(area * ratio) * W`, `h = sqrt(area / ratio) * H`). Sizes are
  clipped to [1, W] / [1, H] and the offset is uniform over the positions that keep the box inside the
  image. The box is not rounded to whole pixels: bilinear resampling handles fractional boxes, and a
  continuous box keeps the op smooth in its parameters.

  Args:
    key: PRNG key.
    height: image height H (static).
    width: image width W (static).
    scale: (min, max) fraction of the image area covered by the crop.
    ratio: (min, max) aspect ratio w / h of the crop.

  Returns:
    `(y0, x0, crop_h, crop_w)`, float32 scalars: the top-left corner and size of the box, in pixels, with
    `0 <= y0`, `y0 + crop_h <= H` and likewise for x.
  """
  # One draw for all four numbers (see `_maybe_apply` on why draws are batched).
  u = jax.random.uniform(key, (4,), jnp.float32)
  area = _lerp(scale[0], scale[1], u[0])
  aspect = jnp.exp(_lerp(math.log(ratio[0]), math.log(ratio[1]), u[1]))
  pixels = float(height * width)
  crop_w = jnp.clip(jnp.sqrt(area * aspect * pixels), 1.0, float(width))
  crop_h = jnp.clip(jnp.sqrt(area / aspect * pixels), 1.0, float(height))
  y0 = u[2] * (height - crop_h)
  x0 = u[3] * (width - crop_w)
  return y0, x0, crop_h, crop_w


def _linear_interp_matrix(start: Array, length: Array, out_size: int, in_size: int) -> Array:
  """Bilinear (triangle-kernel) resampling weights along one axis.

  With input pixel `j` covering the continuous interval [j, j + 1), output pixel `i` has its centre at
  `start + (i + 0.5) * length / out_size`; measured in pixel indices (pixel `j`'s centre at `j`) that is 0.5
  less, which is the sampling position used here. Positions are clamped to [0, in_size - 1], i.e. edge pixels
  are replicated, which matches half-pixel bilinear resizing (PyTorch `align_corners=False`, `jax.image`
  "linear"). With `start = 0`, `length = in_size = out_size` the positions are exactly the integers and the
  matrix is exactly the identity.

  Args:
    start: float32 scalar, where the sampled interval begins, in pixels.
    length: float32 scalar, its length in pixels.
    out_size: number of output samples (static).
    in_size: number of input pixels (static).

  Returns:
    float32 [out_size, in_size]; each row is non-negative and sums to 1.
  """
  centres = start + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * (length / out_size) - 0.5
  centres = jnp.clip(centres, 0.0, in_size - 1.0)
  return jnp.maximum(0.0, 1.0 - jnp.abs(centres[:, None] - jnp.arange(in_size, dtype=jnp.float32)[None, :]))


def crop_and_resize(image: Array, box: tuple[Array, Array, Array, Array]) -> Array:
  """Cuts a (fractional) box out of an image and resamples it bilinearly to the image's own size.

  Bilinear sampling is separable, so instead of gathers it is written as two small dense contractions with
  per-axis interpolation matrices, `R_y @ image @ R_x^T`: static shapes, no gathers, and it maps onto the
  matrix units of a TPU/GPU. The box always lies inside the image, so the op only ever upsamples and needs no
  anti-aliasing. Precision is pinned to HIGHEST because the default float32 matmul precision on TPU (bf16
  passes) and on recent GPUs (TF32) would perturb pixel values by ~1e-3.

  Args:
    image: float32 [H, W, C].
    box: `(y0, x0, crop_h, crop_w)` float32 scalars in pixels, as from `sample_crop_box`.

  Returns:
    float32 [H, W, C].
  """
  height, width, _ = image.shape
  y0, x0, crop_h, crop_w = box
  rows = _linear_interp_matrix(y0, crop_h, height, height)
  cols = _linear_interp_matrix(x0, crop_w, width, width)
  return jnp.einsum('oh,hwc,pw->opc', rows, image, cols, precision=lax.Precision.HIGHEST)


def random_resized_crop(
    key: Array,
    image: Array,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Array:
  """torchvision `RandomResizedCrop(H, scale, ratio)` (bilinear) with a single box draw.

  Args:
    key: PRNG key.
    image: float32 [H, W, C].
    scale: (min, max) area fraction of the crop.
    ratio: (min, max) aspect ratio w / h of the crop.

  Returns:
    float32 [H, W, C].
  """
  height, width, _ = image.shape
  box = sample_crop_box(key, height, width, scale, ratio)
  return crop_and_resize(image, box)


# ----------------------------------------------------------------------------------------------------------
# Colour: torchvision ColorJitter and RandomGrayscale on float images in [0, 1].
# ----------------------------------------------------------------------------------------------------------


def rgb_to_grayscale(image: Array) -> Array:
  """Luma `0.2989 R + 0.587 G + 0.114 B`, as torchvision.

  Args:
    image: float32 [..., 3].

  Returns:
    float32 [..., 1].
  """
  weights = jnp.asarray(_GRAY_WEIGHTS, image.dtype)
  return jnp.sum(image * weights, axis=-1, keepdims=True)


def to_grayscale(image: Array) -> Array:
  """Grayscale image replicated to three channels (torchvision `Grayscale(num_output_channels=3)`).

  Args:
    image: float32 [H, W, 3].

  Returns:
    float32 [H, W, 3] with three equal channels.
  """
  return jnp.broadcast_to(rgb_to_grayscale(image), image.shape)


def adjust_brightness(image: Array, factor: Array) -> Array:
  """Scales intensities by `factor` and clips to [0, 1] (blend with black).

  Args:
    image: float32 [H, W, 3] in [0, 1].
    factor: scalar; 1 is the identity.

  Returns:
    float32 [H, W, 3] in [0, 1].
  """
  return _blend(image, jnp.zeros_like(image), factor)


def adjust_contrast(image: Array, factor: Array) -> Array:
  """Blends with the mean grey level of the whole image, clipped to [0, 1].

  Args:
    image: float32 [H, W, 3] in [0, 1].
    factor: scalar; 1 is the identity, 0 gives a uniform grey image.

  Returns:
    float32 [H, W, 3] in [0, 1].
  """
  mean = jnp.mean(rgb_to_grayscale(image))
  return _blend(image, mean, factor)


def adjust_saturation(image: Array, factor: Array) -> Array:
  """Blends with the grayscale image, clipped to [0, 1].

  Args:
    image: float32 [H, W, 3] in [0, 1].
    factor: scalar; 1 is the identity, 0 gives the grayscale image.

  Returns:
    float32 [H, W, 3] in [0, 1].
  """
  return _blend(image, rgb_to_grayscale(image), factor)


def rgb_to_hsv(image: Array) -> Array:
  """RGB -> HSV, a line-by-line port of torchvision's `_rgb2hsv`.

  Divisions are guarded with `where` on the denominators (not on the results), so grey and black pixels
  (max == min) produce hue 0 and saturation 0 instead of NaNs.

  Args:
    image: float32 [..., 3] in [0, 1].

  Returns:
    float32 [..., 3]: hue in [0, 1), saturation in [0, 1], value in [0, 1].
  """
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  maxc = jnp.max(image, axis=-1)
  minc = jnp.min(image, axis=-1)
  eqc = maxc == minc
  cr = maxc - minc
  ones = jnp.ones_like(maxc)
  s = cr / jnp.where(eqc, ones, maxc)
  cr_divisor = jnp.where(eqc, ones, cr)
  rc = (maxc - r) / cr_divisor
  gc = (maxc - g) / cr_divisor
  bc = (maxc - b) / cr_divisor
  is_r = maxc == r
  is_g = (maxc == g) & ~is_r
  is_b = ~is_g & ~is_r
  h = jnp.where(is_r, bc - gc, 0.0) + jnp.where(is_g, 2.0 + rc - bc, 0.0) + jnp.where(is_b, 4.0 + gc - rc, 0.0)
  h = jnp.mod(h / 6.0 + 1.0, 1.0)
  return jnp.stack([h, s, maxc], axis=-1)


def hsv_to_rgb(hsv: Array) -> Array:
  """HSV -> RGB, equal to torchvision's `_hsv2rgb` up to float round-off.

  torchvision picks each channel from a six-sector table (v, q, p, t); this is the same piecewise-linear
  function in its closed form, channel = v - v * s * clip(min(k, 4 - k), 0, 1) with
  k = (n + 6 * hue) mod 6 and n = 5, 3, 1 for R, G, B. It is a handful of elementwise ops instead of
  eighteen selects, which keeps both the fused kernel and the compile small.

  Args:
    hsv: float32 [..., 3] with hue in [0, 1), saturation and value in [0, 1].

  Returns:
    float32 [..., 3] in [0, 1].
  """
  h, s, v = hsv[..., 0:1], hsv[..., 1:2], hsv[..., 2:3]
  n = jnp.asarray([5.0, 3.0, 1.0], hsv.dtype)
  k = jnp.mod(n + 6.0 * h, 6.0)
  return jnp.clip(v - v * s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0), 0.0, 1.0)


def adjust_hue(image: Array, hue_shift: Array) -> Array:
  """Rotates the hue by `hue_shift` (in turns) through HSV, as torchvision `adjust_hue`.

  Args:
    image: float32 [H, W, 3] in [0, 1].
    hue_shift: scalar in [-0.5, 0.5]; 0 is the identity up to float round-off.

  Returns:
    float32 [H, W, 3] in [0, 1].
  """
  hsv = rgb_to_hsv(image)
  hue = jnp.mod(hsv[..., 0] + hue_shift, 1.0)
  return hsv_to_rgb(jnp.stack([hue, hsv[..., 1], hsv[..., 2]], axis=-1))


def _jitter_enabled(strength) -> bool:
  """torchvision skips a ColorJitter op whose strength is 0; a traced strength counts as enabled."""
  value = _static_value(strength)
  return value is None or value != 0.0


def color_jitter(
    key: Array,
    image: Array,
    *,
    brightness: Number | Array = 0.4,
    contrast: Number | Array = 0.4,
    saturation: Number | Array = 0.4,
    hue: Number | Array = 0.1,
) -> Array:
  """torchvision `ColorJitter(brightness, contrast, saturation, hue)` on one image, always applied.

  Factors are drawn as torchvision does: brightness ~ U[max(0, 1 - b), 1 + b], contrast ~ U[max(0, 1 - c),
  1 + c], saturation ~ U[max(0, 1 - s), 1 + s], hue shift ~ U[-h, h]; the enabled ops are applied in a
  uniformly random order, each clipping to [0, 1]. Ops whose strength is a Python 0 are dropped at trace
  time, as torchvision drops them (which also saves the HSV round trip when `hue=0`).

  Under `vmap` a per-image order cannot be control flow: every step has to evaluate every op it might run
  and select. Done naively (a four-way switch at each of four steps) that computes the hue op, the only
  expensive one, four times. Instead the order is built as "the cheap blends in a random order, with hue
  inserted at a uniformly random slot": the blends run in two passes (before and after the slot, each step
  a switch that includes a no-op), and hue runs exactly once. A uniform order of the blends combined with a
  uniform slot is a uniform order of all the ops, so the distribution is torchvision's.

  Args:
    key: PRNG key.
    image: float32 [H, W, 3] in [0, 1].
    brightness: strength b >= 0.
    contrast: strength c >= 0.
    saturation: strength s >= 0.
    hue: strength h in [0, 0.5].

  Returns:
    float32 [H, W, 3] in [0, 1].
  """
  # One draw: three factors, the hue shift, three sort keys for the blend order and the hue slot.
  u = jax.random.uniform(key, (8,), jnp.float32)
  return _color_jitter_from_uniforms(u, image, brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)


def _color_jitter_from_uniforms(
    u: Array,
    image: Array,
    *,
    brightness: Number | Array,
    contrast: Number | Array,
    saturation: Number | Array,
    hue: Number | Array,
) -> Array:
  """`color_jitter` given its eight uniform samples, split out so tests can pin the factors.

  Args:
    u: float32 [8] uniform on [0, 1): u[0], u[1], u[2] pick the brightness, contrast and saturation factors
      (`lo + (hi - lo) * u`), u[3] the hue shift (`-h + 2 h u`), the argsort of u[4:4 + n] the order of
      the n enabled blends, and u[7] the slot of the hue op among them.
    image: float32 [H, W, 3] in [0, 1].
    brightness: strength b >= 0.
    contrast: strength c >= 0.
    saturation: strength s >= 0.
    hue: strength h in [0, 0.5].

  Returns:
    float32 [H, W, 3] in [0, 1].
  """

  def factor(v, strength):
    return _lerp(jnp.maximum(0.0, 1.0 - strength), 1.0 + strength, v)

  blends = []
  if _jitter_enabled(brightness):
    blends.append(functools.partial(adjust_brightness, factor=factor(u[0], brightness)))
  if _jitter_enabled(contrast):
    blends.append(functools.partial(adjust_contrast, factor=factor(u[1], contrast)))
  if _jitter_enabled(saturation):
    blends.append(functools.partial(adjust_saturation, factor=factor(u[2], saturation)))
  use_hue = _jitter_enabled(hue)
  n = len(blends)

  # argsort of i.i.d. uniforms is a uniformly random permutation.
  order = jnp.argsort(u[4 : 4 + n])
  # Slot n means "after every blend"; without hue every blend goes in the first pass.
  hue_slot = jnp.minimum(jnp.floor(u[7] * (n + 1)), n).astype(jnp.int32) if use_hue else n
  branches = blends + [lambda x: x]

  def blend_pass(x, runs_in_this_pass):
    for step in range(n):
      index = jnp.where(runs_in_this_pass(step), order[step], n)
      x = lax.switch(index, branches, x)
    return x

  image = blend_pass(image, lambda step: step < hue_slot)
  if use_hue:
    image = adjust_hue(image, _lerp(-hue, hue, u[3]))
    image = blend_pass(image, lambda step: step >= hue_slot)
  return image


# ----------------------------------------------------------------------------------------------------------
# Recipes.
# ----------------------------------------------------------------------------------------------------------


def simsiam_view(
    key: Array,
    image: Array,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    crop_scale: tuple[float, float] = (0.2, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    brightness: Number | Array = 0.4,
    contrast: Number | Array = 0.4,
    saturation: Number | Array = 0.4,
    hue: Number | Array = 0.1,
    jitter_prob: Number | Array = 0.8,
    grayscale_prob: Number | Array = 0.2,
    flip_prob: Number | Array = 0.5,
) -> Array:
  """One SimSiam (CIFAR recipe) view of one image.

  torchvision order: RandomResizedCrop(H, scale, ratio) -> RandomHorizontalFlip(flip_prob) ->
  RandomApply(ColorJitter(b, c, s, h), jitter_prob) -> RandomGrayscale(grayscale_prob) -> Normalize.

  Args:
    key: PRNG key for this view.
    image: uint8 [H, W, 3] in [0, 255] (or floating in [0, 1]).
    mean: length-3 channel means in [0, 1] units.
    std: length-3 channel standard deviations in [0, 1] units.
    crop_scale: RandomResizedCrop area-fraction range.
    crop_ratio: RandomResizedCrop aspect-ratio (w / h) range.
    brightness: ColorJitter brightness strength.
    contrast: ColorJitter contrast strength.
    saturation: ColorJitter saturation strength.
    hue: ColorJitter hue strength.
    jitter_prob: probability of applying ColorJitter.
    grayscale_prob: probability of converting to grayscale.
    flip_prob: probability of a horizontal flip.

  Returns:
    float32 [H, W, 3], normalised.
  """
  k_crop, k_jitter, k_coins = jax.random.split(key, 3)
  flip_u, jitter_u, gray_u = jax.random.uniform(k_coins, (3,), jnp.float32)
  x = to_unit_float(image)
  x = random_resized_crop(k_crop, x, crop_scale, crop_ratio)
  x = _maybe_apply(flip_u, flip_prob, horizontal_flip, x)
  jitter = functools.partial(
      color_jitter, k_jitter, brightness=brightness, contrast=contrast, saturation=saturation, hue=hue
  )
  x = _maybe_apply(jitter_u, jitter_prob, jitter, x)
  x = _maybe_apply(gray_u, grayscale_prob, to_grayscale, x)
  return normalize(x, mean, std)


def _check_batch(keys: Array, images: Array) -> None:
  """Raises if there is not exactly one key per image (a common slip: passing one key for the batch)."""
  if images.ndim != 4:
    raise ValueError(f'images must be [B, H, W, C], got shape {images.shape}')
  if keys.ndim < 1 or keys.shape[0] != images.shape[0]:
    raise ValueError(f'need one key per image: keys {keys.shape} vs images {images.shape}')


def simsiam_views(keys: Array, images: Array, **kwargs) -> tuple[Array, Array]:
  """Two independent SimSiam views of every image in a batch.

  Each image's key is split in two, one half per view, so the views are independent given the image and
  the whole result is a function of `keys` alone.

  Args:
    keys: [B] PRNG keys, one per image (typed `jax.random.key`s, or legacy [B, 2] uint32 keys).
    images: uint8 [B, H, W, 3].
    **kwargs: keyword arguments of `simsiam_view`; `mean` and `std` are required.

  Returns:
    `(view1, view2)`, each float32 [B, H, W, 3], normalised.
  """
  _check_batch(keys, images)
  batch = images.shape[0]
  pair_keys = jax.vmap(jax.random.split)(keys)  # [B, 2]
  # Both views in one vmap over 2B (view-major), so the view function is traced and compiled once.
  view_keys = jnp.concatenate([pair_keys[:, 0], pair_keys[:, 1]], axis=0)
  views = jax.vmap(functools.partial(simsiam_view, **kwargs))(view_keys, jnp.concatenate([images, images]))
  return views[:batch], views[batch:]


def pad_crop_flip_view(
    key: Array,
    image: Array,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    pad: int = 4,
    flip_prob: Number | Array = 0.5,
) -> Array:
  """torchvision `RandomCrop(H, padding=pad)` -> `RandomHorizontalFlip(flip_prob)` -> Normalize, one image.

  Padding is with zeros in the raw image, i.e. black before normalisation, as torchvision's default
  `fill=0` on the unnormalised tensor. The crop offset is a uniform integer in [0, 2 * pad] on each axis.

  Args:
    key: PRNG key.
    image: uint8 [H, W, 3] in [0, 255] (or floating in [0, 1]).
    mean: length-3 channel means in [0, 1] units.
    std: length-3 channel standard deviations in [0, 1] units.
    pad: padding in pixels on every side (static).
    flip_prob: probability of a horizontal flip.

  Returns:
    float32 [H, W, 3], normalised.
  """
  u = jax.random.uniform(key, (3,), jnp.float32)
  height, width, channels = image.shape
  # Pad and crop in the input dtype: for uint8 that moves a quarter of the bytes, and the normalisation
  # afterwards is the same either way.
  x = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  if pad > 0:
    # floor(u * (2 * pad + 1)) is uniform on {0, ..., 2 * pad}; the min guards against u rounding to 1.
    offsets = jnp.minimum(jnp.floor(u[:2] * (2 * pad + 1)), 2 * pad).astype(jnp.int32)
    x = lax.dynamic_slice(x, (offsets[0], offsets[1], 0), (height, width, channels))
  x = _maybe_apply(u[2], flip_prob, horizontal_flip, x)
  return normalize(x, mean, std)


def pad_crop_flip(keys: Array, images: Array, **kwargs) -> Array:
  """`pad_crop_flip_view` over a batch, one key per image.

  Args:
    keys: [B] PRNG keys, one per image (typed `jax.random.key`s, or legacy [B, 2] uint32 keys).
    images: uint8 [B, H, W, 3].
    **kwargs: keyword arguments of `pad_crop_flip_view`; `mean` and `std` are required.

  Returns:
    float32 [B, H, W, 3], normalised.
  """
  _check_batch(keys, images)
  return jax.vmap(functools.partial(pad_crop_flip_view, **kwargs))(keys, images)
