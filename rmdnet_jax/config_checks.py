"""Validation of a run's config before any work: one clear sentence per broken rule.

Unknown keys and wrong types on the command line are already refused by `config_flags` (the config is locked);
these checks cover values that are well-typed but impossible or inconsistent.
"""

import importlib.util
import math

import jax
import ml_collections
import numpy as np

from rmdnet_jax import data, methods, models, noise, relation

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
# Python configs (and in-process overrides) may put a bool where an integer belongs: ml_collections accepts it,
# as bool is a subclass of int, and numpy then refuses it as a shape or a seed.
INTEGER_KEYS = SEED_KEYS + (
    'data.num_classes',
    'data.train_subset',
    'data.test_subset',
    'data.synthetic_train_size',
    'data.synthetic_test_size',
    'data.synthetic_image_size',
    'model.width',
    'model.projector_dim',
    'model.projector_layers',
    'model.predictor_dim',
    'student.width',
    'rm.knn_k',
    'rgrl.augment.pad',
    'relation.edge_topk',
    'relation.teacher_step',
    'eval_batch_size',
    'log_every_steps',
    'max_to_keep',
    *(
        f'{stage}.{key}'
        for stage in ('rm', 'rgrl')
        for key in ('epochs', 'batch_size', 'warmup_epochs', 'eval_every_epochs', 'checkpoint_every_epochs')
    ),
)
# Every float key: NaN fails the range rules below by itself, but an infinity would pass a rule such as `> 0`.
FLOAT_KEYS = (
    'relation.K',
    'relation.node_weight',
    'relation.edge_weight',
    'relation.temperature',
    'rm.knn_temperature',
    'rgrl.augment.flip_prob',
    'method.gce_q',
    'method.sce_alpha',
    'method.sce_beta',
    'method.sce_log_zero',
    'method.forget_rate',
    'method.forget_exponent',
    'method.jocor_lambda',
    'method.elr_lambda',
    'method.elr_beta',
    'method.dividemix_p_threshold',
    'method.dividemix_temperature',
    'method.dividemix_alpha',
    'method.dividemix_lambda_u',
    'method.dividemix_gmm_tol',
    'method.dividemix_gmm_reg_covar',
    *(
        f'rm.augment.{key}'
        for key in (
            'crop_scale_min',
            'brightness',
            'contrast',
            'saturation',
            'hue',
            'jitter_prob',
            'grayscale_prob',
            'flip_prob',
        )
    ),
    *(f'{stage}.{key}' for stage in ('rm', 'rgrl') for key in ('learning_rate', 'momentum', 'weight_decay')),
)


# noise.kind=human takes CIFAR-N's human labels instead of generating noise (rmdnet_jax.noise makes the others).
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


