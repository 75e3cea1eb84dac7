"""Tests for rmdnet_jax.config_files: `--config=configs/NAME.py` names the file of the current directory when
there is one, and otherwise the packaged (or source-tree) config, so the README's config paths work anywhere.

The installed wheel's layout (rmdnet_jax/configs, no top-level `configs` package) is checked in
tests/packaging_test.py.
"""

import os
import pathlib
import sys

import pytest

from rmdnet_jax import config_files

ROOT = pathlib.Path(__file__).resolve().parents[1]


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
