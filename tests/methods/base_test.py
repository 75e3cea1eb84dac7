"""rmdnet_jax/methods/base.py: the Method interface (binding, a new method as one value) and the cross-device
reductions methods share (global masked mean, small-loss selection over the global batch, forget-rate schedule),
on 1 and on 8 devices."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rmdnet_jax import methods
from rmdnet_jax.core import parallel
from rmdnet_jax.methods import base, ce
from tests.methods import method_helpers

# --- the Method interface --------------------------------------------------------------------------------------


def test_bound_method_holds_its_settings_frozen():
  config = method_helpers.method_config('dividemix')
  method = methods.make_method(config)
  assert method.settings == ml_collections.FrozenConfigDict(config.dividemix)
  config.dividemix.lambda_u = 1.0  # a later edit of the config does not reach the bound method
  assert method.settings.lambda_u == 25.0
  assert methods.get_method('dividemix').settings is None  # the registry's method stays unbound
  with pytest.raises(ValueError, match='already bound'):
    method.bind(config.dividemix)


def test_a_new_method_is_one_method_value():
  """What README "Adding a noisy-label method" describes: a Method with a loss of (inputs, settings)."""

  def loss(inputs, settings):
    return base.LossOutputs(losses=(settings.weight * ce.cross_entropy(inputs.logits[0], inputs.labels),))

  method = base.Method(name='scaled_ce', loss=loss).bind({'weight': 0.5})
  logits, labels = method_helpers.batch(6)
  inputs = method_helpers.no_step_inputs(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(method.loss(inputs).losses[0], 0.5 * method_helpers.ce_ref(logits, labels), rtol=1e-6)
  assert method.init_state(10, 5) == {} and method.epoch_hook is None


def test_require_raises_a_settings_error_with_the_message():
  base.require(True, 'not raised')
  with pytest.raises(base.SettingsError, match=r'^method\.mine\.k=0 must be > 0\.$'):
    base.require(False, 'method.mine.k=0 must be > 0.')


# --- cross-device reductions -----------------------------------------------------------------------------------


@pytest.mark.parametrize('num_devices', [1, 8])
def test_global_masked_mean_is_the_mean_over_the_global_selection(num_devices):
  values = np.arange(1.0, 17.0, dtype=np.float32)
  # Unequal selections per device (on 8 devices: 2, 1, 1, 0, 2, 1, 0, 0 examples).
  mask = np.array([1, 1, 1, 0, 1, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0], bool)

  def f(v, m):
    share, grad = jax.value_and_grad(base.global_masked_mean)(v, m)
    return jax.lax.pmean(share, parallel.AXIS), grad

  fn = jax.pmap(f, axis_name=parallel.AXIS, devices=jax.devices()[:num_devices])
  mean, grad = fn(values.reshape(num_devices, -1), mask.reshape(num_devices, -1))
  np.testing.assert_allclose(np.asarray(mean), values[mask].mean(), rtol=1e-6)
  # The step averages the devices' gradients: that average is the gradient of the global mean, mask / count.
  np.testing.assert_allclose(np.asarray(grad).reshape(-1) / num_devices, mask / mask.sum(), rtol=1e-6)
  empty, _ = fn(values.reshape(num_devices, -1), np.zeros((num_devices, 16 // num_devices), bool))
  np.testing.assert_array_equal(np.asarray(empty), 0.0)  # nothing selected: 0, not 0 / 0


@pytest.mark.parametrize('num_devices', [1, 8])
def test_small_loss_mask_keeps_the_smallest_of_the_global_batch(num_devices):
  losses = np.array([5.0, 1.0, 7.0, 1.0, 0.0, 9.0, 3.0, 2.0, 8.0, 6.0, 4.0, 1.0, 10.0, 11.0, 12.0, 13.0], np.float32)
  fn = jax.pmap(lambda x: base.small_loss_mask(x, 5), axis_name=parallel.AXIS, devices=jax.devices()[:num_devices])
  mask = np.asarray(fn(losses.reshape(num_devices, -1))).reshape(-1)
  # 0 (pos 4), the three 1s (pos 1, 3, 11) and 2 (pos 7): a tie-free cut; the ones at 1 are all kept.
  np.testing.assert_array_equal(np.flatnonzero(mask), [1, 3, 4, 7, 11])
  fn3 = jax.pmap(lambda x: base.small_loss_mask(x, 2), axis_name=parallel.AXIS, devices=jax.devices()[:num_devices])
  # Cut inside the tie at 1: the earlier global positions win, whatever the device split.
  np.testing.assert_array_equal(np.flatnonzero(np.asarray(fn3(losses.reshape(num_devices, -1))).reshape(-1)), [1, 4])


def test_forget_rate_schedule_matches_coteachings_linspace():
  forget_rate, gradual, exponent = 0.45, 10, 1.0
  reference = np.ones(30) * forget_rate
  reference[:gradual] = np.linspace(0, forget_rate**exponent, gradual)
  got = [
      float(base.forget_rate_schedule(e, forget_rate=forget_rate, gradual_epochs=gradual, exponent=exponent))
      for e in range(30)
  ]
  np.testing.assert_allclose(got, reference, rtol=1e-6, atol=1e-7)
  assert int(base.num_to_keep(jnp.float32(0.45), 128)) == int((1 - 0.45) * 128)
  assert int(base.num_to_keep(jnp.float32(0.2), 10)) == 8  # no float round-down to 7
