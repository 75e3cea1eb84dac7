"""Tests for rmdnet_jax.datasets.prepare_data: datasets written as .npz, tfds preparation refused in one sentence when it
cannot work (offline, TFRecord), and the CIFAR-N files tfds reads from its manual directory.

tfds is exercised through `tfds.testing.mock_data`; the prepared CIFAR-10 in ../shared is used by one test that
skips where ../shared is absent.
"""

import numpy as np
import pytest
import requests
import tensorflow_datasets as tfds

from rmdnet_jax.datasets import data, prepare_data
from tests import helpers
from tests.helpers import assert_one_sentence

NUM_MOCK = 24
C10N_KEYS = ('aggre_label', 'worse_label', 'random_label1', 'random_label2', 'random_label3')


data_config, tfds_config = helpers.data_config, helpers.tfds_config


def refusal(fn, *args, error, match=None):
  with pytest.raises(error, match=match) as info:
    fn(*args)
  assert_one_sentence(str(info.value))
  return str(info.value)


# --------------------------------------------------------------------------------------------------------------
# Datasets as .npz; preparing a tfds dataset.
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
def test_npz_round_trip(tmp_path, name):
  with tfds.testing.mock_data(num_examples=NUM_MOCK):
    from_tfds = data.load(tfds_config(name))
  path = tmp_path / 'sub' / 'cifar'  # no .npz suffix and a missing directory: both must work
  prepare_data.write_npz(from_tfds, str(path))
  assert [p.name for p in path.parent.iterdir()] == ['cifar']  # the temporary file is gone

  from_npz = data.load(data_config(source='npz', name=name, num_classes=from_tfds.num_classes, npz_path=str(path)))
  helpers.assert_same_dataset(from_tfds, from_npz)
  with np.load(path) as f:
    # Mock ids are not CIFAR indices (train_NNNNN), so no ids_train: it would claim they are.
    expected = {'x_train', 'y_train', 'x_test', 'y_test'} | ({'coarse_train'} if name == 'cifar100' else set())
    assert set(f.files) == expected


def test_write_npz_replaces_atomically(tmp_path):
  small = data.load(data_config(source='synthetic', synthetic_train_size=8, synthetic_test_size=4))
  path = tmp_path / 'd.npz'
  path.write_bytes(b'old')
  prepare_data.write_npz(small, str(path), compress=True)
  with np.load(path) as f:
    np.testing.assert_array_equal(f['x_train'], small.train_images)
  assert [p.name for p in tmp_path.iterdir()] == ['d.npz']


def test_prepare_offline_is_one_sentence(tmp_path, monkeypatch):
  def unreachable(url, **kwargs):
    raise requests.ConnectionError('Name or service not known')

  monkeypatch.setattr(prepare_data.requests, 'head', unreachable)
  with pytest.raises(prepare_data.PrepareError) as info:
    prepare_data.prepare('cifar10', str(tmp_path / 'tfds'))
  message = str(info.value)
  assert '\n' not in message and message.count('. ') == 0 and message.endswith('.')
  for needed in ('cifar10', 'internet', str(tmp_path / 'tfds'), '--config.data.source=npz'):
    assert needed in message
  assert not (tmp_path / 'tfds').exists()


def test_prepare_rejects_tfrecord_preparation(tmp_path):
  # What an earlier `tfds.load` leaves behind: a prepared dataset in TFRecord, which data_source cannot read.
  builder = tfds.builder('cifar10', data_dir=str(tmp_path))
  builder.data_path.mkdir(parents=True)
  builder.info.write_to_directory(builder.data_path)
  with pytest.raises(prepare_data.PrepareError, match='tfrecord') as info:
    prepare_data.prepare('cifar10', str(tmp_path))
  assert 'convert_format' in str(info.value)


def test_prepare_reuses_prepared_array_record(shared_dir):
  tfds_dir = shared_dir / 'data' / 'tfds'
  assert prepare_data.prepare('cifar10', str(tfds_dir)) == str(tfds_dir / 'cifar10' / '3.0.2')


# --------------------------------------------------------------------------------------------------------------
# prepare_data: the CIFAR-N files tfds reads from its manual directory.
# --------------------------------------------------------------------------------------------------------------


def save_ordered_npy(path, contents: dict):
  np.save(path, np.array(contents, dtype=object), allow_pickle=True)


def test_manual_files_missing_is_one_sentence(tmp_path):
  message = refusal(
      prepare_data.check_manual_files,
      'cifar10_n',
      str(tmp_path),
      error=prepare_data.PrepareError,
      match='needs CIFAR-N files that tfds cannot download',
  )
  for needed in (
      'side_info_cifar10N.csv',
      'image_order_c10.npy',
      'CIFAR-10_human_ordered.npy',
      str(tmp_path),
      'github.com/UCSC-REAL/cifar-10-100n',
      'CC BY-NC 4.0',
  ):
    assert needed in message


@pytest.mark.parametrize('name', ['cifar10_n', 'cifar100_n'])
def test_ordered_npy_is_converted_into_the_csv_the_builder_reads(tmp_path, name):
  rng = np.random.default_rng(0)
  keys = ('clean_label',) + (C10N_KEYS if name == 'cifar10_n' else ('noise_label',))
  # Shuffled key order and lists, as the repository's pickles may have: the CSV goes by name.
  contents = {key: list(rng.integers(0, 10, 30)) for key in reversed(keys)}
  csv_name, side_info, order = prepare_data.CIFAR_N_MANUAL_FILES[name]
  save_ordered_npy(tmp_path / prepare_data.CIFAR_N_ORDERED_NPY[name], contents)
  (tmp_path / side_info).write_text('header\n')
  np.save(tmp_path / order, np.arange(30))
  prepare_data.check_manual_files(name, str(tmp_path))
  # Parsed exactly as tfds' builder parses it (np.genfromtxt, header skipped, columns by position).
  table = np.genfromtxt(tmp_path / csv_name, delimiter=',', skip_header=1)
  builder_columns = (
      {1: 'aggre_label', 2: 'worse_label', 3: 'random_label1', 4: 'random_label2', 5: 'random_label3'}
      if name == 'cifar10_n'
      else {1: 'noise_label'}
  )
  for position, key in builder_columns.items():
    np.testing.assert_array_equal(table[:, position], contents[key])


def test_ordered_npy_that_is_not_a_dict_is_refused(tmp_path):
  save_ordered_npy(tmp_path / 'CIFAR-10_human_ordered.npy', [1, 2, 3])
  (tmp_path / 'side_info_cifar10N.csv').write_text('header\n')
  np.save(tmp_path / 'image_order_c10.npy', np.arange(3))
  refusal(
      prepare_data.check_manual_files,
      'cifar10_n',
      str(tmp_path),
      error=prepare_data.PrepareError,
      match='not the dict of label arrays',
  )
  save_ordered_npy(tmp_path / 'CIFAR-10_human_ordered.npy', {'clean_label': [1], 'aggre_label': [1]})
  refusal(
      prepare_data.check_manual_files,
      'cifar10_n',
      str(tmp_path),
      error=prepare_data.PrepareError,
      match="lacks \\['worse_label'",
  )


def test_prepare_cifar_n_checks_manual_files_before_downloading(tmp_path, monkeypatch):
  monkeypatch.setattr(prepare_data.requests, 'head', lambda *a, **k: pytest.fail('probed before the files'))
  message = refusal(
      prepare_data.prepare,
      'cifar100_n',
      str(tmp_path / 'tfds'),
      error=prepare_data.PrepareError,
      match='needs CIFAR-N files',
  )
  assert str(tmp_path / 'tfds' / 'downloads' / 'manual') in message