def _train_examples(d: ml_collections.ConfigDict) -> int:
  """How many training examples `data.load(d)` gives, known before loading."""
  n = d.synthetic_train_size if d.source == 'synthetic' else CIFAR_TRAIN_SIZE
  return min(n, d.train_subset) if d.train_subset > 0 else n


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises ConfigError for the first impossible or inconsistent value in `config`."""
  num_devices = num_devices or jax.device_count()
  parse_stages(config.stages)
  for key in INTEGER_KEYS:
    value = _lookup(config, key)
    _require(isinstance(value, int) and not isinstance(value, bool), f'{key}={value!r} must be an integer.')
  for key in FLOAT_KEYS:
    value = _lookup(config, key)
    _require(math.isfinite(value), f'{key}={value} must be a finite number.')
  for key in SEED_KEYS:
    value = _lookup(config, key)
    _require(0 <= value <= MAX_SEED, f'{key}={value} must be in [0, 2**63 - 1]; e.g. --config.{key}=0.')
  d = config.data
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
    _require(
        d.source != 'synthetic',
        'data.cifar_n_labels joins CIFAR-N labels to CIFAR records by id, which '
        'synthetic data does not have; use --config.data.source=tfds (or npz).',
    )
    _require(
        d.name not in data.CIFAR_N_DATASETS,
        f'data.name={d.name} already carries the CIFAR-N labels; drop '
        f'--config.data.cifar_n_labels or use --config.data.name={data.DATASETS[d.name]["base"]}.',
    )
    _require(
        d.cifar_n_labels.endswith(('.pt', '.npz')),
        f'data.cifar_n_labels={d.cifar_n_labels!r} must name a .pt or .npz file (the official '
        'CIFAR-10_human.pt / CIFAR-100_human.pt, or an .npz with their arrays).',
    )
  _require(
      d.train_subset >= 0 and d.test_subset >= 0,
      f'data.train_subset={d.train_subset} and data.test_subset={d.test_subset} must be >= 0 (0 = the ' 'whole split).',
  )
  if d.source == 'synthetic':
    _require(
        d.synthetic_test_size >= 1 and d.synthetic_image_size >= 1,
        f'data.synthetic_test_size={d.synthetic_test_size} and data.synthetic_image_size='
        f'{d.synthetic_image_size} must be positive.',
    )

  n = config.noise
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
  if n.kind == HUMAN_NOISE:
    _require(
        d.source != 'synthetic' and (d.name in data.CIFAR_N_DATASETS or bool(d.cifar_n_labels)),
        'noise.kind=human needs CIFAR-N labels; use --config.data.name=cifar10_n (or cifar100_n) or '
        '--config.data.cifar_n_labels=FILE.',
    )
    base = data.DATASETS[d.name]['base']
    choices = data.HUMAN_LABELS[base]
    _require(
        n.human_label in choices,
        f'noise.kind=human on {base} needs noise.human_label in '
        f"{', '.join(choices)}, not {n.human_label!r}; e.g. --config.noise.human_label={choices[0]}.",
    )

  for key in ('model', 'student'):
    name = config[key].name
    _require(name in models.BACKBONES, f'{key}.name={name!r} is not one of {sorted(models.BACKBONES)}.')
    _require(config[key].width >= 1, f'{key}.width={config[key].width} must be positive.')
  _require(
      config.model.dtype in models.DTYPES,
      f'model.dtype={config.model.dtype!r} is not one of ' f'{sorted(models.DTYPES)}.',
  )
  for key in ('projector_dim', 'projector_layers', 'predictor_dim'):
    _require(config.model[key] >= 1, f'model.{key}={config.model[key]} must be positive.')
  _require(
      config.model.projector_layers <= MAX_PROJECTOR_LAYERS,
      f'model.projector_layers={config.model.projector_layers} exceeds {MAX_PROJECTOR_LAYERS}; SimSiam uses ' '2 or 3.',
  )

  for stage in ('rm', 'rgrl'):
    s = config[stage]
    _require(s.epochs >= 0, f'{stage}.epochs={s.epochs} must be >= 0.')
    _require(
        s.batch_size > 0 and s.batch_size % num_devices == 0,
        f'{stage}.batch_size={s.batch_size} must be a positive multiple of the {num_devices} devices; '
        f'e.g. --config.{stage}.batch_size={max(num_devices, s.batch_size - s.batch_size % num_devices)}.',
    )
    _require(s.learning_rate > 0, f'{stage}.learning_rate={s.learning_rate} must be positive.')
    peak = s.learning_rate * (s.batch_size / 256 if s.scale_lr_by_batch else 1.0)
    _require(
        peak < float(np.finfo(np.float32).max) / 2,
        f'{stage}.learning_rate={s.learning_rate} gives a peak rate of {peak:.3g}, which overflows the '
        'float32 schedule; use a realistic rate (the paper notes: 0.06 per 256 images for rm, 0.02 for rgrl).',
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
  _require(
      d.train_subset == 0 or max(config.rm.batch_size, config.rgrl.batch_size) <= d.train_subset,
      f'data.train_subset={d.train_subset} is smaller than a batch (rm.batch_size={config.rm.batch_size}, '
      f'rgrl.batch_size={config.rgrl.batch_size}); use a larger subset or smaller batches.',
  )
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
  _require(config.rgrl.augment.pad >= 0, f'rgrl.augment.pad={config.rgrl.augment.pad} must be >= 0.')
  _require(
      config.rm.knn_k >= 1 and config.rm.knn_temperature > 0,
      f'rm.knn_k={config.rm.knn_k} must be positive and rm.knn_temperature={config.rm.knn_temperature} ' 'must be > 0.',
  )
  if d.source == 'synthetic':
    for stage in ('rm', 'rgrl'):
      _require(
          config[stage].batch_size <= d.synthetic_train_size,
          f'{stage}.batch_size={config[stage].batch_size} exceeds data.synthetic_train_size='
          f'{d.synthetic_train_size}.',
      )

  _require(
      config.method.name in methods.METHODS,
      f'method.name={config.method.name!r} is not one of {sorted(methods.METHODS)}.',
  )
  m = config.method
  _require(0 < m.gce_q <= 1, f'method.gce_q={m.gce_q} must be in (0, 1] (0.7 in Zhang & Sabuncu).')
  _require(
      m.sce_alpha >= 0 and m.sce_beta >= 0,
      f'method.sce_alpha={m.sce_alpha} and method.sce_beta={m.sce_beta} must be >= 0.',
  )
  _require(
      0 <= m.forget_rate < 1,
      f'method.forget_rate={m.forget_rate} must be in [0, 1) (Co-teaching/JoCoR '
      'drop that fraction of each batch; set it to the noise rate).',
  )
  _require(
      m.forget_gradual_epochs >= 0 and m.forget_exponent > 0,
      f'method.forget_gradual_epochs={m.forget_gradual_epochs} must be >= 0 and method.forget_exponent='
      f'{m.forget_exponent} must be > 0.',
  )
  _require(0 <= m.jocor_lambda <= 1, f'method.jocor_lambda={m.jocor_lambda} must be in [0, 1].')
  _require(
      m.elr_lambda >= 0 and 0 <= m.elr_beta < 1,
      f'method.elr_lambda={m.elr_lambda} must be >= 0 and method.elr_beta={m.elr_beta} in [0, 1).',
  )
  _require(
      m.dividemix_warmup_epochs >= 0 and m.dividemix_rampup_epochs >= 1,
      f'method.dividemix_warmup_epochs={m.dividemix_warmup_epochs} must be >= 0 and '
      f'method.dividemix_rampup_epochs={m.dividemix_rampup_epochs} >= 1.',
  )
  _require(
      0 <= m.dividemix_p_threshold <= 1
      and m.dividemix_temperature > 0
      and m.dividemix_alpha > 0
      and m.dividemix_lambda_u >= 0,
      f'method.dividemix_p_threshold={m.dividemix_p_threshold} must be in [0, 1], dividemix_temperature='
      f'{m.dividemix_temperature} and dividemix_alpha={m.dividemix_alpha} > 0, dividemix_lambda_u='
      f'{m.dividemix_lambda_u} >= 0.',
  )
  _require(
      m.dividemix_gmm_iterations >= 1 and m.dividemix_gmm_tol > 0 and m.dividemix_gmm_reg_covar > 0,
      f'method.dividemix_gmm_iterations={m.dividemix_gmm_iterations} must be >= 1 and dividemix_gmm_tol='
      f'{m.dividemix_gmm_tol}, dividemix_gmm_reg_covar={m.dividemix_gmm_reg_covar} > 0.',
  )
  r = config.relation
  _require(r.K >= 0, f'relation.K={r.K} must be >= 0 (0 switches the relation terms off).')
  _require(
      r.node_weight >= 0 and r.edge_weight >= 0,
      f'relation.node_weight={r.node_weight} and relation.edge_weight={r.edge_weight} must be >= 0.',
  )
  _require(
      r.edge_kind in relation.EDGE_KINDS, f'relation.edge_kind={r.edge_kind!r} is not one of ' f'{relation.EDGE_KINDS}.'
  )
  _require(
      r.node_kind in relation.NODE_KINDS, f'relation.node_kind={r.node_kind!r} is not one of ' f'{relation.NODE_KINDS}.'
  )
  _require(r.temperature > 0, f'relation.temperature={r.temperature} must be positive.')
  _require(
      r.normalize in relation.NORMALIZE, f'relation.normalize={r.normalize!r} is not one of ' f'{relation.NORMALIZE}.'
  )
  _require(
      r.teacher_step >= 0, f'relation.teacher_step={r.teacher_step} must be >= 0 (0 = the latest RM ' 'checkpoint).'
  )
  _require(
      0 <= r.edge_topk < config.rgrl.batch_size,
      f'relation.edge_topk={r.edge_topk} must be in [0, rgrl.batch_size - 1] (0 = all neighbours).',
  )
  _require(
      r.teacher_layer in ('backbone', 'projector'),
      f"relation.teacher_layer={r.teacher_layer!r} must be 'backbone' or 'projector'.",
  )
  _require(
      r.projection_head in ('linear', 'mlp'),
      f"relation.projection_head={r.projection_head!r} must be 'linear' or 'mlp'.",
  )
  _require(
      r.student_init in ('random', 'teacher'),
      f"relation.student_init={r.student_init!r} must be 'random' or 'teacher'.",
  )
  _require(
      r.student_init != 'teacher'
      or (config.student.name == config.model.name and config.student.width == config.model.width),
      "relation.student_init='teacher' needs student.name/width equal to model.name/width.",
  )
  _require(config.eval_batch_size >= 1, f'eval_batch_size={config.eval_batch_size} must be positive.')
  _require(
      config.log_every_steps >= 0, f'log_every_steps={config.log_every_steps} must be >= 0 (0 = once per ' 'epoch).'
  )
  _require(
      config.max_to_keep >= 1,
      f'max_to_keep={config.max_to_keep} must be at least 1 (the run resumes from ' 'its latest checkpoint).',
  )
  _validate_linear_probe_and_logging(config)


WANDB_MODES = ('online', 'offline')


def _validate_linear_probe_and_logging(config: ml_collections.ConfigDict) -> None:
  """The linear-probe and logging keys (configs/default.py); a config saved before they existed has none."""
  p = config.get('linear_probe')
  if p is not None:
    for key in ('epochs', 'batch_size'):
      value = p[key]
      _require(
          isinstance(value, int) and not isinstance(value, bool) and value >= 1,
          f'linear_probe.{key}={value!r} must be a positive integer.',
      )
    for key in ('learning_rate', 'momentum', 'weight_decay'):
      _require(math.isfinite(p[key]), f'linear_probe.{key}={p[key]} must be a finite number.')
    _require(p.learning_rate > 0, f'linear_probe.learning_rate={p.learning_rate} must be positive.')
    _require(0 <= p.momentum < 1, f'linear_probe.momentum={p.momentum} must be in [0, 1).')
    _require(p.weight_decay >= 0, f'linear_probe.weight_decay={p.weight_decay} must be >= 0.')
  g = config.get('logging')
  if g is None:
    return
  _require(
      math.isfinite(g.progress_every_secs) and g.progress_every_secs > 0,
      f'logging.progress_every_secs={g.progress_every_secs} must be a positive number of seconds.',
  )
  _require(g.wandb_mode in WANDB_MODES, f'logging.wandb_mode={g.wandb_mode!r} is not one of {WANDB_MODES}.')
  _require(
      not g.wandb_project or importlib.util.find_spec('wandb') is not None,
      f'logging.wandb_project={g.wandb_project!r} asks for Weights & Biases, but the wandb package is not '
      'installed; `pip install wandb==0.31.0` (or `pip install "rmdnet_jax[wandb]"`), or leave '
      'logging.wandb_project empty.',
  )
