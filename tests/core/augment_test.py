"""Tests for rmdnet_jax.core.augment: shapes, ranges, determinism, and the identity / extreme settings of each op."""

import colorsys
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmdnet_jax.core import augment
from rmdnet_jax.datasets import data

MEAN = data.CIFAR10_MEAN
STD = data.CIFAR10_STD
B, H, W = 8, 16, 16


def _images(seed=0, batch=B, height=H, width=W):
  return np.random.RandomState(seed).randint(0, 256, size=(batch, height, width, 3)).astype(np.uint8)


def _keys(seed=0, batch=B):
  return jax.random.split(jax.random.key(seed), batch)


def _denormalize(x):
  return np.asarray(x) * np.asarray(STD, np.float32) + np.asarray(MEAN, np.float32)


# Each XLA compile costs about a second on a 2-core CPU, so the jitted functions under test are built once and
# shared; the settings tests pass the probabilities as traced arguments, so one compile serves all of them.


@functools.lru_cache(maxsize=None)
def _default_views():
  return jax.jit(functools.partial(augment.simsiam_views, mean=MEAN, std=STD))


@functools.lru_cache(maxsize=None)
def _views_without_crop_or_jitter():
  """simsiam_views with the crop the full image, no colour jitter, and traced flip / grayscale probabilities."""

  def views(keys, images, flip_prob, grayscale_prob):
    return augment.simsiam_views(
        keys,
        images,
        mean=MEAN,
        std=STD,
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        jitter_prob=0.0,
        flip_prob=flip_prob,
        grayscale_prob=grayscale_prob,
    )

  return jax.jit(views)


@functools.lru_cache(maxsize=None)
def _pad4_crop_flip():
  """pad_crop_flip with pad=4 and a traced flip probability."""
  return jax.jit(
      lambda keys, images, flip_prob: augment.pad_crop_flip(
          keys, images, mean=MEAN, std=STD, pad=4, flip_prob=flip_prob
      )
  )


# ----------------------------------------------------------------------------------------------------------
# normalize
# ----------------------------------------------------------------------------------------------------------


