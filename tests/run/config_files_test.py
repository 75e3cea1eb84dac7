"""Tests for rmdnet_jax.run.config_files: `--config=configs/NAME.py` names the file of the current directory when
there is one, and otherwise the packaged (or source-tree) config, so the README's config paths work anywhere; a
saved config.json of an older version reads with today's keys.

The installed wheel's layout (rmdnet_jax/configs, no top-level `configs` package) is checked in
tests/packaging_test.py.
"""

import glob
import json
import os
import pathlib
import subprocess
import sys

import pytest

from configs import default
from rmdnet_jax.run import config_files
from tests import helpers

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_config_paths_resolve_to_the_packaged_files_from_another_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  tiny = config_files.resolve('configs/tiny.py')
  assert os.path.isabs(tiny) and os.path.samefile(tiny, ROOT / 'configs' / 'tiny.py')
  assert config_files.resolve('configs/noisy_cifar.py:dataset=cifar100,seed=1').endswith(
      'noisy_cifar.py:dataset=cifar100,seed=1'
  )
  assert config_files.resolve('configs/nonexistent.py') == 'configs/nonexistent.py'  # config_flags names it
  assert config_files.resolve('other/tiny.py') == 'other/tiny.py'
  assert config_files.resolve_argv(['x', '--config', 'configs/tiny.py', '--workdir=w']) == [
      'x',
      '--config',
      tiny,
      '--workdir=w',
  ]
  # A file of that name in the current directory wins, as before.
  (tmp_path / 'configs').mkdir()
  (tmp_path / 'configs' / 'tiny.py').write_text('')
  assert config_files.resolve('configs/tiny.py') == 'configs/tiny.py'


def test_packaged_path_takes_a_name_with_or_without_py():
  path = config_files.packaged_path('tiny')
  assert path == config_files.packaged_path('tiny.py')
  assert os.path.samefile(path, ROOT / 'configs' / 'tiny.py')
  with pytest.raises(FileNotFoundError, match='No config nonexistent.py in ') as info:
    config_files.packaged_path('nonexistent')
  for directory in config_files.SEARCH_DIRS:
    assert directory in str(info.value)


def test_resolve_leaves_other_paths_alone(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert config_files.resolve('/abs/configs/tiny.py') == '/abs/configs/tiny.py'
  assert config_files.resolve('configs/sub/tiny.py') == 'configs/sub/tiny.py'
  assert config_files.resolve('tiny.py') == 'tiny.py'


def test_resolve_argv_and_sys_argv(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  tiny = config_files.packaged_path('tiny')
  argv = ['prog', '--config=configs/tiny.py:a=1', '--other=configs/tiny.py', '--config']
  assert config_files.resolve_argv(argv) == ['prog', f'--config={tiny}:a=1', '--other=configs/tiny.py', '--config']
  assert argv[1] == '--config=configs/tiny.py:a=1'  # a new list: the argument is not changed
  assert config_files.resolve_argv(['prog', '--other=configs/tiny.py'], flag='other') == ['prog', f'--other={tiny}']
  monkeypatch.setattr(sys, 'argv', ['prog', '--config', 'configs/tiny.py'])
  original = sys.argv
  config_files.resolve_sys_argv()
  assert sys.argv is original and sys.argv == ['prog', '--config', tiny]  # in place, as absl reads sys.argv


# --------------------------------------------------------------------------------------------------------------
# WORKDIR/config.json of older versions, brought up to date.
# --------------------------------------------------------------------------------------------------------------


def test_flatten_gives_dotted_keys_of_every_leaf():
  assert config_files.flatten({'a': {'b': 1, 'c': {'d': [2, 3]}}, 'e': None, 'f': {}}) == {
      'a.b': 1,
      'a.c.d': [2, 3],
      'e': None,
  }
  assert config_files.flatten({'x': 1}, prefix='p.') == {'p.x': 1}
  assert config_files.flatten({}) == {}


def _flat_default():
  return config_files.flatten(json.loads(default.get_config().to_json_best_effort()))


def test_an_old_flat_config_json_upgrades_to_exactly_todays_default_keys():
  today = _flat_default()
  old = {k: v for k, v in today.items() if not k.startswith('method.')} | helpers.FLAT_METHOD_DEFAULTS
  for key in config_files.KEYS_ADDED_LATER:
    del old[key]  # older still: saved before these keys existed
  # Today's keys, the added ones at the values that reproduce those older runs.
  assert config_files.upgrade_saved_config(old) == today | config_files.KEYS_ADDED_LATER
  assert set(config_files.RENAMED_KEYS) | set(config_files.SPLIT_KEYS) == set(helpers.FLAT_METHOD_DEFAULTS) - {
      'method.name',
      'method.distill',
  }


def test_upgrade_keeps_the_runs_values_and_todays_keys():
  old = dict(
      helpers.FLAT_METHOD_DEFAULTS, **{'method.name': 'jocor', 'method.forget_rate': 0.3, 'method.jocor_lambda': 0.1}
  )
  new = config_files.upgrade_saved_config({**old, 'relation.teacher_step': 4})
  # The shared schedule was the setting of both methods: the run's method gets it, and so does the other.
  assert new['method.jocor.forget_rate'] == new['method.coteaching.forget_rate'] == 0.3
  assert new['method.jocor.co_lambda'] == 0.1
  assert new['relation.teacher_step'] == 4  # a saved value is never replaced by KEYS_ADDED_LATER's
  assert not set(new) & (set(config_files.RENAMED_KEYS) | set(config_files.SPLIT_KEYS))
  # A config already of today's shape is returned as it is (and a stray old key never overrides a new one).
  today = _flat_default()
  assert config_files.upgrade_saved_config(today) == today
  assert config_files.upgrade_saved_config({**today, 'method.gce_q': 0.1})['method.gce.q'] == 0.7


def test_an_old_key_override_is_named_with_its_new_key():
  message = config_files.renamed_override_message(['prog', '--config=configs/tiny.py', '--config.method.gce_q=0.5'])
  assert message.startswith('--config.method.gce_q is now --config.method.gce.q:')
  assert '--config.method.coteaching.forget_rate or --config.method.jocor.forget_rate' in (
      config_files.renamed_override_message(['--config.method.forget_rate=0.2'])
  )
  assert config_files.renamed_override_message(['--config.rgrl.epochz=3']) is None


def test_the_committed_study_runs_config_json_upgrade_to_todays_keys():
  """results/cpu_study/runs/*/config.json were written with the flat method keys: upgraded, each has today's keys
  (but the keys a run may resume without, which are newer than the study)."""
  paths = sorted(glob.glob(os.path.join(ROOT, 'results', 'cpu_study', 'runs', '*', 'config.json')))
  assert paths
  today = set(_flat_default())
  for path in paths:
    with open(path) as f:
      upgraded = config_files.upgrade_saved_config(config_files.flatten(json.load(f)))
    assert set(upgraded) <= today, (path, set(upgraded) - today)
    assert today - set(upgraded) <= set(config_files.RESUMABLE_KEYS), (path, today - set(upgraded))


def test_reading_the_saved_config_needs_no_jax():
  # The results table reads many runs' config.json: config_files (and so results) must not import JAX.
  code = 'import sys, rmdnet_jax.report.results; assert "jax" not in sys.modules, sorted(m for m in sys.modules if "jax" in m)'
  subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True)
