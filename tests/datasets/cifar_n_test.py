"""CIFAR-N real human noise: tfds' cifar10_n / cifar100_n (path A), a CIFAR-N label file joined by id (path B),
their equality, noise.kind=human in a run, and every refusal (prepare_data's CIFAR-N files: tests/datasets/prepare_data_test.py).

Path A runs under `tfds.testing.mock_data` and on fake data sources; path B on fabricated label files (the real
ones are CC BY-NC and never in the repository). The real CIFAR-10 + CIFAR-10N of ../shared is used by the tests
that skip where ../shared is absent.
"""

import dataclasses
import io
import json
import os
import pathlib
import pickle
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import default, noisy_cifar
from rmdnet_jax.datasets import data, noise, prepare_data
from rmdnet_jax.report import results
from rmdnet_jax.run import pipeline
from rmdnet_jax.training import checkpoints
from tests import helpers
from tests.helpers import assert_one_sentence

SHARED = pathlib.Path(__file__).resolve().parents[2].parent / 'shared'
NUM_MOCK = 24
C10N_KEYS = ('aggre_label', 'worse_label', 'random_label1', 'random_label2', 'random_label3')
# label != clean label over the 50,000 CIFAR-10 training images, measured on ../shared (the paper notes give
# aggre 9.01 %, random1 17.23 %, worst 40.21 %).
REAL_C10N_RATES = {'aggre': 0.0901, 'worst': 0.4021, 'random1': 0.1723, 'random2': 0.1812, 'random3': 0.1764}


def data_config(**overrides):
  cfg = default.get_config().data
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


def tfds_config(name, **overrides):
  return data_config(source='tfds', name=name, num_classes=data.DATASETS[name]['num_classes'], **overrides)


class FakeSource:
  """A list of records with tfds' data-source interface (as in tests/datasets/data_test.py)."""

  def __init__(self, records):
    self._records = records

  def __len__(self):
    return len(self._records)

  def __getitem__(self, i):
    return self._records[i]

  def __getitems__(self, indices):
    return [self._records[i] for i in indices]


def label_file_arrays(num_indices: int, num_classes: int = 10, seed: int = 0) -> dict:
  """A fabricated CIFAR-N file's arrays, indexed by CIFAR index: clean label k % C, and human labels of which
  (as near as the size allows) the published share differs from it, at random positions."""
  rng = np.random.default_rng(seed)
  clean = np.arange(num_indices) % num_classes
  arrays = {'clean_label': clean}
  keys = C10N_KEYS if num_classes == 10 else ('noisy_label',)
  for key in keys:
    wrong = rng.permutation(num_indices)[: round(data.PUBLISHED_NOISE_RATES[data.CIFAR_N_KEYS[key]] * num_indices)]
    arrays[key] = clean.copy()
    arrays[key][wrong] = (clean[wrong] + rng.integers(1, num_classes, len(wrong))) % num_classes
  return arrays