def test_normalize_uint8_and_unit_float_agree():
  images = _images()
  out = augment.normalize(images, MEAN, STD)
  assert out.dtype == jnp.float32 and out.shape == images.shape
  expected = (images.astype(np.float32) / 255.0 - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(augment.normalize(images.astype(np.float32) / 255.0, MEAN, STD), out, atol=1e-6)


def test_normalize_rejects_integer_non_uint8():
  with pytest.raises(TypeError):
    augment.normalize(np.zeros((2, 2, 3), np.int32), MEAN, STD)


# ----------------------------------------------------------------------------------------------------------
# simsiam_views
# ----------------------------------------------------------------------------------------------------------


def test_simsiam_views_shapes_dtype_and_range():
  images = _images()
  v1, v2 = _default_views()(_keys(), images)
  for v in (v1, v2):
    assert v.shape == (B, H, W, 3) and v.dtype == jnp.float32
    assert np.all(np.isfinite(v))
    x = _denormalize(v)
    assert x.min() >= -1e-5 and x.max() <= 1 + 1e-5


def test_simsiam_views_deterministic_in_key_and_random_across_keys():
  images = _images()
  a1, a2 = _default_views()(_keys(0), images)
  b1, b2 = _default_views()(_keys(0), images)
  np.testing.assert_array_equal(a1, b1)
  np.testing.assert_array_equal(a2, b2)
  c1, c2 = _default_views()(_keys(1), images)
  # Every image must change with its key, not just the batch as a whole.
  assert np.all(np.abs(np.asarray(a1) - np.asarray(c1)).reshape(B, -1).max(axis=1) > 1e-3)
  assert np.all(np.abs(np.asarray(a2) - np.asarray(c2)).reshape(B, -1).max(axis=1) > 1e-3)


def test_simsiam_two_views_differ_per_image():
  v1, v2 = _default_views()(_keys(), _images())
  assert np.all(np.abs(np.asarray(v1) - np.asarray(v2)).reshape(B, -1).max(axis=1) > 1e-3)


def test_simsiam_images_in_a_batch_get_independent_randomness():
  # The same image repeated B times must still give B different views (per-image keys, not a shared one).
  images = np.repeat(_images(batch=1), B, axis=0)
  v1, _ = _default_views()(_keys(), images)
  flat = np.asarray(v1).reshape(B, -1)
  for i in range(B):
    for j in range(i + 1, B):
      assert np.abs(flat[i] - flat[j]).max() > 1e-3


def test_simsiam_identity_settings_reproduce_normalized_image():
  images = _images()
  v1, v2 = _views_without_crop_or_jitter()(_keys(), images, 0.0, 0.0)
  expected = augment.normalize(images, MEAN, STD)
  np.testing.assert_allclose(v1, expected, atol=1e-5)
  np.testing.assert_allclose(v2, expected, atol=1e-5)


def test_simsiam_flip_prob_one_mirrors():
  images = _images()
  v1, v2 = _views_without_crop_or_jitter()(_keys(), images, 1.0, 0.0)
  expected = augment.normalize(images[:, :, ::-1], MEAN, STD)
  np.testing.assert_allclose(v1, expected, atol=1e-5)
  np.testing.assert_allclose(v2, expected, atol=1e-5)


def test_simsiam_grayscale_prob_one_gives_equal_channels():
  images = _images()
  v1, _ = _views_without_crop_or_jitter()(_keys(), images, 0.0, 1.0)
  x = _denormalize(v1)
  np.testing.assert_allclose(x[..., 0], x[..., 1], atol=1e-5)
  np.testing.assert_allclose(x[..., 0], x[..., 2], atol=1e-5)
  gray = (images.astype(np.float32) / 255.0) @ np.asarray([0.2989, 0.587, 0.114], np.float32)
  np.testing.assert_allclose(x[..., 0], gray, atol=1e-5)


def test_simsiam_view_under_vmap_and_jit_with_typed_keys():
  images = _images()
  keys = _keys()
  assert jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key)
  # Coin flips at probability 0.5 so the per-image conds are live; the crop and jitter stay off to keep this
  # test's own compile small (the full recipe is covered by the tests above).
  view = jax.jit(
      jax.vmap(
          functools.partial(
              augment.simsiam_view,
              mean=MEAN,
              std=STD,
              crop_scale=(1.0, 1.0),
              crop_ratio=(1.0, 1.0),
              jitter_prob=0.0,
              flip_prob=0.5,
              grayscale_prob=0.5,
          )
      )
  )
  pair_keys = jax.vmap(jax.random.split)(keys)
  out = view(pair_keys[:, 1], images)
  assert out.shape == (B, H, W, 3) and out.dtype == jnp.float32
  # simsiam_views is documented as the per-image view under the second half of each image's key.
  _, v2 = _views_without_crop_or_jitter()(keys, images, 0.5, 0.5)
  np.testing.assert_allclose(out, v2, atol=1e-5)
  # With 8 images and two fair coins, both outcomes of each coin show up.
  x = _denormalize(out)
  gray = np.all(np.abs(x[..., 0] - x[..., 1]) < 1e-5, axis=(1, 2))
  assert 0 < gray.sum() < B


def test_simsiam_views_rejects_one_key_for_a_batch():
  with pytest.raises(ValueError):
    augment.simsiam_views(jax.random.split(jax.random.key(0), 3), _images(), mean=MEAN, std=STD)


# ----------------------------------------------------------------------------------------------------------
# Random resized crop
# ----------------------------------------------------------------------------------------------------------


def test_sample_crop_box_inside_image_and_within_scale():
  keys = jax.random.split(jax.random.key(0), 256)
  y0, x0, h, w = jax.jit(jax.vmap(lambda k: augment.sample_crop_box(k, 32, 32)))(keys)
  y0, x0, h, w = map(np.asarray, (y0, x0, h, w))
  assert np.all(y0 >= 0) and np.all(x0 >= 0)
  assert np.all(y0 + h <= 32 + 1e-4) and np.all(x0 + w <= 32 + 1e-4)
  assert np.all(h >= 1) and np.all(w >= 1)
  area = h * w / 32**2
  # Unclipped boxes cover >= 0.2 of the image; a box clipped to the full width or height still covers
  # >= 1 / max(ratio) = 3/4 of it.
  assert area.min() >= 0.2 - 1e-5
  assert area.max() <= 1 + 1e-5
  assert np.unique(np.round(x0, 3)).size > 100  # offsets are spread out, not a constant


def test_crop_and_resize_matches_jax_image_scale_and_translate():
  image = jnp.asarray(_images(batch=1)[0], jnp.float32) / 255.0
  box = (jnp.float32(2.5), jnp.float32(1.25), jnp.float32(9.0), jnp.float32(12.0))
  out = augment.crop_and_resize(image, box)
  y0, x0, h, w = (float(b) for b in box)
  scale = jnp.asarray([H / h, W / w], jnp.float32)
  reference = jax.image.scale_and_translate(
      image,
      (H, W, 3),
      (0, 1),
      scale,
      -jnp.asarray([y0, x0], jnp.float32) * scale,
      method='linear',
      antialias=False,
  )
  np.testing.assert_allclose(out, reference, atol=1e-5)


