"""configs/noisy_cifar.py: parameter strings -> configs, refusals with one sentence, and the CLI path."""

import os
import subprocess
import sys

import pytest

from configs import default, noisy_cifar
from rmdnet_jax import methods
from rmdnet_jax.run import config_files
from rmdnet_jax.training import config_checks
from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_no_arg_is_the_default_config():
  assert noisy_cifar.get_config().to_dict() == default.get_config().to_dict()
  assert noisy_cifar.get_config('').to_dict() == default.get_config().to_dict()


def test_full_string_sets_every_key():
  config = noisy_cifar.get_config('dataset=cifar100,noise=asym40,method=sce,rmdnet=false,seed=2')
  assert (config.data.name, config.data.num_classes) == ('cifar100', 100)
  assert (config.noise.kind, config.noise.rate) == ('asymmetric', 0.4)
  assert (config.method.name, config.method.distill) == ('sce', False)
  assert (config.seed, config.noise.seed) == (2, 2)
  config_checks.validate(config, num_devices=8)


@pytest.mark.parametrize(
    'token, kind, rate',
    [
        ('sym20', 'symmetric', 0.2),
        ('sym90', 'symmetric', 0.9),
        ('pair45', 'pairflip', 0.45),
        ('inst40', 'instance', 0.4),
        ('none', 'none', 0.0),
    ],
)
def test_noise_tokens(token, kind, rate):
  config = noisy_cifar.get_config(f'noise={token}')
  assert (config.noise.kind, config.noise.rate) == (kind, rate)
  config_checks.validate(config, num_devices=8)


@pytest.mark.parametrize(
    'arg, name, num_classes, human_label',
    [
        ('noise=c10n_aggre', 'cifar10_n', 10, 'aggre'),
        ('dataset=cifar10,noise=c10n_worst', 'cifar10_n', 10, 'worst'),
        ('noise=c10n_random1', 'cifar10_n', 10, 'random1'),
        ('noise=c10n_random2', 'cifar10_n', 10, 'random2'),
        ('noise=c10n_random3,method=gce,rmdnet=false,seed=4', 'cifar10_n', 10, 'random3'),
        ('noise=c100n_noisy', 'cifar100_n', 100, 'noisy'),  # the dataset follows the noise when not given
        ('dataset=cifar100,noise=c100n_noisy', 'cifar100_n', 100, 'noisy'),
    ],
)
def test_cifar_n_noise_tokens(arg, name, num_classes, human_label):
  config = noisy_cifar.get_config(arg)
  assert (config.data.name, config.data.num_classes) == (name, num_classes)
  assert (config.noise.kind, config.noise.human_label, config.noise.rate) == ('human', human_label, 0.0)
  config_checks.validate(config, num_devices=8)
  # Everything else is the parameter string's or the default's.
  expected = default.get_config()
  expected.data.name, expected.data.num_classes = name, num_classes
  expected.noise.kind, expected.noise.human_label, expected.noise.rate = 'human', human_label, 0.0
  assert config.noise.to_dict() == {**expected.noise.to_dict(), 'seed': config.noise.seed}
  assert config.data.to_dict() == expected.data.to_dict()


@pytest.mark.parametrize(
    'arg, message',
    [
        (
            'dataset=cifar100,noise=c10n_aggre',
            'noise=c10n_aggre is CIFAR-10N, which belongs to dataset=cifar10, not '
            'dataset=cifar100; use dataset=cifar10 or drop the dataset key.',
        ),
        (
            'dataset=cifar10,noise=c100n_noisy',
            'noise=c100n_noisy is CIFAR-100N, which belongs to dataset=cifar100, '
            'not dataset=cifar10; use dataset=cifar100 or drop the dataset key.',
        ),
    ],
)
def test_mismatched_cifar_n_dataset_is_refused_with_one_sentence(arg, message):
  with pytest.raises(ValueError) as info:
    noisy_cifar.get_config(arg)
  assert str(info.value) == f'noisy_cifar: {message}'


def test_cifar_n_file_override_gives_path_b():
  """`--config.data.name=cifar10 --config.data.cifar_n_labels=FILE` on a CIFAR-N cell: the labels from a file."""
  config = noisy_cifar.get_config('noise=c10n_worst')
  config.data.name, config.data.cifar_n_labels = 'cifar10', '/data/CIFAR-10_human.pt'
  config_checks.validate(config, num_devices=8)


def test_only_the_named_keys_change():
  config = noisy_cifar.get_config(' method=gce , seed=3 ')
  expected = default.get_config()
  expected.method.name = 'gce'
  expected.seed = expected.noise.seed = 3
  assert config.to_dict() == expected.to_dict()


