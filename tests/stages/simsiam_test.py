"""RM stage: the SimSiam loss against numpy, and the pmapped step on 8 devices against 1 device."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmdnet_jax.core import parallel
from rmdnet_jax.datasets import data
from rmdnet_jax.stages import simsiam
from rmdnet_jax.core import train_state as train_state_lib
from tests import helpers


def numpy_simsiam_loss(p1, p2, z1, z2):
  def d(p, z):
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    return -np.mean(np.sum(p * z, axis=1))

  return 0.5 * d(p1, z2) + 0.5 * d(p2, z1)


def test_simsiam_loss_matches_numpy_and_bounds():
  rng = np.random.default_rng(0)
  p1, p2, z1, z2 = (rng.normal(size=(6, 5)).astype(np.float32) for _ in range(4))
  np.testing.assert_allclose(simsiam.simsiam_loss(p1, p2, z1, z2), numpy_simsiam_loss(p1, p2, z1, z2), rtol=1e-5)
  assert float(simsiam.simsiam_loss(z2, z1, z1, z2)) == pytest.approx(-1.0, abs=1e-6)


def test_negative_cosine_stops_gradient_into_target():
  rng = np.random.default_rng(1)
  p, z = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
  grad_z = jax.grad(lambda z: simsiam.negative_cosine(jnp.asarray(p), z))(jnp.asarray(z))
  grad_p = jax.grad(lambda p: simsiam.negative_cosine(p, jnp.asarray(z)))(jnp.asarray(p))
  assert np.all(np.asarray(grad_z) == 0)
  assert np.any(np.asarray(grad_p) != 0)


def _config():
  # One config for every step test here, so they share one compiled step (the schedule is baked into it).
  return helpers.tiny_config(**{'rm.learning_rate': 0.5})


def _state_and_step(config):
  lr_fn = train_state_lib.learning_rate_schedule(config.rm, steps_per_epoch=4)
  state = simsiam.create_simsiam_state(jax.random.key(0), config, helpers.IMAGE_SHAPE, lr_fn)
  step = functools.partial(
      simsiam.simsiam_step, view_kwargs=simsiam.view_kwargs(config.rm.augment, data.CIFAR10_MEAN, data.CIFAR10_STD)
  )
  return helpers.to_host(state), step


def _run(step, state, batch, num_devices, steps=2):
  devices = jax.devices()[:num_devices]
  fn = parallel.pmap_step(step, donate_state=False, devices=devices)
  for i in range(steps):
    sharded = jax.tree.map(lambda x: x.reshape((num_devices, -1) + x.shape[1:]), batch)
    state, metrics = fn(state, sharded, jax.random.fold_in(jax.random.key(7), i), {})
  return state, metrics


def test_simsiam_step_8_devices_equals_1_device():
  assert jax.device_count() == 8
  state, step = _state_and_step(_config())
  batch = {'images': helpers.images(16)}
  state8, m8 = _run(step, state, batch, 8)
  state1, m1 = _run(step, state, batch, 1)
  # Same global batch, same keys: BatchNorm statistics and gradients are global, so the updates agree.
  helpers.assert_trees_close(state8.params, state1.params, rtol=2e-4, atol=2e-5)
  helpers.assert_trees_close(state8.batch_stats, state1.batch_stats, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(m8['loss'], m1['loss'], rtol=1e-5)
  assert int(state8.step) == 2
  # And the step really trains: parameters moved.
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(), state8.params, state.params)
  assert max(jax.tree.leaves(moved)) > 0


def test_simsiam_step_loss_decreases_on_fixed_batch():
  state, step = _state_and_step(_config())
  batch = {'images': helpers.images(16)}
  fn = parallel.pmap_step(step, donate_state=False, devices=jax.devices()[:8])
  losses = []
  sharded = jax.tree.map(lambda x: x.reshape((8, -1) + x.shape[1:]), batch)
  for i in range(15):
    state, metrics = fn(state, sharded, jax.random.key(3), {})  # same views each step
    losses.append(float(metrics['loss']))
  assert losses[-1] < losses[0] - 0.05, losses
  assert -1.0 <= min(losses)


def test_simsiam_step_is_deterministic():
  state, step = _state_and_step(_config())
  batch = {'images': helpers.images(16)}
  a, _ = _run(step, state, batch, 8, steps=1)
  b, _ = _run(step, state, batch, 8, steps=1)
  for x, y in zip(jax.tree.leaves(helpers.to_host(a)), jax.tree.leaves(helpers.to_host(b))):
    np.testing.assert_array_equal(x, y)
