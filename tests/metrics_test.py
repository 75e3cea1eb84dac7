"""The kNN monitor against a plain numpy implementation."""

import numpy as np

from rmdnet_jax import metrics


def numpy_knn(train, labels, queries, num_classes, k, t):
  train = train / np.linalg.norm(train, axis=1, keepdims=True)
  queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  preds = []
  for q in queries:
    sims = train @ q
    top = np.argsort(-sims, kind='stable')[:k]
    votes = np.zeros(num_classes)
    for i in top:
      votes[labels[i]] += np.exp(sims[i] / t)
    preds.append(np.argmax(votes))
  return np.array(preds)


def test_knn_matches_numpy():
  rng = np.random.default_rng(0)
  train, queries = rng.normal(size=(200, 8)), rng.normal(size=(50, 8))
  labels = rng.integers(0, 5, 200)
  got = metrics.knn_predict(train, labels, queries, num_classes=5, k=20, temperature=0.1, chunk=16)
  np.testing.assert_array_equal(got, numpy_knn(train, labels, queries, 5, 20, 0.1))


def test_knn_separable_clusters_are_perfect():
  rng = np.random.default_rng(1)
  centres = np.eye(4) * 10
  labels = np.repeat(np.arange(4), 30)
  train = centres[labels] + rng.normal(size=(120, 4))
  test_labels = np.repeat(np.arange(4), 5)
  test = centres[test_labels] + rng.normal(size=(20, 4))
  assert metrics.knn_accuracy(train, labels, test, test_labels, num_classes=4, k=200) == 1.0
