"""Config validation (one clear sentence per rule), the CLI's override handling, and the config files."""

import os

import ml_collections
import pytest

from configs import cifar10_rmdnet, cifar100_rmdnet, default, simsiam_cifar10, tiny
from rmdnet_jax.training import config_checks
from tests import helpers


@pytest.mark.parametrize(
    'get_config',
    [
        default.get_config,
        cifar10_rmdnet.get_config,
        cifar100_rmdnet.get_config,
        simsiam_cifar10.get_config,
        tiny.get_config,
    ],
)
def test_shipped_configs_are_valid(get_config):
  config_checks.validate(get_config(), num_devices=8)


@pytest.mark.parametrize(
    'key, value, message',
    [
        ('noise.rate', 1.5, 'outside \\[0, 1\\]'),
        ('noise.rate', -0.1, 'outside \\[0, 1\\]'),
        ('noise.rate', float('nan'), 'outside \\[0, 1\\]'),
        ('noise.kind', 'uniform', 'noise.kind'),
        ('rm.batch_size', 12, 'multiple of the 8 devices'),
        ('rgrl.batch_size', 0, 'multiple of the 8 devices'),
        ('relation.K', -1.0, 'relation.K'),
        ('relation.edge_weight', -0.3, 'must be >= 0'),
        ('relation.edge_kind', 'l1', 'relation.edge_kind'),
        ('relation.node_kind', 'l1', 'relation.node_kind'),
        ('relation.edge_topk', 200, 'edge_topk'),
        ('relation.temperature', 0.0, 'temperature'),
        ('relation.teacher_layer', 'head', 'teacher_layer'),
        ('relation.projection_head', 'conv', 'projection_head'),
        ('relation.student_init', 'imagenet', 'student_init'),
        ('method.name', 'mixup', 'method.name'),
        ('stages', 'rm,finetune', 'Unknown stage'),
        ('stages', '', 'stages is empty'),
        ('data.source', 'web', 'data.source'),
        ('data.name', 'svhn', 'data.name'),
        ('data.num_classes', 100, 'has 10 classes'),
        ('model.name', 'vit', 'model.name'),
        ('model.dtype', 'float16', 'model.dtype'),
        ('rm.epochs', -1, 'epochs'),
        ('rgrl.momentum', 1.0, 'momentum'),
        ('rm.learning_rate', -0.1, 'learning_rate'),
        ('model.init', 'xavier', 'model.init'),
        ('student.init', 'xavier', 'student.init'),
        ('rgrl.learning_rate', 1e308, 'overflows the float32 schedule'),
    ],
)
def test_each_rule_rejects_with_one_sentence(key, value, message):
  config = default.get_config()
  section, _, leaf = key.rpartition('.')
  (config[section] if section else config)[leaf] = value
  with pytest.raises(config_checks.ConfigError, match=message) as info:
    config_checks.validate(config, num_devices=8)
  text = str(info.value)
  assert text.count('. ') == 0 or text.count('. ') <= 1  # one sentence (dots inside values allowed)
  assert '\n' not in text


def test_asymmetric_noise_needs_a_known_dataset():
  config = helpers.tiny_config(**{'noise.kind': 'asymmetric', 'data.num_classes': 7})
  with pytest.raises(config_checks.ConfigError, match='CIFAR-10 and CIFAR-100 only'):
    config_checks.validate(config, num_devices=8)


@pytest.mark.parametrize(
    'overrides, message',
    [
        ({'data.cifar_n_labels': 'CIFAR-10_human.pt', 'data.source': 'synthetic'}, 'synthetic data does not have'),
        ({'data.cifar_n_labels': 'CIFAR-10_human.pt', 'data.name': 'cifar10_n'}, 'already carries the CIFAR-N labels'),
        ({'data.cifar_n_labels': 'CIFAR-10_human.csv'}, 'must name a .pt or .npz file'),
        ({'noise.human_label': 'majority'}, "noise.human_label='majority' is not one of aggre, worst"),
        (
            {'noise.kind': 'human', 'noise.human_label': 'aggre'},
            'noise.kind=human needs CIFAR-N labels; use '
            '--config.data.name=cifar10_n \\(or cifar100_n\\) or --config.data.cifar_n_labels=FILE',
        ),
        (
            {
                'noise.kind': 'human',
                'noise.human_label': 'aggre',
                'data.source': 'synthetic',
                'data.cifar_n_labels': 'x.npz',
            },
            'synthetic data does not have',
        ),
        (
            {'noise.kind': 'human', 'data.name': 'cifar10_n'},
            'needs noise.human_label in aggre, worst, random1, ' "random2, random3, not ''",
        ),
        (
            {'noise.kind': 'human', 'noise.human_label': 'aggre', 'data.name': 'cifar100_n', 'data.num_classes': 100},
            'on cifar100 needs noise.human_label in noisy',
        ),
        (
            {'noise.kind': 'human', 'noise.human_label': 'noisy', 'data.cifar_n_labels': 'CIFAR-10_human.pt'},
            'on cifar10 needs noise.human_label in aggre',
        ),
    ],
)
def test_cifar_n_rules_reject_with_one_sentence(overrides, message):
  config = default.get_config()
  for key, value in overrides.items():
    section, leaf = key.split('.')
    config[section][leaf] = value
  with pytest.raises(config_checks.ConfigError, match=message) as info:
    config_checks.validate(config, num_devices=8)
  text = str(info.value)
  assert '\n' not in text and text.count('. ') <= text.count('e.g. ')


