"""Shared test fixtures: a tiny config and random uint8 batches."""
import jax
import numpy as np

from configs import tiny

IMAGE_SHAPE = (8, 8, 3)


def tiny_config(**overrides):
  """configs/tiny.py shrunk further: width 4, 8x8 images, 16-d projector."""
  config = tiny.get_config()
  config.data.synthetic_image_size = 8
  config.data.synthetic_train_size = 64
  config.data.synthetic_test_size = 32
  config.model.width = config.student.width = 4
  config.model.projector_dim = 16
  config.model.predictor_dim = 32
  for stage in (config.rm, config.rgrl):
    stage.batch_size = 16
    stage.epochs = 1
  config.rm.knn_k = 5
  config.eval_batch_size = 32
  for key, value in overrides.items():
    target = config
    *path, leaf = key.split('.')
    for p in path:
      target = target[p]
    target[leaf] = value
  return config


def images(n, seed=0, shape=IMAGE_SHAPE):
  return np.random.default_rng(seed).integers(0, 256, (n,) + shape, dtype=np.uint8)


def labels(n, num_classes=10, seed=1):
  return np.random.default_rng(seed).integers(0, num_classes, (n,)).astype(np.int32)


def to_host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  a, b = to_host(a), to_host(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)
