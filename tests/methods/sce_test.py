"""rmdnet_jax/methods/sce.py: symmetric cross-entropy against a float64 numpy reference, its CE limit, finite
gradients, and its settings' checks."""

import jax.numpy as jnp
import numpy as np
import pytest

from rmdnet_jax.methods import ce, sce
from tests.methods import method_helpers


@pytest.mark.parametrize('alpha, beta, log_zero', [(0.1, 1.0, -4.0), (6.0, 1.0, -4.0), (1.0, 0.5, -2.0)])
def test_sce_matches_numpy(x64, alpha, beta, log_zero):
  logits, labels = method_helpers.batch(1)
  got = sce.symmetric_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), alpha=alpha, beta=beta, log_zero=log_zero)
  np.testing.assert_allclose(got, method_helpers.sce_ref(logits, labels, alpha, beta, log_zero), rtol=1e-12)


def test_sce_without_reverse_term_is_scaled_ce(x64):
  logits, labels = method_helpers.batch(3)
  got = sce.symmetric_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), alpha=0.1, beta=0.0)
  want = 0.1 * ce.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(got, want, rtol=1e-12)


def test_gradients_are_finite_even_for_confident_wrong_predictions():
  method_helpers.assert_gradients_finite_for_confident_wrong_predictions('sce')


@pytest.mark.parametrize(
    'key, value, message',
    [
        ('sce.alpha', -0.1, 'method.sce.alpha'),
        ('sce.beta', -1.0, 'method.sce.beta'),
        ('sce.log_zero', float('-inf'), 'method.sce.log_zero=-inf must be a finite number'),
    ],
)
def test_config_checks_reject_bad_settings(key, value, message):
  method_helpers.assert_validation_refuses(key, value, message)