def fake_records(split, numbers, *, num_classes=10, human=None, image_size=32):
  """Records of CIFAR index `numbers` in that order; with `human` ({tfds key: array by index}), as cifar*_n."""
  records = []
  for k in numbers:
    record = {
        'id': f'{split}_{k:05d}'.encode(),
        'image': np.full((image_size, image_size, 3), k % 256, np.uint8),
        'label': np.int64(k % num_classes),
    }
    if num_classes == 100:
      record['coarse_label'] = np.int64(k % num_classes // 5)
    for key, column in (human or {}).items():
      record[key] = np.int64(column[k] if split == 'train' else -1)
    records.append(record)
  return records


def tfds_key(name: str) -> str:
  # CIFAR-100N's column is noisy_label in CIFAR-100_human.pt and noise_label in tfds' cifar100_n.
  return 'noise_label' if name == 'noisy_label' else name


def patch_sources(monkeypatch, splits_by_name: dict):
  def fake_data_source(name, *, split, data_dir, download):
    return FakeSource(splits_by_name[name][split])

  monkeypatch.setattr(tfds, 'data_source', fake_data_source)


def write_pt(path, arrays: dict, folder='archive'):
  """A file laid out as torch.save writes the official CIFAR-N .pt: a zip with a pickled dict of numpy arrays."""
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr(f'{folder}/data.pkl', pickle.dumps(dict(arrays), protocol=2))
    archive.writestr(f'{folder}/version', '3\n')


# --------------------------------------------------------------------------------------------------------------
# Path A: tfds' cifar10_n / cifar100_n.
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'name, expected', [('cifar10_n', data.HUMAN_LABELS['cifar10']), ('cifar100_n', data.HUMAN_LABELS['cifar100'])]
)
def test_tfds_cifar_n_mock_gives_the_human_columns(monkeypatch, name, expected):
  num_classes = data.DATASETS[name]['num_classes']
  # Mock labels are uniformly random, not CIFAR-N's: no published noise rate applies to them.
  monkeypatch.setattr(data, 'PUBLISHED_NOISE_RATES', {})
  with tfds.testing.mock_data(num_examples=NUM_MOCK):
    dataset = data.load(tfds_config(name))
    subset = data.load(tfds_config(name, train_subset=8))
    records = [tfds.data_source(name, split='train')[i] for i in range(NUM_MOCK)]
  assert dataset.name == data.DATASETS[name]['base']
  assert (dataset.num_classes, dataset.mean, dataset.std) == (
      num_classes,
      data.DATASETS[name]['mean'],
      data.DATASETS[name]['std'],
  )
  assert sorted(dataset.train_human_labels) == sorted(expected)
  # Records come out in id order (mock ids are random strings, so not CIFAR indices); the columns follow them.
  order = np.argsort([r['id'] for r in records], kind='stable')
  for key, label in data.CIFAR_N_KEYS.items():
    if key in records[0]:
      np.testing.assert_array_equal(dataset.train_human_labels[label], [int(records[i][key]) for i in order])
      assert dataset.train_human_labels[label].dtype == np.int64
  assert not dataset.train_ids_are_cifar_indices
  for label, column in subset.train_human_labels.items():
    np.testing.assert_array_equal(column, dataset.train_human_labels[label][:8])


def test_plain_cifar_has_no_human_columns():
  with tfds.testing.mock_data(num_examples=NUM_MOCK):
    assert data.load(tfds_config('cifar10')).train_human_labels == {}


# --------------------------------------------------------------------------------------------------------------
# Path B: a CIFAR-N file joined by id; and A == B.
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def shuffled_ids():
  # 40 of the indices 0..59, in a shuffled record order: the join must go by id, not by position.
  rng = np.random.default_rng(3)
  return rng.permutation(rng.choice(60, 40, replace=False))


@pytest.mark.parametrize('file_format', ['npz', 'pt'])
def test_label_file_is_joined_by_id(monkeypatch, tmp_path, shuffled_ids, file_format):
  arrays = label_file_arrays(60)
  path = tmp_path / f'CIFAR-10_human.{file_format}'
  np.savez(path, **arrays) if file_format == 'npz' else write_pt(path, arrays)
  patch_sources(
      monkeypatch, {'cifar10': {'train': fake_records('train', shuffled_ids), 'test': fake_records('test', range(8))}}
  )
  dataset = data.load(tfds_config('cifar10', cifar_n_labels=str(path)))
  ids = np.sort(shuffled_ids)
  np.testing.assert_array_equal(dataset.train_ids, ids)
  expected = {
      'aggre': 'aggre_label',
      'worst': 'worse_label',
      'random1': 'random_label1',
      'random2': 'random_label2',
      'random3': 'random_label3',
  }
  assert sorted(dataset.train_human_labels) == sorted(expected)
  for label, key in expected.items():
    np.testing.assert_array_equal(dataset.train_human_labels[label], arrays[key][ids])
  subset = data.load(tfds_config('cifar10', cifar_n_labels=str(path), train_subset=10))
  np.testing.assert_array_equal(subset.train_human_labels['worst'], arrays['worse_label'][ids[:10]])


def test_cifar100_label_file_is_joined_by_id(monkeypatch, tmp_path, shuffled_ids):
  arrays = label_file_arrays(60, num_classes=100)
  arrays['clean_coarse_label'] = arrays['noisy_coarse_label'] = list(range(60))  # lists, as in the real .pt
  path = tmp_path / 'CIFAR-100_human.pt'
  write_pt(path, arrays, folder='CIFAR-100_human')
  patch_sources(
      monkeypatch,
      {
          'cifar100': {
              'train': fake_records('train', shuffled_ids, num_classes=100),
              'test': fake_records('test', range(8), num_classes=100),
          }
      },
  )
  dataset = data.load(tfds_config('cifar100', cifar_n_labels=str(path)))
  assert list(dataset.train_human_labels) == ['noisy']
  np.testing.assert_array_equal(dataset.train_human_labels['noisy'], arrays['noisy_label'][np.sort(shuffled_ids)])


