"""Case-study figures of a finished RMDNet run next to its cross-entropy baseline.

  python -m rmdnet_jax.report.analysis --rmdnet_workdir=/tmp/rmdnet_c10 --ce_workdir=/tmp/ce_c10 --out=/tmp/figures

Both work directories must hold finished runs (`rmdnet_jax.main`): the RMDNet one with its RM (SimSiam) teacher,
the baseline one made with --config.method.distill=False. Writes to --out:

  tsne_<c1>_<c2>.png     t-SNE of the test-set backbone features of two classes (default 8=ship, 9=truck as in
                         the paper) from the SimSiam teacher, the CE student and the RMDNet student.
  loss_histograms.png    per-sample cross-entropy of each student on the training set w.r.t. the noisy labels, for
                         the clean and the mislabelled examples, with the ROC AUC of telling them apart by loss.
  learning_curves.png    test accuracy per epoch of both runs (and, when the runs logged it, the memorisation
                         curve: training accuracy w.r.t. the noisy and the clean labels).
  analysis.json          the AUCs and the numbers behind the figures.

Clean training labels are read here for the analysis only, as in the pipeline's final report.
"""

import dataclasses
import json
import math
import os
import sys
import time
from typing import Optional, Sequence

from absl import app, flags, logging
import jax
import matplotlib

matplotlib.use('Agg')  # Files only: analysis runs on headless TPU/GPU hosts.
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from rmdnet_jax.core import parallel  # noqa: E402
from rmdnet_jax.datasets import data, noise
from rmdnet_jax.run import config_files
from rmdnet_jax.stages import distill, simsiam
from rmdnet_jax.training import checkpoints, config_checks, loop, metrics
from rmdnet_jax.core import train_state as train_state_lib  # noqa: E402
from rmdnet_jax.run import workdir as workdir_lib  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('rmdnet_workdir', None, 'Work directory of a finished RMDNet run (with its rm/ teacher).')
flags.DEFINE_string(
    'ce_workdir', None, 'Work directory of the finished cross-entropy baseline ' '(--config.method.distill=False).'
)
flags.DEFINE_string('out', None, 'Directory for the PNG figures and analysis.json.')
flags.DEFINE_list('classes', ['8', '9'], 'The two classes of the t-SNE figure (CIFAR-10: 8=ship, 9=truck).')
flags.DEFINE_integer('max_points', 1000, 'At most this many test images in the t-SNE (half per class).')

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
# What the analysis reads from a run's config.json: data loading, both networks, both stages' schedules (the
# optimizer state's structure and the expected number of steps depend on them) and evaluation.
REQUIRED_KEYS = (
    'seed',
    'eval_batch_size',
    'log_every_steps',
    'data.source',
    'data.name',
    'data.num_classes',
    'data.data_dir',
    'data.npz_path',
    'data.train_subset',
    'data.test_subset',
    'data.synthetic_train_size',
    'data.synthetic_test_size',
    'data.synthetic_image_size',
    'data.synthetic_seed',
    'model.name',
    'model.width',
    'model.projector_dim',
    'model.projector_layers',
    'model.predictor_dim',
    'model.dtype',
    'student.name',
    'student.width',
    'method.name',
    'method.distill',
    'relation.teacher_layer',
    'relation.projection_head',
    'relation.student_init',
    'relation.teacher_checkpoint',
    *(
        f'{stage}.{key}'
        for stage in ('rm', 'rgrl')
        for key in (
            'epochs',
            'batch_size',
            'learning_rate',
            'scale_lr_by_batch',
            'warmup_epochs',
            'momentum',
            'nesterov',
            'weight_decay',
        )
    ),
)
# Keys of config.data that only say where the data lives, not what it is.
DATA_LOCATION_KEYS = ('data_dir', 'npz_path')
RUN_NAMES = {'ce': 'CE', 'rmdnet': 'RMDNet'}
RUN_COLORS = {'ce': 'tab:orange', 'rmdnet': 'tab:blue'}


class AnalysisError(RuntimeError):
  """A work directory cannot be analysed; the message says which one and how to fix it."""


# ------------------------------------------------------------------------------------------------------------
# Pure functions.
# ------------------------------------------------------------------------------------------------------------


