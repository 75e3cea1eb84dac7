"""rmdnet_jax/methods/gce.py: generalized cross-entropy against a float64 numpy reference, its CE limit, finite
gradients, and its settings' checks."""

import jax.numpy as jnp
import numpy as np
import pytest

from rmdnet_jax.methods import gce
from tests.methods import method_helpers


@pytest.mark.parametrize('q', [0.1, 0.7, 1.0])
def test_gce_matches_numpy(x64, q):
  logits, labels = method_helpers.batch()
  got = gce.generalized_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), q=q)
  assert got.dtype == jnp.float64
  np.testing.assert_allclose(got, method_helpers.gce_ref(logits, labels, q), rtol=1e-12)


def test_gce_approaches_ce_as_q_goes_to_zero(x64):
  logits, labels = method_helpers.batch(2)
  target = method_helpers.ce_ref(logits, labels)
  # (1 - p^q)/q = -log p - q (log p)^2 / 2 + O(q^2): the gap shrinks linearly in q.
  gaps = [
      abs(float(gce.generalized_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), q=q)) - target)
      for q in (1e-2, 1e-4, 1e-6)
  ]
  assert gaps[0] > gaps[1] > gaps[2]
  assert gaps[2] < 1e-5 * target


def test_gradients_are_finite_even_for_confident_wrong_predictions():
  method_helpers.assert_gradients_finite_for_confident_wrong_predictions('gce')


@pytest.mark.parametrize(
    'key, value, message',
    [
        ('gce.q', 0.0, 'method.gce.q'),
        ('gce.q', 1.5, 'method.gce.q'),
        ('gce.q', float('nan'), 'method.gce.q'),
    ],
)
def test_config_checks_reject_bad_settings(key, value, message):
  method_helpers.assert_validation_refuses(key, value, message)