@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
def test_tfds_cifar_n_and_label_file_give_the_same_dataset(monkeypatch, tmp_path, shuffled_ids, name):
  num_classes = data.DATASETS[name]['num_classes']
  arrays = label_file_arrays(60, num_classes=num_classes)
  human = {tfds_key(k): v for k, v in arrays.items() if k != 'clean_label'}
  path = tmp_path / 'labels.npz'
  np.savez(path, **arrays)
  test = fake_records('test', range(8), num_classes=num_classes)
  patch_sources(
      monkeypatch,
      {
          name: {'train': fake_records('train', shuffled_ids, num_classes=num_classes), 'test': test},
          f'{name}_n': {
              'train': fake_records('train', shuffled_ids, num_classes=num_classes, human=human),
              'test': fake_records('test', range(8), num_classes=num_classes, human=human),
          },
      },
  )
  path_a = data.load(tfds_config(f'{name}_n'))
  path_b = data.load(tfds_config(name, cifar_n_labels=str(path)))
  assert path_a.train_human_labels
  helpers.assert_same_dataset(path_a, path_b)
  # ... and an .npz written by prepare_data from path A reads back the same (offline clusters).
  npz = tmp_path / 'c.npz'
  prepare_data.write_npz(path_a, str(npz))
  helpers.assert_same_dataset(
      path_a, data.load(data_config(source='npz', name=f'{name}_n', num_classes=num_classes, npz_path=str(npz)))
  )


# --------------------------------------------------------------------------------------------------------------
# noise.kind=human in a run.
# --------------------------------------------------------------------------------------------------------------


def tiny_human_config(**overrides):
  return helpers.tiny_config(
      **{
          'data.source': 'tfds',
          'data.name': 'cifar10_n',
          'data.num_classes': 10,
          'noise.kind': 'human',
          'noise.human_label': 'worst',
          'stages': 'rgrl',
          'method.distill': False,
          'rgrl.epochs': 1,
          # Predicting the train set at each evaluation costs compiles, and adds nothing here.
          'rgrl.track_memorization': False,
          **overrides,
      }
  )


@pytest.mark.slow
def test_human_noise_run_saves_the_column_and_resume_reloads_it(monkeypatch, tmp_path):
  arrays = label_file_arrays(64)
  human = {k: v for k, v in arrays.items() if k != 'clean_label'}
  ids = np.random.default_rng(5).permutation(64)
  patch_sources(
      monkeypatch,
      {
          'cifar10_n': {
              'train': fake_records('train', ids, human=human, image_size=8),
              'test': fake_records('test', range(32), human=human, image_size=8),
          }
      },
  )
  config = tiny_human_config()
  workdir = str(tmp_path / 'run')
  results = pipeline.run(config, workdir)

  noisy, meta = noise.load_noisy_labels(os.path.join(workdir, 'noisy_labels.npz'))
  np.testing.assert_array_equal(noisy.labels, arrays['worse_label'])  # ids 0..63 in id order
  rate = float(np.mean(arrays['worse_label'] != arrays['clean_label']))
  assert noisy.realized_rate == pytest.approx(rate) and results['noise_realized_rate'] == pytest.approx(rate)
  np.testing.assert_allclose(
      noisy.transition, noise.empirical_transition(arrays['clean_label'], arrays['worse_label'], 10)
  )
  assert (meta['kind'], meta['human_label'], meta['dataset']) == ('human', 'worst', 'cifar10')
  assert 'rate' not in meta and 'seed' not in meta  # they play no part in human noise
  assert json.load(open(os.path.join(workdir, 'results.json')))['rgrl_steps'] == 4

  # A resume reloads the file: nothing is derived from the column again.
  dataset = data.load(config.data)
  monkeypatch.setattr(noise, 'empirical_transition', lambda *a: pytest.fail('noisy labels were made again'))
  again = helpers.noisy_labels_for_run(config, dataset, workdir)
  np.testing.assert_array_equal(again.labels, noisy.labels)
  # Other CIFAR-N labels under the same name (another file, another version) do not resume it.
  dataset.train_human_labels['worst'] = dataset.train_human_labels['aggre']
  with pytest.raises(noise.NoisyLabelsMismatch, match='noisy_labels_sha256'):
    helpers.noisy_labels_for_run(config, dataset, workdir)