@pytest.mark.parametrize(
    'arg, message',
    [
        ('bogus=1', 'KEY one of dataset, noise, method, rmdnet, seed'),
        ('dataset', 'KEY one of dataset'),
        ('dataset=svhn', 'choose one of cifar10, cifar100'),
        (
            'noise=sym30',
            'choose one of sym20, sym50, sym80, sym90, asym40, pair45, inst20, inst40, none, c10n_aggre, '
            'c10n_worst, c10n_random1, c10n_random2, c10n_random3, c100n_noisy',
        ),
        ('method=mixup', 'choose one of ' + ', '.join(sorted(methods.METHODS))),
        ('rmdnet=yes', 'choose one of true, false'),
        ('seed=1.5', 'give an integer'),
        ('seed=1,seed=2', 'given twice'),
    ],
)
def test_bad_strings_are_refused_with_one_sentence(arg, message):
  with pytest.raises(ValueError, match=message) as info:
    noisy_cifar.get_config(arg)
  assert '\n' not in str(info.value)


def test_cli_refuses_an_unknown_key_before_any_work(tmp_path):
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [
          sys.executable,
          '-m',
          'rmdnet_jax.main',
          '--config=configs/noisy_cifar.py:dataset=cifar10,noise=sym80,bogus=1',
          f'--workdir={workdir}',
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
  )
  assert result.returncode != 0
  assert "noisy_cifar: 'bogus=1' is not KEY=VALUE with KEY one of dataset, noise, method, rmdnet, seed" in (
      result.stderr
  )
  assert not workdir.exists()


@pytest.mark.parametrize(
    'arg, expected',
    [
        (
            'dataset=cifar10,noise=pair45,method=coteaching',
            {'coteaching.forget_rate': 0.45, 'jocor.forget_rate': 0.45, 'dividemix.lambda_u': 25.0},
        ),
        (
            'dataset=cifar10,noise=sym90,method=dividemix',
            {'coteaching.forget_rate': 0.9, 'dividemix.lambda_u': 50.0, 'dividemix.warmup_epochs': 10},
        ),
        (
            'dataset=cifar10,noise=asym40,method=dividemix',
            {'dividemix.lambda_u': 0.0, 'dividemix.confidence_penalty': True},
        ),
        (
            'dataset=cifar100,noise=sym50,method=elr',
            {
                'elr.reg_lambda': 7.0,
                'elr.beta': 0.9,
                'sce.alpha': 6.0,
                'dividemix.lambda_u': 150.0,
                'dividemix.warmup_epochs': 30,
            },
        ),
        ('noise=c10n_worst,method=jocor', {'jocor.forget_rate': 0.4021, 'coteaching.forget_rate': 0.4021}),
        ('noise=c100n_noisy,method=coteaching', {'coteaching.forget_rate': 0.4020, 'elr.reg_lambda': 7.0}),
    ],
)
def test_cells_get_the_methods_published_settings(arg, expected):
  config = noisy_cifar.get_config(arg)
  for key, value in expected.items():
    block, setting = key.split('.')
    assert config.method[block][setting] == value, key
  config_checks.validate(config, num_devices=8)


# configs/noisy_cifar.py cells as the flat-key version made them (method settings only; the rest of each config is
# the same): a saved config.json of such a cell, upgraded, must equal today's config of the cell, so it resumes.
FLAT_CELLS = {
    'dataset=cifar10,noise=pair45,method=coteaching': {
        'method.name': 'coteaching',
        'method.forget_rate': 0.45,
        'method.dividemix_lambda_u': 25.0,
        'method.dividemix_confidence_penalty': False,
    },
    'dataset=cifar100,noise=sym50,method=elr,rmdnet=false': {
        'method.name': 'elr',
        'method.distill': False,
        'method.forget_rate': 0.5,
        'method.sce_alpha': 6.0,
        'method.elr_lambda': 7.0,
        'method.elr_beta': 0.9,
        'method.dividemix_warmup_epochs': 30,
        'method.dividemix_lambda_u': 150.0,
    },
    'noise=c10n_worst,method=jocor': {'method.name': 'jocor', 'method.forget_rate': 0.4021},
}
FLAT_DEFAULTS = helpers.FLAT_METHOD_DEFAULTS


def _flat(tree: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in tree.items():
    out.update(_flat(v, f'{prefix}{k}.') if isinstance(v, dict) else {f'{prefix}{k}': v})
  return out


@pytest.mark.parametrize('arg', sorted(FLAT_CELLS))
def test_a_flat_key_cells_saved_config_upgrades_to_todays_cell(arg):
  today = _flat(noisy_cifar.get_config(arg).to_dict())
  saved = {k: v for k, v in today.items() if not k.startswith('method.')} | FLAT_DEFAULTS | FLAT_CELLS[arg]
  assert config_files.upgrade_saved_config(saved) == today