def test_crop_and_resize_full_box_is_exact_identity():
  image = jnp.asarray(_images(batch=1)[0], jnp.float32) / 255.0
  box = (jnp.float32(0.0), jnp.float32(0.0), jnp.float32(H), jnp.float32(W))
  np.testing.assert_array_equal(jax.jit(augment.crop_and_resize)(image, box), image)


# ----------------------------------------------------------------------------------------------------------
# Colour ops
# ----------------------------------------------------------------------------------------------------------


def _unit_image(seed=0):
  return jnp.asarray(_images(seed, batch=1)[0], jnp.float32) / 255.0


@functools.lru_cache(maxsize=None)
def _jitter_with_traced_strength():
  """color_jitter with one traced strength for all four ops; traced zeros keep every op in the graph (a Python
  0 would drop it at trace time), so strength 0 exercises factors of exactly 1 and a hue shift of 0."""

  def jitter(keys, image, strength):
    return jax.vmap(
        lambda k: augment.color_jitter(
            k, image, brightness=strength, contrast=strength, saturation=strength, hue=strength
        )
    )(keys)

  return jax.jit(jitter)


def test_color_jitter_neutral_factors_leave_image_unchanged():
  image = _unit_image()
  out = _jitter_with_traced_strength()(jax.random.split(jax.random.key(0), 4), image, 0.0)
  np.testing.assert_allclose(out, np.broadcast_to(image, out.shape), atol=1e-5)
  neutral = jax.jit(
      lambda x: jnp.stack(
          [
              augment.adjust_brightness(x, 1.0),
              augment.adjust_contrast(x, 1.0),
              augment.adjust_saturation(x, 1.0),
              augment.adjust_hue(x, 0.0),
          ]
      )
  )(image)
  np.testing.assert_allclose(neutral, np.broadcast_to(image, neutral.shape), atol=1e-5)


def test_color_jitter_changes_image_and_stays_in_range():
  image = _unit_image()
  out = np.asarray(_jitter_with_traced_strength()(jax.random.split(jax.random.key(0), 4), image, 0.4))
  assert out.min() >= 0.0 and out.max() <= 1.0
  assert np.all(np.abs(out - np.asarray(image)[None]).reshape(4, -1).max(axis=1) > 1e-3)


def test_color_ops_extreme_factors():
  image = _unit_image()
  gray = np.asarray(augment.rgb_to_grayscale(image))
  np.testing.assert_allclose(augment.adjust_brightness(image, 0.0), np.zeros_like(image))
  np.testing.assert_allclose(augment.adjust_brightness(image, 0.5), np.asarray(image) * 0.5, atol=1e-6)
  np.testing.assert_allclose(augment.adjust_saturation(image, 0.0), np.broadcast_to(gray, image.shape), atol=1e-6)
  np.testing.assert_allclose(augment.adjust_contrast(image, 0.0), np.full(image.shape, gray.mean()), atol=1e-6)
  # Contrast 2 pushes away from the mean grey and is clipped.
  out = np.asarray(augment.adjust_contrast(image, 2.0))
  np.testing.assert_allclose(out, np.clip(2 * np.asarray(image) - gray.mean(), 0, 1), atol=1e-6)


def test_hue_shift_rotates_primaries_and_hsv_round_trips():
  red, green, blue = np.eye(3, dtype=np.float32)
  image = np.stack([red, green, blue])[None]  # [1, 3, 3]: one row of the three primaries.
  # Random colours, grey pixels included (max == min takes the guarded branch).
  colours = np.random.RandomState(1).rand(64, 3).astype(np.float32)
  colours[:4] = colours[:4, :1]

  @jax.jit
  def run(image, colours):
    hsv = augment.rgb_to_hsv(colours)
    return augment.adjust_hue(image, 1 / 3), augment.adjust_hue(image, -1 / 3), hsv, augment.hsv_to_rgb(hsv)

  plus, minus, hsv, round_trip = run(image, colours)
  np.testing.assert_allclose(plus[0], np.stack([green, blue, red]), atol=1e-5)
  np.testing.assert_allclose(minus[0], np.stack([blue, red, green]), atol=1e-5)
  assert np.all(np.isfinite(hsv)) and hsv.min() >= 0 and hsv[..., 0].max() < 1
  np.testing.assert_allclose(hsv[:4, 1], 0.0)  # grey pixels have zero saturation
  np.testing.assert_allclose(round_trip, colours, atol=1e-5)


def _np_hue(image, shift):
  flat = image.reshape(-1, 3)
  out = []
  for r, g, b in flat:
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    out.append(colorsys.hsv_to_rgb((h + shift) % 1.0, s, v))
  return np.asarray(out, np.float32).reshape(image.shape)


