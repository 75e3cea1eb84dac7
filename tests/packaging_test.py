"""The package: pyproject.toml, the requirement files, console commands and the configs from any directory.

.ci/run also builds the wheel, installs it in a fresh virtual environment and runs `rmdnet-train` with the
packaged tiny config from another directory; these are the checks that need no build. The console commands'
functions are tested in tests/cli_test.py, the config path resolution in tests/run/config_files_test.py.
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / 'pyproject.toml').read_text())


def requirement_names(path: pathlib.Path) -> dict:
  """{normalised name: line} of a requirements file's own requirements (not its -r includes)."""
  out = {}
  for line in path.read_text().splitlines():
    line = line.split('#', 1)[0].strip()
    if line and not line.startswith('-'):
      out[normalise(re.split(r'[\[=<>!~ ;]', line, maxsplit=1)[0])] = line
  return out


def normalise(name: str) -> str:
  return re.sub(r'[-_.]+', '-', name).lower()


def test_project_metadata_build_backend_and_python_floor():
  assert PYPROJECT['build-system']['build-backend'] == 'setuptools.build_meta'
  assert PYPROJECT['project']['requires-python'] == '>=3.11'
  assert set(PYPROJECT['project']['optional-dependencies']) == {'tpu', 'cuda', 'prepare', 'wandb', 'dev'}


def test_every_package_ships_and_configs_only_inside_rmdnet_jax():
  setuptools = PYPROJECT['tool']['setuptools']
  on_disk = {'.'.join(p.parent.relative_to(ROOT).parts) for p in (ROOT / 'rmdnet_jax').rglob('__init__.py')}
  assert set(setuptools['packages']) == on_disk | {'rmdnet_jax.configs'}
  assert 'configs' not in setuptools['packages']  # no generic top-level package in site-packages
  assert setuptools['package-dir'] == {'rmdnet_jax.configs': 'configs'}


def test_runtime_pins_have_no_tensorflow_or_test_tools_and_match_the_dependencies():
  runtime = requirement_names(ROOT / 'requirements.txt')
  for name in ('tensorflow', 'tensorflow-cpu', 'clu', 'pytest', 'pytest-xdist', 'nbclient', 'ipykernel', 'wandb'):
    assert name not in runtime, name
  assert all('==' in line for line in runtime.values())  # pinned
  declared = {normalise(re.split(r'[\[=<>!~ ;]', d, maxsplit=1)[0]) for d in PYPROJECT['project']['dependencies']}
  assert declared == set(runtime)
  dev = ROOT / 'requirements-dev.txt'
  assert '-r requirements.txt' in dev.read_text()
  assert {'pytest', 'pytest-xdist', 'nbclient', 'nbformat', 'ipykernel', 'wandb'} <= set(requirement_names(dev))
  prepare = requirement_names(ROOT / 'requirements-prepare.txt')
  assert prepare == {'tensorflow-cpu': 'tensorflow-cpu==2.21.0'}


def test_readme_setup_installs_what_the_readme_test_command_needs():
  readme = (ROOT / 'README.md').read_text()
  assert 'pip install -r requirements-dev.txt' in readme
  assert 'python -m pytest -q' in readme
  assert 'Python 3.11+' in readme


def test_ci_builds_the_wheel_and_runs_the_packaged_tiny_config_elsewhere():
  script = (ROOT / '.ci' / 'run').read_text()
  # The pinned set, installed by uv (README's `pip install -r requirements-dev.txt` installs the same pins).
  assert 'uv pip install -q --compile-bytecode -r requirements-dev.txt' in script and 'python -m pytest -q' in script
  assert 'python -m build --wheel' in script
  assert 'bin/rmdnet-train" --config=configs/tiny.py' in script and 'cd "$elsewhere"' in script


def test_configs_import_default_from_the_installed_package_layout(tmp_path):
  """In the wheel the configs are rmdnet_jax/configs/*.py and there is no top-level `configs` package."""
  package = tmp_path / 'site' / 'rmdnet_jax'
  shutil.copytree(ROOT / 'rmdnet_jax', package, ignore=shutil.ignore_patterns('__pycache__'))
  shutil.copytree(ROOT / 'configs', package / 'configs', ignore=shutil.ignore_patterns('__pycache__'))
  code = textwrap.dedent("""
      import importlib, sys
      try:
        import configs
        sys.exit('a top-level configs package is importable')
      except ModuleNotFoundError:
        pass
      from rmdnet_jax.run import config_files
      for name in ('tiny', 'cifar10_rmdnet', 'cifar100_rmdnet', 'simsiam_cifar10', 'noisy_cifar'):
        module = importlib.import_module('rmdnet_jax.configs.' + name)
        assert module.__file__.startswith(sys.argv[1]), module.__file__
        config = module.get_config(*(['dataset=cifar10,noise=sym50'] if name == 'noisy_cifar' else []))
        assert 'relation' in config and 'logging' in config
      assert config_files.resolve('configs/tiny.py').startswith(sys.argv[1])
      assert 'configs' not in sys.modules
      print('ok')
  """)
  env = dict(os.environ, PYTHONPATH=str(tmp_path / 'site'), JAX_PLATFORMS='cpu')
  result = subprocess.run(
      [sys.executable, '-c', code, str(package)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
  )
  assert result.returncode == 0 and result.stdout.strip() == 'ok', result.stderr[-3000:]