def roc_auc(scores, positives) -> float:
  """Area under the ROC curve of separating `positives` from the rest by `scores` (higher = more positive).

  scikit-learn's `roc_auc_score`. A tie between a positive and a negative counts 1/2: the AUC equals
  P(score+ > score-) + P(score+ = score-) / 2 over all positive-negative pairs.

  Args:
    scores: [N] real numbers, all finite.
    positives: [N] bools (or 0/1).

  Returns:
    The AUC in [0, 1]; NaN when there are no positives or no negatives (the AUC is undefined).

  Raises:
    ValueError: shapes differ, or a score is NaN or infinite.
  """
  scores = np.asarray(scores, np.float64).reshape(-1)
  positives = np.asarray(positives).astype(bool).reshape(-1)
  if scores.shape != positives.shape:
    raise ValueError(f'scores has {scores.size} entries but positives has {positives.size}.')
  if not np.all(np.isfinite(scores)):
    raise ValueError('roc_auc needs finite scores; got NaN or infinity.')
  n_pos = int(positives.sum())
  n_neg = positives.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return float('nan')
  from sklearn.metrics import roc_auc_score  # pylint: disable=import-outside-toplevel

  return float(roc_auc_score(positives, scores))


def per_sample_losses(logits, labels) -> np.ndarray:
  """Softmax cross-entropy of each example, -log softmax(logits)[label], in float64.

  The per-example terms of `methods.ce.cross_entropy` (which is their mean).

  Args:
    logits: [N, C] floats.
    labels: [N] ints in [0, C).

  Returns:
    float64 [N], each >= 0.

  Raises:
    ValueError: shapes do not fit or a label is outside [0, C).
  """
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels).astype(np.int64)
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ValueError(f'logits must be [N, C] and labels [N]; got {logits.shape} and {labels.shape}.')
  if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
    raise ValueError(f'labels must lie in [0, {logits.shape[1]}); got {labels.min()}..{labels.max()}.')
  # Shifting by the row maximum keeps exp() finite for any logits.
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_normalizer = np.log(np.exp(shifted).sum(axis=1))
  return log_normalizer - shifted[np.arange(len(labels)), labels]


def tsne_perplexity(num_points: int, perplexity: float = 30.0) -> float:
  """`perplexity`, lowered for small point sets so that t-SNE accepts them.

  t-SNE looks at about 3 * perplexity neighbours of each point, so beyond (n - 1) / 3 a larger perplexity adds
  nothing; scikit-learn also requires perplexity < n.
  """
  return float(min(perplexity, max(1.0, (num_points - 1) / 3.0)))


def tsne_embed(features, seed: int, perplexity: float = 30.0) -> np.ndarray:
  """2-D t-SNE embedding of `features` (scikit-learn, PCA initialisation, fixed `random_state`).

  Features are L2-normalised first: the kNN monitor and the relation graphs compare features by cosine
  similarity, and on unit vectors Euclidean distance is a monotone function of it.

  Args:
    features: [N, D] with N >= 2.
    seed: t-SNE's random_state; the same seed and features give the same embedding.
    perplexity: lowered by `tsne_perplexity` when N is small.

  Returns:
    float [N, 2].
  """
  # Lazy: only this analysis needs scikit-learn (threadpoolctl comes with it).
  from sklearn.manifold import TSNE  # pylint: disable=import-outside-toplevel
  from threadpoolctl import threadpool_limits  # pylint: disable=import-outside-toplevel

  x = np.asarray(features, np.float64)
  if x.ndim != 2 or len(x) < 2:
    raise ValueError(f't-SNE needs features [N, D] with N >= 2; got shape {x.shape}.')
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  tsne = TSNE(
      n_components=2,
      perplexity=tsne_perplexity(len(x), perplexity),
      init='pca',
      learning_rate='auto',
      random_state=seed,
  )
  # One thread: scikit-learn's OpenMP threads and OpenBLAS' threads spin against each other (and against XLA's)
  # on small hosts, which made a 10-point embedding take 10 s instead of 0.1 s on 2 cores; 1000 points take about
  # 5 s either way.
  with threadpool_limits(limits=1):
    return tsne.fit_transform(x)