def _np_gray(image):
  return image @ np.asarray([0.2989, 0.587, 0.114], np.float32)


def test_color_jitter_applies_each_op_once_in_every_order():
  """Each output must be one ordering of the four torchvision ops, and every op must be seen in every slot.

  Some ops commute on some inputs (e.g. brightness and hue without clipping), so an output can match several
  orderings. "Op X ran in slot k" is established only by samples whose matching orderings all agree on it;
  every (op, slot) pair must have such a witness, which fails if, say, hue could never run last.
  """
  image = np.random.RandomState(2).rand(2, 2, 3).astype(np.float32)
  # Strong factors make the ops clip, and clipping is what keeps them from commuting.
  strengths = dict(brightness=0.9, contrast=0.9, saturation=0.9, hue=0.5)
  us = np.asarray(jax.random.uniform(jax.random.key(3), (200, 8)))
  out = np.asarray(jax.jit(jax.vmap(lambda u: augment._color_jitter_from_uniforms(u, image, **strengths)))(us))
  witnessed = set()
  for u, got in zip(us, out):
    ops = {
        'b': lambda x, f=0.1 + 1.8 * u[0]: np.clip(f * x, 0, 1),
        'c': lambda x, f=0.1 + 1.8 * u[1]: np.clip(f * x + (1 - f) * _np_gray(x).mean(), 0, 1),
        's': lambda x, f=0.1 + 1.8 * u[2]: np.clip(f * x + (1 - f) * _np_gray(x)[..., None], 0, 1),
        'h': lambda x, d=-0.5 + u[3]: _np_hue(x, d),
    }
    matches = []
    for order in itertools.permutations('bcsh'):
      x = image
      for name in order:
        x = ops[name](x)
      if np.allclose(got, x, atol=1e-4):
        matches.append(order)
    assert matches, f'output matches no ordering of the four ops for u={u}'
    witnessed.update((name, slot) for slot, name in enumerate(matches[0]) if all(m[slot] == name for m in matches))
  assert witnessed == {(name, slot) for name in 'bcsh' for slot in range(4)}


# ----------------------------------------------------------------------------------------------------------
# pad_crop_flip
# ----------------------------------------------------------------------------------------------------------


def test_pad_crop_flip_pad0_no_flip_is_normalize():
  images = _images()
  out = jax.jit(functools.partial(augment.pad_crop_flip, mean=MEAN, std=STD, pad=0, flip_prob=0.0))(_keys(), images)
  assert out.shape == (B, H, W, 3) and out.dtype == jnp.float32
  # Not bitwise: XLA may fuse the jitted normalisation differently from the eager one.
  np.testing.assert_allclose(out, augment.normalize(images, MEAN, STD), rtol=1e-6, atol=1e-6)


def _find_offsets(out_unit, images, pad):
  """For each output, the (dy, dx) offsets of the zero-padded image's windows that it equals."""
  padded = np.pad(images.astype(np.float32) / 255.0, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  found = []
  for i in range(images.shape[0]):
    matches = [
        (dy, dx)
        for dy in range(2 * pad + 1)
        for dx in range(2 * pad + 1)
        if np.allclose(out_unit[i], padded[i, dy : dy + H, dx : dx + W], atol=1e-5)
    ]
    found.append(matches)
  return found


def test_pad_crop_is_a_window_of_the_zero_padded_image():
  images = _images(batch=16)
  keys = _keys(batch=16)
  out = _pad4_crop_flip()(keys, images, 0.0)
  assert out.shape == (16, H, W, 3)
  found = _find_offsets(_denormalize(out), images, pad=4)
  assert all(len(m) >= 1 for m in found), found
  # Offsets are drawn per image: 16 draws from 81 offsets essentially never all coincide.
  assert len({m[0] for m in found}) > 1


def test_pad_crop_flip_prob_one_mirrors_the_window():
  images = _images(batch=16)
  keys = _keys(batch=16)
  out = _pad4_crop_flip()(keys, images, 1.0)
  found = _find_offsets(_denormalize(out)[:, :, ::-1], images, pad=4)
  assert all(len(m) >= 1 for m in found), found


def test_pad_crop_flip_deterministic_and_random_across_keys():
  images = _images()
  a = _pad4_crop_flip()(_keys(0), images, 0.5)
  np.testing.assert_array_equal(a, _pad4_crop_flip()(_keys(0), images, 0.5))
  assert not np.array_equal(a, _pad4_crop_flip()(_keys(1), images, 0.5))
  x = _denormalize(a)
  assert x.min() >= -1e-5 and x.max() <= 1 + 1e-5
