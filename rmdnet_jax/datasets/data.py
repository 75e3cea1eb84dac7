"""Data: CIFAR through tfds `data_source` (or a .npz, or synthetic images) into uint8 host arrays, and batches.

CIFAR fits in host memory, so each split is read once into arrays and every step slices them by index; the
augmentation runs on the accelerator (`augment.py`). Records are put in the order of their `id` field, never of
their position in the files, so that anything per image (CIFAR-N labels, saved noisy labels) joins by id.

CIFAR-N human labels (Wei et al., ICLR 2022) arrive in one of two ways, and after loading both give the same
`Dataset.train_human_labels` columns, under the names of `HUMAN_LABELS`:
* `data.name=cifar10_n|cifar100_n`: tfds' own builders, whose records carry the label columns;
* `data.cifar_n_labels=FILE`: a CIFAR-N label file (the official `CIFAR-10_human.pt` / `CIFAR-100_human.pt`, or an
  .npz with the same arrays) joined by id to already prepared `cifar10` / `cifar100` records.

TensorFlow is not needed here: `tfds.data_source` reads the prepared ArrayRecord files directly. Preparing them
the first time is `python -m rmdnet_jax.datasets.prepare_data` (which does need TensorFlow).
"""

import codecs
import collections
import dataclasses
import io
import os
import pickle
import re
import time
import zipfile
from typing import Iterator, Optional

import ml_collections
import numpy as np
from absl import logging

from rmdnet_jax import fileio

# `base` is the image dataset: tfds' CIFAR-N builders hold the same images (and ids) as cifar10 / cifar100 plus
# the human label columns, so a run on them is a CIFAR run.
# Channel statistics of the training images, in [0, 1] units: the normalisation of every network input.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

DATASETS = {
    'cifar10': dict(num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD, base='cifar10'),
    'cifar100': dict(num_classes=100, mean=CIFAR100_MEAN, std=CIFAR100_STD, base='cifar100'),
    'cifar10_n': dict(num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD, base='cifar10'),
    'cifar100_n': dict(num_classes=100, mean=CIFAR100_MEAN, std=CIFAR100_STD, base='cifar100'),
}
CIFAR_N_DATASETS = ('cifar10_n', 'cifar100_n')
SOURCES = ('tfds', 'npz', 'synthetic')
_ID_PATTERN = re.compile(r'^(?:train|test)_(\d+)$')

# The CIFAR-N label columns of each base dataset, by the names configs use (noise.human_label).
HUMAN_LABELS = {'cifar10': ('aggre', 'worst', 'random1', 'random2', 'random3'), 'cifar100': ('noisy',)}
ALL_HUMAN_LABELS = HUMAN_LABELS['cifar10'] + HUMAN_LABELS['cifar100']
# Those columns' names in tfds' cifar10_n / cifar100_n features and in the CIFAR-N files (CIFAR-100N calls its
# column noise_label in tfds and noisy_label in CIFAR-100_human.pt).
CIFAR_N_KEYS = {
    'aggre_label': 'aggre',
    'worse_label': 'worst',
    'random_label1': 'random1',
    'random_label2': 'random2',
    'random_label3': 'random3',
    'noise_label': 'noisy',
    'noisy_label': 'noisy',
}
# Below this agreement between a CIFAR-N file's clean_label and the dataset's labels, the join is wrong (another
# order, another dataset), not a few relabelled images.
MIN_CLEAN_AGREEMENT = 0.99
# The share of each CIFAR-N column that differs from the clean CIFAR labels, as published (Wei et al. 2022) and
# measured on the official files over the 50,000 training images. A column whose realised rate is far from it is
# misaligned (shifted, another order, another column), even when the file's clean_label is right.
PUBLISHED_NOISE_RATES = {
    'aggre': 0.0901,
    'worst': 0.4021,
    'random1': 0.1723,
    'random2': 0.1812,
    'random3': 0.1764,
    'noisy': 0.4020,
}
# Allowed |realised - published|: this much plus 4 binomial standard deviations of a sample of the joined size
# (0.6 points in all on the whole training set; a shifted column misses by ~50 points).
NOISE_RATE_TOLERANCE = 0.005