def select_points(labels, classes: Sequence[int], max_points: int, seed: int = 0) -> np.ndarray:
  """Indices of at most `max_points // 2` examples of each of `classes`, a seeded random subset, in index order.

  Equal caps per class keep a frequent class from crowding out the other in the figure.
  """
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  per_class = max(1, max_points // len(classes))
  chosen = []
  for c in classes:
    idx = np.flatnonzero(labels == c)
    if len(idx) > per_class:
      idx = rng.choice(idx, per_class, replace=False)
    chosen.append(idx)
  return np.sort(np.concatenate(chosen))


def class_name(dataset_name: str, c: int) -> str:
  if dataset_name == 'cifar10':
    return CIFAR10_CLASSES[c]
  return f'class {c}'


def learning_curves(rows: Sequence[dict], steps_per_epoch: int) -> dict:
  """The RGRL evaluation curves in metrics.jsonl rows, indexed by epoch.

  A resumed run logs again the evaluations after its last checkpoint, so for each step the last row wins.

  Returns:
    {'epoch': [E] floats, 'test_accuracy': [E], and, when logged, 'train_accuracy_noisy_labels' and
    'train_accuracy_clean_labels' ([E], NaN where a row lacks them)}.
  """
  by_step = {}
  for row in rows:
    if 'rgrl/test_accuracy' in row:
      by_step[int(row['step'])] = row
  steps = sorted(by_step)
  curves = {
      'epoch': np.array(steps, np.float64) / steps_per_epoch,
      'test_accuracy': np.array([by_step[s]['rgrl/test_accuracy'] for s in steps], np.float64),
  }
  for key in ('train_accuracy_noisy_labels', 'train_accuracy_clean_labels'):
    if any(f'rgrl/{key}' in by_step[s] for s in steps):
      curves[key] = np.array([by_step[s].get(f'rgrl/{key}', np.nan) for s in steps], np.float64)
  return curves


# ------------------------------------------------------------------------------------------------------------
# Loading finished runs.
# ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
  """What the analysis needs of one finished run."""

  key: str  # 'ce' or 'rmdnet'
  workdir: str
  config: ml_collections.ConfigDict
  noisy: noise.NoisyLabels
  variables: Optional[dict] = None  # the final student's {'params', 'batch_stats'}
  steps_per_epoch: int = 0
  steps: int = 0

  @property
  def name(self) -> str:
    return RUN_NAMES[self.key]


def _has_key(config: ml_collections.ConfigDict, dotted: str) -> bool:
  node = config
  for part in dotted.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def load_config(workdir: str, flag: str) -> ml_collections.ConfigDict:
  """The config a run saved in WORKDIR/config.json, checked to have every key the analysis reads."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise AnalysisError(
        f'--{flag}={workdir} has no config.json; pass the --workdir of a finished ' 'rmdnet_jax.main run.'
    )
  try:
    # Brought up to date: a run saved before a key was renamed or added reads as today's config.
    config = ml_collections.ConfigDict(config_files.unflatten(workdir_lib.read_saved_config(workdir)))
  except workdir_lib.WorkdirError as e:
    raise AnalysisError(str(e)) from e
  except (TypeError, ValueError) as e:
    raise AnalysisError(f'{path} is not a readable config ({type(e).__name__}: {e}).') from e
  missing = [k for k in REQUIRED_KEYS if not _has_key(config, k)]
  if missing:
    raise AnalysisError(
        f'{path} lacks the keys {", ".join(missing[:5])}{" ..." if len(missing) > 5 else ""}; '
        'it was written by another version of rmdnet_jax, rerun that run with this one.'
    )
  try:
    # num_devices=1: the analysis pads its evaluation batches, so the device count of the run does not matter.
    config_checks.validate(config, num_devices=1)
  except (config_checks.ConfigError, TypeError) as e:
    raise AnalysisError(f'{path} does not hold a usable config: {e}') from e
  except (AttributeError, KeyError) as e:
    # A run made before a key was added (a newer method's parameter, say) lacks it; the keys the analysis reads
    # were checked above, so such a run can still be analysed.
    missing_key = str(e).splitlines()[0].strip('\'" ') if str(e) else type(e).__name__
    logging.warning(
        'analysis: %s predates key %s, so it was not fully validated; the keys the analysis reads ' 'are all present.',
        path,
        missing_key,
    )
  return config


def _same_data(a: ml_collections.ConfigDict, b: ml_collections.ConfigDict) -> list:
  """Keys of config.data (other than where the data lives) whose values differ between two runs."""
  da, db = a.data.to_dict(), b.data.to_dict()
  return sorted(k for k in set(da) | set(db) if k not in DATA_LOCATION_KEYS and da.get(k) != db.get(k))


def load_noisy(workdir: str, dataset: data.Dataset) -> noise.NoisyLabels:
  """The run's noisy labels, checked to belong to the training set that `dataset` holds."""
  path = os.path.join(workdir, 'noisy_labels.npz')
  if not os.path.isfile(path):
    raise AnalysisError(
        f'{workdir} has no noisy_labels.npz, so its run never started training; finish it '
        'with rmdnet_jax.main first.'
    )
  noisy, meta = noise.load_noisy_labels(path)
  if len(noisy.labels) != len(dataset.train_labels) or (
      'clean_labels_sha256' in meta and meta['clean_labels_sha256'] != noise.labels_digest(dataset.train_labels)
  ):
    raise AnalysisError(
        f'{path} was made for another training set than the one its config.data loads now; '
        'make the data that run was trained on readable at the same place again.'
    )
  return noisy


def restore_student(config: ml_collections.ConfigDict, dataset: data.Dataset, workdir: str) -> tuple:
  """The final RGRL student of a finished run: ({'params', 'batch_stats'}, steps_per_epoch, step).

  Restores into an abstract target replicated over *this* host's devices, so a checkpoint written on another
  topology (an 8-chip TPU host, say) restores here too; a target-free restore would refuse it.
  """
  directory = os.path.abspath(os.path.join(workdir, 'rgrl'))
  sched = loop.Schedule.for_stage(config.rgrl, len(dataset.train_images), config.log_every_steps)
  if not os.path.isdir(directory):
    raise AnalysisError(
        f'{workdir} has no rgrl/ checkpoints; run its RGRL stage first (rmdnet_jax.main with ' "that run's command)."
    )
  mngr = checkpoints.manager(directory, read_only=True)
  step = mngr.latest_step()
  if step is None or step < sched.num_steps:
    raise AnalysisError(
        f'The RGRL stage in {workdir} stopped at step {step or 0} of {sched.num_steps}; rerun '
        "that run's rmdnet_jax.main command to finish it first."
    )
  checkpoints.check_meta(
      checkpoints.restore_meta(mngr, step),
      checkpoints.stage_meta(config, 'rgrl', dataset.image_shape),
      directory,
      checkpoints.STATE_KEYS,
  )
  lr_fn = train_state_lib.learning_rate_schedule(config.rgrl, sched.steps_per_epoch)
  # The state's structure does not depend on how the student was initialised; 'random' needs no teacher.
  shape_config = ml_collections.ConfigDict(config.to_dict())
  shape_config.relation.student_init = 'random'
  target = jax.eval_shape(
      lambda: distill.create_distill_state(
          jax.random.key(0), shape_config, dataset.image_shape, lr_fn, num_examples=len(dataset.train_images)
      )
  )
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=parallel.replicated_sharding()), target
  )
  state = checkpoints.restore(mngr, step, target)
  mngr.close()
  return state.variables, sched.steps_per_epoch, int(step)