# --------------------------------------------------------------------------------------------------------------
# Real CIFAR-10 + CIFAR-10N (../shared only).
# --------------------------------------------------------------------------------------------------------------


class PixelFreeSource:
  """A real tfds data source read without decoding its PNGs, each image replaced by one black pixel."""

  def __init__(self, source):
    self._source = source

  def __len__(self):
    return len(self._source)

  def __getitems__(self, indices):
    return [{**r, 'image': np.zeros((1, 1, 3), np.uint8)} for r in self._source.__getitems__(indices)]


@pytest.fixture(scope='module')
def real_cifar10n():
  labels = SHARED / 'data' / 'cifar-n' / 'cifar10n_labels.npz'
  if not (SHARED / 'data' / 'tfds' / 'cifar10').is_dir() or not labels.is_file():
    pytest.skip("../shared/data (CIFAR-10 and CIFAR-N) is not present (only on the team's machines)")
  # Ids and labels are what is joined and tested here (tests/datasets/data_test.py reads the real pixels): without PNG
  # decoding the read takes half the time.
  real_data_source = tfds.data_source

  def pixel_free_data_source(name, **kwargs):
    return PixelFreeSource(real_data_source(name, decoders={'image': tfds.decode.SkipDecoding()}, **kwargs))

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(tfds, 'data_source', pixel_free_data_source)
    return data.load(tfds_config('cifar10', data_dir=str(SHARED / 'data' / 'tfds'), cifar_n_labels=str(labels)))


def test_real_cifar10n_realised_rates(real_cifar10n, tmp_path):
  dataset = real_cifar10n
  assert dataset.train_ids_are_cifar_indices
  for label, expected in REAL_C10N_RATES.items():
    column = dataset.train_human_labels[label]
    assert column.shape == (50000,) and column.min() >= 0 and column.max() < 10
    assert np.mean(column != dataset.train_labels) == pytest.approx(expected, abs=5e-4), label
  config = default.get_config()
  config.data.name, config.noise.kind, config.noise.human_label = 'cifar10', 'human', 'aggre'
  noisy = helpers.noisy_labels_for_run(config, dataset, str(tmp_path))
  assert noisy.realized_rate == pytest.approx(REAL_C10N_RATES['aggre'], abs=5e-4)
  assert np.allclose(noisy.transition.sum(axis=1), 1.0)


def test_real_cifar10n_file_with_a_shifted_column_is_refused(real_cifar10n, tmp_path):
  with np.load(SHARED / 'data' / 'cifar-n' / 'cifar10n_labels.npz') as f:
    arrays = {k: f[k] for k in f.files}
  arrays['worse_label'] = np.roll(arrays['worse_label'], 1)
  np.savez(tmp_path / 'shifted.npz', **arrays)
  dataset = dataclasses.replace(real_cifar10n, train_human_labels={})
  data.attach_cifar_n_labels(dataset, str(tmp_path / 'shifted.npz'))  # its clean_label is right: the join passes
  with pytest.raises(data.DataUnavailableError, match='worst labels of .* differ from the cifar10 labels on 90') as e:
    data.check_human_label_rates(dataset, str(tmp_path / 'shifted.npz'), 'pass the official file')
  assert_one_sentence(str(e.value))


def test_real_cifar100n_file_is_refused_for_cifar10(real_cifar10n):
  with pytest.raises(data.DataUnavailableError, match='holds CIFAR-100N labels but the data is cifar10') as info:
    data.attach_cifar_n_labels(real_cifar10n, str(SHARED / 'data' / 'cifar-n' / 'cifar100n_labels.npz'))
  assert_one_sentence(str(info.value))


# --------------------------------------------------------------------------------------------------------------
# Refusals, each one sentence.
# --------------------------------------------------------------------------------------------------------------