class DataUnavailableError(RuntimeError):
  """The configured data cannot be read; the message says how to fix it."""


def brief_error(e: BaseException, limit: int = 160) -> str:
  """An exception as a short clause for a one-sentence message: its type and the first line of its text."""
  text = str(e).strip().splitlines()[0] if str(e).strip() else ''
  text = text.replace('. ', '; ').rstrip('.')
  if len(text) > limit:
    text = text[: limit - 3].rstrip() + '...'
  return f'{type(e).__name__}: {text}' if text else type(e).__name__


@dataclasses.dataclass
class Dataset:
  """Whole splits as host arrays. Index i of the train arrays is the example with the i-th smallest id."""

  name: str
  num_classes: int
  train_images: np.ndarray  # uint8 [N, H, W, 3]
  train_labels: np.ndarray  # int64 [N] clean labels (used only for noise generation and reports)
  test_images: np.ndarray  # uint8 [M, H, W, 3]
  test_labels: np.ndarray  # int64 [M]
  train_ids: np.ndarray  # int64 [N] original CIFAR index (train_NNNNN) or rank of the id string
  train_coarse_labels: Optional[np.ndarray] = None  # int64 [N], CIFAR-100 super-classes
  mean: tuple = (0.5, 0.5, 0.5)
  std: tuple = (0.25, 0.25, 0.25)
  # CIFAR-N human labels, {name in HUMAN_LABELS: int64 [N]} in the order of the train arrays; empty without them.
  train_human_labels: dict = dataclasses.field(default_factory=dict)
  # Whether train_ids are the original CIFAR train indices, which CIFAR-N files are indexed by (not id ranks).
  train_ids_are_cifar_indices: bool = False

  @property
  def image_shape(self):
    return self.train_images.shape[1:]


def _id_text(record_id) -> str:
  return record_id.decode() if isinstance(record_id, bytes) else str(record_id)


def _order_by_id(ids) -> tuple[np.ndarray, np.ndarray]:
  """Returns (order, numeric_ids): `order` sorts records by id; numeric ids come from `train_NNNNN` ids
  (the original CIFAR index that CIFAR-N and torchvision use) or, for other ids, their rank."""
  ids = [_id_text(i) for i in ids]
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
    needs = (
        'needs internet and the CIFAR-N files of docs/data.md, "CIFAR-N"'
        if name in CIFAR_N_DATASETS
        else 'needs internet'
    )
    raise DataUnavailableError(
        f'Cannot read tfds dataset {name!r} (split {split!r}) from data_dir {where!r} ({type(e).__name__}); '
        f'prepare it once with `python -m rmdnet_jax.datasets.prepare_data --dataset={name} --data_dir={where}` '
        f'({needs}), point --config.data.data_dir at a prepared directory, or use '
        '--config.data.source=npz --config.data.npz_path=FILE.'
    ) from e
  start = time.perf_counter()
  logging.info('Reading %d %s/%s records (decoding PNGs takes ~20 s for CIFAR train)...', len(source), name, split)
  try:
    records = _read_records(source)
    order, numeric_ids = _order_by_id([r['id'] for r in records])
    records = [records[i] for i in order]
    images = np.stack([np.asarray(r['image'], np.uint8) for r in records])
  except Exception as e:  # The readers raise RuntimeError (hash mismatch), ValueError, OSError, decode errors.
    where = data_dir or '~/tensorflow_datasets'
    folder = getattr(getattr(source, 'dataset_info', None), 'data_dir', None) or os.path.join(where, name)
    raise DataUnavailableError(
        f'The prepared tfds dataset {name!r} (split {split!r}) in {folder} is damaged ({brief_error(e)}); delete '
        f'{folder} and prepare it again with `python -m rmdnet_jax.datasets.prepare_data --dataset={name} '
        f'--data_dir={where}`.'
    ) from e
  logging.info('Read %s/%s in %.1f s.', name, split, time.perf_counter() - start)
  labels = np.array([int(r['label']) for r in records], np.int64)
  coarse = np.array([int(r['coarse_label']) for r in records], np.int64) if 'coarse_label' in records[0] else None
  # cifar10_n / cifar100_n records carry the human labels (-1 in their test split, which has none).
  human = (
      {
          CIFAR_N_KEYS[k]: np.array([int(r[k]) for r in records], np.int64)
          for k in sorted(CIFAR_N_KEYS)
          if k in records[0]
      }
      if split == 'train'
      else {}
  )
  is_index = bool(records) and all(_ID_PATTERN.match(_id_text(r['id'])) for r in records)
  return images, labels, coarse, numeric_ids, human, is_index