def student_outputs_fn(config: ml_collections.ConfigDict, dataset: data.Dataset):
  """apply(variables, uint8 images) -> {'logits', 'features'} of the student: its logits and pooled backbone
  features, so one pass over the data gives both."""
  return distill.outputs_fn(config, dataset)


def teacher_backbone_fn(config: ml_collections.ConfigDict, dataset: data.Dataset):
  """apply(teacher variables, uint8 images) -> the teacher's pooled backbone features.

  The t-SNE compares backbones, so this reads the backbone even when the run distilled from the projector.
  """
  return simsiam.encoder_features_fn(config.model, dataset, 'backbone')


# ------------------------------------------------------------------------------------------------------------
# Figures.
# ------------------------------------------------------------------------------------------------------------


def plot_tsne(path: str, embeddings: dict, labels: np.ndarray, classes: Sequence[int], dataset_name: str) -> None:
  """Panels side by side, one per {title: [N, 2] embedding}, points coloured by their true class."""
  fig, axes = plt.subplots(1, len(embeddings), figsize=(5 * len(embeddings), 5), squeeze=False)
  colors = ('tab:blue', 'tab:red')
  for ax, (title, emb) in zip(axes[0], embeddings.items()):
    for c, color in zip(classes, colors):
      mask = labels == c
      ax.scatter(emb[mask, 0], emb[mask, 1], s=8, alpha=0.7, color=color, label=class_name(dataset_name, c))
    ax.set_title(title)
    # t-SNE axes have no units; only the neighbourhoods mean something.
    ax.set_xticks([])
    ax.set_yticks([])
  axes[0][0].legend(loc='best', markerscale=2)
  names = ' vs '.join(class_name(dataset_name, c) for c in classes)
  fig.suptitle(f't-SNE of test-set backbone features ({names}, {len(labels)} images)')
  fig.tight_layout()
  fig.savefig(path, dpi=150)
  plt.close(fig)


