"""Prepares CIFAR once: the tfds ArrayRecord files that `data.load` reads, and optionally an .npz of them.

  python -m rmdnet_jax.datasets.prepare_data --dataset=cifar10 --data_dir=DIR [--npz=FILE]

Preparing downloads the dataset from its homepage and converts it with tfds' own builder, which needs TensorFlow
and internet; after that, training reads DIR with `tfds.data_source` and needs neither
(`--config.data.data_dir=DIR`). An already prepared DIR is left as it is, so the command is safe to rerun and
works on a read-only DIR.

`--npz=FILE` also writes both splits, in id order, as one .npz (x_train, y_train, x_test, y_test, ids_train when the ids are
CIFAR indices, coarse_train for CIFAR-100, human_<label> for CIFAR-N) for hosts that have no tfds or no copy of DIR:
`--config.data.source=npz --config.data.npz_path=FILE` reads back exactly the arrays the tfds source gives.

CIFAR-N (`--dataset=cifar10_n|cifar100_n`): tfds' builders also read three files that only the CIFAR-N repository
(https://github.com/UCSC-REAL/cifar-10-100n, CC BY-NC 4.0) has, from the manual directory (`--manual_dir`, by
default DIR/downloads/manual): `side_info_cifar10N.csv`, `image_order_c10.npy` and
`CIFAR-10_human_annotations.csv` (CIFAR-100N: `..._cifar100N.csv`, `..._c100.npy`, `CIFAR-100_human_...`). The
last one is a conversion of the repository's `data/CIFAR-10_human_ordered.npy`; put that file there instead and it
is converted here, without TensorFlow or pandas.
"""

import contextlib
import os
import pickle
import socket
import sys
import time
import urllib.error
from typing import Optional

# TensorFlow runs only inside tfds' builder here; keep its start-up chatter out of the console.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402
import numpy as np  # noqa: E402
import requests  # noqa: E402  (installed with tfds, whose downloader uses it: proxies act alike)

from rmdnet_jax.datasets import data  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum('dataset', 'cifar10', sorted(data.DATASETS), 'Dataset to prepare.')
flags.DEFINE_string(
    'data_dir',
    None,
    "tfds data_dir to prepare or reuse (default: tfds' own, " '~/tensorflow_datasets or $TFDS_DATA_DIR).',
)
flags.DEFINE_string('npz', None, 'Also write both splits to this .npz (for --config.data.source=npz).')
flags.DEFINE_string(
    'manual_dir',
    None,
    'CIFAR-N only: the directory with the CIFAR-N files tfds cannot download '
    '(default: DATA_DIR/downloads/manual, as tfds).',
)
flags.DEFINE_bool('compress', False, 'Zip-compress the .npz (slower to write and read; CIFAR images shrink ' 'little).')

# What the tfds builders download (tensorflow_datasets/image_classification/cifar.py). The URL is probed before
# preparing because tfds' downloader retries an unreachable host for about 3.5 minutes before it gives up.
DOWNLOAD_URLS = {
    'cifar10': 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz',
    'cifar100': 'https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz',
}
# tfds' CIFAR-N builders download the same CIFAR archives (tensorflow_datasets/image_classification/cifar10_n).
DOWNLOAD_URLS['cifar10_n'], DOWNLOAD_URLS['cifar100_n'] = DOWNLOAD_URLS['cifar10'], DOWNLOAD_URLS['cifar100']
# What those builders read from the manual directory (their MANUAL_DOWNLOAD_INSTRUCTIONS and CifarInfo).
CIFAR_N_MANUAL_FILES = {
    'cifar10_n': ('CIFAR-10_human_annotations.csv', 'side_info_cifar10N.csv', 'image_order_c10.npy'),
    'cifar100_n': ('CIFAR-100_human_annotations.csv', 'side_info_cifar100N.csv', 'image_order_c100.npy'),
}
# The repository file the annotations CSV is converted from, and the CSV's columns: the builders read them by
# position (CIFAR-10N: 1 aggre, 2 worse, 3-5 random1-3; CIFAR-100N: 1 noise), after a header line.
CIFAR_N_ORDERED_NPY = {'cifar10_n': 'CIFAR-10_human_ordered.npy', 'cifar100_n': 'CIFAR-100_human_ordered.npy'}
CIFAR_N_CSV_COLUMNS = {
    'cifar10_n': ('clean_label', 'aggre_label', 'worse_label', 'random_label1', 'random_label2', 'random_label3'),
    'cifar100_n': ('clean_label', 'noise_label'),
}
CIFAR_N_REPO = 'https://github.com/UCSC-REAL/cifar-10-100n'
_PROBE_TIMEOUT_S = 15
_NETWORK_ERRORS = (requests.RequestException, ConnectionError, TimeoutError, socket.gaierror, urllib.error.URLError)


