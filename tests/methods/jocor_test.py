"""rmdnet_jax/methods/jocor.py: the joint loss over the small-loss examples against a float64 numpy reference (on
1 and on 8 devices), the whole RGRL step on 8 devices equal to 1 device, and its settings' checks."""

import numpy as np
import pytest

from tests.methods import method_helpers

B = method_helpers.PROBLEM_BATCH


@pytest.mark.parametrize('num_devices', [1, 8])
def test_jocor_loss_matches_numpy(x64, num_devices):
  l1, l2, y = method_helpers.problem(2)
  method = method_helpers.method_for('jocor', co_lambda=0.7, forget_rate=0.25, forget_gradual_epochs=0)
  losses, _, _ = method_helpers.run_loss(method, (l1, l2), y, num_devices=num_devices, progress=3.0)
  ce, kl = method_helpers.per_example_ce, method_helpers.kl
  joint = 0.3 * (ce(l1, y) + ce(l2, y)) + 0.7 * (kl(l2, l1) + kl(l1, l2))
  keep = int(0.75 * B)
  want = np.sort(joint)[:keep].mean()
  np.testing.assert_allclose(losses, [want / 2, want / 2], rtol=1e-10)


def test_step_8_devices_equals_1_device():
  method_helpers.assert_step_8_devices_equals_1_device('jocor', dict(forget_rate=0.25, forget_gradual_epochs=0))


@pytest.mark.parametrize(
    'key, value, message',
    [
        ('jocor.forget_rate', -0.1, 'method.jocor.forget_rate'),
        ('jocor.forget_gradual_epochs', -1, 'method.jocor.forget_gradual_epochs'),
        ('jocor.co_lambda', 1.5, 'method.jocor.co_lambda'),
    ],
)
def test_config_checks_reject_bad_settings(key, value, message):
  method_helpers.assert_validation_refuses(key, value, message)