def plot_loss_histograms(path: str, losses: dict, mislabelled: dict, aucs: dict) -> None:
  """One panel per run: the training-set loss of clean vs mislabelled examples, on shared bins."""
  everything = np.concatenate(list(losses.values()))
  # The 99.5th percentile keeps a few huge losses from squeezing every bar into the first bins; larger losses
  # are counted in the last bin rather than dropped.
  upper = max(float(np.quantile(everything, 0.995)), 1e-3)
  bins = np.linspace(0.0, upper, 50)
  fig, axes = plt.subplots(1, len(losses), figsize=(6 * len(losses), 4.5), squeeze=False, sharex=True)
  for ax, (key, loss) in zip(axes[0], losses.items()):
    wrong = mislabelled[key]
    clipped = np.clip(loss, 0.0, upper)
    ax.hist(
        clipped[~wrong], bins=bins, density=True, alpha=0.6, color='tab:green', label=f'clean ({int((~wrong).sum())})'
    )
    ax.hist(
        clipped[wrong], bins=bins, density=True, alpha=0.6, color='tab:red', label=f'mislabelled ({int(wrong.sum())})'
    )
    auc = aucs[key]
    ax.set_title(
        f'{RUN_NAMES[key]} student: ROC AUC {auc:.3f}'
        if auc is not None and math.isfinite(auc)
        else f'{RUN_NAMES[key]} student: ROC AUC undefined'
    )
    ax.set_xlabel('per-sample cross-entropy w.r.t. the noisy label')
    ax.set_ylabel('density')
    ax.legend()
  fig.suptitle('Training-set loss of the final students: clean vs mislabelled examples')
  fig.tight_layout()
  fig.savefig(path, dpi=150)
  plt.close(fig)


def plot_learning_curves(path: str, curves: dict, noise_rates: dict) -> bool:
  """Test accuracy per epoch of each run; a second panel with the memorisation curve when it was logged.

  Returns:
    Whether the memorisation panel was drawn.
  """
  has_memorization = any('train_accuracy_noisy_labels' in c for c in curves.values())
  fig, axes = plt.subplots(1, 2 if has_memorization else 1, figsize=(12 if has_memorization else 6, 4.5), squeeze=False)
  ax = axes[0][0]
  for key, c in curves.items():
    ax.plot(c['epoch'], c['test_accuracy'], marker='.', color=RUN_COLORS[key], label=RUN_NAMES[key])
  ax.set_xlabel('epoch')
  ax.set_ylabel('test accuracy')
  ax.set_title('Test accuracy')
  ax.grid(alpha=0.3)
  ax.legend()
  if has_memorization:
    ax = axes[0][1]
    for key, c in curves.items():
      for labels, linestyle in (('clean', '-'), ('noisy', '--')):
        if f'train_accuracy_{labels}_labels' in c:
          ax.plot(
              c['epoch'], c[f'train_accuracy_{labels}_labels'], marker='.', color=RUN_COLORS[key],
              linestyle=linestyle, label=f'{RUN_NAMES[key]}: vs {labels} labels',
          )  # fmt: skip
    # A student that predicts every clean label agrees with the noisy labels only on the unflipped ones;
    # rising above this line is fitting the noise.
    rate = float(np.mean(list(noise_rates.values())))
    ax.axhline(1.0 - rate, color='gray', linestyle=':', label=f'1 - noise rate ({1.0 - rate:.2f})')
    ax.set_xlabel('epoch')
    ax.set_ylabel('training accuracy')
    ax.set_title('Memorisation: training accuracy')
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small')
  fig.tight_layout()
  fig.savefig(path, dpi=150)
  plt.close(fig)
  return has_memorization