def load_tfds(name: str, data_dir: Optional[str] = None) -> Dataset:
  """Reads both splits of a prepared tfds CIFAR into host arrays, in id order.

  Args:
    name: 'cifar10', 'cifar100', or their CIFAR-N versions 'cifar10_n', 'cifar100_n'.
    data_dir: tfds data_dir holding the ArrayRecord preparation; None for tfds' default
      (~/tensorflow_datasets or $TFDS_DATA_DIR).

  Returns:
    The whole train and test splits, with CIFAR-100's coarse labels when present and the CIFAR-N label columns
    for the CIFAR-N datasets. Its name is the base dataset ('cifar10' for 'cifar10_n').

  Raises:
    ValueError: `name` is not a known dataset.
    DataUnavailableError: the dataset is not prepared (as ArrayRecord) in `data_dir`.
  """
  if name not in DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; use one of {sorted(DATASETS)}.')
  train_images, train_labels, coarse, ids, human, is_index = _tfds_split(name, 'train', data_dir)
  test_images, test_labels, *_ = _tfds_split(name, 'test', data_dir)
  info = DATASETS[name]
  return Dataset(
      info['base'],
      info['num_classes'],
      train_images,
      train_labels,
      test_images,
      test_labels,
      ids,
      coarse,
      mean=info['mean'],
      std=info['std'],
      train_human_labels=human,
      train_ids_are_cifar_indices=is_index,
  )


def _load_tfds(cfg) -> Dataset:
  return load_tfds(cfg.name, cfg.data_dir or None)


NPZ_KEYS = ('x_train', 'y_train', 'x_test', 'y_test')
# CIFAR-N columns in an .npz of prepare_data: human_aggre, human_worst, ..., human_noisy.
NPZ_HUMAN_PREFIX = 'human_'


def _npz_remake(cfg) -> str:
  return (
      f'write it again with `python -m rmdnet_jax.datasets.prepare_data --dataset={cfg.name} --npz=FILE` on a machine '
      'with the data'
  )


def _check_label_array(path, key, array, n, num_classes, fix) -> None:
  if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_):
    raise DataUnavailableError(
        f'{path}: {key} is {array.dtype} of shape {array.shape}, but it must be a 1-D integer '
        f'array of class indices; {fix}.'
    )
  if len(array) != n:
    raise DataUnavailableError(
        f'{path}: {key} has {len(array)} entries for {n} images, but it needs one per image; ' f'{fix}.'
    )
  if n and (array.min() < 0 or array.max() >= num_classes):
    raise DataUnavailableError(
        f'{path}: {key} lies in [{array.min()}, {array.max()}], outside the {num_classes} '
        f'classes [0, {num_classes}); {fix}.'
    )


