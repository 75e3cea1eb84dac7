"""Synthetic label noise for learning-with-noisy-labels experiments.

Supported kinds (see the paper notes, section "Label noise"):

* ``none``: labels unchanged.
* ``symmetric``: with probability ``rate`` a label is replaced by a class drawn uniformly from the C-1 other
  classes (or, with ``symmetric_from_all``, from all C classes, which realises ``rate * (C-1)/C``).
* ``pairflip``: class c becomes (c+1) mod C with probability ``rate``.
* ``asymmetric``: the CIFAR-10 semantic pairs, or for CIFAR-100 the next class within its group of five,
  where the group is either the true super-class or a block of five consecutive fine-label indices.
* ``instance``: part-dependent noise of Xia et al. (NeurIPS 2020), per-sample flip rates and flip
  distributions from a random projection of the image.

All randomness comes from one ``np.random.default_rng(seed)``, so a (labels, config, seed) triple always gives
the same noisy labels. The class-conditional kinds draw every sample's noisy label from the row of the
generating transition matrix for its true class, so the realised rate fluctuates around its expectation rather
than being fixed by construction; ``NoisyLabels.realized_rate`` records what actually happened.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import numpy as np
from absl import logging

from rmdnet_jax import fileio
from rmdnet_jax.datasets import data

NOISE_KINDS = ('none', 'symmetric', 'asymmetric', 'pairflip', 'instance')
CIFAR100_GROUPINGS = ('superclass', 'index_blocks')

CIFAR100_NUM_COARSE = 20
CIFAR100_FINE_PER_COARSE = 5
# Standard deviation of the per-sample flip-rate distribution in Xia et al.'s recipe (their `norm_std`).
INSTANCE_FLIP_RATE_STD = 0.1


class NoisyLabelsFileError(ValueError):
  """A noisy-label file exists but cannot be read (truncated, damaged, or not written by ``save_noisy_labels``)."""


class NoisyLabels(NamedTuple):
  """Noisy labels together with how they were (or turned out to be) generated.

  Attributes:
      labels: int64 [N] noisy labels.
      realized_rate: fraction of labels that differ from the clean ones.
      transition: float64 [C, C]; row = true class, column = noisy class. The generating matrix for
          class-conditional kinds, the empirical one for ``instance``.
  """

  labels: np.ndarray
  realized_rate: float
  transition: np.ndarray


# --------------------------------------------------------------------------------------------------------------
# Class-conditional transition matrices.
# --------------------------------------------------------------------------------------------------------------


def symmetric_transition(rate: float, num_classes: int, *, from_all: bool = False) -> np.ndarray:
  """Transition matrix of symmetric noise.

  Args:
      rate: probability that a label is resampled.
      num_classes: C.
      from_all: draw the replacement from all C classes (so it may coincide with the true class) instead
          of from the C-1 other classes.

  Returns:
      float64 [C, C] row-stochastic matrix.
  """
  if from_all:
    off_diagonal = rate / num_classes
    diagonal = 1.0 - rate + off_diagonal
  else:
    off_diagonal = rate / (num_classes - 1)
    diagonal = 1.0 - rate
  transition = np.full((num_classes, num_classes), off_diagonal, dtype=np.float64)
  np.fill_diagonal(transition, diagonal)
  return transition


def transition_from_map(rate: float, num_classes: int, flip_to: Mapping[int, int]) -> np.ndarray:
  """Transition matrix that sends class c to ``flip_to[c]`` with probability ``rate``.

  Args:
      rate: flip probability of every class listed in ``flip_to``.
      num_classes: C.
      flip_to: true class -> noisy class; classes not listed keep their label.

  Returns:
      float64 [C, C] row-stochastic matrix.
  """
  transition = np.eye(num_classes, dtype=np.float64)
  for true_class, noisy_class in flip_to.items():
    transition[true_class, true_class] -= rate
    transition[true_class, noisy_class] += rate
  return transition


def pairflip_transition(rate: float, num_classes: int) -> np.ndarray:
  """Transition matrix of pair-flip noise, c -> (c+1) mod C with probability ``rate``.

  Args:
      rate: flip probability.
      num_classes: C.

  Returns:
      float64 [C, C] row-stochastic matrix.
  """
  return transition_from_map(rate, num_classes, {c: (c + 1) % num_classes for c in range(num_classes)})


def cifar10_asymmetric_map() -> dict[int, int]:
  """CIFAR-10 asymmetric flips: truck->automobile, bird->airplane, deer->horse, cat->dog, dog->cat.

  Returns:
      true class index -> noisy class index, for the five classes that flip.
  """
  airplane, automobile, bird, cat, deer, dog, horse, truck = 0, 1, 2, 3, 4, 5, 7, 9
  return {truck: automobile, bird: airplane, deer: horse, cat: dog, dog: cat}


def cycle_within_groups(groups: list[list[int]]) -> dict[int, int]:
  """Maps each class to the next one in its group, circularly.

  Args:
      groups: lists of class indices; each is cycled in ascending order.

  Returns:
      class -> next class in its group.
  """
  flip_to = {}
  for group in groups:
    ordered = sorted(group)
    for position, fine in enumerate(ordered):
      flip_to[fine] = ordered[(position + 1) % len(ordered)]
  return flip_to


def cifar100_index_block_groups() -> list[list[int]]:
  """Groups of five consecutive fine-label indices, as in Co-teaching+/ELR/DivideMix code.

  These are not the true CIFAR-100 super-classes (fine labels are alphabetical).

  Returns:
      20 lists of 5 fine classes.
  """
  return [
      list(range(start, start + CIFAR100_FINE_PER_COARSE))
      for start in range(0, CIFAR100_NUM_COARSE * CIFAR100_FINE_PER_COARSE, CIFAR100_FINE_PER_COARSE)
  ]


def cifar100_superclass_groups(labels: np.ndarray, coarse_labels: np.ndarray | None) -> list[list[int]]:
  """The true CIFAR-100 super-classes, read off the coarse labels of the samples.

  Args:
      labels: int [N] fine labels in [0, 100).
      coarse_labels: int [N] coarse labels in [0, 20), aligned with ``labels``.

  Returns:
      20 lists of 5 fine classes, indexed by coarse class.

  Raises:
      ValueError: if the coarse labels are missing, misaligned or do not partition the 100 fine classes
          into 20 super-classes of 5.
  """
  if coarse_labels is None:
    raise ValueError(
        "Asymmetric CIFAR-100 noise with noise.cifar100_grouping='superclass' needs the coarse labels; "
        "pass coarse_labels (the dataset's 'coarse_label' field) or set "
        "noise.cifar100_grouping='index_blocks'."
    )
  coarse_labels = np.asarray(coarse_labels)
  if coarse_labels.shape != labels.shape or not np.issubdtype(coarse_labels.dtype, np.integer):
    raise ValueError(
        f'coarse_labels must be an integer array of the same shape as labels {labels.shape}, got '
        f'{coarse_labels.dtype} {coarse_labels.shape}; pass the coarse labels of the same samples.'
    )
  if coarse_labels.min() < 0 or coarse_labels.max() >= CIFAR100_NUM_COARSE:
    raise ValueError(
        f'coarse_labels must lie in [0, {CIFAR100_NUM_COARSE}), got values in '
        f'[{coarse_labels.min()}, {coarse_labels.max()}]; pass CIFAR-100 coarse labels.'
    )
  fine_coarse_pairs = np.unique(np.stack([labels, coarse_labels], axis=1), axis=0)
  fine_classes, coarse_per_fine = np.unique(fine_coarse_pairs[:, 0], return_counts=True)
  if np.any(coarse_per_fine > 1):
    ambiguous = fine_classes[coarse_per_fine > 1].tolist()
    raise ValueError(
        f'coarse_labels are inconsistent: fine classes {ambiguous} appear with more than one coarse label; '
        'pass coarse labels aligned sample-by-sample with the fine labels.'
    )
  groups = [fine_coarse_pairs[fine_coarse_pairs[:, 1] == coarse, 0].tolist() for coarse in range(CIFAR100_NUM_COARSE)]
  group_sizes = [len(group) for group in groups]
  if any(size != CIFAR100_FINE_PER_COARSE for size in group_sizes):
    raise ValueError(
        f'coarse_labels must group the 100 fine classes into 20 super-classes of '
        f'{CIFAR100_FINE_PER_COARSE}, got super-class sizes {group_sizes}; use the full CIFAR-100 split '
        "or set noise.cifar100_grouping='index_blocks'."
    )
  return groups


def asymmetric_transition(
    rate: float,
    num_classes: int,
    *,
    labels: np.ndarray,
    coarse_labels: np.ndarray | None = None,
    cifar100_grouping: str = 'superclass',
) -> np.ndarray:
  """Transition matrix of asymmetric noise on CIFAR-10 or CIFAR-100.

  Args:
      rate: flip probability of every affected class.
      num_classes: 10 (CIFAR-10) or 100 (CIFAR-100).
      labels: int [N] clean labels; only read for the ``superclass`` grouping.
      coarse_labels: int [N] CIFAR-100 coarse labels; required for the ``superclass`` grouping.
      cifar100_grouping: ``superclass`` (true super-classes) or ``index_blocks`` (fine classes 5k..5k+4).

  Returns:
      float64 [C, C] row-stochastic matrix.

  Raises:
      ValueError: for other class counts, an unknown grouping, or unusable coarse labels.
  """
  if num_classes == 10:
    return transition_from_map(rate, num_classes, cifar10_asymmetric_map())
  if num_classes == CIFAR100_NUM_COARSE * CIFAR100_FINE_PER_COARSE:
    if cifar100_grouping == 'superclass':
      groups = cifar100_superclass_groups(labels, coarse_labels)
    elif cifar100_grouping == 'index_blocks':
      groups = cifar100_index_block_groups()
    else:
      raise ValueError(f'Unknown noise.cifar100_grouping {cifar100_grouping!r}; use one of {CIFAR100_GROUPINGS}.')
    return transition_from_map(rate, num_classes, cycle_within_groups(groups))
  raise ValueError(
      f"noise.kind='asymmetric' is defined only for CIFAR-10 (10 classes) and CIFAR-100 (100 classes), got "
      f"{num_classes} classes; use noise.kind='symmetric' or 'pairflip' instead."
  )


# --------------------------------------------------------------------------------------------------------------
# Sampling and summaries.
# --------------------------------------------------------------------------------------------------------------


def sample_from_rows(probabilities: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
  """Inverse-CDF sampling of one class per row.

  Args:
      probabilities: [n, C] non-negative rows with positive sums (need not be exactly normalised).
      uniforms: [n] draws from U[0, 1).

  Returns:
      int64 [n] sampled classes; a class with zero probability is never returned.
  """
  cumulative = np.cumsum(probabilities.astype(np.float64), axis=1)
  # Dividing by the row total makes the last entry exactly 1, so rounding in the cumulative sum can never
  # leave a uniform above it and push the sample onto a trailing zero-probability class.
  cumulative /= cumulative[:, -1:]
  # The first class whose cumulative mass exceeds u; zero-mass classes repeat the previous cumulative value
  # and so can never be that first class.
  return np.sum(cumulative <= uniforms[:, None], axis=1).astype(np.int64)


def sample_class_conditional(labels: np.ndarray, transition: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Draws each sample's noisy label from the transition row of its true class.

  Args:
      labels: int [N] clean labels.
      transition: [C, C] row-stochastic matrix.
      rng: source of the N uniforms.

  Returns:
      int64 [N] noisy labels.
  """
  uniforms = rng.random(labels.shape[0])
  noisy = np.empty(labels.shape[0], dtype=np.int64)
  # Per class, to avoid materialising an [N, C] matrix of repeated rows (CIFAR-100: 50k x 100).
  for true_class in np.unique(labels):
    members = np.flatnonzero(labels == true_class)
    noisy[members] = sample_from_rows(transition[true_class][None, :], uniforms[members])
  return noisy