def small_dataset(ids=range(20), num_classes=10, is_index=True) -> data.Dataset:
  ids = np.asarray(list(ids), np.int64)
  images = np.zeros((len(ids), 2, 2, 3), np.uint8)
  return data.Dataset(
      f'cifar{num_classes}',
      num_classes,
      images,
      ids % num_classes,
      images[:2],
      np.zeros(2, np.int64),
      ids,
      train_ids_are_cifar_indices=is_index,
  )


def refusal(fn, *args, error=data.DataUnavailableError, match=None):
  with pytest.raises(error, match=match) as info:
    fn(*args)
  assert_one_sentence(str(info.value))
  return str(info.value)


def test_label_file_refusals(tmp_path):
  attach = data.attach_cifar_n_labels
  good = tmp_path / 'good.npz'
  np.savez(good, **label_file_arrays(50))
  refusal(attach, small_dataset(), str(tmp_path / 'absent.pt'), match='does not exist; download')
  (tmp_path / 'labels.npy').write_bytes(b'')
  refusal(attach, small_dataset(), str(tmp_path / 'labels.npy'), match='neither a .pt nor an .npz')
  (tmp_path / 'broken.npz').write_bytes(b'not a zip')
  refusal(attach, small_dataset(), str(tmp_path / 'broken.npz'), match='is not an .npz of label arrays')
  np.savez(tmp_path / 'no_clean.npz', aggre_label=np.zeros(50, np.int64))
  refusal(attach, small_dataset(), str(tmp_path / 'no_clean.npz'), match='needs clean_label')
  np.savez(tmp_path / 'no_columns.npz', clean_label=np.zeros(50, np.int64))
  refusal(attach, small_dataset(), str(tmp_path / 'no_columns.npz'), match='at least one of')
  np.savez(tmp_path / 'ragged.npz', clean_label=np.zeros(50, np.int64), aggre_label=np.zeros(49, np.int64))
  refusal(attach, small_dataset(), str(tmp_path / 'ragged.npz'), match='different lengths')
  refusal(attach, small_dataset(num_classes=100), str(good), match='holds CIFAR-10N labels but the data is cifar100')
  refusal(attach, small_dataset(is_index=False), str(good), match='not original CIFAR indices')
  refusal(attach, small_dataset(ids=range(40, 60)), str(good), match='indices 0-49 but .* ids 40-59')
  out_of_range = label_file_arrays(50)
  out_of_range['aggre_label'][3] = 10
  np.savez(tmp_path / 'range.npz', **out_of_range)
  refusal(attach, small_dataset(), str(tmp_path / 'range.npz'), match='outside the 10 classes')
  shuffled = label_file_arrays(50)
  shuffled['clean_label'] = np.roll(shuffled['clean_label'], 1)  # another order: the join would be wrong
  np.savez(tmp_path / 'other_order.npz', **shuffled)
  message = refusal(attach, small_dataset(), str(tmp_path / 'other_order.npz'), match='agrees with the cifar10')
  assert '0.00%' in message


SHIFT_SIZE = 2000  # enough images for the rate check to tell a shifted column (~90 % wrong) from a real one


@pytest.mark.parametrize('key', ['aggre_label', 'worse_label', 'random_label2'])
def test_label_file_with_shifted_noisy_column_is_refused(monkeypatch, tmp_path, key):
  arrays = label_file_arrays(SHIFT_SIZE)
  good, shifted = tmp_path / 'good.npz', tmp_path / 'shifted.npz'
  np.savez(good, **arrays)
  np.savez(shifted, **{**arrays, key: np.roll(arrays[key], 1)})  # clean_label is still right
  patch_sources(
      monkeypatch,
      {
          'cifar10': {
              'train': fake_records('train', range(SHIFT_SIZE), image_size=2),
              'test': fake_records('test', range(4), image_size=2),
          }
      },
  )
  assert data.load(tfds_config('cifar10', cifar_n_labels=str(good))).train_human_labels
  label = data.CIFAR_N_KEYS[key]
  message = refusal(
      data.load,
      tfds_config('cifar10', cifar_n_labels=str(shifted)),
      match=f'The CIFAR-N {label} labels of {shifted} differ from the cifar10 labels on',
  )
  assert f'published CIFAR-N {label} labels differ on {data.PUBLISHED_NOISE_RATES[label]:.2%}' in message
  assert 'pass the official CIFAR-10_human.pt' in message


