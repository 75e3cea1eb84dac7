"""Validation of a run's config before any work: one clear sentence per broken rule; and how a config.json saved
by an older version maps onto today's keys (`upgrade_saved_config`).

Unknown keys and wrong types on the command line are already refused by `config_flags` (the config is locked);
Python configs and in-process overrides are not, so `validate` first compares every value's type with the type of
the same key in configs/default.py. Each section then has its own short check; a method's settings block
`method.<name>` is checked by the method (`Method.check`).
"""

import importlib.util
import math

import jax
import ml_collections
import numpy as np

from rmdnet_jax import methods
from rmdnet_jax.core import models, relation
from rmdnet_jax.datasets import data, noise
from rmdnet_jax.methods import base as methods_base

try:
  from rmdnet_jax.configs import default  # the installed package (the wheel ships configs/ there)
except ModuleNotFoundError:
  from configs import default  # a source checkout

STAGES = ('rm', 'teacher_knn', 'linear_probe', 'rgrl')
# optax and flax count steps in int32: a stage (and its warm-up) must have fewer steps than this.
MAX_STEPS = 2**31 - 1
# Training examples of CIFAR-10 and CIFAR-100 (tfds and npz), for that bound before the data is loaded.
CIFAR_TRAIN_SIZE = 50_000
# jax.random.key takes a signed 64-bit seed and numpy's generators refuse negative ones.
MAX_SEED = 2**63 - 1
SEED_KEYS = ('seed', 'noise.seed', 'data.synthetic_seed')
# The projector is built layer by layer in Python: a huge count would hang network construction (SimSiam: 2-3).
MAX_PROJECTOR_LAYERS = 16
WANDB_MODES = ('online', 'offline')

# noise.kind=human takes CIFAR-N's human labels instead of generating noise (rmdnet_jax.datasets.noise makes the others).
HUMAN_NOISE = 'human'
NOISE_KINDS = noise.NOISE_KINDS + (HUMAN_NOISE,)


class ConfigError(ValueError):
  """The config cannot run; the message names the key and how to fix it."""


def parse_stages(stages: str) -> list:
  names = [s.strip() for s in stages.split(',') if s.strip()]
  for name in names:
    if name not in STAGES:
      raise ConfigError(
          f'Unknown stage {name!r} in stages={stages!r}; use a comma-separated subset of {STAGES}, '
          'e.g. --config.stages=rm,rgrl.'
      )
  if not names:
    raise ConfigError(f'stages is empty; name at least one of {STAGES}, e.g. --config.stages=rm,rgrl.')
  return names


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def _lookup(config: ml_collections.ConfigDict, key: str):
  for part in key.split('.'):
    config = config[part]
  return config


def _leaves(config: ml_collections.ConfigDict, prefix: str = ''):
  """(dotted key, value) of every leaf of `config`."""
  for name, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f'{prefix}{name}.')
    else:
      yield f'{prefix}{name}', value


def _type_error(key: str, value, default_value):
  """The sentence for `value` at `key` when its type does not fit the default's, else None. An integer is a float,
  but a bool is not a number: ml_collections accepts it where an int belongs (bool is a subclass of int), and
  numpy then refuses it as a shape or a seed."""
  if isinstance(default_value, bool):
    ok, kind = isinstance(value, bool), 'True or False'
  elif isinstance(default_value, int):
    ok, kind = isinstance(value, int) and not isinstance(value, bool), 'an integer'
  elif isinstance(default_value, float):
    ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), 'a number'
  elif isinstance(default_value, str):
    ok, kind = isinstance(value, str), 'a string'
  else:
    return None
  return None if ok else f'{key}={value!r} must be {kind}.'


def check_types(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict, prefix: str = '') -> None:
  """Every value has the type of the same key in configs/default.py (`defaults`); a key or section missing from
  `config` (a config saved before it existed) is left to the section checks."""
  for name, default_value in defaults.items():
    if name not in config:
      continue
    key, value = f'{prefix}{name}', config[name]
    if isinstance(default_value, ml_collections.ConfigDict):
      _require(
          isinstance(value, ml_collections.ConfigDict),
          f'{key}={value!r} must be a section with the keys {", ".join(default_value)} (configs/default.py).',
      )
      check_types(value, default_value, f'{key}.')
    else:
      message = _type_error(key, value, default_value)
      _require(message is None, message)