class PrepareError(RuntimeError):
  """Preparing failed; the message is one sentence that says what failed and how to fix it."""


def _download_failed(name: str, url: str, where: str, reason: str) -> str:
  return (
      f'Cannot download {name}: {url} is unreachable from this machine ({reason}), so {where} was not '
      f'prepared; run this command on a machine with internet and copy {where} here, or write an .npz there '
      f'with --npz=FILE and train with --config.data.source=npz --config.data.npz_path=FILE.'
  )


def _check_reachable(name: str, url: str, where: str) -> None:
  """Fails fast, in seconds, where tfds would retry for minutes: offline machines are the common case."""
  try:
    response = requests.head(url, timeout=_PROBE_TIMEOUT_S, allow_redirects=True)
  except requests.RequestException as e:
    raise PrepareError(_download_failed(name, url, where, type(e).__name__)) from e
  if response.status_code >= 400:
    raise PrepareError(_download_failed(name, url, where, f'HTTP {response.status_code}'))


def read_ordered_npy(path: str) -> dict:
  """The dict of label arrays in a CIFAR-N `*_human_ordered.npy` (a pickled object array), unpickled with
  `data.ArrayUnpickler`, which builds numpy arrays and nothing else."""
  with open(path, 'rb') as f:
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    read_header(f)
    contents = data.ArrayUnpickler(f).load()
  contents = contents.item() if isinstance(contents, np.ndarray) and contents.shape == () else contents
  if not isinstance(contents, dict):
    raise PrepareError(
        f'{path} holds a {type(contents).__name__}, not the dict of label arrays of the CIFAR-N '
        f'repository; download it again from {CIFAR_N_REPO} (data/).'
    )
  return contents


def write_annotations_csv(name: str, ordered_npy: str, csv_path: str) -> None:
  """Converts the repository's `*_human_ordered.npy` into the annotations CSV tfds' CIFAR-N builder reads."""
  contents = {key: np.asarray(value) for key, value in read_ordered_npy(ordered_npy).items()}
  # The C-100 file calls its column noise_label, the .pt files noisy_label: accept either spelling of a column.
  by_canonical = {data.CIFAR_N_KEYS.get(key, key): value for key, value in contents.items()}
  columns = [by_canonical.get(data.CIFAR_N_KEYS.get(key, key)) for key in CIFAR_N_CSV_COLUMNS[name]]
  missing = [key for key, column in zip(CIFAR_N_CSV_COLUMNS[name], columns) if column is None]
  if missing:
    raise PrepareError(
        f'{ordered_npy} lacks {missing} (it has {sorted(contents)}); put the '
        f'{CIFAR_N_ORDERED_NPY[name]} of {CIFAR_N_REPO} there instead.'
    )
  table = np.stack([column.astype(np.int64) for column in columns], axis=1)
  tmp = f'{csv_path}.tmp-{os.getpid()}'
  np.savetxt(tmp, table, fmt='%d', delimiter=',', header=','.join(CIFAR_N_CSV_COLUMNS[name]), comments='')
  os.replace(tmp, csv_path)