def test_tfds_cifar_n_and_npz_with_shifted_column_are_refused(monkeypatch, tmp_path):
  arrays = label_file_arrays(SHIFT_SIZE)
  human = {k: v for k, v in arrays.items() if k != 'clean_label'}
  human['random_label3'] = np.roll(human['random_label3'], 7)
  patch_sources(
      monkeypatch,
      {
          'cifar10_n': {
              'train': fake_records('train', range(SHIFT_SIZE), human=human, image_size=2),
              'test': fake_records('test', range(4), human=human, image_size=2),
          }
      },
  )
  refusal(
      data.load,
      tfds_config('cifar10_n', data_dir='/fake'),
      match='random3 labels of tfds dataset cifar10_n in /fake differ .* prepare it again',
  )
  with pytest.MonkeyPatch.context() as patch:  # write the npz that prepare_data would write from such a dataset
    patch.setattr(data, 'PUBLISHED_NOISE_RATES', {})
    dataset = data.load(tfds_config('cifar10_n', data_dir='/fake'))
  npz = tmp_path / 'c.npz'
  prepare_data.write_npz(dataset, str(npz))
  refusal(
      data.load,
      data_config(source='npz', name='cifar10_n', npz_path=str(npz)),
      match=f'random3 labels of {npz} differ .* write the .npz again',
  )


def test_real_cifar_n_files_have_the_published_rates(tmp_path):
  files = {'cifar10n_labels.npz': C10N_KEYS, 'cifar100n_labels.npz': ('noisy_label',)}
  if not all((SHARED / 'data' / 'cifar-n' / f).is_file() for f in files):
    pytest.skip("../shared/data/cifar-n is not present (only on the team's machines)")
  for name, keys in files.items():
    with np.load(SHARED / 'data' / 'cifar-n' / name) as f:
      for key in keys:
        rate = np.mean(f[key] != f['clean_label'])
        assert rate == pytest.approx(data.PUBLISHED_NOISE_RATES[data.CIFAR_N_KEYS[key]], abs=5e-5), key


def test_label_file_at_99_percent_agreement_is_accepted(tmp_path):
  arrays = label_file_arrays(200)
  arrays['clean_label'][:2] += 1  # 2 relabelled images in 200: 99 % agreement
  np.savez(tmp_path / 'labels.npz', **arrays)
  dataset = small_dataset(ids=range(200))
  data.attach_cifar_n_labels(dataset, str(tmp_path / 'labels.npz'))
  np.testing.assert_array_equal(dataset.train_human_labels['aggre'], arrays['aggre_label'])


class _Exploit:

  def __reduce__(self):
    return (os.system, ('echo pwned > /dev/null',))


def test_pt_files_that_are_not_arrays_are_refused(tmp_path):
  (tmp_path / 'legacy.pt').write_bytes(pickle.dumps({'clean_label': [0]}))  # not a zip archive
  refusal(data.read_cifar_n_file, str(tmp_path / 'legacy.pt'), match='is not a CIFAR-N .pt file')
  with zipfile.ZipFile(tmp_path / 'code.pt', 'w') as archive:
    archive.writestr('archive/data.pkl', pickle.dumps({'clean_label': _Exploit()}, protocol=2))
  refusal(data.read_cifar_n_file, str(tmp_path / 'code.pt'), match='posix.system is not allowed|nt.system is not')

  class Pickler(pickle.Pickler):

    def persistent_id(self, obj):
      return ('storage', 'LongStorage', '0', 'cpu', 3) if isinstance(obj, tuple) else None

  buffer = io.BytesIO()
  Pickler(buffer, protocol=2).dump({'clean_label': (0, 1, 2)})
  with zipfile.ZipFile(tmp_path / 'tensors.pt', 'w') as archive:
    archive.writestr('archive/data.pkl', buffer.getvalue())
  refusal(data.read_cifar_n_file, str(tmp_path / 'tensors.pt'), match='torch tensors are not supported')
  with zipfile.ZipFile(tmp_path / 'list.pt', 'w') as archive:
    archive.writestr('archive/data.pkl', pickle.dumps([1, 2], protocol=2))
  refusal(data.read_cifar_n_file, str(tmp_path / 'list.pt'), match='holds a list, not a dict')


