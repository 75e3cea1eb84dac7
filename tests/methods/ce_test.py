"""rmdnet_jax/methods/ce.py: cross-entropy against a float64 numpy reference, and finite gradients."""

import jax.numpy as jnp
import numpy as np

from rmdnet_jax.methods import ce
from tests.methods import method_helpers


def test_ce_matches_numpy(x64):
  logits, labels = method_helpers.batch(7)
  got = ce.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  assert got.dtype == jnp.float64
  np.testing.assert_allclose(got, method_helpers.ce_ref(logits, labels), rtol=1e-12)


def test_gradients_are_finite_even_for_confident_wrong_predictions():
  method_helpers.assert_gradients_finite_for_confident_wrong_predictions('ce')
