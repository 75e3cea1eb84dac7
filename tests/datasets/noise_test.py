"""Tests for rmdnet_jax.datasets.noise: transition matrices, sampling statistics, determinism, validation, persistence."""

import numpy as np
import pytest

from rmdnet_jax.datasets import noise

NUM_SAMPLES = 50_000


def balanced_labels(num_classes: int, num_samples: int = NUM_SAMPLES, seed: int = 0) -> np.ndarray:
  """Shuffled labels with (nearly) equal class counts, int64 [num_samples]."""
  labels = np.arange(num_samples, dtype=np.int64) % num_classes
  return np.random.default_rng(seed).permutation(labels)


def coarse_mod_20(labels: np.ndarray) -> np.ndarray:
  """A coarse labelling (fine f -> f % 20) whose groups differ from the index blocks 5k..5k+4."""
  return labels % 20


# --------------------------------------------------------------------------------------------------------------
# Exact transition matrices.
# --------------------------------------------------------------------------------------------------------------


def test_none_is_identity_and_keeps_labels():
  labels = balanced_labels(10, 1000)
  result = noise.make_noisy_labels(labels, kind='none', rate=0.4, num_classes=10, seed=0)
  np.testing.assert_array_equal(result.labels, labels)
  np.testing.assert_array_equal(result.transition, np.eye(10))
  assert result.realized_rate == 0.0
  assert result.labels.dtype == np.int64


def test_symmetric_transition_other_classes():
  expected = np.full((4, 4), 0.3 / 3)
  np.fill_diagonal(expected, 0.7)
  np.testing.assert_allclose(noise.symmetric_transition(0.3, 4), expected)


def test_symmetric_transition_from_all_classes():
  expected = np.full((4, 4), 0.3 / 4)
  np.fill_diagonal(expected, 0.7 + 0.3 / 4)
  np.testing.assert_allclose(noise.symmetric_transition(0.3, 4, from_all=True), expected)


def test_pairflip_transition():
  expected = np.array(
      [
          [0.55, 0.45, 0.0, 0.0],
          [0.0, 0.55, 0.45, 0.0],
          [0.0, 0.0, 0.55, 0.45],
          [0.45, 0.0, 0.0, 0.55],
      ]
  )
  np.testing.assert_allclose(noise.pairflip_transition(0.45, 4), expected)


def test_cifar10_asymmetric_transition():
  labels = balanced_labels(10, 100)
  transition = noise.asymmetric_transition(0.4, 10, labels=labels)
  expected = np.eye(10)
  for true_class, noisy_class in [(9, 1), (2, 0), (4, 7), (3, 5), (5, 3)]:
    expected[true_class, true_class] = 0.6
    expected[true_class, noisy_class] = 0.4
  np.testing.assert_allclose(transition, expected)
  assert noise.cifar10_asymmetric_map() == {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}


def test_cifar100_index_blocks_transition():
  labels = balanced_labels(100, 1000)
  transition = noise.asymmetric_transition(0.2, 100, labels=labels, cifar100_grouping='index_blocks')
  expected = np.eye(100) * 0.8
  for fine in range(100):
    block_start = fine - fine % 5
    expected[fine, block_start + (fine + 1 - block_start) % 5] = 0.2
  np.testing.assert_allclose(transition, expected)
  assert transition[4, 0] == pytest.approx(0.2)


def test_cifar100_superclass_transition_follows_coarse_labels():
  labels = balanced_labels(100, 1000)
  transition = noise.asymmetric_transition(
      0.2, 100, labels=labels, coarse_labels=coarse_mod_20(labels), cifar100_grouping='superclass'
  )
  # Super-class k is {k, k+20, k+40, k+60, k+80}; each cycles to the next member, the last back to k.
  expected = np.eye(100) * 0.8
  for fine in range(100):
    expected[fine, (fine + 20) % 100] = 0.2
  np.testing.assert_allclose(transition, expected)
  index_blocks = noise.asymmetric_transition(0.2, 100, labels=labels, cifar100_grouping='index_blocks')
  assert not np.allclose(transition, index_blocks)


