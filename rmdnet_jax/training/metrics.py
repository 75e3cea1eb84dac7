"""Monitors and metric writers: kNN accuracy of an encoder, and the run's writers (console log, TensorBoard,
metrics.jsonl, optional Weights & Biases). No TensorFlow: TensorBoard events are written by tensorboardX."""

import functools
import io
import json
import os
import time
import uuid
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
import tensorboardX.summary
from tensorboardX import event_file_writer, record_writer
from tensorboardX.proto import event_pb2

from rmdnet_jax import fileio
from rmdnet_jax.core import relation


@functools.partial(jax.jit, static_argnames=('num_classes', 'k'))
def _knn_vote(train, labels, queries, temperature, *, num_classes: int, k: int):
  """Predicted labels of `queries` [m, D] by their k most cosine-similar rows of the unit-norm `train` [N, D].

  The training features are an argument, not a closure constant, so one compile serves every evaluation.
  """
  sims = relation.l2_normalize(queries) @ train.T  # [m, N]
  top_sims, top_idx = jax.lax.top_k(sims, k)  # [m, k]
  votes = jax.nn.one_hot(labels[top_idx], num_classes) * jnp.exp(top_sims / temperature)[..., None]
  return jnp.argmax(votes.sum(axis=1), axis=-1)


def knn_predict(
    train_features,
    train_labels,
    query_features,
    *,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 1024,
) -> np.ndarray:
  """Weighted kNN classifier of the InstDisc / SimSiam CIFAR monitors.

  Each query's k most cosine-similar training features vote for their labels with weight exp(sim / T).

  Args:
    train_features: [N, D]; train_labels: [N] int; query_features: [M, D].
  Returns:
    predicted labels [M] (numpy).
  """
  train = relation.l2_normalize(jnp.asarray(train_features, jnp.float32))
  labels = jnp.asarray(train_labels, jnp.int32)
  k = min(k, train.shape[0])
  query_features = np.asarray(query_features, np.float32)
  preds = [
      np.asarray(
          _knn_vote(
              train, labels, jnp.asarray(query_features[i : i + chunk]), temperature, num_classes=num_classes, k=k
          )
      )
      for i in range(0, len(query_features), chunk)
  ]
  return np.concatenate(preds) if preds else np.zeros((0,), np.int32)


def knn_accuracy(train_features, train_labels, test_features, test_labels, **kwargs) -> float:
  preds = knn_predict(train_features, train_labels, test_features, **kwargs)
  return float(np.mean(preds == np.asarray(test_labels)))


class MetricWriter:
  """What the loop and the pipeline write to: scalars at a step, the config once, the run's final summary."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    pass

  def write_hparams(self, hparams: Mapping[str, Any]):
    pass

  def write_summary(self, summary: Mapping[str, Any]):
    pass

  def flush(self):
    pass

  def close(self):
    pass


class MultiWriter(MetricWriter):
  """Writes everything to each of `writers`, in order."""

  def __init__(self, writers: Sequence[MetricWriter]):
    self._writers = tuple(writers)

  def write_scalars(self, step, scalars):
    for w in self._writers:
      w.write_scalars(step, scalars)

  def write_hparams(self, hparams):
    for w in self._writers:
      w.write_hparams(hparams)

  def write_summary(self, summary):
    for w in self._writers:
      w.write_summary(summary)

  def flush(self):
    for w in self._writers:
      w.flush()

  def close(self):
    for w in self._writers:
      w.close()


class LoggingWriter(MetricWriter):
  """Each `write_scalars` call as one line, `[step] name=value, ...`: INFO (the console) when `verbose`, else
  DEBUG, which absl shows only at --verbosity=1 or above. The console's own lines, the progress bar or lines and one
  short line per evaluation, are `progress.Progress`'s; every scalar is in the other writers either way."""

  def __init__(self, verbose: bool = False):
    self._log = logging.info if verbose else logging.debug

  def write_scalars(self, step, scalars):
    self._log('[%d] %s', step, ', '.join(f'{k}={_format(v)}' for k, v in sorted(scalars.items())))


def _format(value) -> str:
  value = float(value)
  return f'{value:.6g}'


class _ObjectStoreEventFile:
  """A TensorBoard event file in an object store (gs://), written through fileio (etils.epath -> gcsfs).

  Object stores cannot append: the records are kept in memory and each flush uploads the whole file again,
  replacing the object at once (tensorboardX's own gs:// writer does the same through google-cloud-storage). An
  event file holds a few scalars per log interval, so it stays small.
  """

  def __init__(self, path: str):
    self._path = path
    self._buffer = io.BytesIO()

  def write(self, data: bytes):
    self._buffer.write(data)

  def flush(self):
    fileio.write_bytes(self._path, self._buffer.getvalue())

  def close(self):
    self.flush()