def _check_images(path, key, x, fix) -> None:
  if x.ndim != 4 or x.shape[-1] != 3 or len(x) == 0:
    raise DataUnavailableError(
        f'{path}: {key} has shape {x.shape}, but images must be [N, H, W, 3] with N > 0; ' f'{fix}.'
    )
  if x.dtype == np.uint8:
    return
  if np.issubdtype(x.dtype, np.floating):
    raise DataUnavailableError(
        f'{path}: {key} is {x.dtype} (values in [{x.min():g}, {x.max():g}]), but images must be uint8 in [0, 255], '
        'and casting floats would destroy them; save np.round(x * 255).astype(np.uint8) for images in [0, 1] (or '
        'x.astype(np.uint8) for [0, 255]).'
    )
  if not np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_ or x.min() < 0 or x.max() > 255:
    lo_hi = f' in [{x.min()}, {x.max()}]' if np.issubdtype(x.dtype, np.number) else ''
    raise DataUnavailableError(f'{path}: {key} is {x.dtype}{lo_hi}, but images must be uint8 in [0, 255]; {fix}.')


def check_npz_arrays(path: str, arrays: dict, num_classes: int, fix: str) -> None:
  """Refuses, with one sentence, .npz arrays that would train on something else than the data meant: images that
  are not uint8 pixels [N, H, W, 3] (float images in [0, 1] would become all 0 or 1), label counts that differ
  from the image counts, labels outside [0, num_classes), and optional per-image arrays of another length."""
  for split in ('train', 'test'):
    x, y = arrays[f'x_{split}'], arrays[f'y_{split}']
    _check_images(path, f'x_{split}', x, fix)
    _check_label_array(path, f'y_{split}', y, len(x), num_classes, fix)
  if arrays['x_train'].shape[1:] != arrays['x_test'].shape[1:]:
    raise DataUnavailableError(
        f'{path}: x_train images are {arrays["x_train"].shape[1:]} but x_test images are '
        f'{arrays["x_test"].shape[1:]}; both splits need the same image size, so {fix}.'
    )
  n = len(arrays['x_train'])
  if 'ids_train' in arrays:
    ids = arrays['ids_train']
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer) or len(np.unique(ids)) != n:
      raise DataUnavailableError(
          f'{path}: ids_train ({ids.dtype}, shape {ids.shape}) must be {n} distinct integer '
          f'ids, one per training image; {fix}.'
      )
  if 'coarse_train' in arrays:
    _check_label_array(path, 'coarse_train', arrays['coarse_train'], n, 20, fix)
  for key, array in arrays.items():
    if key.startswith(NPZ_HUMAN_PREFIX):
      _check_label_array(path, key, array, n, num_classes, fix)


def _load_npz(cfg) -> Dataset:
  path = cfg.npz_path
  if not path or not os.path.isfile(path):
    raise DataUnavailableError(
        f'data.npz_path {path!r} is not a file; write one with `python -m rmdnet_jax.datasets.prepare_data '
        f'--dataset={cfg.name} --npz=FILE` on a machine with the data, or use --config.data.source=tfds.'
    )
  with open(path, 'rb') as f:
    if f.read(2) != b'PK':
      raise DataUnavailableError(
          f'{path} is not an .npz (an .npz is a zip archive of arrays, and this file is not '
          f'a zip archive); point --config.data.npz_path at the .npz, or {_npz_remake(cfg)}.'
      )
  try:
    with np.load(path, allow_pickle=False) as f:
      missing = [k for k in NPZ_KEYS if k not in f.files]
      if missing:
        raise DataUnavailableError(
            f'{path} lacks arrays {missing}; it needs {list(NPZ_KEYS)} (uint8 images [N,32,32,3], int labels [N]) '
            'and optionally coarse_train, ids_train.'
        )
      arrays = {k: f[k] for k in f.files}
  except DataUnavailableError:
    raise
  except Exception as e:  # not a zip, truncated, a bad CRC, pickled objects: numpy raises many types here.
    raise DataUnavailableError(
        f'{path} is not a readable .npz of arrays ({brief_error(e)}); it is damaged or of '
        f'another format, so {_npz_remake(cfg)}.'
    ) from e
  num_classes = DATASETS[cfg.name]['num_classes']
  check_npz_arrays(path, arrays, num_classes, _npz_remake(cfg))
  n = len(arrays['x_train'])
  human = {k[len(NPZ_HUMAN_PREFIX) :]: v.astype(np.int64) for k, v in arrays.items() if k.startswith(NPZ_HUMAN_PREFIX)}
  return Dataset(
      DATASETS[cfg.name]['base'],
      num_classes,
      arrays['x_train'].astype(np.uint8),
      arrays['y_train'].astype(np.int64),
      arrays['x_test'].astype(np.uint8),
      arrays['y_test'].astype(np.int64),
      arrays.get('ids_train', np.arange(n)).astype(np.int64),
      arrays['coarse_train'].astype(np.int64) if 'coarse_train' in arrays else None,
      train_human_labels=human,
      train_ids_are_cifar_indices='ids_train' in arrays,
  )


