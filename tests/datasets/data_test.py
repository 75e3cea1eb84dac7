"""Tests for rmdnet_jax.datasets.data: the three sources, id order, errors, batches, hosts (prepare_data: its own test file).

tfds is exercised through `tfds.testing.mock_data` (random records, no files) and a fake data source; the real
CIFAR-10 in ../shared is read by one test that skips where ../shared is absent.
"""

import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from rmdnet_jax.core import parallel
from rmdnet_jax.datasets import data
from tests import helpers
from tests.helpers import assert_one_sentence

NUM_MOCK = 24


data_config, tfds_config = helpers.data_config, helpers.tfds_config


# --------------------------------------------------------------------------------------------------------------
# tfds source under mock data.
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
def test_tfds_mock_load(name):
  num_classes = data.DATASETS[name]['num_classes']
  with tfds.testing.mock_data(num_examples=NUM_MOCK):
    dataset = data.load(tfds_config(name))
    again = data.load(tfds_config(name))
    source = tfds.data_source(name, split='train')
    records = [source[i] for i in range(len(source))]

  assert dataset.train_images.shape == (NUM_MOCK, 32, 32, 3)
  assert dataset.test_images.shape == (NUM_MOCK, 32, 32, 3)
  assert dataset.train_images.dtype == dataset.test_images.dtype == np.uint8
  assert dataset.train_labels.dtype == dataset.test_labels.dtype == np.int64
  for labels in (dataset.train_labels, dataset.test_labels):
    assert labels.min() >= 0 and labels.max() < num_classes
  if name == 'cifar100':
    assert dataset.train_coarse_labels.shape == (NUM_MOCK,)
    assert dataset.train_coarse_labels.min() >= 0 and dataset.train_coarse_labels.max() < 20
  else:
    assert dataset.train_coarse_labels is None
  assert (dataset.num_classes, dataset.mean, dataset.std) == (
      num_classes,
      data.DATASETS[name]['mean'],
      data.DATASETS[name]['std'],
  )
  # Mock ids are random strings, not train_NNNNN: records come in string order and ids are their ranks.
  np.testing.assert_array_equal(dataset.train_ids, np.arange(NUM_MOCK))
  ids = [r['id'] for r in records]
  assert ids != sorted(ids), 'mock records happen to be in id order; the order check proves nothing'
  expected = np.stack([records[i]['image'] for i in np.argsort(ids, kind='stable')])
  np.testing.assert_array_equal(dataset.train_images, expected)
  helpers.assert_same_dataset(dataset, again)


# --------------------------------------------------------------------------------------------------------------
# Order by id.
# --------------------------------------------------------------------------------------------------------------


def test_order_by_id_numeric_ids():
  order, numeric = data._order_by_id([b'train_00003', 'train_00010', b'train_00001', 'train_00007'])
  np.testing.assert_array_equal(order, [2, 0, 3, 1])
  np.testing.assert_array_equal(numeric, [1, 3, 7, 10])
  assert numeric.dtype == np.int64


def test_order_by_id_other_ids_use_rank():
  # One id outside the train_NNNNN pattern: sort as strings and number by rank.
  order, numeric = data._order_by_id(['b', 'train_00002', 'a'])
  np.testing.assert_array_equal(order, [2, 0, 1])
  np.testing.assert_array_equal(numeric, [0, 1, 2])


class FakeSource:
  """A list of records with tfds' data-source interface; `batched=False` behaves like tfds' mock source."""

  def __init__(self, records, batched=True):
    self._records, self._batched = records, batched

  def __len__(self):
    return len(self._records)

  def __getitem__(self, i):
    return self._records[i]

  def __getitems__(self, indices):
    if not self._batched:
      raise TypeError('no batched reads')
    return [self._records[i] for i in indices]


def fake_records(split: str, numbers) -> list:
  return [
      {'id': f'{split}_{k:05d}'.encode(), 'image': np.full((32, 32, 3), k, np.uint8), 'label': k % 10} for k in numbers
  ]


@pytest.mark.parametrize('batched', [True, False])
def test_tfds_records_come_out_in_id_order(monkeypatch, batched):
  rng = np.random.default_rng(0)
  splits = {
      'train': FakeSource(fake_records('train', rng.permutation(40)), batched),
      'test': FakeSource(fake_records('test', rng.permutation(16)), batched),
  }

  def fake_data_source(name, *, split, data_dir, download):
    assert (name, data_dir, download) == ('cifar10', '/fake', False)
    return splits[split]

  monkeypatch.setattr(tfds, 'data_source', fake_data_source)
  dataset = data.load(tfds_config('cifar10', data_dir='/fake'))

  np.testing.assert_array_equal(dataset.train_ids, np.arange(40))
  np.testing.assert_array_equal(dataset.train_images[:, 0, 0, 0], np.arange(40))
  np.testing.assert_array_equal(dataset.train_labels, np.arange(40) % 10)
  np.testing.assert_array_equal(dataset.test_images[:, 5, 5, 2], np.arange(16))
  np.testing.assert_array_equal(dataset.test_labels, np.arange(16) % 10)


