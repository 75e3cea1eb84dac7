"""Fuzzing the config layer: random overrides of configs/tiny.py either fail cleanly or give a config that
validates and whose pieces can all be built.

Every case applies 1-3 random overrides (random keys, values of random types: ints including zero, negatives and
huge ones, floats including NaN, infinities and out-of-range ones, strings including unknown names, bools) the way
`config_flags` does, then runs `config_checks.validate`. The allowed outcomes are:

* a clean refusal of the override by ml_collections (TypeError for a wrong type, KeyError or AttributeError for
  an unknown key), as `--config.x.y=v` gets on the command line;
* a `config_checks.ConfigError` with a one-line message;
* a config that validates, and then everything a run builds from it before its first compile works: the
  networks (abstractly, `jax.eval_shape`, no compile) with the teacher's and the student's embedding sizes
  agreeing, both learning-rate schedules (finite, >= 0) and optimizers, the relation-loss arguments, the stages,
  both augmentations (abstractly), the random streams, synthetic data and the noisy labels.
"""

import math
import os
import random

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from configs import tiny
from rmdnet_jax import methods
from rmdnet_jax.core import augment, models, relation
from rmdnet_jax.datasets import data, noise
from rmdnet_jax.stages import distill, simsiam
from rmdnet_jax.training import config_checks
from rmdnet_jax.core import train_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG_FILE = os.path.join(ROOT, 'configs', 'tiny.py')
NUM_CASES = 300
NUM_DEVICES = 8
STEPS_PER_EPOCH = 4
IMAGE_SHAPE = (8, 8, 3)
# Host memory a case may spend on synthetic data / noisy labels; larger (valid) sizes are not materialised.
MAX_SYNTHETIC_BYTES = 4 << 20
MAX_NOISE_CLASSES = 1000


def _leaf_keys(config: ml_collections.ConfigDict, prefix: str = '') -> list:
  keys = []
  for name, value in sorted(config.items()):
    if isinstance(value, ml_collections.ConfigDict):
      keys += _leaf_keys(value, f'{prefix}{name}.')
    else:
      keys.append(f'{prefix}{name}')
  return keys


LEAF_KEYS = _leaf_keys(tiny.get_config())
SECTION_KEYS = sorted({k.rpartition('.')[0] for k in LEAF_KEYS if '.' in k})
UNKNOWN_KEYS = (
    'rgrl.epochz',
    'model.depth',
    'optimizer',
    'relation.K.value',
    'seed.bits',
    'nosection.key',
    'rm.augment.blur',
    'data.name.split',
)
# Every name some key accepts (so that random pairings sometimes validate) and names no key accepts.
KNOWN_NAMES = sorted(
    set(data.SOURCES)
    | set(data.DATASETS)
    | set(noise.NOISE_KINDS)
    | set(noise.CIFAR100_GROUPINGS)
    | set(models.BACKBONES)
    | set(models.DTYPES)
    | set(relation.EDGE_KINDS)
    | set(relation.NODE_KINDS)
    | set(methods.METHODS)
    | set(config_checks.STAGES)
    | {'backbone', 'projector', 'linear', 'mlp', 'random', 'teacher', 'rm,rgrl', 'rgrl,rm', 'rm,teacher_knn,rgrl'}
)
UNKNOWN_NAMES = (
    '',
    ' ',
    ',',
    'vit',
    'uniform',
    'l1',
    'svhn',
    'imagenet',
    'float16',
    'RM',
    'rm,,rgrl',
    'rm;rgrl',
    'resnet18 ',
    '../elsewhere',
    'None',
    'nan',
    'é',
)
INTS = (0, 1, -1, 2, 3, 7, 8, 9, 16, 32, 64, 100, 128, 257, 1000, -8, -1000, 2**31, 2**40, 2**63 - 1, -(2**63))
FLOATS = (
    0.0,
    -0.0,
    1e-12,
    0.1,
    0.3,
    0.5,
    0.999,
    1.0,
    1.0000001,
    1.5,
    2.0,
    -0.3,
    -1.0,
    1e9,
    -1e9,
    1e308,
    math.nan,
    math.inf,
    -math.inf,
)


def _random_value(rng: random.Random, current):
  """A value of a random type; half of the time of `current`'s own type, so that many cases pass the type
  check of ml_collections and reach validation."""
  kind = rng.choice(('int', 'float', 'str', 'bool'))
  if rng.random() < 0.5:
    kind = {bool: 'bool', int: 'int', float: 'float', str: 'str'}.get(type(current), kind)
  if kind == 'bool':
    return rng.random() < 0.5
  if kind == 'int':
    return rng.choice(INTS) if rng.random() < 0.7 else rng.randint(-20, 300)
  if kind == 'float':
    return rng.choice(FLOATS) if rng.random() < 0.7 else rng.uniform(-2.0, 2.0)
  return rng.choice(KNOWN_NAMES) if rng.random() < 0.7 else rng.choice(UNKNOWN_NAMES)