def _load_synthetic(cfg) -> Dataset:
  """Random images and labels — for smoke runs and benchmarks only; nothing can be learnt from them."""
  rng = np.random.default_rng(cfg.synthetic_seed)
  size, c = cfg.synthetic_image_size, cfg.num_classes

  def split(n):
    return (rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, c, (n,), dtype=np.int64))

  train_images, train_labels = split(cfg.synthetic_train_size)
  test_images, test_labels = split(cfg.synthetic_test_size)
  coarse = train_labels // 5 if c == 100 else None
  return Dataset(
      'synthetic',
      c,
      train_images,
      train_labels,
      test_images,
      test_labels,
      np.arange(len(train_labels), dtype=np.int64),
      coarse,
  )


# --------------------------------------------------------------------------------------------------------------
# CIFAR-N label files (path B: joined by id to cifar10 / cifar100 records).
# --------------------------------------------------------------------------------------------------------------


def _pickle_globals() -> dict:
  """What a CIFAR-N .pt pickle may name: numpy's array reconstruction and nothing that runs other code."""
  # Taken from live objects, not imported by module path: numpy 2 moved numpy.core to numpy._core, and the files
  # name the old path.
  reconstruct, scalar = np.ndarray((0,)).__reduce__()[0], np.int64(0).__reduce__()[0]
  allowed = {
      ('numpy', 'ndarray'): np.ndarray,
      ('numpy', 'dtype'): np.dtype,
      ('_codecs', 'encode'): codecs.encode,
      ('collections', 'OrderedDict'): collections.OrderedDict,
  }
  for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
    allowed[(module, '_reconstruct')], allowed[(module, 'scalar')] = reconstruct, scalar
  return allowed


_PICKLE_GLOBALS = _pickle_globals()


class ArrayUnpickler(pickle.Unpickler):
  """Unpickles numpy arrays, lists and dicts and nothing else: a .pt file is a pickle, and an unrestricted pickle
  can run any code."""

  def find_class(self, module, name):
    if (module, name) not in _PICKLE_GLOBALS:
      raise pickle.UnpicklingError(f'{module}.{name} is not allowed in a CIFAR-N label file')
    return _PICKLE_GLOBALS[(module, name)]

  def persistent_load(self, pid):
    raise pickle.UnpicklingError('torch tensors are not supported in a CIFAR-N label file')


def _read_pt(path: str, raw: bytes) -> dict:
  """The dict of arrays in an official CIFAR-N .pt file (a torch zip archive of a pickled dict of numpy arrays),
  read without torch."""
  how_to_fix = (
      'use the official CIFAR-10_human.pt / CIFAR-100_human.pt from UCSC-REAL/cifar-10-100n, or save its '
      'arrays with np.savez and pass that .npz'
  )
  try:
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
      pickles = [n for n in archive.namelist() if n.endswith('/data.pkl') or n == 'data.pkl']
      if len(pickles) != 1:
        raise DataUnavailableError(f'{path} holds {len(pickles)} pickles (data.pkl), not one; {how_to_fix}.')
      contents = ArrayUnpickler(io.BytesIO(archive.read(pickles[0]))).load()
  except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError) as e:
    raise DataUnavailableError(f'{path} is not a CIFAR-N .pt file of numpy arrays ({e}); {how_to_fix}.') from e
  if not isinstance(contents, dict):
    raise DataUnavailableError(f'{path} holds a {type(contents).__name__}, not a dict of label arrays; {how_to_fix}.')
  return contents