# --------------------------------------------------------------------------------------------------------------
# Missing data.
# --------------------------------------------------------------------------------------------------------------


def test_missing_tfds_data_dir(tmp_path):
  with pytest.raises(data.DataUnavailableError, match='prepare_data') as info:
    data.load(tfds_config('cifar10', data_dir=str(tmp_path / 'absent')))
  assert 'data_dir' in str(info.value)


def test_missing_npz_path(tmp_path):
  with pytest.raises(data.DataUnavailableError, match='npz_path'):
    data.load(data_config(source='npz', npz_path=str(tmp_path / 'absent.npz')))
  with pytest.raises(data.DataUnavailableError, match='npz_path'):
    data.load(data_config(source='npz', npz_path=''))


def test_npz_lacking_keys(tmp_path):
  path = tmp_path / 'partial.npz'
  np.savez(path, x_train=np.zeros((4, 32, 32, 3), np.uint8), y_train=np.zeros(4, np.int64))
  with pytest.raises(data.DataUnavailableError) as info:
    data.load(data_config(source='npz', npz_path=str(path)))
  assert "lacks arrays ['x_test', 'y_test']" in str(info.value)


def npz_arrays(n_train=20, n_test=8, size=4):
  rng = np.random.default_rng(0)
  return {
      'x_train': rng.integers(0, 256, (n_train, size, size, 3), dtype=np.uint8),
      'y_train': rng.integers(0, 10, n_train),
      'x_test': rng.integers(0, 256, (n_test, size, size, 3), dtype=np.uint8),
      'y_test': rng.integers(0, 10, n_test),
  }


def npz_refusal(tmp_path, match, **changes):
  arrays = {**npz_arrays(), **changes}
  path = tmp_path / 'bad.npz'
  np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
  with pytest.raises(data.DataUnavailableError, match=match) as info:
    data.load(data_config(source='npz', npz_path=str(path)))
  assert_one_sentence(str(info.value))
  return str(info.value)


def test_npz_with_float_images_is_refused_not_cast(tmp_path):
  # Cast to uint8, float images in [0, 1] would train on pixels that are all 0 or 1.
  floats = npz_arrays()['x_train'] / 255.0
  message = npz_refusal(tmp_path, 'x_train is float64 .values in \\[0, 1\\]., but images must be uint8', x_train=floats)
  assert 'np.round(x * 255).astype(np.uint8)' in message


@pytest.mark.parametrize(
    'changes, match',
    [
        (dict(y_train=np.zeros(19, np.int64)), 'y_train has 19 entries for 20 images'),
        (dict(y_test=np.zeros(9, np.int64)), 'y_test has 9 entries for 8 images'),
        (dict(y_train=np.full(20, 10)), 'y_train lies in \\[10, 10\\], outside the 10 classes'),
        (dict(y_test=np.full(8, -1)), 'y_test lies in \\[-1, -1\\], outside the 10 classes'),
        (dict(y_train=np.zeros(20, np.float32)), 'y_train is float32 of shape \\(20,\\), but it must be a 1-D integer'),
        (dict(x_train=np.zeros((20, 4, 4), np.uint8)), 'x_train has shape \\(20, 4, 4\\), but images must be'),
        (dict(x_test=np.zeros((8, 4, 4, 1), np.uint8)), 'x_test has shape \\(8, 4, 4, 1\\)'),
        (dict(x_test=np.zeros((8, 5, 5, 3), np.uint8)), 'both splits need the same image size'),
        (dict(x_train=np.full((20, 4, 4, 3), 300, np.int64)), 'x_train is int64 in \\[300, 300\\], but images must be'),
        (dict(ids_train=np.zeros(20, np.int64)), 'ids_train .* must be 20 distinct integer ids'),
        (dict(human_aggre=np.zeros(19, np.int64)), 'human_aggre has 19 entries for 20 images'),
    ],
)
def test_npz_arrays_are_validated_up_front(tmp_path, changes, match):
  npz_refusal(tmp_path, match, **changes)