@pytest.mark.parametrize(
    'kind,num_classes,extra',
    [
        ('none', 10, {}),
        ('symmetric', 10, {}),
        ('symmetric', 10, {'symmetric_from_all': True}),
        ('pairflip', 10, {}),
        ('asymmetric', 10, {}),
        ('asymmetric', 100, {'cifar100_grouping': 'index_blocks'}),
        ('instance', 10, {}),
    ],
)
def test_transition_rows_sum_to_one(kind, num_classes, extra):
  labels = balanced_labels(num_classes, 2000)
  if kind == 'instance':
    extra = {'images': np.random.default_rng(1).integers(0, 256, (2000, 4, 4, 3), dtype=np.uint8)}
  result = noise.make_noisy_labels(labels, kind=kind, rate=0.37, num_classes=num_classes, seed=3, **extra)
  assert result.transition.shape == (num_classes, num_classes)
  assert result.transition.dtype == np.float64
  np.testing.assert_allclose(result.transition.sum(axis=1), 1.0, atol=1e-12)
  assert np.all(result.transition >= 0.0)


# --------------------------------------------------------------------------------------------------------------
# Sampling statistics.
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('kind', ['symmetric', 'pairflip'])
@pytest.mark.parametrize('rate', [0.2, 0.45, 0.8])
def test_realized_rate_close_to_rate(kind, rate):
  labels = balanced_labels(10)
  result = noise.make_noisy_labels(labels, kind=kind, rate=rate, num_classes=10, seed=11)
  assert result.realized_rate == pytest.approx(np.mean(result.labels != labels))
  assert abs(result.realized_rate - rate) < 0.01


def test_symmetric_from_all_realizes_rate_times_fraction_of_other_classes():
  labels = balanced_labels(10)
  result = noise.make_noisy_labels(labels, kind='symmetric', rate=0.5, num_classes=10, seed=2, symmetric_from_all=True)
  assert abs(result.realized_rate - 0.5 * 9 / 10) < 0.01


def test_cifar10_asymmetric_realized_rate_and_targets():
  labels = balanced_labels(10)
  result = noise.make_noisy_labels(labels, kind='asymmetric', rate=0.4, num_classes=10, seed=5)
  # Five of the ten (balanced) classes flip, so half the samples are exposed to rate 0.4.
  assert abs(result.realized_rate - 0.4 * 5 / 10) < 0.01
  flip_to = noise.cifar10_asymmetric_map()
  flipped = result.labels != labels
  for true_class, noisy_class in zip(labels[flipped], result.labels[flipped]):
    assert flip_to[int(true_class)] == noisy_class
  untouched = ~np.isin(labels, list(flip_to))
  np.testing.assert_array_equal(result.labels[untouched], labels[untouched])


def test_cifar100_asymmetric_realized_rate_and_superclass_targets():
  labels = balanced_labels(100)
  coarse = coarse_mod_20(labels)
  result = noise.make_noisy_labels(labels, kind='asymmetric', rate=0.4, num_classes=100, seed=5, coarse_labels=coarse)
  assert abs(result.realized_rate - 0.4) < 0.01
  flipped = result.labels != labels
  np.testing.assert_array_equal(result.labels[flipped], (labels[flipped] + 20) % 100)
  # Flips never leave the super-class.
  np.testing.assert_array_equal(coarse_mod_20(result.labels), coarse)


def test_default_symmetric_flips_never_land_on_true_class_and_cover_others():
  labels = balanced_labels(10)
  result = noise.make_noisy_labels(labels, kind='symmetric', rate=0.6, num_classes=10, seed=9)
  # Resampling from the C-1 other classes means every resample is a flip: the rate is realised, not r(C-1)/C.
  assert abs(result.realized_rate - 0.6) < 0.01
  flipped = result.labels != labels
  pairs = set(zip(labels[flipped].tolist(), result.labels[flipped].tolist()))
  assert pairs == {(c, j) for c in range(10) for j in range(10) if j != c}


def test_pairflip_flips_only_to_next_class():
  labels = balanced_labels(10)
  result = noise.make_noisy_labels(labels, kind='pairflip', rate=0.45, num_classes=10, seed=4)
  flipped = result.labels != labels
  assert flipped.any()
  np.testing.assert_array_equal(result.labels[flipped], (labels[flipped] + 1) % 10)


@pytest.mark.parametrize(
    'kind,extra',
    [('symmetric', {}), ('symmetric', {'symmetric_from_all': True}), ('pairflip', {}), ('asymmetric', {})],
)
def test_empirical_transition_matches_generating_matrix(kind, extra):
  labels = balanced_labels(10)
  result = noise.make_noisy_labels(labels, kind=kind, rate=0.4, num_classes=10, seed=8, **extra)
  empirical = noise.empirical_transition(labels, result.labels, 10)
  np.testing.assert_allclose(empirical, result.transition, atol=0.02)
  # Entries the generating matrix forbids are never realised.
  assert np.all(empirical[result.transition == 0.0] == 0.0)


