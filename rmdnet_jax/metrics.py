"""Monitors and metric writers: kNN accuracy of an encoder, classification accuracy, clu writers + JSONL."""
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from clu import metric_writers

from rmdnet_jax import fileio


def _normalize(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def knn_predict(train_features, train_labels, query_features, *, num_classes: int, k: int = 200,
                temperature: float = 0.1, chunk: int = 1024) -> np.ndarray:
  """Weighted kNN classifier of the InstDisc / SimSiam CIFAR monitors.

  Each query's k most cosine-similar training features vote for their labels with weight exp(sim / T).

  Args:
    train_features: [N, D]; train_labels: [N] int; query_features: [M, D].
  Returns:
    predicted labels [M] (numpy).
  """
  train = _normalize(jnp.asarray(train_features, jnp.float32))
  labels = jnp.asarray(train_labels, jnp.int32)
  k = min(k, train.shape[0])

  @jax.jit
  def predict(queries):
    sims = _normalize(queries) @ train.T                       # [m, N]
    top_sims, top_idx = jax.lax.top_k(sims, k)                 # [m, k]
    votes = jax.nn.one_hot(labels[top_idx], num_classes) * jnp.exp(top_sims / temperature)[..., None]
    return jnp.argmax(votes.sum(axis=1), axis=-1)

  query_features = np.asarray(query_features, np.float32)
  preds = [np.asarray(predict(jnp.asarray(query_features[i:i + chunk])))
           for i in range(0, len(query_features), chunk)]
  return np.concatenate(preds) if preds else np.zeros((0,), np.int32)


def knn_accuracy(train_features, train_labels, test_features, test_labels, **kwargs) -> float:
  preds = knn_predict(train_features, train_labels, test_features, **kwargs)
  return float(np.mean(preds == np.asarray(test_labels)))


class JsonlWriter(metric_writers.interface.MetricWriter):
  """One JSON object per `write_scalars` call in WORKDIR/metrics.jsonl: easy to read from anything.

  On a local disk each row is appended (one write); a row torn by a crash is dropped when the next writer opens
  the file. Object stores such as GCS cannot append, so there the file is rewritten whole on each call (it holds
  one row per log interval, so it stays small), each upload replacing the object at once. Either way a resumed
  run keeps the rows already there.
  """

  def __init__(self, path: str):
    self._path = path
    self._remote = fileio.is_remote(path)
    if self._remote:
      self._text = fileio.read_text(path) if fileio.exists(path) else ''
    else:
      fileio.drop_torn_last_line(path)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    row = {'step': int(step), **{k: float(v) for k, v in scalars.items()}}
    line = json.dumps(row) + '\n'
    if self._remote:
      self._text += line
      fileio.write_text(self._path, self._text)
    else:
      fileio.append_text(self._path, line)

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    pass

  def close(self):
    pass


def create_writer(workdir: str) -> metric_writers.MetricWriter:
  """Console (absl logging) + TensorBoard (WORKDIR/tensorboard) + WORKDIR/metrics.jsonl on process 0;
  logging only on the other hosts."""
  if jax.process_index() > 0:
    return metric_writers.create_default_writer(just_logging=True)
  return metric_writers.MultiWriter([
      metric_writers.create_default_writer(os.path.join(workdir, 'tensorboard'), asynchronous=False),
      JsonlWriter(os.path.join(workdir, 'metrics.jsonl')),
  ])


def read_jsonl(path: str) -> list:
  if not fileio.exists(path):
    return []
  return [json.loads(line) for line in fileio.read_text(path).splitlines() if line.strip()]
