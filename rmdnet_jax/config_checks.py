"""Validation of a run's config before any work: one clear sentence per broken rule.

Unknown keys and wrong types on the command line are already refused by `config_flags` (the config is locked);
these checks cover values that are well-typed but impossible or inconsistent.
"""
import math

import jax
import ml_collections

from rmdnet_jax import data, methods, models, noise, relation

STAGES = ('rm', 'teacher_knn', 'rgrl')


class ConfigError(ValueError):
  """The config cannot run; the message names the key and how to fix it."""


def parse_stages(stages: str) -> list:
  names = [s.strip() for s in stages.split(',') if s.strip()]
  for name in names:
    if name not in STAGES:
      raise ConfigError(f'Unknown stage {name!r} in stages={stages!r}; use a comma-separated subset of {STAGES}, '
                        'e.g. --config.stages=rm,rgrl.')
  if not names:
    raise ConfigError(f'stages is empty; name at least one of {STAGES}, e.g. --config.stages=rm,rgrl.')
  return names


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises ConfigError for the first impossible or inconsistent value in `config`."""
  num_devices = num_devices or jax.device_count()
  parse_stages(config.stages)
  d = config.data
  _require(d.source in data.SOURCES, f'data.source={d.source!r} is not one of {data.SOURCES}.')
  if d.source != 'synthetic':
    _require(d.name in data.DATASETS, f'data.name={d.name!r} is not one of {sorted(data.DATASETS)}.')
    expected = data.DATASETS[d.name]['num_classes']
    _require(d.num_classes == expected, f'data.num_classes={d.num_classes} but {d.name} has {expected} classes; '
             f'set --config.data.num_classes={expected}.')
  _require(d.num_classes >= 2, f'data.num_classes={d.num_classes} must be at least 2.')
  _require(d.source != 'npz' or bool(d.npz_path), 'data.source=npz needs --config.data.npz_path=FILE.')

  n = config.noise
  _require(n.kind in noise.NOISE_KINDS, f'noise.kind={n.kind!r} is not one of {noise.NOISE_KINDS}.')
  _require(isinstance(n.rate, (int, float)) and math.isfinite(n.rate) and 0.0 <= n.rate <= 1.0,
           f'noise.rate={n.rate} is outside [0, 1]; use a flip probability such as --config.noise.rate=0.5.')
  _require(n.kind != 'asymmetric' or d.num_classes in (10, 100),
           f'asymmetric noise is defined for CIFAR-10 and CIFAR-100 only (num_classes 10 or 100), not '
           f'{d.num_classes} classes; use noise.kind=symmetric or pairflip.')
  _require(n.cifar100_grouping in ('superclass', 'index_blocks'),
           f"noise.cifar100_grouping={n.cifar100_grouping!r} must be 'superclass' or 'index_blocks'.")

  for key in ('model', 'student'):
    name = config[key].name
    _require(name in models.BACKBONES, f'{key}.name={name!r} is not one of {sorted(models.BACKBONES)}.')
    _require(config[key].width >= 1, f'{key}.width={config[key].width} must be positive.')
  _require(config.model.dtype in models.DTYPES, f'model.dtype={config.model.dtype!r} is not one of '
           f'{sorted(models.DTYPES)}.')

  for stage in ('rm', 'rgrl'):
    s = config[stage]
    _require(s.epochs >= 0, f'{stage}.epochs={s.epochs} must be >= 0.')
    _require(s.batch_size > 0 and s.batch_size % num_devices == 0,
             f'{stage}.batch_size={s.batch_size} must be a positive multiple of the {num_devices} devices; '
             f'e.g. --config.{stage}.batch_size={max(num_devices, s.batch_size - s.batch_size % num_devices)}.')
    _require(s.learning_rate > 0, f'{stage}.learning_rate={s.learning_rate} must be positive.')
    _require(s.weight_decay >= 0, f'{stage}.weight_decay={s.weight_decay} must be >= 0.')
    _require(0 <= s.momentum < 1, f'{stage}.momentum={s.momentum} must be in [0, 1).')
    _require(s.eval_every_epochs >= 0 and s.checkpoint_every_epochs >= 0,
             f'{stage}.eval_every_epochs and {stage}.checkpoint_every_epochs must be >= 0.')
  if d.source == 'synthetic':
    for stage in ('rm', 'rgrl'):
      _require(config[stage].batch_size <= d.synthetic_train_size,
               f'{stage}.batch_size={config[stage].batch_size} exceeds data.synthetic_train_size='
               f'{d.synthetic_train_size}.')

  _require(config.method.name in methods.METHODS,
           f'method.name={config.method.name!r} is not one of {sorted(methods.METHODS)}.')
  r = config.relation
  _require(r.K >= 0, f'relation.K={r.K} must be >= 0 (0 switches the relation terms off).')
  _require(r.node_weight >= 0 and r.edge_weight >= 0,
           f'relation.node_weight={r.node_weight} and relation.edge_weight={r.edge_weight} must be >= 0.')
  _require(r.edge_kind in relation.EDGE_KINDS, f'relation.edge_kind={r.edge_kind!r} is not one of '
           f'{relation.EDGE_KINDS}.')
  _require(r.node_kind in relation.NODE_KINDS, f'relation.node_kind={r.node_kind!r} is not one of '
           f'{relation.NODE_KINDS}.')
  _require(r.temperature > 0, f'relation.temperature={r.temperature} must be positive.')
  _require(0 <= r.edge_topk < config.rgrl.batch_size,
           f'relation.edge_topk={r.edge_topk} must be in [0, rgrl.batch_size - 1] (0 = all neighbours).')
  _require(r.teacher_layer in ('backbone', 'projector'),
           f"relation.teacher_layer={r.teacher_layer!r} must be 'backbone' or 'projector'.")
  _require(r.projection_head in ('linear', 'mlp'),
           f"relation.projection_head={r.projection_head!r} must be 'linear' or 'mlp'.")
  _require(r.student_init in ('random', 'teacher'),
           f"relation.student_init={r.student_init!r} must be 'random' or 'teacher'.")
  _require(r.student_init != 'teacher' or (config.student.name == config.model.name
                                           and config.student.width == config.model.width),
           "relation.student_init='teacher' needs student.name/width equal to model.name/width.")