def check_finite(config: ml_collections.ConfigDict) -> None:
  """No float is NaN or infinite: NaN fails the range rules by itself, but an infinity passes a rule like `> 0`."""
  for key, value in _leaves(config):
    if isinstance(value, float):
      _require(math.isfinite(value), f'{key}={value} must be a finite number.')


def check_seeds(config: ml_collections.ConfigDict) -> None:
  for key in SEED_KEYS:
    value = _lookup(config, key)
    _require(0 <= value <= MAX_SEED, f'{key}={value} must be in [0, 2**63 - 1]; e.g. --config.{key}=0.')


def _train_examples(d: ml_collections.ConfigDict) -> int:
  """How many training examples `data.load(d)` gives, known before loading."""
  n = d.synthetic_train_size if d.source == 'synthetic' else CIFAR_TRAIN_SIZE
  return min(n, d.train_subset) if d.train_subset > 0 else n


def check_data(d: ml_collections.ConfigDict) -> None:
  _require(d.source in data.SOURCES, f'data.source={d.source!r} is not one of {data.SOURCES}.')
  if d.source != 'synthetic':
    _require(d.name in data.DATASETS, f'data.name={d.name!r} is not one of {sorted(data.DATASETS)}.')
    expected = data.DATASETS[d.name]['num_classes']
    _require(
        d.num_classes == expected,
        f'data.num_classes={d.num_classes} but {d.name} has {expected} classes; '
        f'set --config.data.num_classes={expected}.',
    )
  _require(d.num_classes >= 2, f'data.num_classes={d.num_classes} must be at least 2.')
  _require(d.source != 'npz' or bool(d.npz_path), 'data.source=npz needs --config.data.npz_path=FILE.')
  if d.cifar_n_labels:
    _check_cifar_n_labels(d)
  _require(
      d.train_subset >= 0 and d.test_subset >= 0,
      f'data.train_subset={d.train_subset} and data.test_subset={d.test_subset} must be >= 0 (0 = the whole split).',
  )
  if d.source == 'synthetic':
    _require(
        d.synthetic_test_size >= 1 and d.synthetic_image_size >= 1,
        f'data.synthetic_test_size={d.synthetic_test_size} and data.synthetic_image_size='
        f'{d.synthetic_image_size} must be positive.',
    )


def _check_cifar_n_labels(d: ml_collections.ConfigDict) -> None:
  _require(
      d.source != 'synthetic',
      'data.cifar_n_labels joins CIFAR-N labels to CIFAR records by id, which synthetic data does not have; use '
      '--config.data.source=tfds (or npz).',
  )
  _require(
      d.name not in data.CIFAR_N_DATASETS,
      f'data.name={d.name} already carries the CIFAR-N labels; drop --config.data.cifar_n_labels or use '
      f'--config.data.name={data.DATASETS[d.name]["base"]}.',
  )
  _require(
      d.cifar_n_labels.endswith(('.pt', '.npz')),
      f'data.cifar_n_labels={d.cifar_n_labels!r} must name a .pt or .npz file (the official '
      'CIFAR-10_human.pt / CIFAR-100_human.pt, or an .npz with their arrays).',
  )