def check_manual_files(name: str, manual_dir: str) -> None:
  """Makes sure `manual_dir` has the CIFAR-N files tfds' builder `name` reads, converting the annotations CSV
  from the repository's `*_human_ordered.npy` when only that is there.

  Raises:
    PrepareError: a file is missing or the conversion failed; the message lists what to put where.
  """
  csv_name, side_info, order = CIFAR_N_MANUAL_FILES[name]
  csv_path, ordered_npy = os.path.join(manual_dir, csv_name), os.path.join(manual_dir, CIFAR_N_ORDERED_NPY[name])
  if not os.path.exists(csv_path) and os.path.exists(ordered_npy):
    logging.info('Converting %s into %s for tfds.', ordered_npy, csv_path)
    try:
      write_annotations_csv(name, ordered_npy, csv_path)
    except (OSError, ValueError, pickle.UnpicklingError) as e:
      raise PrepareError(
          f'Cannot convert {ordered_npy} into {csv_path} ({type(e).__name__}: {e}); make '
          f'{manual_dir} writable, or download the file again from {CIFAR_N_REPO}.'
      ) from e
  missing = [f for f in (side_info, order) if not os.path.exists(os.path.join(manual_dir, f))]
  if not os.path.exists(csv_path):
    missing.append(f'{CIFAR_N_ORDERED_NPY[name]} (or {csv_name})')
  if missing:
    raise PrepareError(
        f'Preparing {name} needs CIFAR-N files that tfds cannot download: put {", ".join(missing)} from '
        f'{CIFAR_N_REPO} (the .npy of data/ and the rest of the top level) into {manual_dir}, or name another '
        'directory with --manual_dir (CIFAR-N is CC BY-NC 4.0: non-commercial use only).'
    )


def prepare(name: str, data_dir: Optional[str] = None, manual_dir: Optional[str] = None) -> str:
  """Makes sure `name` is prepared in a random-access format (ArrayRecord) in `data_dir`.

  Downloads and prepares it when it is absent; an existing usable preparation is reused untouched.

  Args:
    name: 'cifar10', 'cifar100', 'cifar10_n' or 'cifar100_n'.
    data_dir: tfds data_dir; None for tfds' default.
    manual_dir: CIFAR-N only: where its files are (`check_manual_files`); None for DATA_DIR/downloads/manual.

  Returns:
    The dataset's version directory (DATA_DIR/NAME/VERSION).

  Raises:
    ValueError: `name` is not a known dataset.
    PrepareError: the directory holds a preparation `tfds.data_source` cannot read (TFRecord), TensorFlow is
      missing, the download host is unreachable, CIFAR-N files are missing, or preparing failed; the message
      says how to fix it.
  """
  if name not in data.DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; use one of {sorted(data.DATASETS)}.')
  import tensorflow_datasets as tfds  # noqa: PLC0415  (lazy, as in data.py)

  builder = tfds.builder(name, data_dir=data_dir)
  where = os.fspath(builder.data_dir_root)
  if builder.is_prepared():
    formats = builder.info.available_file_formats()
    if formats & tfds.core.FileFormat.with_random_access():
      logging.info(
          '%s is already prepared in %s (%s); nothing to do.',
          name,
          builder.data_dir,
          ', '.join(sorted(f.value for f in formats)),
      )
      return builder.data_dir
    # download_and_prepare would just reuse these files ("Reusing dataset"), which data_source cannot read.
    found = ', '.join(sorted(f.value for f in formats)) or 'an unknown format'
    raise PrepareError(
        f'{builder.data_dir} holds {name} prepared as {found}, which tfds.data_source cannot read; convert it '
        f'in place with `tfds convert_format --dataset_version_dir={builder.data_dir} '
        '--out_file_format=array_record`, delete that directory and rerun, or pass another --data_dir.'
    )

  download_config = None
  if name in CIFAR_N_MANUAL_FILES:
    manual_dir = manual_dir or os.path.join(where, 'downloads', 'manual')
    check_manual_files(name, manual_dir)
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  url = DOWNLOAD_URLS[name]
  _check_reachable(name, url, where)
  try:
    import tensorflow as tf  # noqa: PLC0415  (tfds' CIFAR builder decodes and encodes images with it)
  except ImportError as e:
    raise PrepareError(
        f'Preparing {name} needs TensorFlow, which is not installed here; `pip install tensorflow-cpu` and '
        f'rerun, copy a prepared {where} from another machine, or use --config.data.source=npz.'
    ) from e
  # Preparing runs on the CPU; never let TensorFlow reserve accelerator memory a training run may be using.
  tf.config.set_visible_devices([], 'GPU')

  logging.info('Downloading %s and preparing it as ArrayRecord in %s (a few minutes).', url, builder.data_dir)
  start = time.time()
  try:
    builder.download_and_prepare(file_format='array_record', download_config=download_config)
  except Exception as e:  # noqa: BLE001  tfds raises many types (network, disk space, permissions, checksums).
    if isinstance(e, _NETWORK_ERRORS):
      raise PrepareError(_download_failed(name, url, where, type(e).__name__)) from e
    reason = (str(e).strip().splitlines() or [''])[0][:200]
    raise PrepareError(
        f'Preparing {name} in {where} failed ({type(e).__name__}: {reason}); fix that and rerun, '
        'or rerun with --verbosity=1 for the traceback.'
    ) from e
  logging.info('Prepared %s in %s in %.0f s.', name, builder.data_dir, time.time() - start)
  return builder.data_dir


