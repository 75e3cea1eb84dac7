"""The linear probe of frozen features (rmdnet_jax.stages.linear_probe): a plain softmax regression, checked against
scikit-learn's, and blind to labels that carry no signal. tests/no_tensorflow_test.py runs the stage end to end."""

import numpy as np
import pytest

from rmdnet_jax.stages import linear_probe


def clusters(n, num_classes=10, dim=32, seed=0, spread=0.5):
  rng = np.random.default_rng(seed)
  centres = np.random.default_rng(123).normal(size=(num_classes, dim)) * spread
  labels = rng.integers(0, num_classes, n)
  return (centres[labels] + rng.normal(size=(n, dim))).astype(np.float32) * 3.0 + 7.0, labels


def test_probe_matches_logistic_regression_on_gaussian_clusters():
  from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

  x, y = clusters(3000)
  xt, yt = clusters(1000, seed=1)
  probe = linear_probe.accuracy(x, y, xt, yt, num_classes=10, epochs=20, batch_size=256)
  train, test = linear_probe.standardise(x, xt)
  reference = LogisticRegression(max_iter=2000).fit(train, y).score(test, yt)
  assert probe > 0.7  # chance is 0.1
  assert probe == pytest.approx(reference, abs=0.03)


def test_probe_is_at_chance_when_the_labels_carry_no_signal():
  x, y = clusters(3000)
  xt, yt = clusters(1000, seed=1)
  shuffled = np.random.default_rng(2).permutation(y)
  assert linear_probe.accuracy(x, shuffled, xt, yt, num_classes=10, epochs=20) < 0.2


def test_standardise_uses_the_training_statistics_only():
  train, test = linear_probe.standardise(np.array([[0.0], [2.0]]), np.array([[1.0], [3.0]]))
  np.testing.assert_allclose(train[:, 0], [-1.0, 1.0], atol=1e-5)
  np.testing.assert_allclose(test[:, 0], [0.0, 2.0], atol=1e-5)


def test_fit_is_deterministic_for_a_seed_and_handles_a_batch_above_n():
  x, y = clusters(100)
  a = linear_probe.fit(x, y, num_classes=10, epochs=2, batch_size=512, seed=3)
  b = linear_probe.fit(x, y, num_classes=10, epochs=2, batch_size=512, seed=3)
  np.testing.assert_array_equal(a['w'], b['w'])
  assert a['w'].shape == (32, 10) and np.abs(a['w']).sum() > 0