@pytest.mark.parametrize(
    'overrides',
    [
        {'data.name': 'cifar10_n', 'noise.kind': 'human', 'noise.human_label': 'worst', 'noise.rate': 0.0},
        {'data.name': 'cifar100_n', 'data.num_classes': 100, 'noise.kind': 'human', 'noise.human_label': 'noisy'},
        {'data.cifar_n_labels': '/data/CIFAR-10_human.pt', 'noise.kind': 'human', 'noise.human_label': 'random2'},
        {
            'data.cifar_n_labels': 'gs://bucket/cifar100n.npz',
            'data.name': 'cifar100',
            'data.num_classes': 100,
            'data.source': 'npz',
            'data.npz_path': 'c100.npz',
            'noise.kind': 'human',
            'noise.human_label': 'noisy',
        },
        {'data.name': 'cifar10_n'},  # CIFAR-N images with synthetic noise: the columns are just not used
    ],
)
def test_cifar_n_configs_validate(overrides):
  config = default.get_config()
  for key, value in overrides.items():
    section, leaf = key.split('.')
    config[section][leaf] = value
  config_checks.validate(config, num_devices=8)


def test_student_init_teacher_needs_same_architecture():
  config = default.get_config()
  config.relation.student_init = 'teacher'
  config.student.name = 'preact_resnet18'
  with pytest.raises(config_checks.ConfigError, match='student.name/width'):
    config_checks.validate(config, num_devices=8)


def test_ce_baseline_differs_from_rmdnet_only_in_the_switch():
  """The baseline command is the RMDNet config with --config.method.distill=False and nothing else."""
  rmdnet = cifar10_rmdnet.get_config()
  baseline = cifar10_rmdnet.get_config()
  baseline.method.distill = False
  a, b = rmdnet.to_dict(), baseline.to_dict()
  assert a.pop('method') != b.pop('method')
  assert a == b


_main = helpers.run_main


def test_cli_rejects_unknown_key(tmp_path):
  result = _main('--config=configs/tiny.py', f'--workdir={tmp_path}', '--config.rgrl.epochz=3')
  assert result.returncode != 0
  assert 'epochz' in result.stderr
  assert not os.path.exists(tmp_path / 'config.json')  # refused before any work


def test_cli_rejects_wrong_type(tmp_path):
  result = _main('--config=configs/tiny.py', f'--workdir={tmp_path}', '--config.rgrl.epochs=abc')
  assert result.returncode != 0
  assert 'epochs' in result.stderr


def test_cli_rejects_bad_value_before_any_work(tmp_path):
  result = _main('--config=configs/tiny.py', f'--workdir={tmp_path}', '--config.noise.rate=1.5')
  assert result.returncode != 0
  assert 'noise.rate=1.5 is outside [0, 1]' in result.stderr
  assert not os.path.exists(tmp_path / 'config.json')


@pytest.mark.slow
def test_cli_tiny_run_writes_checkpoint_metrics_and_summary(tmp_path):
  result = _main(
      '--config=configs/tiny.py',
      f'--workdir={tmp_path}',
      '--config.stages=rm',
      '--config.rm.epochs=1',
      '--config.data.synthetic_image_size=8',
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.path.isdir(tmp_path / 'rm' / '4')
  assert 'rm/loss' in open(tmp_path / 'metrics.jsonl').read()
  assert 'rm_checkpoints' in result.stdout


def _leaves(config, prefix=''):
  for name, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f'{prefix}{name}.')
    else:
      yield f'{prefix}{name}', value


# A value of another type for each type of default (an int is a float, so floats get a string).
WRONG_TYPE = {bool: 1, int: True, float: 'x', str: 3}


def _from_dict(tree: dict) -> ml_collections.ConfigDict:
  """A config built from plain values, as from a config.json: no types are carried over from configs/default.py."""
  return ml_collections.ConfigDict(tree)


@pytest.mark.parametrize('key, default_value', list(_leaves(default.get_config())))
def test_every_key_takes_only_its_defaults_type(key, default_value):
  """The types come from configs/default.py: a config that has a value of another type anywhere (a config.json,
  a Python config building its own ConfigDict) is refused with one sentence naming the key."""
  tree = default.get_config().to_dict()
  *path, leaf = key.split('.')
  target = tree
  for part in path:
    target = target[part]
  target[leaf] = WRONG_TYPE[type(default_value)]
  with pytest.raises(config_checks.ConfigError, match=f'^{key}=') as info:
    config_checks.validate(_from_dict(tree), num_devices=8)
  assert '\n' not in str(info.value)


def test_an_int_is_a_float_but_a_bool_is_not_a_number():
  tree = default.get_config().to_dict()
  tree['relation']['K'] = 2
  config_checks.validate(_from_dict(tree), num_devices=8)
  tree['relation']['K'] = True
  with pytest.raises(config_checks.ConfigError, match='relation.K=True must be a number'):
    config_checks.validate(_from_dict(tree), num_devices=8)
  config = default.get_config()
  config.rgrl.epochs = True  # ml_collections lets a bool through where an int belongs
  with pytest.raises(config_checks.ConfigError, match='rgrl.epochs=True must be an integer'):
    config_checks.validate(config, num_devices=8)


def test_a_section_replaced_by_a_value_is_refused():
  tree = default.get_config().to_dict()
  tree['method']['gce'] = 0.7
  with pytest.raises(config_checks.ConfigError, match='method.gce=0.7 must be a section with the keys q'):
    config_checks.validate(_from_dict(tree), num_devices=8)


def test_cli_refuses_an_old_method_key_with_one_line(tmp_path):
  result = _main('--config=configs/tiny.py', f'--workdir={tmp_path}/w', '--config.method.gce_q=0.5')
  assert result.returncode != 0
  errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1 and 'is now --config.method.gce.q' in errors[0], result.stderr
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'w').exists()