# ------------------------------------------------------------------------------------------------------------
# The analysis.
# ------------------------------------------------------------------------------------------------------------


class _Phase:
  """Logs the start and the duration of one phase."""

  def __init__(self, what: str):
    self._what = what

  def __enter__(self):
    logging.info('analysis: %s ...', self._what)
    self._start = time.perf_counter()

  def __exit__(self, *exc):
    if exc[0] is None:
      logging.info('analysis: %s done in %.1f s.', self._what, time.perf_counter() - self._start)


def _parse_classes(classes: Sequence, num_classes: int) -> tuple:
  try:
    parsed = tuple(int(c) for c in classes)
  except (TypeError, ValueError):
    parsed = ()
  if len(parsed) != 2 or parsed[0] == parsed[1] or not all(0 <= c < num_classes for c in parsed):
    raise AnalysisError(
        f'--classes={",".join(map(str, classes))} must name two different classes in '
        f'[0, {num_classes}), e.g. --classes=8,9.'
    )
  return parsed


def _none_if_nan(x: float) -> Optional[float]:
  return None if x is None or not math.isfinite(x) else float(x)


def analyse(
    rmdnet_workdir: str, ce_workdir: str, out: str, classes: Sequence = (8, 9), max_points: int = 1000, seed: int = 0
) -> dict:
  """Writes the case-study figures and analysis.json of a finished RMDNet run and its CE baseline.

  Args:
    rmdnet_workdir: work directory of a finished RMDNet run (method.distill=True) with its RM teacher.
    ce_workdir: work directory of the finished baseline (method.distill=False) on the same data.
    out: output directory (created).
    classes: the two classes of the t-SNE figure.
    max_points: at most this many test images in the t-SNE (half per class).
    seed: seed of the t-SNE subset and of t-SNE itself.

  Returns:
    The summary that is written to OUT/analysis.json.

  Raises:
    AnalysisError: a work directory is missing, unfinished or does not fit the other one, or a flag is invalid.
    checkpoints.CheckpointError: the RMDNet run's teacher cannot be restored.
    data.DataUnavailableError: the runs' data cannot be read.
  """
  if max_points < 2:
    raise AnalysisError(f'--max_points={max_points} must be at least 2 (one image per class).')
  configs = _load_configs(rmdnet_workdir, ce_workdir)
  with _Phase(f'loading the data ({configs["rmdnet"].data.source})'):
    dataset = data.load(configs['rmdnet'].data)
    classes = _parse_classes(classes, dataset.num_classes)
    logging.info(
        'analysis: %s, %d training and %d test images.', dataset.name, len(dataset.train_images),
        len(dataset.test_images),
    )  # fmt: skip
  runs = {}
  for key, workdir in (('ce', ce_workdir), ('rmdnet', rmdnet_workdir)):
    with _Phase(f'restoring the {RUN_NAMES[key]} student from {workdir}'):
      run = Run(key, workdir, configs[key], load_noisy(workdir, dataset))
      run.variables, run.steps_per_epoch, run.steps = restore_student(run.config, dataset, workdir)
      runs[key] = run
      logging.info('analysis: %s student at step %d.', run.name, run.steps)
  with _Phase(f'restoring the SimSiam teacher of {rmdnet_workdir}'):
    teacher = simsiam.load_teacher(configs['rmdnet'], dataset, rmdnet_workdir)

  os.makedirs(out, exist_ok=True)
  summary = {
      'rmdnet_workdir': os.path.abspath(rmdnet_workdir),
      'ce_workdir': os.path.abspath(ce_workdir),
      'dataset': dataset.name,
      'num_train': int(len(dataset.train_images)),
      'runs': {key: {'workdir': os.path.abspath(run.workdir), 'rgrl_steps': run.steps} for key, run in runs.items()},
      'loss_auc': {},
  }
  outputs_fns = {key: student_outputs_fn(run.config, dataset) for key, run in runs.items()}
  summary['tsne'] = _tsne_figure(out, dataset, runs, outputs_fns, teacher, classes, max_points, seed)
  loss_path = _loss_figure(out, dataset, runs, outputs_fns, summary)
  curves_path = _curves_figure(out, runs, summary)
  summary['figures'] = [summary['tsne']['figure'], loss_path, curves_path]
  with open(os.path.join(out, 'analysis.json.tmp'), 'w') as f:
    json.dump(summary, f, indent=2)
  os.replace(os.path.join(out, 'analysis.json.tmp'), os.path.join(out, 'analysis.json'))
  logging.info('analysis: wrote %s.', os.path.join(out, 'analysis.json'))
  return summary