def test_empirical_transition_absent_class_rows_are_identity():
  labels = np.array([0, 0, 1, 1])
  noisy_labels = np.array([0, 1, 1, 1])
  expected = np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
  np.testing.assert_allclose(noise.empirical_transition(labels, noisy_labels, 3), expected)


def test_sample_from_rows_never_picks_zero_probability_classes():
  probabilities = np.tile(np.array([0.0, 0.3, 0.0, 0.7, 0.0]), (6, 1))
  # Include the extremes of [0, 1), where an off-by-one or rounding error would surface.
  uniforms = np.array([0.0, 0.2999999, 0.3, 0.5, 0.9999999999, np.nextafter(1.0, 0.0)])
  np.testing.assert_array_equal(noise.sample_from_rows(probabilities, uniforms), [1, 1, 3, 3, 3, 3])


# --------------------------------------------------------------------------------------------------------------
# Determinism.
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('kind', ['symmetric', 'pairflip', 'asymmetric'])
def test_same_seed_identical_different_seed_different(kind):
  labels = balanced_labels(10, 5000)
  first = noise.make_noisy_labels(labels, kind=kind, rate=0.3, num_classes=10, seed=1)
  again = noise.make_noisy_labels(labels, kind=kind, rate=0.3, num_classes=10, seed=1)
  other = noise.make_noisy_labels(labels, kind=kind, rate=0.3, num_classes=10, seed=2)
  np.testing.assert_array_equal(first.labels, again.labels)
  assert first.realized_rate == again.realized_rate
  assert not np.array_equal(first.labels, other.labels)


# --------------------------------------------------------------------------------------------------------------
# Instance-dependent noise.
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def instance_data():
  rng = np.random.default_rng(123)
  images = rng.integers(0, 256, size=(5000, 8, 8, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, size=5000)
  return labels, images


@pytest.mark.parametrize('rate', [0.2, 0.4])
def test_instance_realized_rate_close_to_rate(instance_data, rate):
  labels, images = instance_data
  result = noise.make_noisy_labels(labels, kind='instance', rate=rate, num_classes=10, seed=0, images=images)
  assert abs(result.realized_rate - rate) < 0.03
  np.testing.assert_allclose(result.transition, noise.empirical_transition(labels, result.labels, 10))
  assert np.all(np.diag(result.transition) < 1.0)


def test_instance_deterministic(instance_data):
  labels, images = instance_data
  first = noise.make_noisy_labels(labels, kind='instance', rate=0.3, num_classes=10, seed=7, images=images)
  again = noise.make_noisy_labels(labels, kind='instance', rate=0.3, num_classes=10, seed=7, images=images)
  other = noise.make_noisy_labels(labels, kind='instance', rate=0.3, num_classes=10, seed=8, images=images)
  np.testing.assert_array_equal(first.labels, again.labels)
  np.testing.assert_array_equal(first.transition, again.transition)
  assert not np.array_equal(first.labels, other.labels)


def test_instance_zero_rate_flips_nothing(instance_data):
  labels, images = instance_data
  result = noise.make_noisy_labels(labels, kind='instance', rate=0.0, num_classes=10, seed=0, images=images)
  np.testing.assert_array_equal(result.labels, labels)
  assert result.realized_rate == 0.0
  np.testing.assert_array_equal(result.transition, np.eye(10))


def test_instance_float_images_are_accepted(instance_data):
  labels, images = instance_data
  result = noise.make_noisy_labels(
      labels, kind='instance', rate=0.3, num_classes=10, seed=0, images=images.astype(np.float32) / 255.0
  )
  assert abs(result.realized_rate - 0.3) < 0.03


def test_instance_flip_probabilities_structure():
  rng = np.random.default_rng(0)
  features = rng.random((6, 12), dtype=np.float32)
  projection = rng.standard_normal((12, 4), dtype=np.float32)
  flip_rates = np.array([0.0, 0.1, 0.5, 0.9, 1.0, 0.3])
  probabilities = noise.instance_flip_probabilities(features, 2, flip_rates, projection)
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-12)
  np.testing.assert_allclose(probabilities[:, 2], 1.0 - flip_rates)
  # The flip mass is a softmax over the other classes of the projected features.
  logits = features.astype(np.float64) @ projection.astype(np.float64)
  other = [0, 1, 3]
  softmax = np.exp(logits[:, other]) / np.exp(logits[:, other]).sum(axis=1, keepdims=True)
  np.testing.assert_allclose(probabilities[:, other], flip_rates[:, None] * softmax, rtol=1e-5)