def test_label_file_with_a_cifar_n_dataset_is_refused(tmp_path):
  np.savez(tmp_path / 'labels.npz', **label_file_arrays(60))
  with tfds.testing.mock_data(num_examples=NUM_MOCK):
    refusal(
        data.load,
        tfds_config('cifar10_n', cifar_n_labels=str(tmp_path / 'labels.npz')),
        error=ValueError,
        match='already carries CIFAR-N labels',
    )


def test_human_label_lookup_refusals():
  dataset = small_dataset()
  refusal(data.human_noisy_labels, dataset, 'majority', error=ValueError, match="'majority' is not one of")
  message = refusal(data.human_noisy_labels, dataset, 'aggre', match='none were loaded')
  assert '--config.data.name=cifar10_n' in message and '--config.data.cifar_n_labels=FILE' in message
  dataset.train_human_labels = {'aggre': dataset.train_labels}
  refusal(data.human_noisy_labels, dataset, 'noisy', error=ValueError, match='not among the CIFAR-N labels')


def test_pipeline_refuses_human_noise_without_columns(tmp_path):
  config = default.get_config()
  config.noise.kind, config.noise.human_label = 'human', 'aggre'
  refusal(helpers.noisy_labels_for_run, config, small_dataset(), str(tmp_path), match='none were loaded')
  assert not os.path.exists(tmp_path / 'noisy_labels.npz')


# --------------------------------------------------------------------------------------------------------------
# The results table.
# --------------------------------------------------------------------------------------------------------------


def make_human_run(root, name, *, dataset, human_label, seed, accuracy, rmdnet=False):
  workdir = root / name
  workdir.mkdir()
  config = {
      'stages': 'rgrl',
      'seed': seed,
      'data': {'name': dataset},
      'noise': {'kind': 'human', 'rate': 0.5, 'seed': 0, 'human_label': human_label},
      'method': {'name': 'ce', 'distill': rmdnet},
  }
  (workdir / 'config.json').write_text(json.dumps(config))
  (workdir / 'results.json').write_text(json.dumps({'test_accuracy_best': accuracy, 'test_accuracy_last': accuracy}))


def test_results_rows_of_human_noise(tmp_path, capsys):
  # Path A (cifar10_n) and path B (cifar10 + a label file) runs of one setting share a row.
  make_human_run(tmp_path, 'a', dataset='cifar10_n', human_label='aggre', seed=0, accuracy=0.80)
  make_human_run(tmp_path, 'b', dataset='cifar10', human_label='aggre', seed=1, accuracy=0.82)
  make_human_run(tmp_path, 'c', dataset='cifar10_n', human_label='random1', seed=0, accuracy=0.7)
  make_human_run(tmp_path, 'd', dataset='cifar100_n', human_label='noisy', seed=0, accuracy=0.5, rmdnet=True)
  assert results.main([str(tmp_path / '*'), f'--csv={tmp_path / "r.csv"}']) == 0
  text = capsys.readouterr().out
  assert '| cifar10 | human/aggre | — | 81.00 ± 1.41 (n=2) | — | — | 87.8 |' in text
  assert '| cifar10 | human/random1 | — | 70.00 (n=1) | — | — | — |' in text  # no published number for random1
  assert '| cifar100 | human/noisy | — | — | 50.00 (n=1) | — | 55.5 |' in text
  assert 'Published CIFAR-N (human/…): CE as published with CIFAR-N (Wei et al., ICLR 2022' in text
  assert 'DivideMix protocol' not in text
  rows = (tmp_path / 'r.csv').read_text().splitlines()
  assert 'cifar10,human/aggre,,ce,false,2,0 1,81.0000,1.4142,81.0000,1.4142,,,87.7700,' in rows


def test_cifar_n_runs_share_the_base_datasets_teacher():
  for token, base in (('c10n_worst', 'cifar10'), ('c100n_noisy', 'cifar100')):
    cifar_n = noisy_cifar.get_config(f'noise={token}')
    plain = noisy_cifar.get_config(f'dataset={base}')
    assert cifar_n.data.name == f'{base}_n'
    a = checkpoints.stage_meta(cifar_n, 'rm', (32, 32, 3))
    b = checkpoints.stage_meta(plain, 'rm', (32, 32, 3))
    assert a['dataset'] == b['dataset'] == base
    checkpoints.check_meta(b, a, 'teacher', checkpoints.TEACHER_KEYS)  # would raise on a mismatch