def _load_configs(rmdnet_workdir: str, ce_workdir: str) -> dict:
  """The two runs' configs, checked to be an RMDNet run and its baseline on the same data."""
  with _Phase('reading the configs'):
    configs = {'rmdnet': load_config(rmdnet_workdir, 'rmdnet_workdir'), 'ce': load_config(ce_workdir, 'ce_workdir')}
    if not configs['rmdnet'].method.distill:
      raise AnalysisError(
          f'--rmdnet_workdir={rmdnet_workdir} is a run without distillation '
          '(method.distill=False); pass the RMDNet run there and the baseline as --ce_workdir.'
      )
    if configs['ce'].method.distill:
      raise AnalysisError(
          f'--ce_workdir={ce_workdir} is an RMDNet run (method.distill=True); pass the '
          'baseline made with --config.method.distill=False.'
      )
    differing = _same_data(configs['rmdnet'], configs['ce'])
    if differing:
      raise AnalysisError(
          f'The two runs were trained on different data (data.{differing[0]}: '
          f'{configs["rmdnet"].data[differing[0]]!r} vs {configs["ce"].data[differing[0]]!r}); '
          'compare runs on the same data.'
      )
    for key in ('kind', 'rate', 'seed'):
      if configs['rmdnet'].get('noise', {}).get(key) != configs['ce'].get('noise', {}).get(key):
        logging.warning('analysis: the runs differ in noise.%s; the comparison is not like for like.', key)
  return configs


def _tsne_figure(out, dataset, runs, outputs_fns, teacher, classes, max_points, seed) -> dict:
  """Figure 1: t-SNE of two classes' test features (teacher and both students); returns its summary."""
  points = select_points(dataset.test_labels, classes, max_points, seed)
  counts = {c: int(np.sum(dataset.test_labels[points] == c)) for c in classes}
  empty = [c for c, n in counts.items() if n == 0]
  if empty:
    raise AnalysisError(f'The test set has no images of class {empty[0]}; choose other --classes.')
  images, point_labels = dataset.test_images[points], dataset.test_labels[points]
  features = {}
  with _Phase(f'test features of {len(points)} images (classes {classes[0]}, {classes[1]})'):
    rmdnet_config = runs['rmdnet'].config
    features['SimSiam teacher'] = parallel.map_batches(
        teacher_backbone_fn(rmdnet_config, dataset), teacher, images, rmdnet_config.eval_batch_size
    )
    for key, run in runs.items():
      features[f'{run.name} student'] = parallel.map_batches(
          outputs_fns[key], run.variables, images, run.config.eval_batch_size
      )['features']
  embeddings = {}
  for title, f in features.items():
    with _Phase(f't-SNE of the {title} ({f.shape[0]} x {f.shape[1]})'):
      embeddings[title] = tsne_embed(f, seed)
  path = os.path.join(out, f'tsne_{classes[0]}_{classes[1]}.png')
  plot_tsne(path, embeddings, point_labels, classes, dataset.name)
  logging.info('analysis: wrote %s.', path)
  return {
      'classes': list(classes),
      'class_names': [class_name(dataset.name, c) for c in classes],
      'points_per_class': {str(c): n for c, n in counts.items()},
      'perplexity': tsne_perplexity(len(points)),
      'seed': seed,
      'figure': path,
  }