def npz_arrays(dataset: data.Dataset) -> dict[str, np.ndarray]:
  """The arrays `data.load` with `source='npz'` reads, under the keys it reads them from."""
  arrays = {
      'x_train': dataset.train_images,
      'y_train': dataset.train_labels,
      'x_test': dataset.test_images,
      'y_test': dataset.test_labels,
  }
  # Only original CIFAR indices are worth keeping (CIFAR-N joins on them, and data.load takes their presence as
  # saying so); other ids are ranks, which is what a file without them reads back as.
  if dataset.train_ids_are_cifar_indices:
    arrays['ids_train'] = dataset.train_ids
  if dataset.train_coarse_labels is not None:
    arrays['coarse_train'] = dataset.train_coarse_labels
  for label, column in dataset.train_human_labels.items():
    arrays[f'{data.NPZ_HUMAN_PREFIX}{label}'] = column
  return arrays


def write_npz(dataset: data.Dataset, path: str, *, compress: bool = False) -> None:
  """Writes `dataset` to `path` atomically: readers see the old file or the complete new one, never a part.

  Args:
    dataset: the splits to write (e.g. from `data.load_tfds`).
    path: the .npz to write; its directory is created if needed. Written as given (no '.npz' appended).
    compress: zip-compress the arrays.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  # Same directory as `path`, so that os.replace is a rename within one file system.
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    with open(tmp, 'xb') as f:  # a file object: np.savez would append '.npz' to a path
      (np.savez_compressed if compress else np.savez)(f, **npz_arrays(dataset))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def _not_missing_info_warning(record) -> bool:
  # tfds warns that an unprepared directory has no dataset_info.json: expected here, since preparing it is the job.
  return 'has no dataset_info.json' not in record.getMessage()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  logging.get_absl_handler().addFilter(_not_missing_info_warning)
  name, data_dir = FLAGS.dataset, FLAGS.data_dir or None
  try:
    prepare(name, data_dir, FLAGS.manual_dir)
    if FLAGS.npz:
      logging.info('Reading the %s train and test splits (tens of seconds for 60k images).', name)
      start = time.time()
      dataset = data.load_tfds(name, data_dir)
      logging.info(
          'Read %d train and %d test images in %.1f s.',
          len(dataset.train_labels),
          len(dataset.test_labels),
          time.time() - start,
      )
      size_mb = sum(a.nbytes for a in npz_arrays(dataset).values()) / 2**20
      logging.info('Writing %s (%.0f MiB before compression).', FLAGS.npz, size_mb)
      start = time.time()
      write_npz(dataset, FLAGS.npz, compress=FLAGS.compress)
      logging.info(
          'Wrote %s in %.1f s; train from it with --config.data.source=npz --config.data.npz_path=%s',
          FLAGS.npz,
          time.time() - start,
          FLAGS.npz,
      )
  except (PrepareError, data.DataUnavailableError) as e:
    logging.debug('Traceback of the failure:', exc_info=True)
    sys.exit(str(e))


if __name__ == '__main__':
  app.run(main)