def _random_overrides(rng: random.Random) -> list:
  base = tiny.get_config()
  overrides = []
  for _ in range(rng.choice((1, 1, 2, 3))):
    draw = rng.random()
    if draw < 0.05:
      key, value = rng.choice(UNKNOWN_KEYS), _random_value(rng, None)
    elif draw < 0.08:
      key, value = rng.choice(SECTION_KEYS), _random_value(rng, None)  # a whole section replaced by a scalar
    else:
      key = rng.choice(LEAF_KEYS)
      value = _random_value(rng, _get(base, key))
    overrides.append((key, value))
  return overrides


def _get(config, key: str):
  for part in key.split('.'):
    config = getattr(config, part)
  return config


def _apply(config: ml_collections.ConfigDict, key: str, value) -> None:
  """Sets --config.KEY=VALUE as config_flags does: attribute assignment on the locked config."""
  *path, leaf = key.split('.')
  target = config
  for part in path:
    target = getattr(target, part)
  setattr(target, leaf, value)


_SHAPE_CACHE = {}


def _cached(key, fn):
  # Many validated configs share their networks / augmentations: trace each distinct one once.
  if key not in _SHAPE_CACHE:
    _SHAPE_CACHE[key] = fn()
  return _SHAPE_CACHE[key]


def _check_networks(config) -> None:
  m, s, r = config.model, config.student, config.relation
  arch = (
      'nets',
      m.name,
      m.width,
      m.projector_dim,
      m.projector_layers,
      m.predictor_dim,
      m.dtype,
      s.name,
      s.width,
      config.data.num_classes,
      r.teacher_layer,
      r.projection_head,
  )
  rng, images = jax.random.key(0), jnp.zeros((2,) + IMAGE_SHAPE, jnp.float32)

  def shapes():
    rm_out, _ = jax.eval_shape(lambda: models.simsiam_net(m).init_with_output(rng, images, train=False))
    student_out, _ = jax.eval_shape(lambda: distill.student_net(config).init_with_output(rng, images, train=False))
    return rm_out, student_out

  rm_out, student_out = _cached(arch, shapes)
  teacher_dim = rm_out['features' if r.teacher_layer == 'backbone' else 'z'].shape[-1]
  # The relation graphs compare teacher and (projected) student features: their sizes must agree.
  assert student_out['embedding'].shape == (2, teacher_dim), (student_out['embedding'].shape, teacher_dim)
  assert teacher_dim == models.teacher_feature_dim(m, r.teacher_layer)
  assert student_out['logits'].shape == (2, config.data.num_classes)
  assert rm_out['p'].shape == rm_out['z'].shape


def _check_augmentations(config) -> None:
  mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  keys = jax.random.split(jax.random.key(0), 2)
  images = jax.ShapeDtypeStruct((2,) + IMAGE_SHAPE, jnp.uint8)
  rgrl_kwargs = distill.view_kwargs(config.rgrl.augment, mean, std)
  rm_kwargs = simsiam.view_kwargs(config.rm.augment, mean, std)
  _cached(
      ('rgrl_view', tuple(sorted(rgrl_kwargs.items()))),
      lambda: jax.eval_shape(lambda x: augment.pad_crop_flip(keys, x, **rgrl_kwargs), images),
  )
  _cached(
      ('rm_views', tuple(sorted(rm_kwargs.items()))),
      lambda: jax.eval_shape(lambda x: augment.simsiam_views(keys, x, **rm_kwargs), images),
  )


def _check_data_and_noise(config) -> None:
  d, n = config.data, config.noise
  # The random streams as the pipeline, data order and noise draw them.
  jax.random.key(config.seed)
  np.random.default_rng([config.seed, 2, 0])
  np.random.default_rng(n.seed)
  if d.source != 'synthetic':
    return  # tfds / npz need files; their loading has its own tests
  image_bytes = d.synthetic_image_size**2 * 3
  if (d.synthetic_train_size + d.synthetic_test_size) * image_bytes > MAX_SYNTHETIC_BYTES:
    return
  dataset = data.load(d)
  assert len(dataset.test_images) > 0 and len(dataset.train_images) >= max(config.rm.batch_size, config.rgrl.batch_size)
  if d.num_classes <= MAX_NOISE_CLASSES:
    noise.make_noisy_labels(
        dataset.train_labels,
        kind=n.kind,
        rate=n.rate,
        num_classes=dataset.num_classes,
        seed=n.seed,
        coarse_labels=dataset.train_coarse_labels,
        images=dataset.train_images if n.kind == 'instance' else None,
        symmetric_from_all=n.symmetric_from_all,
        cifar100_grouping=n.cifar100_grouping,
    )