def test_instance_flip_rates_are_truncated_normal_around_rate():
  rng = np.random.default_rng(0)
  flip_rates = noise.instance_flip_rates(0.9, 20_000, rng)
  assert flip_rates.min() >= 0.0 and flip_rates.max() <= 1.0
  # Truncation at 1 pulls the mean from 0.9 to 0.8712 (std of the sample mean here is about 0.0006).
  assert 0.865 < flip_rates.mean() < 0.877
  np.testing.assert_array_equal(noise.instance_flip_rates(0.0, 5, rng), np.zeros(5))


# --------------------------------------------------------------------------------------------------------------
# Validation.
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('rate', [float('nan'), float('inf'), -0.1, 1.5, '0.4', None])
def test_invalid_rate_raises(rate):
  with pytest.raises(ValueError, match=r'noise\.rate must be'):
    noise.make_noisy_labels(np.array([0, 1]), kind='symmetric', rate=rate, num_classes=2, seed=0)


def test_unknown_kind_raises():
  with pytest.raises(ValueError, match=r"Unknown noise\.kind 'uniform'.*'symmetric'"):
    noise.make_noisy_labels(np.array([0, 1]), kind='uniform', rate=0.2, num_classes=2, seed=0)


@pytest.mark.parametrize(
    'labels',
    [np.array([[0, 1], [1, 0]]), np.array([0.0, 1.0]), np.array([True, False]), np.array([], dtype=np.int64)],
)
def test_labels_not_1d_integer_raise(labels):
  with pytest.raises(ValueError, match='non-empty 1-D integer array'):
    noise.make_noisy_labels(labels, kind='symmetric', rate=0.2, num_classes=2, seed=0)


@pytest.mark.parametrize('labels', [np.array([0, 2]), np.array([-1, 0])])
def test_labels_out_of_range_raise(labels):
  with pytest.raises(ValueError, match=r'labels must lie in \[0, 2\)'):
    noise.make_noisy_labels(labels, kind='symmetric', rate=0.2, num_classes=2, seed=0)


@pytest.mark.parametrize('num_classes', [1, 2.0])
def test_invalid_num_classes_raise(num_classes):
  with pytest.raises(ValueError, match='num_classes must be an integer >= 2'):
    noise.make_noisy_labels(np.array([0, 0]), kind='symmetric', rate=0.2, num_classes=num_classes, seed=0)


def test_instance_without_images_raises():
  with pytest.raises(ValueError, match='needs the training images'):
    noise.make_noisy_labels(np.array([0, 1]), kind='instance', rate=0.2, num_classes=2, seed=0)


def test_instance_image_count_mismatch_raises():
  images = np.zeros((3, 2, 2, 3), dtype=np.uint8)
  with pytest.raises(ValueError, match='one image per label'):
    noise.make_noisy_labels(np.array([0, 1]), kind='instance', rate=0.2, num_classes=2, seed=0, images=images)


def test_asymmetric_other_class_count_raises():
  with pytest.raises(ValueError, match=r'only for CIFAR-10 \(10 classes\) and CIFAR-100 \(100 classes\)'):
    noise.make_noisy_labels(np.array([0, 1]), kind='asymmetric', rate=0.2, num_classes=7, seed=0)


def test_superclass_grouping_without_coarse_labels_raises():
  labels = balanced_labels(100, 500)
  with pytest.raises(ValueError, match='needs the coarse labels'):
    noise.make_noisy_labels(labels, kind='asymmetric', rate=0.2, num_classes=100, seed=0)


def test_inconsistent_coarse_labels_raise():
  labels = balanced_labels(100, 500)
  coarse = coarse_mod_20(labels)
  coarse[np.flatnonzero(labels == 7)[0]] = 8
  with pytest.raises(ValueError, match=r'inconsistent: fine classes \[7\]'):
    noise.make_noisy_labels(labels, kind='asymmetric', rate=0.2, num_classes=100, seed=0, coarse_labels=coarse)


def test_coarse_labels_with_wrong_group_sizes_raise():
  labels = balanced_labels(100, 500)
  coarse = labels % 10  # 10 groups of 10 instead of 20 of 5.
  with pytest.raises(ValueError, match='20 super-classes of 5'):
    noise.make_noisy_labels(labels, kind='asymmetric', rate=0.2, num_classes=100, seed=0, coarse_labels=coarse)


