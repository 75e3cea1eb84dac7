"""configs/noisy_cifar.py: parameter strings -> configs, refusals with one sentence, and the CLI path."""
import os
import subprocess
import sys

import pytest

from configs import default, noisy_cifar
from rmdnet_jax import config_checks

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


@pytest.mark.parametrize('token, kind, rate', [
    ('sym20', 'symmetric', 0.2), ('sym90', 'symmetric', 0.9), ('pair45', 'pairflip', 0.45),
    ('inst40', 'instance', 0.4), ('none', 'none', 0.0),
])
def test_noise_tokens(token, kind, rate):
  config = noisy_cifar.get_config(f'noise={token}')
  assert (config.noise.kind, config.noise.rate) == (kind, rate)
  config_checks.validate(config, num_devices=8)


def test_only_the_named_keys_change():
  config = noisy_cifar.get_config(' method=gce , seed=3 ')
  expected = default.get_config()
  expected.method.name = 'gce'
  expected.seed = expected.noise.seed = 3
  assert config.to_dict() == expected.to_dict()


@pytest.mark.parametrize('arg, message', [
    ('bogus=1', 'KEY one of dataset, noise, method, rmdnet, seed'),
    ('dataset', 'KEY one of dataset'),
    ('dataset=svhn', 'choose one of cifar10, cifar100'),
    ('noise=sym30', 'choose one of sym20, sym50, sym80, sym90, asym40, pair45, inst20, inst40, none'),
    ('method=mixup', 'choose one of ce, gce, sce'),
    ('rmdnet=yes', 'choose one of true, false'),
    ('seed=1.5', 'give an integer'),
    ('seed=1,seed=2', 'given twice'),
])
def test_bad_strings_are_refused_with_one_sentence(arg, message):
  with pytest.raises(ValueError, match=message) as info:
    noisy_cifar.get_config(arg)
  assert '\n' not in str(info.value)


def test_cli_refuses_an_unknown_key_before_any_work(tmp_path):
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, '-m', 'rmdnet_jax.main', '--config=configs/noisy_cifar.py:dataset=cifar10,noise=sym80,bogus=1',
       f'--workdir={workdir}'], cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode != 0
  assert "noisy_cifar: 'bogus=1' is not KEY=VALUE with KEY one of dataset, noise, method, rmdnet, seed" in (
      result.stderr)
  assert not workdir.exists()
