"""Tests for rmdnet_jax.cli: the console commands of pyproject.toml, each the `python -m` form of its module."""

import json
import os
import pathlib
import subprocess
import sys
import tomllib

import pytest

from rmdnet_jax import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / 'pyproject.toml').read_text())


def test_console_scripts_point_at_the_cli_functions():
  assert PYPROJECT['project']['scripts'] == {
      'rmdnet-train': 'rmdnet_jax.cli:train',
      'rmdnet-prepare': 'rmdnet_jax.cli:prepare',
      'rmdnet-results': 'rmdnet_jax.cli:results',
      'rmdnet-analyse': 'rmdnet_jax.cli:analyse',
  }
  for target in PYPROJECT['project']['scripts'].values():
    assert callable(getattr(cli, target.split(':')[1]))


def test_results_command_exits_with_the_code_of_results_main(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(sys, 'argv', ['rmdnet-results', str(tmp_path / 'not_a_run')])
  with pytest.raises(SystemExit) as info:
    cli.results()
  assert info.value.code == 2
  assert 'not_a_run has no config.json' in capsys.readouterr().err
  # A work directory without an RGRL stage: nothing to report, a table without rows, success.
  (tmp_path / 'rm_only').mkdir()
  (tmp_path / 'rm_only' / 'config.json').write_text(json.dumps({'stages': 'rm'}))
  monkeypatch.setattr(sys, 'argv', ['rmdnet-results', str(tmp_path / 'rm_only')])
  with pytest.raises(SystemExit) as info:
    cli.results()
  assert info.value.code == 0
  assert '| dataset | noise | rate |\n|---|---|---|\n\n' in capsys.readouterr().out


def test_train_command_finds_the_packaged_config_from_another_directory(tmp_path):
  # From a directory without configs/, --config=configs/tiny.py is the package's file: the run gets as far as
  # refusing the work directory (a file), which is checked after the config has been loaded.
  (tmp_path / 'run').write_text('notes')
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  result = subprocess.run(
      [
          sys.executable,
          '-c',
          'from rmdnet_jax import cli; cli.train()',
          '--config=configs/tiny.py',
          f'--workdir={tmp_path / "run"}',
      ],
      cwd=tmp_path,
      env=env,
      capture_output=True,
      text=True,
      timeout=240,
  )
  assert result.returncode != 0 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert f'error: --workdir={tmp_path / "run"} is a file, not a directory' in result.stderr, result.stderr[-3000:]
  assert (tmp_path / 'run').read_text() == 'notes'