def _loss_figure(out, dataset, runs, outputs_fns, summary) -> str:
  """Figure 2: per-sample training losses w.r.t. the noisy labels, clean vs mislabelled (into `summary`)."""
  losses, mislabelled, aucs = {}, {}, {}
  for key, run in runs.items():
    with _Phase(f'training-set losses of the {run.name} student'):
      logits = parallel.map_batches(outputs_fns[key], run.variables, dataset.train_images, run.config.eval_batch_size)[
          'logits'
      ]
      losses[key] = per_sample_losses(logits, run.noisy.labels)
      mislabelled[key] = wrong = run.noisy.labels != dataset.train_labels
      aucs[key] = roc_auc(losses[key], wrong)
      summary['loss_auc'][key] = _none_if_nan(aucs[key])
      summary['runs'][key].update(
          {
              'noise_realized_rate': float(run.noisy.realized_rate),
              'num_mislabelled': int(wrong.sum()),
              'loss_auc': _none_if_nan(aucs[key]),
              'mean_loss_clean': _none_if_nan(float(losses[key][~wrong].mean()) if (~wrong).any() else None),
              'mean_loss_mislabelled': _none_if_nan(float(losses[key][wrong].mean()) if wrong.any() else None),
              'train_accuracy_noisy_labels': float(np.mean(np.argmax(logits, -1) == run.noisy.labels)),
          }
      )
      logging.info(
          'analysis: %s student: loss AUC (mislabelled vs clean) %s.',
          run.name,
          f'{aucs[key]:.4f}' if math.isfinite(aucs[key]) else 'undefined (one group is empty)',
      )
  path = os.path.join(out, 'loss_histograms.png')
  plot_loss_histograms(path, losses, mislabelled, aucs)
  logging.info('analysis: wrote %s.', path)
  return path


def _curves_figure(out, runs, summary) -> str:
  """Figure 3: learning curves from each run's metrics.jsonl (best/last test accuracy into `summary`)."""
  with _Phase('learning curves'):
    curves = {}
    for key, run in runs.items():
      curves[key] = learning_curves(metrics.read_jsonl(os.path.join(run.workdir, 'metrics.jsonl')), run.steps_per_epoch)
      if not len(curves[key]['epoch']):
        raise AnalysisError(
            f'{run.workdir}/metrics.jsonl has no rgrl/test_accuracy rows; the run is unfinished '
            'or its metrics file was removed.'
        )
      summary['runs'][key]['test_accuracy_last'] = float(curves[key]['test_accuracy'][-1])
      summary['runs'][key]['test_accuracy_best'] = float(np.max(curves[key]['test_accuracy']))
    path = os.path.join(out, 'learning_curves.png')
    summary['memorization_curve'] = plot_learning_curves(
        path, curves, {key: run.noisy.realized_rate for key, run in runs.items()}
    )
  logging.info('analysis: wrote %s.', path)
  return path


USER_ERRORS = (AnalysisError, config_checks.ConfigError, data.DataUnavailableError, checkpoints.CheckpointError)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  for name in ('rmdnet_workdir', 'ce_workdir', 'out'):
    if not FLAGS[name].value:
      raise app.UsageError(f'--{name} is required.')
  checkpoints.quiet_orbax_logging()
  if 'tensorflow' in sys.modules:
    # Analysis never imports TensorFlow; as in rmdnet_jax.main, keep one that something imported off the GPUs.
    sys.modules['tensorflow'].config.set_visible_devices([], 'GPU')
  try:
    summary = analyse(
        FLAGS.rmdnet_workdir, FLAGS.ce_workdir, FLAGS.out, classes=FLAGS.classes, max_points=FLAGS.max_points
    )
  except USER_ERRORS as e:
    # One sentence says what is wrong and how to fix it; a traceback would only bury it.
    logging.error('%s', e)
    sys.exit(f'error: {e}')
  aucs = ', '.join(
      f'{RUN_NAMES[k]} {v:.4f}' if v is not None else f'{RUN_NAMES[k]} undefined'
      for k, v in summary['loss_auc'].items()
  )
  print(f'Loss ROC AUC (mislabelled vs clean): {aucs}. Figures and analysis.json in {FLAGS.out}.', flush=True)


if __name__ == '__main__':
  app.run(main)
