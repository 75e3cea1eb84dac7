"""rmdnet_jax/methods/coteaching.py: the exchanged small-loss losses against a float64 numpy reference (on 1 and
on 8 devices), the whole RGRL step on 8 devices equal to 1 device, and its settings' checks."""

import numpy as np
import pytest

from tests.methods import method_helpers

B = method_helpers.PROBLEM_BATCH


@pytest.mark.parametrize('num_devices', [1, 8])
def test_coteaching_loss_matches_numpy(x64, num_devices):
  l1, l2, y = method_helpers.problem(1)
  method = method_helpers.method_for('coteaching', forget_rate=0.5, forget_gradual_epochs=10, forget_exponent=1.0)
  losses, _, metrics = method_helpers.run_loss(method, (l1, l2), y, num_devices=num_devices, progress=7.5)
  rate = 0.5 * 7 / 9
  keep = int((1 - rate) * B)
  c1, c2 = method_helpers.per_example_ce(l1, y), method_helpers.per_example_ce(l2, y)
  sel1, sel2 = np.argsort(c1, kind='stable')[:keep], np.argsort(c2, kind='stable')[:keep]
  np.testing.assert_allclose(losses, [c1[sel2].mean(), c2[sel1].mean()], rtol=1e-10)
  np.testing.assert_allclose(metrics['forget_rate'], rate, rtol=1e-6)


def test_step_8_devices_equals_1_device():
  method_helpers.assert_step_8_devices_equals_1_device('coteaching', dict(forget_rate=0.5, forget_gradual_epochs=0))


@pytest.mark.parametrize(
    'key, value, message',
    [
        ('coteaching.forget_rate', 1.0, 'method.coteaching.forget_rate'),
        ('coteaching.forget_gradual_epochs', -1, 'method.coteaching.forget_gradual_epochs'),
        ('coteaching.forget_exponent', 0.0, 'method.coteaching.forget_exponent'),
    ],
)
def test_config_checks_reject_bad_settings(key, value, message):
  method_helpers.assert_validation_refuses(key, value, message)