def test_misaligned_coarse_labels_raise():
  labels = balanced_labels(100, 500)
  with pytest.raises(ValueError, match='same shape as labels'):
    noise.make_noisy_labels(
        labels, kind='asymmetric', rate=0.2, num_classes=100, seed=0, coarse_labels=coarse_mod_20(labels[:-1])
    )


def test_unknown_cifar100_grouping_raises():
  labels = balanced_labels(100, 500)
  with pytest.raises(ValueError, match=r"Unknown noise\.cifar100_grouping 'blocks'"):
    noise.make_noisy_labels(labels, kind='asymmetric', rate=0.2, num_classes=100, seed=0, cifar100_grouping='blocks')


# --------------------------------------------------------------------------------------------------------------
# Persistence.
# --------------------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
  labels = balanced_labels(10, 1000)
  noisy = noise.make_noisy_labels(labels, kind='pairflip', rate=0.45, num_classes=10, seed=3)
  meta = {'kind': 'pairflip', 'rate': 0.45, 'seed': 3, 'cifar100_grouping': None, 'note': 'ünïcode'}
  path = tmp_path / 'nested' / 'noisy.npz'
  noise.save_noisy_labels(path, noisy, meta)
  loaded, loaded_meta = noise.load_noisy_labels(path)
  np.testing.assert_array_equal(loaded.labels, noisy.labels)
  assert loaded.labels.dtype == np.int64
  np.testing.assert_array_equal(loaded.transition, noisy.transition)
  assert loaded.realized_rate == noisy.realized_rate
  assert isinstance(loaded.realized_rate, float)
  assert loaded_meta == meta
  # The temporary file was renamed into place, not left behind.
  assert sorted(p.name for p in path.parent.iterdir()) == ['noisy.npz']


def test_save_overwrites_existing_file(tmp_path):
  path = tmp_path / 'noisy.npz'
  labels = balanced_labels(10, 100)
  first = noise.make_noisy_labels(labels, kind='symmetric', rate=0.2, num_classes=10, seed=0)
  second = noise.make_noisy_labels(labels, kind='symmetric', rate=0.8, num_classes=10, seed=0)
  noise.save_noisy_labels(path, first, {'rate': 0.2})
  noise.save_noisy_labels(path, second, {'rate': 0.8})
  loaded, meta = noise.load_noisy_labels(path)
  np.testing.assert_array_equal(loaded.labels, second.labels)
  assert meta == {'rate': 0.8}


def test_load_missing_file_raises(tmp_path):
  with pytest.raises(FileNotFoundError, match='No noisy-label file at .*missing.npz'):
    noise.load_noisy_labels(tmp_path / 'missing.npz')


def _damaged(raw: bytes, how: str) -> bytes:
  if how == 'truncated':
    return raw[: len(raw) // 2]
  if how == 'garbage':
    return b'\x00' * 64
  return raw[:-30]  # the zip's end record cut short


@pytest.mark.parametrize(
    'how, match',
    [
        ('truncated', r'is not a readable noisy-label file \(BadZipFile'),
        ('garbage', r'is not an .npz of noisy labels \(not a zip archive\)'),
        ('end record cut', r'is not a readable noisy-label file \(BadZipFile'),
    ],
)
def test_damaged_file_is_one_sentence(tmp_path, how, match):
  path = tmp_path / 'noisy.npz'
  labels = balanced_labels(10, 100)
  noise.save_noisy_labels(path, noise.make_noisy_labels(labels, kind='none', rate=0.0, num_classes=10, seed=0), {})
  path.write_bytes(_damaged(path.read_bytes(), how))
  with pytest.raises(noise.NoisyLabelsFileError, match=match) as info:
    noise.load_noisy_labels(path)
  message = str(info.value)
  assert '\n' not in message and message.endswith('.') and message.count('. ') == 0, message
  assert 'delete it, and the same config remakes the same labels' in message


def test_file_lacking_an_array_or_with_misfit_arrays_is_refused(tmp_path):
  path = tmp_path / 'noisy.npz'
  np.savez(path, labels=np.zeros(4, np.int64), realized_rate=0.0, meta=np.array('{}'))
  with pytest.raises(noise.NoisyLabelsFileError, match=r'\(KeyError: .transition is not a file'):
    noise.load_noisy_labels(path)
  np.savez(path, labels=np.full(4, 12), transition=np.eye(10), realized_rate=0.0, meta=np.array('{}'))
  with pytest.raises(noise.NoisyLabelsFileError, match=r'labels of shape \(4,\) and a transition matrix'):
    noise.load_noisy_labels(path)