class _ObjectStoreEventFiles:
  """tensorboardX's writer factory interface (`open`, `directory_check`) for object-store paths."""

  def open(self, path: str) -> _ObjectStoreEventFile:
    return _ObjectStoreEventFile(path)

  def directory_check(self, path: str):
    del path  # Object stores have no directories to create.


record_writer.register_writer_factory('gs', _ObjectStoreEventFiles())


class TensorBoardWriter(MetricWriter):
  """TensorBoard event files in `logdir` (local or gs://) through tensorboardX's synchronous writer: scalars, and
  the config as text. No thread and no TensorFlow: each `write_scalars` call is in the file when it returns
  (local disks; an object store gets the file on `flush`, at most every `remote_flush_secs`, and on `close`)."""

  def __init__(self, logdir: str, remote_flush_secs: float = 60.0):
    record_writer.directory_check(logdir)
    # One file per writer; the pid keeps two writers started in the same second apart.
    self._events = event_file_writer.EventsWriter(os.path.join(logdir, 'events'), filename_suffix=f'.{os.getpid()}')
    self._remote = fileio.is_remote(logdir)
    self._remote_flush_secs = remote_flush_secs
    self._last_flush = time.monotonic()

  def _write(self, step: int, summary) -> None:
    self._events.write_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def write_scalars(self, step, scalars):
    for name, value in scalars.items():
      self._write(step, tensorboardX.summary.scalar(name, float(value)))
    if not self._remote or time.monotonic() - self._last_flush >= self._remote_flush_secs:
      self.flush()

  def write_hparams(self, hparams):
    rows = '\n'.join(f'| `{k}` | `{v}` |' for k, v in sorted(hparams.items()))
    self._write(0, tensorboardX.summary.text('config', '| key | value |\n|---|---|\n' + rows))
    self.flush()

  def flush(self):
    self._events.flush()
    self._last_flush = time.monotonic()

  def close(self):
    self._events.close()


class WandbWriter(MetricWriter):
  """Weights & Biases: the same scalars (each stage on its own step axis, `<stage>/step`), the config, and the
  final summary. A resumed run continues the same W&B run: its id is kept in WORKDIR/wandb_run_id.txt.
  """

  def __init__(self, workdir: str, *, project: str, entity: str = '', mode: str = 'online', name: Optional[str] = None):
    import wandb  # noqa: PLC0415  (optional: config_checks refuses wandb_project without the package)

    id_path = os.path.join(workdir, 'wandb_run_id.txt')
    if fileio.exists(id_path):
      run_id = fileio.read_text(id_path).strip()
    else:
      run_id = uuid.uuid4().hex[:12]  # W&B run ids: letters and digits
      fileio.write_text(id_path, run_id + '\n')
    local_dir = None if fileio.is_remote(workdir) else os.path.abspath(workdir)
    self._run = wandb.init(
        project=project,
        entity=entity or None,
        mode=mode,
        id=run_id,
        resume='allow',
        name=name or os.path.basename(os.path.normpath(os.fspath(workdir))),
        dir=local_dir,
    )
    self._stages = set()

  @property
  def run(self):
    return self._run

  def write_scalars(self, step, scalars):
    row = {}
    for name, value in scalars.items():
      stage = name.split('/', 1)[0] if '/' in name else 'run'
      if stage not in self._stages:
        self._run.define_metric(f'{stage}/step')
        self._run.define_metric(f'{stage}/*', step_metric=f'{stage}/step')
        self._stages.add(stage)
      row[f'{stage}/step'] = int(step)
      row[name] = float(value)
    self._run.log(row)

  def write_hparams(self, hparams):
    self._run.config.update(dict(hparams), allow_val_change=True)

  def write_summary(self, summary):
    self._run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))})

  def close(self):
    self._run.finish()


class JsonlWriter(MetricWriter):
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


def create_writer(workdir: str, logging_config=None) -> MetricWriter:
  """The log (every scalar on the console with `logging_config.verbose`) + TensorBoard (WORKDIR/tensorboard) +
  WORKDIR/metrics.jsonl, and Weights & Biases when `logging_config.wandb_project` is set, on process 0; the log
  only on the other hosts."""
  verbose = bool(logging_config.get('verbose', False)) if logging_config is not None else False
  if jax.process_index() > 0:
    return LoggingWriter(verbose)
  writers = [
      LoggingWriter(verbose),
      TensorBoardWriter(os.path.join(workdir, 'tensorboard')),
      JsonlWriter(os.path.join(workdir, 'metrics.jsonl')),
  ]
  if logging_config is not None and logging_config.get('wandb_project'):
    writers.append(
        WandbWriter(
            workdir,
            project=logging_config.wandb_project,
            entity=logging_config.wandb_entity,
            mode=logging_config.wandb_mode,
        )
    )
  return MultiWriter(writers)


def read_jsonl(path: str) -> list:
  if not fileio.exists(path):
    return []
  return [json.loads(line) for line in fileio.read_text(path).splitlines() if line.strip()]
