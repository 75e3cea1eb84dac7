"""Data: CIFAR through tfds `data_source` (or a .npz, or synthetic images) into uint8 host arrays, and batches.

CIFAR fits in host memory, so each split is read once into arrays and every step slices them by index; the
augmentation runs on the accelerator (`augment.py`). Records are put in the order of their `id` field, never of
their position in the files, so that anything per image (CIFAR-N labels, saved noisy labels) joins by id.

TensorFlow is not needed here: `tfds.data_source` reads the prepared ArrayRecord files directly. Preparing them
the first time is `python -m rmdnet_jax.prepare_data` (which does need TensorFlow).
"""
import dataclasses
import os
import re
import time
from typing import Iterator, Optional

import ml_collections
import numpy as np
from absl import logging

from rmdnet_jax import augment

DATASETS = {
    'cifar10': dict(num_classes=10, mean=augment.CIFAR10_MEAN, std=augment.CIFAR10_STD),
    'cifar100': dict(num_classes=100, mean=augment.CIFAR100_MEAN, std=augment.CIFAR100_STD),
}
SOURCES = ('tfds', 'npz', 'synthetic')
_ID_PATTERN = re.compile(r'^(?:train|test)_(\d+)$')


class DataUnavailableError(RuntimeError):
  """The configured data cannot be read; the message says how to fix it."""


@dataclasses.dataclass
class Dataset:
  """Whole splits as host arrays. Index i of the train arrays is the example with the i-th smallest id."""
  name: str
  num_classes: int
  train_images: np.ndarray        # uint8 [N, H, W, 3]
  train_labels: np.ndarray        # int64 [N] clean labels (used only for noise generation and reports)
  test_images: np.ndarray         # uint8 [M, H, W, 3]
  test_labels: np.ndarray         # int64 [M]
  train_ids: np.ndarray           # int64 [N] original CIFAR index (train_NNNNN) or rank of the id string
  train_coarse_labels: Optional[np.ndarray] = None   # int64 [N], CIFAR-100 super-classes
  mean: tuple = (0.5, 0.5, 0.5)
  std: tuple = (0.25, 0.25, 0.25)

  @property
  def image_shape(self):
    return self.train_images.shape[1:]


def _order_by_id(ids) -> tuple[np.ndarray, np.ndarray]:
  """Returns (order, numeric_ids): `order` sorts records by id; numeric ids come from `train_NNNNN` ids
  (the original CIFAR index that CIFAR-N and torchvision use) or, for other ids, their rank."""
  ids = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
  matches = [_ID_PATTERN.match(i) for i in ids]
  if all(matches):
    numeric = np.array([int(m.group(1)) for m in matches], np.int64)
    order = np.argsort(numeric, kind='stable')
    return order, numeric[order]
  order = np.argsort(np.array(ids), kind='stable')
  return order, np.arange(len(ids), dtype=np.int64)


def _read_records(source) -> list:
  try:
    return source.__getitems__(list(range(len(source))))
  except TypeError:
    # tfds' mock data source (used in tests) has no batched read; fall back to one record at a time.
    return [source[i] for i in range(len(source))]


def _tfds_split(name: str, split: str, data_dir: Optional[str]):
  import tensorflow_datasets as tfds  # Lazy: accelerator hosts that train from .npz need no tfds.
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # tfds raises several types here (not found, wrong format, no access).
    where = data_dir or '~/tensorflow_datasets'
    raise DataUnavailableError(
        f'Cannot read tfds dataset {name!r} (split {split!r}) from data_dir {where!r} ({type(e).__name__}); '
        f'prepare it once with `python -m rmdnet_jax.prepare_data --dataset={name} --data_dir={where}` '
        '(needs internet), point --config.data.data_dir at a prepared directory, or use '
        '--config.data.source=npz --config.data.npz_path=FILE.') from e
  start = time.perf_counter()
  logging.info('Reading %d %s/%s records (decoding PNGs takes ~20 s for CIFAR train)...', len(source), name, split)
  records = _read_records(source)
  logging.info('Read %s/%s in %.1f s.', name, split, time.perf_counter() - start)
  order, numeric_ids = _order_by_id([r['id'] for r in records])
  records = [records[i] for i in order]
  images = np.stack([np.asarray(r['image'], np.uint8) for r in records])
  labels = np.array([int(r['label']) for r in records], np.int64)
  coarse = (np.array([int(r['coarse_label']) for r in records], np.int64)
            if 'coarse_label' in records[0] else None)
  return images, labels, coarse, numeric_ids


def load_tfds(name: str, data_dir: Optional[str] = None) -> Dataset:
  """Reads both splits of a prepared tfds CIFAR into host arrays, in id order.

  Args:
    name: 'cifar10' or 'cifar100'.
    data_dir: tfds data_dir holding the ArrayRecord preparation; None for tfds' default
      (~/tensorflow_datasets or $TFDS_DATA_DIR).

  Returns:
    The whole train and test splits, with CIFAR-100's coarse labels when present.

  Raises:
    ValueError: `name` is not a known dataset.
    DataUnavailableError: the dataset is not prepared (as ArrayRecord) in `data_dir`.
  """
  if name not in DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; use one of {sorted(DATASETS)}.')
  train_images, train_labels, coarse, ids = _tfds_split(name, 'train', data_dir)
  test_images, test_labels, _, _ = _tfds_split(name, 'test', data_dir)
  return Dataset(name, DATASETS[name]['num_classes'], train_images, train_labels, test_images, test_labels,
                 ids, coarse, mean=DATASETS[name]['mean'], std=DATASETS[name]['std'])


