"""Weights & Biases, optional: the writer in offline mode (no network), resume into the same run, only process 0,
and the one-sentence refusals. tests/no_tensorflow_test.py checks a whole run's offline W&B records."""

import importlib.util

import pytest

from rmdnet_jax.training import config_checks, metrics
from tests import helpers

wandb = pytest.importorskip('wandb')


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
  monkeypatch.setenv('WANDB_SILENT', 'true')
  for name in ('WANDB_CONFIG_DIR', 'WANDB_CACHE_DIR', 'WANDB_DATA_DIR'):
    monkeypatch.setenv(name, str(tmp_path / name.lower()))
  return tmp_path


def test_offline_writer_logs_scalars_per_stage_config_and_summary_and_resumes_the_same_run(offline_env):
  workdir = offline_env / 'run'
  writer = metrics.WandbWriter(str(workdir), project='rmdnet-test', mode='offline')
  run = writer.run
  assert run.settings.mode == 'offline'
  writer.write_hparams({'relation.K': 1.0, 'noise.rate': 0.5})
  writer.write_scalars(1, {'rm/loss': -0.25, 'rm/learning_rate': 0.1})
  writer.write_scalars(2, {'rm/loss': -0.5})
  writer.write_scalars(1, {'rgrl/loss': 2.0})  # another stage: its own step axis, from 1 again
  writer.write_summary({'test_accuracy_last': 0.75, 'workdir': str(workdir), 'nested': {'not': 'logged'}})
  assert run.config['relation.K'] == 1.0 and run.config['noise.rate'] == 0.5
  assert run.summary['rm/loss'] == -0.5 and run.summary['rm/step'] == 2
  assert run.summary['rgrl/loss'] == 2.0 and run.summary['rgrl/step'] == 1
  assert run.summary['test_accuracy_last'] == 0.75 and 'nested' not in run.summary.keys()
  run_id = run.id
  writer.close()
  assert (workdir / 'wandb_run_id.txt').read_text().strip() == run_id
  assert list((workdir / 'wandb').glob(f'offline-run-*-{run_id}'))

  again = metrics.WandbWriter(str(workdir), project='rmdnet-test', mode='offline')  # a resumed run
  assert again.run.id == run_id
  again.close()


def test_create_writer_adds_wandb_only_when_a_project_is_set_and_only_on_process_0(offline_env, monkeypatch):
  config = helpers.tiny_config()
  writer = metrics.create_writer(str(offline_env / 'plain'), config.logging)
  assert not any(isinstance(w, metrics.WandbWriter) for w in writer._writers)  # pylint: disable=protected-access
  writer.close()

  config.logging.wandb_project = 'rmdnet-test'
  config.logging.wandb_mode = 'offline'
  monkeypatch.setattr(metrics.jax, 'process_index', lambda: 1)
  other = metrics.create_writer(str(offline_env / 'other_host'), config.logging)
  assert isinstance(other, metrics.LoggingWriter)
  assert not (offline_env / 'other_host').exists()  # no TensorBoard, JSONL or W&B files from process 1


def test_wandb_project_without_the_package_is_one_sentence(monkeypatch):
  config = helpers.tiny_config(**{'logging.wandb_project': 'p'})
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(
      config_checks.importlib.util, 'find_spec', lambda name, *a: None if name == 'wandb' else real_find_spec(name, *a)
  )
  with pytest.raises(config_checks.ConfigError, match=r'wandb package is not installed; `pip install wandb') as e:
    config_checks.validate(config, num_devices=8)
  assert '\n' not in str(e.value)


@pytest.mark.parametrize(
    'key, value, message',
    [
        ('logging.wandb_mode', 'sometimes', 'is not one of'),
        ('logging.progress_every_secs', 0.0, 'positive number of seconds'),
        ('linear_probe.epochs', 0, 'positive integer'),
        ('linear_probe.learning_rate', -1.0, 'must be positive'),
    ],
)
def test_logging_and_linear_probe_keys_are_validated(key, value, message):
  with pytest.raises(config_checks.ConfigError, match=message):
    config_checks.validate(helpers.tiny_config(**{key: value}), num_devices=8)