def check_noise(n: ml_collections.ConfigDict, d: ml_collections.ConfigDict) -> None:
  _require(n.kind in NOISE_KINDS, f'noise.kind={n.kind!r} is not one of {NOISE_KINDS}.')
  _require(
      isinstance(n.rate, (int, float)) and math.isfinite(n.rate) and 0.0 <= n.rate <= 1.0,
      f'noise.rate={n.rate} is outside [0, 1]; use a flip probability such as --config.noise.rate=0.5.',
  )
  _require(
      n.kind != 'asymmetric' or d.num_classes in (10, 100),
      f'asymmetric noise is defined for CIFAR-10 and CIFAR-100 only (num_classes 10 or 100), not '
      f'{d.num_classes} classes; use noise.kind=symmetric or pairflip.',
  )
  _require(
      n.cifar100_grouping in ('superclass', 'index_blocks'),
      f"noise.cifar100_grouping={n.cifar100_grouping!r} must be 'superclass' or 'index_blocks'.",
  )
  _require(
      n.human_label in ('',) + data.ALL_HUMAN_LABELS,
      f"noise.human_label={n.human_label!r} is not one of {', '.join(data.ALL_HUMAN_LABELS)} ('' unless "
      'noise.kind=human).',
  )
  if n.kind != HUMAN_NOISE:
    return
  _require(
      d.source != 'synthetic' and (d.name in data.CIFAR_N_DATASETS or bool(d.cifar_n_labels)),
      'noise.kind=human needs CIFAR-N labels; use --config.data.name=cifar10_n (or cifar100_n) or '
      '--config.data.cifar_n_labels=FILE.',
  )
  base = data.DATASETS[d.name]['base']
  choices = data.HUMAN_LABELS[base]
  _require(
      n.human_label in choices,
      f'noise.kind=human on {base} needs noise.human_label in {", ".join(choices)}, not {n.human_label!r}; '
      f'e.g. --config.noise.human_label={choices[0]}.',
  )


def check_models(config: ml_collections.ConfigDict) -> None:
  """The RM network (`model`) and the RGRL student."""
  for key in ('model', 'student'):
    name = config[key].name
    _require(name in models.BACKBONES, f'{key}.name={name!r} is not one of {sorted(models.BACKBONES)}.')
    _require(config[key].width >= 1, f'{key}.width={config[key].width} must be positive.')
  m = config.model
  _require(m.dtype in models.DTYPES, f'model.dtype={m.dtype!r} is not one of {sorted(models.DTYPES)}.')
  for key in ('projector_dim', 'projector_layers', 'predictor_dim'):
    _require(m[key] >= 1, f'model.{key}={m[key]} must be positive.')
  _require(
      m.projector_layers <= MAX_PROJECTOR_LAYERS,
      f'model.projector_layers={m.projector_layers} exceeds {MAX_PROJECTOR_LAYERS}; SimSiam uses 2 or 3.',
  )
  for key in ('model', 'student'):
    init = config[key].init
    _require(init in models.INITS, f'{key}.init={init!r} is not one of {", ".join(models.INITS)}.')
  _require(
      not m.zero_init_residual or models.BACKBONES[m.name].keywords['block_cls'] is models.BasicBlock,
      f'model.zero_init_residual=True needs a post-activation ResNet (resnet18, resnet34, resnet_tiny), not '
      f'{m.name}, whose residual branch ends in a convolution.',
  )


