"""The kNN monitor against a plain numpy implementation; what the writers put on the console."""

import ml_collections
import numpy as np

from rmdnet_jax.training import metrics


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


def test_every_scalar_reaches_the_console_only_when_verbose(monkeypatch, tmp_path):
  logged = {'info': [], 'debug': []}
  for level in logged:
    monkeypatch.setattr(metrics.logging, level, lambda fmt, *args, level=level: logged[level].append(fmt % args))
  config = ml_collections.ConfigDict({'wandb_project': '', 'verbose': False})
  writer = metrics.create_writer(str(tmp_path / 'quiet'), config)
  writer.write_scalars(4, {'rgrl/loss': 2.5, 'rgrl/edge': 1.0})
  writer.close()
  assert logged == {'info': [], 'debug': ['[4] rgrl/edge=1, rgrl/loss=2.5']}  # absl shows DEBUG at -v 1 only
  assert metrics.read_jsonl(str(tmp_path / 'quiet' / 'metrics.jsonl')) == [
      {'step': 4, 'rgrl/loss': 2.5, 'rgrl/edge': 1.0}
  ]
  config.verbose = True
  writer = metrics.create_writer(str(tmp_path / 'verbose'), config)
  writer.write_scalars(4, {'rgrl/loss': 2.5})
  writer.close()
  assert logged['info'] == ['[4] rgrl/loss=2.5']
  metrics.create_writer(str(tmp_path / 'old'), None).close()  # a config saved before the logging keys