def empirical_transition(labels: np.ndarray, noisy_labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Row-normalised counts of (true, noisy) label pairs.

  Args:
      labels: int [N] clean labels.
      noisy_labels: int [N] noisy labels.
      num_classes: C.

  Returns:
      float64 [C, C]; rows of classes absent from ``labels`` are identity rows.
  """
  counts = np.zeros((num_classes, num_classes), dtype=np.float64)
  np.add.at(counts, (labels, noisy_labels), 1.0)
  row_totals = counts.sum(axis=1, keepdims=True)
  absent = row_totals[:, 0] == 0
  counts[absent] = np.eye(num_classes)[absent]
  row_totals[absent] = 1.0
  return counts / row_totals


# --------------------------------------------------------------------------------------------------------------
# Instance-dependent noise (Xia et al., NeurIPS 2020, `get_instance_noisy_label`).
# --------------------------------------------------------------------------------------------------------------


def instance_flip_rates(rate: float, num_samples: int, rng: np.random.Generator) -> np.ndarray:
  """Per-sample flip rates from a normal(rate, 0.1) truncated to [0, 1].

  Args:
      rate: mean flip rate r.
      num_samples: N.
      rng: random source.

  Returns:
      float64 [N] flip rates in [0, 1]; all zero when ``rate == 0``, since the truncated normal around 0
      would still flip about 8% of the labels.
  """
  if rate == 0.0:
    return np.zeros(num_samples, dtype=np.float64)
  import scipy.stats  # Lazy: ~1.2 s to import, a quarter of a run's start-up, and only instance noise needs it.

  std = INSTANCE_FLIP_RATE_STD
  distribution = scipy.stats.truncnorm((0.0 - rate) / std, (1.0 - rate) / std, loc=rate, scale=std)
  flip_rates = distribution.rvs(size=num_samples, random_state=rng)
  return np.clip(flip_rates, 0.0, 1.0)


def image_features(images: np.ndarray) -> np.ndarray:
  """Flattened image features for the instance-noise projection.

  Args:
      images: [n, ...] images; integer pixels are scaled by 1/255, floating ones are taken as already
          scaled (to [0, 1]).

  Returns:
      float32 [n, D] features.
  """
  features = images.reshape(images.shape[0], -1).astype(np.float32)
  if np.issubdtype(images.dtype, np.integer):
    features /= 255.0
  return features


def instance_flip_probabilities(
    features: np.ndarray, true_class: int, flip_rates: np.ndarray, class_projection: np.ndarray
) -> np.ndarray:
  """Noisy-label distributions of samples that share one true class.

  Args:
      features: float32 [n, D] features of samples whose true class is ``true_class``.
      true_class: y.
      flip_rates: [n] per-sample flip rates q_i.
      class_projection: float32 [D, C] random projection W[y] of the true class.

  Returns:
      float64 [n, C] rows: q_i * softmax over the other classes of x_i @ W[y], and 1 - q_i at y.
  """
  logits = (features @ class_projection).astype(np.float64)
  logits[:, true_class] = -np.inf
  logits -= logits.max(axis=1, keepdims=True)
  other_class_weights = np.exp(logits)
  other_class_weights /= other_class_weights.sum(axis=1, keepdims=True)
  probabilities = flip_rates[:, None] * other_class_weights
  probabilities[:, true_class] = 1.0 - flip_rates
  return probabilities


def sample_instance_dependent(
    labels: np.ndarray, images: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
  """Instance-dependent noisy labels (flip rates, then projection W, then the draws, all from ``rng``).

  Args:
      labels: int [N] clean labels.
      images: [N, ...] images aligned with ``labels``.
      rate: mean flip rate.
      num_classes: C.
      rng: random source.

  Returns:
      int64 [N] noisy labels.
  """
  num_samples = labels.shape[0]
  flip_rates = instance_flip_rates(rate, num_samples, rng)
  feature_dim = math.prod(images.shape[1:])
  projections = rng.standard_normal((num_classes, feature_dim, num_classes), dtype=np.float32)
  uniforms = rng.random(num_samples)
  noisy = np.empty(num_samples, dtype=np.int64)
  # Per true class, so only that class's images are ever converted to float32 features.
  for true_class in np.unique(labels):
    members = np.flatnonzero(labels == true_class)
    probabilities = instance_flip_probabilities(
        image_features(images[members]), int(true_class), flip_rates[members], projections[true_class]
    )
    noisy[members] = sample_from_rows(probabilities, uniforms[members])
  return noisy


# --------------------------------------------------------------------------------------------------------------
# Public entry point.
# --------------------------------------------------------------------------------------------------------------


def validate_noise_inputs(
    labels: np.ndarray,
    *,
    kind: str,
    rate: float,
    num_classes: int,
    images: np.ndarray | None,
    cifar100_grouping: str,
) -> None:
  """Checks the arguments shared by every noise kind.

  Args:
      labels: clean labels as given.
      kind: noise kind.
      rate: noise rate.
      num_classes: C.
      images: images as given (only checked for ``instance``).
      cifar100_grouping: CIFAR-100 asymmetric grouping; checked for every kind so a config typo surfaces.

  Raises:
      ValueError: with one sentence naming the problem and the fix.
  """
  if kind not in NOISE_KINDS:
    raise ValueError(f'Unknown noise.kind {kind!r}; use one of {NOISE_KINDS}.')
  if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
    raise ValueError(f'noise.rate must be a number in [0, 1], got {rate!r}; set noise.rate to e.g. 0.4.')
  if not math.isfinite(rate) or not 0.0 <= rate <= 1.0:
    raise ValueError(f'noise.rate must be a finite number in [0, 1], got {rate}; set noise.rate to e.g. 0.4.')
  if cifar100_grouping not in CIFAR100_GROUPINGS:
    raise ValueError(f'Unknown noise.cifar100_grouping {cifar100_grouping!r}; use one of {CIFAR100_GROUPINGS}.')
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
    raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}; pass the dataset's class count.")
  if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
        f'labels must be a non-empty 1-D integer array, got {labels.dtype} of shape {labels.shape}; '
        'pass the clean class indices.'
    )
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(
        f'labels must lie in [0, {num_classes}), got values in [{labels.min()}, {labels.max()}]; '
        'check num_classes against the dataset.'
    )
  if kind == 'instance':
    if images is None:
      raise ValueError("noise.kind='instance' needs the training images; pass images=[N, H, W, C].")
    if np.ndim(images) < 2 or np.shape(images)[0] != labels.shape[0]:
      raise ValueError(
          f"noise.kind='instance' needs one image per label, got images of shape {np.shape(images)} for "
          f'{labels.shape[0]} labels; pass the images aligned with labels.'
      )


def make_noisy_labels(
    labels: np.ndarray,
    *,
    kind: str,
    rate: float,
    num_classes: int,
    seed: int,
    coarse_labels: np.ndarray | None = None,
    images: np.ndarray | None = None,
    symmetric_from_all: bool = False,
    cifar100_grouping: str = 'superclass',
) -> NoisyLabels:
  """Corrupts clean labels with synthetic noise, deterministically in ``seed``.

  Args:
      labels: int [N] clean labels in [0, num_classes).
      kind: one of ``NOISE_KINDS``.
      rate: noise rate in [0, 1]; ignored for ``none``.
      num_classes: C.
      seed: seed of the ``np.random.default_rng`` that supplies all randomness.
      coarse_labels: int [N] CIFAR-100 coarse labels; needed for asymmetric CIFAR-100 noise with the
          ``superclass`` grouping.
      images: [N, H, W, C] uint8 (or float in [0, 1]) images; needed for ``instance``.
      symmetric_from_all: for ``symmetric``, draw the replacement from all C classes rather than the C-1
          other ones.
      cifar100_grouping: ``superclass`` or ``index_blocks``; which groups asymmetric CIFAR-100 noise cycles.

  Returns:
      The noisy labels, their realised noise rate and the transition matrix (generating for
      class-conditional kinds, empirical for ``instance``).

  Raises:
      ValueError: for an invalid kind, rate, label array, or missing/inconsistent kind-specific inputs.
  """
  labels = np.asarray(labels)
  validate_noise_inputs(
      labels,
      kind=kind,
      rate=rate,
      num_classes=num_classes,
      images=images,
      cifar100_grouping=cifar100_grouping,
  )
  rate = float(rate)
  labels = labels.astype(np.int64)
  rng = np.random.default_rng(seed)

  if kind == 'instance':
    noisy = sample_instance_dependent(labels, np.asarray(images), rate, num_classes, rng)
    transition = empirical_transition(labels, noisy, num_classes)
  else:
    if kind == 'none':
      transition = np.eye(num_classes, dtype=np.float64)
    elif kind == 'symmetric':
      transition = symmetric_transition(rate, num_classes, from_all=symmetric_from_all)
    elif kind == 'pairflip':
      transition = pairflip_transition(rate, num_classes)
    else:
      transition = asymmetric_transition(
          rate,
          num_classes,
          labels=labels,
          coarse_labels=coarse_labels,
          cifar100_grouping=cifar100_grouping,
      )
    noisy = sample_class_conditional(labels, transition, rng)

  realized_rate = float(np.mean(noisy != labels))
  return NoisyLabels(labels=noisy, realized_rate=realized_rate, transition=transition)


# --------------------------------------------------------------------------------------------------------------
# Persistence.
# --------------------------------------------------------------------------------------------------------------


def save_noisy_labels(path: str | os.PathLike, noisy: NoisyLabels, meta: Mapping[str, Any]) -> None:
  """Writes noisy labels to an ``.npz`` file atomically (local path or ``gs://``).

  Args:
      path: destination file; its directory is created if needed.
      noisy: the labels, realised rate and transition matrix to store.
      meta: JSON-serialisable description of how they were made (kind, rate, seed, grouping, ...).
  """
  buffer = io.BytesIO()
  np.savez(
      buffer,
      labels=np.asarray(noisy.labels, dtype=np.int64),
      transition=np.asarray(noisy.transition, dtype=np.float64),
      realized_rate=np.float64(noisy.realized_rate),
      meta=np.array(json.dumps(dict(meta), sort_keys=True)),
  )
  # fileio writes next to the destination and renames, so a reader (or a crash) never sees a half-written file.
  fileio.write_bytes(path, buffer.getvalue())


# How to recover from a damaged noisy-label file: the labels are a pure function of (config, clean labels, seed).
_REMAKE = 'delete it, and the same config remakes the same labels from the data'


def load_noisy_labels(path: str | os.PathLike) -> tuple[NoisyLabels, dict]:
  """Reads noisy labels written by ``save_noisy_labels``.

  Args:
      path: the ``.npz`` file.

  Returns:
      The stored ``NoisyLabels`` and their metadata dict.

  Raises:
      FileNotFoundError: if ``path`` does not exist.
      NoisyLabelsFileError: if the file is damaged (not a zip, truncated, a bad CRC) or lacks an array, or its
          arrays do not fit each other (one label per example, a [C, C] transition matrix, labels in [0, C)).
  """
  if not fileio.exists(path):
    raise FileNotFoundError(
        f'No noisy-label file at {os.fspath(path)}; generate it with save_noisy_labels or check the path.'
    )
  raw = fileio.read_bytes(path)
  if raw[:2] != b'PK':  # An .npz is a zip archive; numpy would take anything else for a pickle.
    raise NoisyLabelsFileError(f'{os.fspath(path)} is not an .npz of noisy labels (not a zip archive); {_REMAKE}.')
  try:
    with np.load(io.BytesIO(raw), allow_pickle=False) as stored:
      noisy = NoisyLabels(
          labels=stored['labels'].astype(np.int64),
          realized_rate=float(stored['realized_rate']),
          transition=stored['transition'].astype(np.float64),
      )
      meta = json.loads(str(stored['meta']))
  except Exception as e:  # numpy and zipfile raise many types for a damaged file (BadZipFile, ValueError, ...).
    first_line = (str(e).strip().splitlines() or [''])[0].replace('. ', '; ').rstrip('.')[:160]
    raise NoisyLabelsFileError(
        f'{os.fspath(path)} is not a readable noisy-label file ({type(e).__name__}: {first_line}); {_REMAKE}.'
    ) from e
  labels, transition = noisy.labels, noisy.transition
  num_classes = transition.shape[0] if transition.ndim == 2 else 0
  if (
      not isinstance(meta, dict)
      or labels.ndim != 1
      or transition.shape != (num_classes, num_classes)
      or (labels.size and (labels.min() < 0 or labels.max() >= num_classes))
      or meta.get('num_examples', labels.size) != labels.size
  ):
    raise NoisyLabelsFileError(
        f'{os.fspath(path)} holds labels of shape {labels.shape} and a transition matrix of shape '
        f'{transition.shape} that do not fit each other or its metadata; {_REMAKE}.'
    )
  return noisy, meta


# --------------------------------------------------------------------------------------------------------------
# The noisy labels of a run: made once, saved in the work directory, reloaded by every later stage and resume.


class NoisyLabelsMismatch(ValueError):
  """A work directory's noisy labels were made from other data or another noise config than this run's."""


NOISY_LABELS_FILE = 'noisy_labels.npz'


def labels_digest(labels: np.ndarray) -> str:
  """A short digest of a label array: tells one dataset (or CIFAR-N column) from another."""
  return hashlib.sha256(np.ascontiguousarray(labels, np.int64).tobytes()).hexdigest()[:16]


def run_meta(noise_config, dataset, human_column: Optional[np.ndarray] = None) -> dict:
  """What the noisy labels of a run depend on, saved with them and checked on every reload (`human_column`: a
  kind=human run's CIFAR-N column, `data.human_noisy_labels`)."""
  common = {
      'dataset': dataset.name,
      'num_examples': int(len(dataset.train_labels)),
      'clean_labels_sha256': labels_digest(dataset.train_labels),
  }
  if noise_config.kind == 'human':
    # The labels' digest too: another CIFAR-N file (or version) must not resume this run silently.
    return {
        'kind': 'human',
        'human_label': noise_config.human_label,
        **common,
        'noisy_labels_sha256': labels_digest(human_column),
    }
  return {
      'kind': noise_config.kind,
      'rate': float(noise_config.rate),
      'seed': int(noise_config.seed),
      'symmetric_from_all': noise_config.symmetric_from_all,
      'cifar100_grouping': noise_config.cifar100_grouping,
      **common,
  }


def make_run_labels(noise_config, dataset, human_column: Optional[np.ndarray] = None) -> NoisyLabels:
  """The noisy labels `noise_config` gives on `dataset`: drawn, or with kind=human `human_column`, the CIFAR-N
  column noise.human_label (rate and seed play no part; the realised rate and transition matrix are then
  empirical)."""
  if noise_config.kind == 'human':
    labels = np.asarray(human_column, np.int64)
    return NoisyLabels(
        labels=labels,
        realized_rate=float(np.mean(labels != dataset.train_labels)),
        transition=empirical_transition(dataset.train_labels, labels, dataset.num_classes),
    )
  n = noise_config
  return make_noisy_labels(
      dataset.train_labels, kind=n.kind, rate=n.rate, num_classes=dataset.num_classes, seed=n.seed,
      coarse_labels=dataset.train_coarse_labels, images=dataset.train_images if n.kind == 'instance' else None,
      symmetric_from_all=n.symmetric_from_all, cifar100_grouping=n.cifar100_grouping,
  )  # fmt: skip


def labels_for_run(noise_config, dataset, workdir: str) -> tuple[NoisyLabels, Callable[[], None]]:
  """The run's noisy labels and a function that saves them to WORKDIR/noisy_labels.npz when they are new.

  Made once from `noise_config` (config.noise); every later stage and resume reloads the file, so all of them see
  exactly the same labels. The run saves only once it really starts, so a refused start leaves no labels that
  would refuse the corrected command.

  Raises:
      NoisyLabelsFileError: the saved file is damaged.
      NoisyLabelsMismatch: the saved file was made from other data or another noise config.
  """
  path = os.path.join(workdir, NOISY_LABELS_FILE)
  human = noise_config.kind == 'human'
  column = data.human_noisy_labels(dataset, noise_config.human_label) if human else None  # looked up once
  meta = run_meta(noise_config, dataset, column)
  if fileio.exists(path):
    noisy, saved = load_noisy_labels(path)
    mismatched = [k for k in meta if saved.get(k) != meta[k]]
    if mismatched:
      raise NoisyLabelsMismatch(
          f'{path} was made with {", ".join(f"{k}={saved.get(k)!r}" for k in mismatched)}, not '
          f'{", ".join(f"{k}={meta[k]!r}" for k in mismatched)}; use a new --workdir for other noise or data.'
      )
    if noisy.transition.shape[0] != dataset.num_classes:
      raise NoisyLabelsFileError(
          f'{path} holds labels of {noisy.transition.shape[0]} classes but {dataset.name} has '
          f'{dataset.num_classes}; {_REMAKE}.'
      )
    logging.info('Reloaded noisy labels from %s (realised rate %.4f).', path, noisy.realized_rate)
    return noisy, lambda: None
  noisy = make_run_labels(noise_config, dataset, column)

  def save():
    if jax.process_index() == 0:
      save_noisy_labels(path, noisy, meta)
    logging.info(
        'Noisy labels (%s): realised rate %.4f, saved to %s.', describe(noise_config), noisy.realized_rate, path
    )

  return noisy, save


def describe(noise_config) -> str:
  """'symmetric 0.50 (seed 0)', 'human/aggre': the noise of a run in a few words."""
  if noise_config.kind == 'human':
    return f'human/{noise_config.human_label}'
  return f'{noise_config.kind} {noise_config.rate:.2f} (seed {noise_config.seed})'
