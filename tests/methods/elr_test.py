"""rmdnet_jax/methods/elr.py: the loss and the target update against a float64 numpy reference (on 1 and on 8
devices), its state, the whole RGRL step on 8 devices equal to 1 device, and its settings' checks."""

import jax.numpy as jnp
import numpy as np
import pytest

from tests.methods import method_helpers

B, C = method_helpers.PROBLEM_BATCH, method_helpers.C


@pytest.mark.parametrize('num_devices', [1, 8])
def test_elr_loss_and_target_update_match_numpy(x64, num_devices):
  l1, _, y = method_helpers.problem(3)
  n = 40
  rng = np.random.default_rng(4)
  index = rng.permutation(n)[:B]
  targets = method_helpers.softmax(rng.normal(size=(n, C)))
  method = method_helpers.method_for('elr', reg_lambda=3.0, beta=0.7)
  losses, state, metrics = method_helpers.run_loss(
      method, (l1,), y, num_devices=num_devices, index=index, method_state={'targets': jnp.asarray(targets)}
  )
  p = method_helpers.softmax(l1).clip(1e-4, 1 - 1e-4)
  want_targets = targets.copy()
  want_targets[index] = 0.7 * targets[index] + 0.3 * p / p.sum(-1, keepdims=True)
  np.testing.assert_allclose(state['targets'], want_targets, rtol=1e-12)
  regulariser = np.mean(np.log(1 - np.sum(want_targets[index] * p, -1)))
  np.testing.assert_allclose(losses, [method_helpers.per_example_ce(l1, y).mean() + 3.0 * regulariser], rtol=1e-10)
  np.testing.assert_allclose(metrics['elr_regulariser'], regulariser, rtol=1e-10)
  untouched = np.setdiff1d(np.arange(n), index)
  np.testing.assert_array_equal(state['targets'][untouched], targets[untouched])


def test_elr_state_starts_at_zero_and_is_sized_by_the_dataset():
  state = method_helpers.method_for('elr').init_state(50, 10)
  assert state['targets'].shape == (50, 10) and not np.any(state['targets'])


def test_step_8_devices_equals_1_device():
  batch, state = method_helpers.assert_step_8_devices_equals_1_device('elr', {})
  targets = np.asarray(state.method_state['targets'])
  assert np.all(targets[batch['index']].sum(-1) > 0)
  assert not np.any(np.delete(targets, batch['index'], axis=0))


@pytest.mark.parametrize(
    'key, value, message',
    [
        ('elr.reg_lambda', -1.0, 'method.elr.reg_lambda'),
        ('elr.beta', 1.0, 'method.elr.beta'),
    ],
)
def test_config_checks_reject_bad_settings(key, value, message):
  method_helpers.assert_validation_refuses(key, value, message)
