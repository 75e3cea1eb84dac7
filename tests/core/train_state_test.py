"""Tests for rmdnet_jax.core.train_state: the learning-rate schedule, the optimizer (SGD + momentum with coupled weight
decay) against formulas written out by hand, and the train state's `variables`."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rmdnet_jax.core import train_state


def stage_config(**overrides):
  config = ml_collections.ConfigDict(
      dict(
          epochs=4,
          batch_size=128,
          learning_rate=0.1,
          scale_lr_by_batch=False,
          warmup_epochs=0.0,
          momentum=0.9,
          nesterov=False,
          weight_decay=5e-4,
      )
  )
  config.update(overrides)
  return config


def cosine(step, peak, total):
  return peak * 0.5 * (1 + np.cos(np.pi * min(step, total) / total))


def test_cosine_schedule_without_warmup():
  steps_per_epoch = 10
  fn = train_state.learning_rate_schedule(stage_config(), steps_per_epoch)
  for step in (0, 1, 7, 20, 33, 39, 40, 55):
    np.testing.assert_allclose(fn(step), cosine(step, 0.1, 40), rtol=1e-5, atol=1e-8, err_msg=step)
  assert float(fn(0)) == pytest.approx(0.1) and float(fn(40)) == pytest.approx(0.0, abs=1e-8)


def test_linear_warmup_then_cosine_over_the_rest():
  steps_per_epoch = 10
  fn = train_state.learning_rate_schedule(stage_config(warmup_epochs=1.5), steps_per_epoch)
  warmup, total = 15, 40
  for step in range(0, 45):
    expected = 0.1 * step / warmup if step < warmup else cosine(step - warmup, 0.1, total - warmup)
    np.testing.assert_allclose(fn(step), expected, rtol=1e-5, atol=1e-7, err_msg=step)


def test_scale_lr_by_batch_is_per_256_images():
  fn = train_state.learning_rate_schedule(stage_config(scale_lr_by_batch=True, batch_size=512), 10)
  np.testing.assert_allclose(fn(0), 0.1 * 512 / 256, rtol=1e-6)
  np.testing.assert_allclose(fn(13), cosine(13, 0.2, 40), rtol=1e-5)
  unscaled = train_state.learning_rate_schedule(stage_config(batch_size=512), 10)
  np.testing.assert_allclose(unscaled(0), 0.1, rtol=1e-6)


def test_schedule_of_a_stage_without_steps_is_finite():
  fn = train_state.learning_rate_schedule(stage_config(epochs=0), 10)
  assert np.isfinite(float(fn(0)))
  fn = train_state.learning_rate_schedule(stage_config(epochs=1, warmup_epochs=1), 10)  # warm-up = whole stage
  assert np.isfinite(float(fn(10))) and float(fn(5)) == pytest.approx(0.05)


@pytest.mark.parametrize('nesterov', [False, True])
def test_optimizer_is_sgd_momentum_with_coupled_weight_decay(nesterov):
  lr, wd, mu = 0.1, 0.01, 0.9
  config = stage_config(weight_decay=wd, momentum=mu, nesterov=nesterov)
  tx = train_state.make_optimizer(config, lambda step: lr)
  w = np.array([1.0, -2.0, 3.0], np.float32)
  grads = [np.array([0.5, 0.5, -1.0], np.float32), np.array([-1.0, 2.0, 0.25], np.float32)]
  params = {'w': jnp.asarray(w)}
  opt_state = tx.init(params)
  # By hand, as PyTorch's SGD: d = g + wd * w (before momentum); buf = mu * buf + d;
  # step = d + mu * buf (Nesterov) or buf; w -= lr * step.
  buf = np.zeros_like(w)
  for g in grads:
    updates, opt_state = tx.update({'w': jnp.asarray(g)}, opt_state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    d = g + wd * w
    buf = mu * buf + d
    w = w - lr * (d + mu * buf if nesterov else buf)
    np.testing.assert_allclose(params['w'], w, rtol=1e-6)


def test_weight_decay_acts_on_the_weights_without_a_gradient():
  tx = train_state.make_optimizer(stage_config(weight_decay=0.5, momentum=0.0), lambda step: 0.1)
  params = {'w': jnp.array([2.0, -4.0])}
  updates, _ = tx.update({'w': jnp.zeros(2)}, tx.init(params), params)
  np.testing.assert_allclose(updates['w'], -0.1 * 0.5 * np.array([2.0, -4.0]), rtol=1e-6)


def test_train_state_variables_are_what_apply_takes():
  variables = {'params': {'w': jnp.ones(2)}, 'batch_stats': {'mean': jnp.zeros(2)}}
  apply_fn = lambda v, x: x * v['params']['w'] + v['batch_stats']['mean']  # noqa: E731
  tx = train_state.make_optimizer(stage_config(), lambda step: 0.1)
  model = type('Model', (), {'apply': staticmethod(apply_fn)})
  state = train_state.create_train_state(model, variables, tx)
  assert state.variables == variables
  assert state.variables.keys() == {'params', 'batch_stats'}
  np.testing.assert_array_equal(state.apply_fn(state.variables, jnp.full(2, 3.0)), [3.0, 3.0])
  assert int(state.step) == 0
  without_stats = train_state.create_train_state(model, {'params': variables['params']}, tx)
  assert without_stats.variables == {'params': variables['params'], 'batch_stats': {}}