def _check_construction(config) -> None:
  """Everything a run builds from its config before compiling; raises on the first failure."""
  models.simsiam_net(config.model)
  distill.student_net(config)
  config_checks.parse_stages(config.stages)
  distill.relation_kwargs(config)
  methods.make_method(config.method)
  for stage in ('rm', 'rgrl'):
    lr_fn = train_state.learning_rate_schedule(config[stage], STEPS_PER_EPOCH)
    total = max(config[stage].epochs * STEPS_PER_EPOCH, 1)
    rates = np.array([float(lr_fn(step)) for step in (0, total // 2, total - 1, total)])
    assert np.all(np.isfinite(rates)) and np.all(rates >= 0), (stage, rates)
    train_state.make_optimizer(config[stage], lr_fn)
  _check_networks(config)
  _check_augmentations(config)
  _check_data_and_noise(config)


def _describe(overrides) -> str:
  return ' '.join(f'--config.{k}={v!r}' for k, v in overrides)


def test_random_overrides_fail_cleanly_or_build():
  rng = random.Random(20240601)
  outcomes = {'refused by ml_collections': 0, 'ConfigError': 0, 'valid': 0}
  failures = []
  for _ in range(NUM_CASES):
    overrides = _random_overrides(rng)
    config = tiny.get_config()
    config.lock()
    try:
      for key, value in overrides:
        _apply(config, key, value)
    except (TypeError, KeyError, AttributeError):
      outcomes['refused by ml_collections'] += 1
      continue
    try:
      config_checks.validate(config, num_devices=NUM_DEVICES)
    except config_checks.ConfigError as e:
      outcomes['ConfigError'] += 1
      if '\n' in str(e) or not str(e).strip():
        failures.append(f'{_describe(overrides)}: ConfigError message is not one line: {str(e)!r}')
      continue
    except Exception as e:  # pylint: disable=broad-except
      failures.append(f'{_describe(overrides)}: validate raised {type(e).__name__}: {e}')
      continue
    outcomes['valid'] += 1
    try:
      _check_construction(config)
    except Exception as e:  # pylint: disable=broad-except
      failures.append(f'{_describe(overrides)}: validates but {type(e).__name__}: {str(e)[:300]}')
  assert not failures, '\n'.join(failures)
  # Every kind of outcome must be exercised, or the fuzzing proves little.
  assert min(outcomes.values()) >= 30, outcomes


def _parse_cli(*overrides: str) -> ml_collections.ConfigDict:
  """The config rmdnet_jax.main would get from `--config=configs/tiny.py OVERRIDES`, parsed in-process."""
  argv = ['prog', f'--config={TINY_CONFIG_FILE}', *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file(
      'config', None, 'Config file.', flag_values=flag_values, lock_config=True, sys_argv=argv
  )
  flag_values(argv)
  return flag_values.config


CLI_CLEAN_ERRORS = (flags.Error, KeyError, AttributeError)


@pytest.mark.parametrize(
    'override',
    ['--config.rgrl.epochz=3', '--config.nosection.key=1', '--config.seed.bits=1', '--config.model.depth=18'],
)
def test_cli_refuses_unknown_keys(override):
  with pytest.raises((KeyError, AttributeError)):
    _parse_cli(override)


@pytest.mark.parametrize(
    'override',
    [
        '--config.rgrl.epochs=abc',
        '--config.rgrl.epochs=1.5',
        '--config.rgrl.epochs=True',
        '--config.noise.rate=high',
        '--config.method.distill=maybe',
        '--config.rgrl=1',
    ],
)
def test_cli_refuses_wrong_types(override):
  with pytest.raises(flags.IllegalFlagValueError):
    _parse_cli(override)


def test_random_cli_overrides_fail_cleanly_or_validate():
  """The same property through the real parser: string values as a shell passes them."""
  rng = random.Random(7)
  base = tiny.get_config()
  outcomes = {'parser': 0, 'ConfigError': 0, 'valid': 0}
  failures = []
  for _ in range(60):
    key = rng.choice(LEAF_KEYS + list(UNKNOWN_KEYS))
    current = _get(base, key) if key in LEAF_KEYS else None
    value = _random_value(rng, current)
    text = str(value).lower() if isinstance(value, bool) and rng.random() < 0.5 else str(value)
    override = f'--config.{key}={text}'
    try:
      config = _parse_cli(override)
    except CLI_CLEAN_ERRORS:
      outcomes['parser'] += 1
      continue
    assert config.is_locked
    try:
      config_checks.validate(config, num_devices=NUM_DEVICES)
    except config_checks.ConfigError as e:
      outcomes['ConfigError'] += 1
      assert '\n' not in str(e), override
      continue
    except Exception as e:  # pylint: disable=broad-except
      failures.append(f'{override}: validate raised {type(e).__name__}: {e}')
      continue
    outcomes['valid'] += 1
    try:
      _check_construction(config)
    except Exception as e:  # pylint: disable=broad-except
      failures.append(f'{override}: validates but {type(e).__name__}: {str(e)[:300]}')
  assert not failures, '\n'.join(failures)
  assert min(outcomes.values()) >= 5, outcomes