def check_stage(config: ml_collections.ConfigDict, stage: str, num_devices: int) -> None:
  """One training stage's block (`rm` or `rgrl`, configs/default.py `_stage`)."""
  s, d = config[stage], config.data
  _require(s.epochs >= 0, f'{stage}.epochs={s.epochs} must be >= 0.')
  _require(
      s.batch_size > 0 and s.batch_size % num_devices == 0,
      f'{stage}.batch_size={s.batch_size} must be a positive multiple of the {num_devices} devices; '
      f'e.g. --config.{stage}.batch_size={max(num_devices, s.batch_size - s.batch_size % num_devices)}.',
  )
  # 0 is allowed: it trains nothing but the BatchNorm statistics (with rm: a random-init teacher, calibrated).
  _require(s.learning_rate >= 0, f'{stage}.learning_rate={s.learning_rate} must be >= 0.')
  peak = s.learning_rate * (s.batch_size / 256 if s.scale_lr_by_batch else 1.0)
  _require(
      peak < float(np.finfo(np.float32).max) / 2,
      f'{stage}.learning_rate={s.learning_rate} gives a peak rate of {peak:.3g}, which overflows the '
      'float32 schedule; use a realistic rate (the paper notes: 0.03 per 256 images for rm, 0.02 for rgrl).',
  )
  _require(s.weight_decay >= 0, f'{stage}.weight_decay={s.weight_decay} must be >= 0.')
  _require(0 <= s.momentum < 1, f'{stage}.momentum={s.momentum} must be in [0, 1).')
  _require(
      s.eval_every_epochs >= 0 and s.checkpoint_every_epochs >= 0,
      f'{stage}.eval_every_epochs and {stage}.checkpoint_every_epochs must be >= 0.',
  )
  _require(s.warmup_epochs >= 0, f'{stage}.warmup_epochs={s.warmup_epochs} must be >= 0.')
  steps_per_epoch = max(1, _train_examples(d) // s.batch_size)
  _require(
      max(s.epochs, s.warmup_epochs) * steps_per_epoch <= MAX_STEPS,
      f'{stage}.epochs={s.epochs} (warmup_epochs={s.warmup_epochs}) at {steps_per_epoch} steps per epoch '
      f'exceeds the {MAX_STEPS} steps a step counter can hold; use fewer epochs.',
  )
  if d.source == 'synthetic':
    _require(
        s.batch_size <= d.synthetic_train_size,
        f'{stage}.batch_size={s.batch_size} exceeds data.synthetic_train_size={d.synthetic_train_size}.',
    )


def check_batches_fit_subset(config: ml_collections.ConfigDict) -> None:
  d = config.data
  _require(
      d.train_subset == 0 or max(config.rm.batch_size, config.rgrl.batch_size) <= d.train_subset,
      f'data.train_subset={d.train_subset} is smaller than a batch (rm.batch_size={config.rm.batch_size}, '
      f'rgrl.batch_size={config.rgrl.batch_size}); use a larger subset or smaller batches.',
  )


def check_augment_and_knn(config: ml_collections.ConfigDict) -> None:
  """The stages' augmentations and the RM stage's kNN monitor."""
  a = config.rm.augment
  _require(0 < a.crop_scale_min <= 1, f'rm.augment.crop_scale_min={a.crop_scale_min} must be in (0, 1].')
  _require(
      min(a.brightness, a.contrast, a.saturation) >= 0 and 0 <= a.hue <= 0.5,
      'rm.augment.brightness, contrast and saturation must be >= 0 and rm.augment.hue in [0, 0.5] '
      '(as torchvision ColorJitter).',
  )
  for key, value in (
      ('rm.augment.jitter_prob', a.jitter_prob),
      ('rm.augment.grayscale_prob', a.grayscale_prob),
      ('rm.augment.flip_prob', a.flip_prob),
      ('rgrl.augment.flip_prob', config.rgrl.augment.flip_prob),
  ):
    _require(0 <= value <= 1, f'{key}={value} is a probability and must be in [0, 1].')
  _require(
      0 <= config.rgrl.augment.pad <= 64,
      f'rgrl.augment.pad={config.rgrl.augment.pad} must be between 0 and 64 pixels (CIFAR uses 4).',
  )
  _require(
      config.rm.knn_k >= 1 and config.rm.knn_temperature > 0,
      f'rm.knn_k={config.rm.knn_k} must be positive and rm.knn_temperature={config.rm.knn_temperature} must be > 0.',
  )


def check_method(m: ml_collections.ConfigDict) -> None:
  """`method.name`, and every method's settings block `method.<name>` by that method's own `check` (all of them,
  whichever is used, as a cell's config.json records them all)."""
  _require(m.name in methods.METHODS, f'method.name={m.name!r} is not one of {sorted(methods.METHODS)}.')
  for name, method in methods.METHODS.items():
    if name not in m:
      _require(
          name != m.name or method.check is None,
          f'method.{name} (the settings of method.name={name}) is missing; a config.json saved before method '
          'settings were nested is read with config_checks.upgrade_saved_config.',
      )
      continue
    if method.check is not None:
      try:
        method.check(methods_base.Settings(methods.settings_of(m, name)))
      except methods_base.SettingsError as e:
        raise ConfigError(str(e)) from None


def check_relation(config: ml_collections.ConfigDict) -> None:
  r = config.relation
  _require(r.K >= 0, f'relation.K={r.K} must be >= 0 (0 switches the relation terms off).')
  _require(
      r.node_weight >= 0 and r.edge_weight >= 0,
      f'relation.node_weight={r.node_weight} and relation.edge_weight={r.edge_weight} must be >= 0.',
  )
  for key, choices in (
      ('edge_kind', relation.EDGE_KINDS),
      ('node_kind', relation.NODE_KINDS),
      ('normalize', relation.NORMALIZE),
      ('teacher_layer', ('backbone', 'projector')),
      ('projection_head', ('linear', 'mlp')),
      ('student_init', ('random', 'teacher')),
  ):
    _require(r[key] in choices, f'relation.{key}={r[key]!r} is not one of {tuple(choices)}.')
  _require(r.temperature > 0, f'relation.temperature={r.temperature} must be positive.')
  _require(r.teacher_step >= 0, f'relation.teacher_step={r.teacher_step} must be >= 0 (0 = the latest RM checkpoint).')
  _require(
      0 <= r.edge_topk < config.rgrl.batch_size,
      f'relation.edge_topk={r.edge_topk} must be in [0, rgrl.batch_size - 1] (0 = all neighbours).',
  )
  _require(
      r.student_init != 'teacher'
      or (config.student.name == config.model.name and config.student.width == config.model.width),
      "relation.student_init='teacher' needs student.name/width equal to model.name/width.",
  )


def check_run(config: ml_collections.ConfigDict) -> None:
  """The top-level keys of a run (evaluation batches, logging cadence, checkpoints kept)."""
  _require(config.eval_batch_size >= 1, f'eval_batch_size={config.eval_batch_size} must be positive.')
  _require(config.log_every_steps >= 0, f'log_every_steps={config.log_every_steps} must be >= 0 (0 = once per epoch).')
  _require(
      config.max_to_keep >= 1,
      f'max_to_keep={config.max_to_keep} must be at least 1 (the run resumes from its latest checkpoint).',
  )


def check_linear_probe(p) -> None:
  """The linear-probe keys; a config saved before they existed has none (`p` None)."""
  if p is None:
    return
  for key in ('epochs', 'batch_size'):
    _require(p[key] >= 1, f'linear_probe.{key}={p[key]!r} must be a positive integer.')
  _require(p.learning_rate > 0, f'linear_probe.learning_rate={p.learning_rate} must be positive.')
  _require(0 <= p.momentum < 1, f'linear_probe.momentum={p.momentum} must be in [0, 1).')
  _require(p.weight_decay >= 0, f'linear_probe.weight_decay={p.weight_decay} must be >= 0.')


def check_logging(g) -> None:
  """The logging keys; a config saved before they existed has none (`g` None)."""
  if g is None:
    return
  _require(
      g.progress_every_secs > 0,
      f'logging.progress_every_secs={g.progress_every_secs} must be a positive number of seconds.',
  )
  _require(g.wandb_mode in WANDB_MODES, f'logging.wandb_mode={g.wandb_mode!r} is not one of {WANDB_MODES}.')
  _require(
      not g.wandb_project or importlib.util.find_spec('wandb') is not None,
      f'logging.wandb_project={g.wandb_project!r} asks for Weights & Biases, but the wandb package is not '
      'installed; `pip install wandb==0.31.0` (or `pip install "rmdnet_jax[wandb]"`), or leave '
      'logging.wandb_project empty.',
  )


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises ConfigError for the first impossible or inconsistent value in `config`."""
  num_devices = num_devices or jax.device_count()
  check_types(config, default.get_config())
  parse_stages(config.stages)
  check_seeds(config)
  check_data(config.data)
  check_noise(config.noise, config.data)  # before check_finite: a NaN rate is "outside [0, 1]"
  check_finite(config)
  check_models(config)
  for stage in ('rm', 'rgrl'):
    check_stage(config, stage, num_devices)
  check_batches_fit_subset(config)
  check_augment_and_knn(config)
  check_method(config.method)
  check_relation(config)
  check_run(config)
  check_linear_probe(config.get('linear_probe'))
  check_logging(config.get('logging'))