def _load_tfds(cfg) -> Dataset:
  return load_tfds(cfg.name, cfg.data_dir or None)


NPZ_KEYS = ('x_train', 'y_train', 'x_test', 'y_test')


def _load_npz(cfg) -> Dataset:
  path = cfg.npz_path
  if not path or not os.path.isfile(path):
    raise DataUnavailableError(
        f'data.npz_path {path!r} is not a file; write one with `python -m rmdnet_jax.prepare_data '
        f'--dataset={cfg.name} --npz=FILE` on a machine with the data, or use --config.data.source=tfds.')
  with np.load(path) as f:
    missing = [k for k in NPZ_KEYS if k not in f]
    if missing:
      raise DataUnavailableError(f'{path} lacks arrays {missing}; it needs {list(NPZ_KEYS)} '
                                 '(uint8 images [N,32,32,3], int labels [N]) and optionally coarse_train, ids_train.')
    arrays = {k: f[k] for k in f.files}
  n = len(arrays['x_train'])
  return Dataset(cfg.name, DATASETS[cfg.name]['num_classes'],
                 arrays['x_train'].astype(np.uint8), arrays['y_train'].astype(np.int64),
                 arrays['x_test'].astype(np.uint8), arrays['y_test'].astype(np.int64),
                 arrays.get('ids_train', np.arange(n)).astype(np.int64),
                 arrays['coarse_train'].astype(np.int64) if 'coarse_train' in arrays else None)


def _load_synthetic(cfg) -> Dataset:
  """Random images and labels — for smoke runs and benchmarks only; nothing can be learnt from them."""
  rng = np.random.default_rng(cfg.synthetic_seed)
  size, c = cfg.synthetic_image_size, cfg.num_classes
  def split(n):
    return (rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
            rng.integers(0, c, (n,), dtype=np.int64))
  train_images, train_labels = split(cfg.synthetic_train_size)
  test_images, test_labels = split(cfg.synthetic_test_size)
  coarse = train_labels // 5 if c == 100 else None
  return Dataset('synthetic', c, train_images, train_labels, test_images, test_labels,
                 np.arange(len(train_labels), dtype=np.int64), coarse)


def load(cfg: ml_collections.ConfigDict) -> Dataset:
  """Loads `config.data` into host arrays (see `configs/default.py` for the keys)."""
  if cfg.source not in SOURCES:
    raise ValueError(f'Unknown data.source {cfg.source!r}; use one of {SOURCES}.')
  if cfg.source != 'synthetic' and cfg.name not in DATASETS:
    raise ValueError(f'Unknown data.name {cfg.name!r}; use one of {sorted(DATASETS)}.')
  dataset = {'tfds': _load_tfds, 'npz': _load_npz, 'synthetic': _load_synthetic}[cfg.source](cfg)
  if dataset.num_classes != cfg.num_classes:
    raise ValueError(f'data.num_classes={cfg.num_classes} but {cfg.name} has {dataset.num_classes} classes.')
  if cfg.source != 'synthetic':
    dataset.mean, dataset.std = DATASETS[cfg.name]['mean'], DATASETS[cfg.name]['std']
  if cfg.train_subset:
    # Deterministic subset for quick experiments: the first examples in id order.
    n = cfg.train_subset
    dataset.train_images, dataset.train_labels = dataset.train_images[:n], dataset.train_labels[:n]
    dataset.train_ids = dataset.train_ids[:n]
    if dataset.train_coarse_labels is not None:
      dataset.train_coarse_labels = dataset.train_coarse_labels[:n]
  if cfg.test_subset:
    dataset.test_images = dataset.test_images[:cfg.test_subset]
    dataset.test_labels = dataset.test_labels[:cfg.test_subset]
  return dataset


def epoch_permutation(num_examples: int, *, seed: int, epoch: int, stream: int) -> np.ndarray:
  """The example order of one epoch: a pure function of (seed, stream, epoch), so a resumed run replays it."""
  return np.random.default_rng([seed, stream, epoch]).permutation(num_examples)


def batch_indices(step: int, *, num_examples: int, global_batch_size: int, seed: int, stream: int) -> np.ndarray:
  """Indices of the global batch at `step` (the incomplete last batch of each epoch is dropped)."""
  steps_per_epoch = num_examples // global_batch_size
  epoch, position = divmod(step, steps_per_epoch)
  order = epoch_permutation(num_examples, seed=seed, epoch=epoch, stream=stream)
  return order[position * global_batch_size:(position + 1) * global_batch_size]


def host_batches(arrays: dict, *, start_step: int, num_steps: int, global_batch_size: int, seed: int,
                 stream: int, host_slice: slice) -> Iterator[dict]:
  """Yields this host's part of each global batch from `start_step` on: {name: array[b_host, ...]} plus
  'index' (dataset row of each example, e.g. for per-example state)."""
  num_examples = len(next(iter(arrays.values())))
  for step in range(start_step, num_steps):
    idx = batch_indices(step, num_examples=num_examples, global_batch_size=global_batch_size, seed=seed,
                        stream=stream)[host_slice]
    batch = {name: a[idx] for name, a in arrays.items()}
    batch['index'] = idx.astype(np.int32)
    yield batch