def read_cifar_n_file(path: str) -> tuple[dict, np.ndarray]:
  """Reads a CIFAR-N label file: the official `CIFAR-10_human.pt` / `CIFAR-100_human.pt`, or an .npz with the
  same arrays (clean_label, aggre_label, worse_label, random_label1-3 / noisy_label), all indexed by the original
  CIFAR train index.

  Args:
    path: the file (local or gs://).

  Returns:
    ({name in HUMAN_LABELS: int64 [50000]}, clean labels int64 [50000]).

  Raises:
    DataUnavailableError: the file is missing, unreadable, or lacks clean_label or every CIFAR-N column.
  """
  if not fileio.exists(path):
    raise DataUnavailableError(
        f'data.cifar_n_labels={path!r} does not exist; download CIFAR-10_human.pt or CIFAR-100_human.pt from '
        'https://github.com/UCSC-REAL/cifar-10-100n (data/) and pass its path.'
    )
  if not path.endswith(('.pt', '.npz')):
    raise DataUnavailableError(
        f'data.cifar_n_labels={path!r} is neither a .pt nor an .npz file; pass the official '
        'CIFAR-10_human.pt / CIFAR-100_human.pt or an .npz with its arrays.'
    )
  raw = fileio.read_bytes(path)
  if path.endswith('.pt'):
    contents = _read_pt(path, raw)
  else:
    try:
      with np.load(io.BytesIO(raw), allow_pickle=False) as f:
        contents = {k: f[k] for k in f.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
      raise DataUnavailableError(
          f'{path} is not an .npz of label arrays ({type(e).__name__}); pass the official '
          'CIFAR-N .pt file or an .npz with its arrays.'
      ) from e
  columns = {CIFAR_N_KEYS[k]: np.asarray(v).astype(np.int64) for k, v in contents.items() if k in CIFAR_N_KEYS}
  if 'clean_label' not in contents or not columns:
    raise DataUnavailableError(
        f'{path} has arrays {sorted(contents)}, but a CIFAR-N file needs clean_label and at least one of '
        f'{sorted(CIFAR_N_KEYS)}; pass CIFAR-10_human.pt / CIFAR-100_human.pt or an .npz with their arrays.'
    )
  clean = np.asarray(contents['clean_label']).astype(np.int64)
  lengths = {len(v) for v in columns.values()} | {len(clean)}
  if len(lengths) != 1:
    raise DataUnavailableError(
        f'{path} has label arrays of different lengths {sorted(lengths)}; it is damaged, ' 'so download it again.'
    )
  return columns, clean


def attach_cifar_n_labels(dataset: Dataset, path: str) -> None:
  """Joins the CIFAR-N label file `path` to `dataset` by id: sets `dataset.train_human_labels`.

  Args:
    dataset: cifar10 or cifar100 records whose train_ids are the original CIFAR train indices.
    path: a file `read_cifar_n_file` reads.

  Raises:
    DataUnavailableError: the file is for the other dataset, the ids are not CIFAR indices or the file does not
      cover them, or the file's clean labels disagree with the dataset's (a wrong join).
  """
  columns, clean = read_cifar_n_file(path)
  family = 'cifar10' if set(columns) & set(HUMAN_LABELS['cifar10']) else 'cifar100'
  if family != dataset.name:
    raise DataUnavailableError(
        f'{path} holds {"CIFAR-10N" if family == "cifar10" else "CIFAR-100N"} labels but the data is '
        f'{dataset.name}; pass the {"CIFAR-10N" if dataset.name == "cifar10" else "CIFAR-100N"} file or set '
        f'--config.data.name={family} --config.data.num_classes={DATASETS[family]["num_classes"]}.'
    )
  if not dataset.train_ids_are_cifar_indices:
    raise DataUnavailableError(
        f'The {dataset.name} record ids are not original CIFAR indices (train_NNNNN), so the CIFAR-N labels in '
        f'{path} cannot be joined to them; use data prepared by tfds (python -m rmdnet_jax.datasets.prepare_data) or '
        f'--config.data.name={dataset.name}_n.'
    )
  ids = dataset.train_ids
  if len(ids) and (ids.min() < 0 or ids.max() >= len(clean)):
    raise DataUnavailableError(
        f'{path} has labels for CIFAR indices 0-{len(clean) - 1} but the {dataset.name} records have ids '
        f'{ids.min()}-{ids.max()}; pass the CIFAR-N file of this dataset.'
    )
  num_classes = dataset.num_classes
  for name, column in columns.items():
    if column.min() < 0 or column.max() >= num_classes:
      raise DataUnavailableError(
          f'{path}: the {name} labels lie in [{column.min()}, {column.max()}], outside the '
          f'{num_classes} classes of {dataset.name}; pass the CIFAR-N file of this dataset.'
      )
  agreement = float(np.mean(clean[ids] == dataset.train_labels)) if len(ids) else 1.0
  if agreement < MIN_CLEAN_AGREEMENT:
    raise DataUnavailableError(
        f'The clean_label of {path} agrees with the {dataset.name} labels on only {agreement:.2%} of the joined '
        f'examples (at least {MIN_CLEAN_AGREEMENT:.0%} needed), so the file does not belong to these records; '
        'pass the CIFAR-N file of this dataset, with labels in the original CIFAR train order.'
    )
  logging.info(
      'CIFAR-N labels %s joined by id from %s; its clean_label agrees with the %s labels on %.2f%% of ' '%d examples.',
      ', '.join(sorted(columns)),
      path,
      dataset.name,
      100 * agreement,
      len(ids),
  )
  dataset.train_human_labels = {name: column[ids] for name, column in columns.items()}


def check_human_label_rates(dataset: Dataset, where: str, fix: str) -> None:
  """Refuses CIFAR-N columns whose realised noise rate (label != the dataset's clean label) is not the published
  one (`PUBLISHED_NOISE_RATES`) within the tolerance, and logs each column's rate.

  Args:
    dataset: with `train_human_labels` in the order of its train arrays (the whole training set, before subsets).
    where: what the columns came from, for the message (a file, a tfds dataset).
    fix: what the user should do, for the message.

  Raises:
    DataUnavailableError: a column's rate is off (it is misaligned or another column).
  """
  n = len(dataset.train_labels)
  for name, column in sorted(dataset.train_human_labels.items()):
    published = PUBLISHED_NOISE_RATES.get(name)
    if published is None or n == 0:
      continue
    rate = float(np.mean(column != dataset.train_labels))
    tolerance = NOISE_RATE_TOLERANCE + 4 * np.sqrt(published * (1 - published) / n)
    if abs(rate - published) > tolerance:
      raise DataUnavailableError(
          f'The CIFAR-N {name} labels of {where} differ from the {dataset.name} labels on {rate:.2%} of the {n} '
          f'training images, but published CIFAR-N {name} labels differ on {published:.2%} (tolerance '
          f'{tolerance:.2%}), so the column is misaligned or mislabelled; {fix}.'
      )
    logging.info('CIFAR-N %s labels: realised noise rate %.2f%% (published %.2f%%).', name, 100 * rate, 100 * published)


def human_noisy_labels(dataset: Dataset, human_label: str) -> np.ndarray:
  """The CIFAR-N column `human_label` of `dataset` (noise.kind=human).

  Raises:
    ValueError: `human_label` is not a CIFAR-N column name, or not one of this dataset's.
    DataUnavailableError: no CIFAR-N labels were loaded.
  """
  if human_label not in ALL_HUMAN_LABELS:
    raise ValueError(
        f'noise.human_label={human_label!r} is not one of {", ".join(ALL_HUMAN_LABELS)}; e.g. '
        '--config.noise.human_label=aggre.'
    )
  if not dataset.train_human_labels:
    raise DataUnavailableError(
        f'noise.kind=human needs CIFAR-N labels, but none were loaded with {dataset.name}; load them with '
        '--config.data.name=cifar10_n (or cifar100_n) or --config.data.cifar_n_labels=FILE.'
    )
  if human_label not in dataset.train_human_labels:
    raise ValueError(
        f'noise.human_label={human_label!r} is not among the CIFAR-N labels of {dataset.name} '
        f'({", ".join(sorted(dataset.train_human_labels))}); choose one of those.'
    )
  return dataset.train_human_labels[human_label]


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
  # .get: configs saved by older versions (read back by the analysis) have no such key.
  labels_path = cfg.get('cifar_n_labels', '')
  if labels_path:
    if dataset.train_human_labels:
      raise ValueError(
          f'data.name={cfg.name} already carries CIFAR-N labels; drop --config.data.cifar_n_labels or '
          f'use --config.data.name={dataset.name}.'
      )
    attach_cifar_n_labels(dataset, labels_path)
    check_human_label_rates(
        dataset,
        labels_path,
        'pass the official CIFAR-10_human.pt / CIFAR-100_human.pt '
        '(UCSC-REAL/cifar-10-100n) unchanged, or an .npz of its arrays in their original order',
    )
  elif dataset.train_human_labels:
    where = (
        cfg.npz_path if cfg.source == 'npz' else f'tfds dataset {cfg.name} in {cfg.data_dir or "~/tensorflow_datasets"}'
    )
    fix = (
        f'write the .npz again with `python -m rmdnet_jax.datasets.prepare_data --dataset={cfg.name} --npz=FILE`'
        if cfg.source == 'npz'
        else 'delete that dataset and prepare it again from the official CIFAR-N files (docs/data.md, "CIFAR-N")'
    )
    check_human_label_rates(dataset, where, fix)
  if cfg.train_subset:
    # Deterministic subset for quick experiments: the first examples in id order.
    n = cfg.train_subset
    dataset.train_images, dataset.train_labels = dataset.train_images[:n], dataset.train_labels[:n]
    dataset.train_ids = dataset.train_ids[:n]
    if dataset.train_coarse_labels is not None:
      dataset.train_coarse_labels = dataset.train_coarse_labels[:n]
    dataset.train_human_labels = {k: v[:n] for k, v in dataset.train_human_labels.items()}
  if cfg.test_subset:
    dataset.test_images = dataset.test_images[: cfg.test_subset]
    dataset.test_labels = dataset.test_labels[: cfg.test_subset]
  return dataset


def epoch_permutation(num_examples: int, *, seed: int, epoch: int, stream: int) -> np.ndarray:
  """The example order of one epoch: a pure function of (seed, stream, epoch), so a resumed run replays it."""
  return np.random.default_rng([seed, stream, epoch]).permutation(num_examples)


def batch_indices(step: int, *, num_examples: int, global_batch_size: int, seed: int, stream: int) -> np.ndarray:
  """Indices of the global batch at `step` (the incomplete last batch of each epoch is dropped)."""
  steps_per_epoch = num_examples // global_batch_size
  epoch, position = divmod(step, steps_per_epoch)
  order = epoch_permutation(num_examples, seed=seed, epoch=epoch, stream=stream)
  return order[position * global_batch_size : (position + 1) * global_batch_size]


def host_batches(
    arrays: dict, *, start_step: int, num_steps: int, global_batch_size: int, seed: int, stream: int, host_slice: slice
) -> Iterator[dict]:
  """Yields this host's part of each global batch from `start_step` on: {name: array[b_host, ...]} plus
  'index' (dataset row of each example, e.g. for per-example state)."""
  num_examples = len(next(iter(arrays.values())))
  for step in range(start_step, num_steps):
    idx = batch_indices(step, num_examples=num_examples, global_batch_size=global_batch_size, seed=seed, stream=stream)[
        host_slice
    ]
    batch = {name: a[idx] for name, a in arrays.items()}
    batch['index'] = idx.astype(np.int32)
    yield batch