def test_npz_with_integer_pixels_in_range_is_accepted(tmp_path):
  arrays = npz_arrays()
  path = tmp_path / 'int.npz'
  np.savez(path, **{**arrays, 'x_train': arrays['x_train'].astype(np.int64)})
  dataset = data.load(data_config(source='npz', npz_path=str(path)))
  assert dataset.train_images.dtype == np.uint8
  np.testing.assert_array_equal(dataset.train_images, arrays['x_train'])


@pytest.mark.parametrize(
    'damage, match',
    [
        ('text', 'is not an .npz .an .npz is a zip archive of arrays'),
        ('truncated', 'is not a readable .npz of arrays .BadZipFile'),
        ('bad_crc', 'is not a readable .npz of arrays .BadZipFile: Bad CRC-32'),
    ],
)
def test_damaged_npz_is_one_sentence(tmp_path, damage, match):
  path = tmp_path / 'd.npz'
  np.savez(path, **npz_arrays(n_train=200))
  raw = path.read_bytes()
  if damage == 'text':
    raw = b'x_train,y_train\n1,2\n'
  elif damage == 'truncated':
    raw = raw[: len(raw) // 2]
  else:
    raw = raw[:1000] + bytes(b ^ 0xFF for b in raw[1000:1100]) + raw[1100:]
  path.write_bytes(raw)
  with pytest.raises(data.DataUnavailableError, match=match) as info:
    data.load(data_config(source='npz', npz_path=str(path)))
  assert_one_sentence(str(info.value))
  assert 'prepare_data --dataset=cifar10 --npz=FILE' in str(info.value)


class CorruptedSource(FakeSource):

  def __getitems__(self, indices):
    # What array_record raises for a damaged file (measured on a copy of ../shared with bytes overwritten).
    raise RuntimeError(
        'Corrupted Riegeli/records file: chunk data hash mismatch (computed 0xa0fa, stored '
        '0xb387), chunk at 4997890 with length 2175; at byte 5000065'
    )


def test_corrupted_tfds_file_is_one_sentence(monkeypatch):
  monkeypatch.setattr(tfds, 'data_source', lambda name, **kwargs: CorruptedSource(fake_records('train', range(4))))
  with pytest.raises(data.DataUnavailableError, match='is damaged .RuntimeError: Corrupted Riegeli') as info:
    data.load(tfds_config('cifar10', data_dir='/fake'))
  message = str(info.value)
  assert_one_sentence(message)
  assert 'delete /fake/cifar10 and prepare it again with `python -m rmdnet_jax.datasets.prepare_data' in message


def test_real_corrupted_tfds_file_is_one_sentence(shared_dir, tmp_path):
  source = shared_dir / 'data' / 'tfds' / 'cifar10' / '3.0.2'
  target = tmp_path / 'cifar10' / '3.0.2'
  target.mkdir(parents=True)
  for f in source.iterdir():
    if 'train' not in f.name:  # the test split is enough (and 5x smaller)
      shutil.copyfile(f, target / f.name)
  shard = target / 'cifar10-test.array_record-00000-of-00001'
  with open(shard, 'r+b') as f:
    f.seek(5_000_000)
    f.write(bytes(100_000))
  with pytest.raises(data.DataUnavailableError, match='is damaged .RuntimeError: Corrupted') as info:
    data._tfds_split('cifar10', 'test', str(tmp_path))
  assert_one_sentence(str(info.value))
  assert f'delete {target} and prepare it again' in str(info.value)


# --------------------------------------------------------------------------------------------------------------
# Synthetic source and subsets.
# --------------------------------------------------------------------------------------------------------------


def test_synthetic_shapes_and_determinism():
  cfg = data_config(
      source='synthetic', num_classes=100, synthetic_train_size=64, synthetic_test_size=32, synthetic_image_size=16
  )
  dataset = data.load(cfg)
  assert dataset.train_images.shape == (64, 16, 16, 3) and dataset.train_images.dtype == np.uint8
  assert dataset.test_images.shape == (32, 16, 16, 3)
  assert dataset.train_labels.max() < 100 and dataset.train_coarse_labels.max() < 20
  np.testing.assert_array_equal(dataset.train_ids, np.arange(64))
  helpers.assert_same_dataset(dataset, data.load(cfg))
  other_seed = data.load(data_config(**{**cfg.to_dict(), 'synthetic_seed': 1}))
  assert not np.array_equal(dataset.train_images, other_seed.train_images)


def test_subsets_are_prefixes():
  full = data.load(data_config(source='synthetic', num_classes=100))
  sub = data.load(data_config(source='synthetic', num_classes=100, train_subset=100, test_subset=50))
  assert len(sub.train_images) == len(sub.train_labels) == len(sub.train_ids) == 100
  assert len(sub.train_coarse_labels) == 100 and len(sub.test_images) == len(sub.test_labels) == 50
  np.testing.assert_array_equal(sub.train_images, full.train_images[:100])
  np.testing.assert_array_equal(sub.train_labels, full.train_labels[:100])
  np.testing.assert_array_equal(sub.train_coarse_labels, full.train_coarse_labels[:100])
  np.testing.assert_array_equal(sub.test_images, full.test_images[:50])


# --------------------------------------------------------------------------------------------------------------
# Batches.
# --------------------------------------------------------------------------------------------------------------


def global_batches(num_steps, start=0, **kwargs):
  return [data.batch_indices(step, **kwargs) for step in range(start, num_steps)]


def test_each_epoch_is_a_permutation():
  kwargs = dict(num_examples=64, global_batch_size=16, seed=3, stream=0)
  batches = global_batches(12, **kwargs)  # 3 epochs of 4 steps
  epochs = [np.concatenate(batches[i : i + 4]) for i in range(0, 12, 4)]
  for order in epochs:
    np.testing.assert_array_equal(np.sort(order), np.arange(64))
  assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
  other_stream = global_batches(4, **{**kwargs, 'stream': 1})
  assert not np.array_equal(np.concatenate(other_stream), epochs[0])


def test_incomplete_last_batch_is_dropped():
  kwargs = dict(num_examples=70, global_batch_size=16, seed=0, stream=0)
  epoch = np.concatenate(global_batches(4, **kwargs))
  assert len(np.unique(epoch)) == 64
  # Step 4 starts the next epoch instead of serving the 6 left-over examples.
  np.testing.assert_array_equal(
      data.batch_indices(4, **kwargs), data.epoch_permutation(70, seed=0, epoch=1, stream=0)[:16]
  )


def test_resume_replays_the_same_batches():
  arrays = {'x': np.arange(48) * 10, 'y': np.arange(48) % 3}
  kwargs = dict(num_steps=15, global_batch_size=8, seed=5, stream=2, host_slice=slice(None))
  straight = list(data.host_batches(arrays, start_step=0, **kwargs))
  resumed = list(data.host_batches(arrays, start_step=7, **kwargs))
  assert len(resumed) == 8
  for a, b in zip(straight[7:], resumed):
    assert a.keys() == b.keys() == {'x', 'y', 'index'}
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  np.testing.assert_array_equal(straight[0]['x'], straight[0]['index'] * 10)


@pytest.mark.parametrize('process_count', [2, 4])
def test_host_slices_partition_the_global_batch(process_count):
  global_batch = 32
  slices = [parallel.host_batch_slice(global_batch, p, process_count) for p in range(process_count)]
  positions = np.concatenate([np.arange(global_batch)[s] for s in slices])
  np.testing.assert_array_equal(positions, np.arange(global_batch))  # disjoint, covering, in process order

  arrays = {'x': np.arange(96)}
  kwargs = dict(start_step=0, num_steps=6, global_batch_size=global_batch, seed=1, stream=0)
  whole = list(data.host_batches(arrays, host_slice=slice(None), **kwargs))
  per_host = [list(data.host_batches(arrays, host_slice=s, **kwargs)) for s in slices]
  for step, batch in enumerate(whole):
    joined = np.concatenate([host[step]['index'] for host in per_host])
    np.testing.assert_array_equal(joined, batch['index'])


# --------------------------------------------------------------------------------------------------------------
# Real CIFAR-10 (../shared only).
# --------------------------------------------------------------------------------------------------------------


def test_real_cifar10(shared_dir):
  dataset = data.load(tfds_config('cifar10', data_dir=str(shared_dir / 'data' / 'tfds')))
  assert dataset.train_images.shape == (50000, 32, 32, 3) and dataset.train_images.dtype == np.uint8
  assert dataset.test_images.shape == (10000, 32, 32, 3)
  np.testing.assert_array_equal(dataset.train_ids, np.arange(50000))
  np.testing.assert_array_equal(np.bincount(dataset.train_labels), np.full(10, 5000))
  np.testing.assert_array_equal(np.bincount(dataset.test_labels), np.full(10, 1000))
  # CIFAR-N labels are indexed by the original CIFAR train index, which is what train_ids orders by.
  with np.load(shared_dir / 'data' / 'cifar-n' / 'cifar10n_labels.npz') as f:
    np.testing.assert_array_equal(f['clean_label'], dataset.train_labels)
