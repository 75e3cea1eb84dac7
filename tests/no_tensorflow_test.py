"""Training without TensorFlow: the modules do not import it, and a whole run works where it cannot be imported.

The run is the tiny two-stage run (configs/tiny.py at the tests/helpers.py sizes) through the command line, in a
subprocess where TensorFlow is hidden from every importer (as when it is not installed), with the linear-probe
stage and Weights & Biases in offline mode on. Its TensorBoard events are read back with tensorboard's own reader;
tests/wandb_test.py checks the W&B files it wrote.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests import helpers, xla_flags

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Hides TensorFlow as an uninstalled package is hidden: find_spec returns None and `import tensorflow` raises
# ModuleNotFoundError, for every finder on sys.meta_path. Then runs `python -m rmdnet_jax.main` with the argv.
HIDE_TENSORFLOW_AND_RUN = """
import runpy, sys

class HideTensorFlow:
  def __init__(self, finder):
    self._finder = finder

  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] == 'tensorflow':
      return None
    return self._finder.find_spec(name, path, target)

  def __getattr__(self, attr):
    return getattr(self._finder, attr)

sys.meta_path[:] = [HideTensorFlow(f) if hasattr(f, 'find_spec') else f for f in sys.meta_path]
try:
  import tensorflow  # noqa: F401
  sys.exit('tensorflow is still importable')
except ModuleNotFoundError:
  pass
sys.argv = ['rmdnet_jax.main'] + sys.argv[1:]
runpy.run_module('rmdnet_jax.main', run_name='__main__', alter_sys=True)
"""

TINY = helpers.tiny_config_flags()


def subprocess_env(tmp):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # conftest's 8 fake devices: not needed here
  env.update(
      {
          'JAX_PLATFORMS': 'cpu',
          'XLA_FLAGS': xla_flags.FAST_COMPILE,
          'WANDB_SILENT': 'true',
          'WANDB_CONFIG_DIR': str(tmp / 'wandb_config'),
          'WANDB_CACHE_DIR': str(tmp / 'wandb_cache'),
          'WANDB_DATA_DIR': str(tmp / 'wandb_data'),
      }
  )
  return env


@pytest.fixture(scope='module')
def run_without_tensorflow(tmp_path_factory):
  """The tiny run, TensorFlow hidden, stages rm + linear_probe + rgrl, W&B offline: (workdir, the process)."""
  pytest.importorskip('wandb')
  tmp = tmp_path_factory.mktemp('no_tf')
  workdir = tmp / 'run'
  argv = TINY + [
      f'--workdir={workdir}',
      '--config.stages=rm,linear_probe,rgrl',
      '--config.linear_probe.epochs=5',
      '--config.logging.wandb_project=rmdnet-test',
      '--config.logging.wandb_mode=offline',
  ]
  result = subprocess.run(
      [sys.executable, '-c', HIDE_TENSORFLOW_AND_RUN, *argv],
      cwd=ROOT,
      env=subprocess_env(tmp),
      capture_output=True,
      text=True,
      timeout=400,
  )
  assert result.returncode == 0, result.stderr[-4000:]
  return workdir, result


def test_training_modules_do_not_import_tensorflow_or_scipy_stats():
  # scipy.stats takes ~1.2 s to import, a quarter of every run's start-up; only instance noise needs it.
  code = (
      'import sys\n'
      'import rmdnet_jax.main, rmdnet_jax.run.pipeline, rmdnet_jax.report.analysis, rmdnet_jax.report.results, rmdnet_jax.cli\n'
      'print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "clu") or m.startswith("scipy.stats")))'
  )
  result = subprocess.run(
      [sys.executable, '-c', code],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=240,
      env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == '[]'


def test_gs_paths_go_through_fsspec_not_tensorflow():
  from etils import epath  # noqa: PLC0415
  import fsspec  # noqa: PLC0415
  from rmdnet_jax import fileio  # noqa: F401,PLC0415  (sets EPATH_USE_TF=false unless the user set it)

  if os.environ.get('EPATH_USE_TF', 'false').lower() not in ('false', 'no', 'f', '0'):
    pytest.skip('EPATH_USE_TF is set in this environment')
  backend = epath.Path('gs://some-bucket/run/config.json')._backend  # pylint: disable=protected-access
  assert type(backend).__name__ == '_FileSystemSpecBackend'
  assert fsspec.get_filesystem_class('gs').__module__.startswith('gcsfs')


@pytest.mark.slow
def test_tiny_run_without_tensorflow_writes_tensorboard_events(run_without_tensorflow):
  from tensorboard.backend.event_processing import event_accumulator  # noqa: PLC0415

  workdir, _ = run_without_tensorflow
  accumulator = event_accumulator.EventAccumulator(str(workdir / 'tensorboard'))
  accumulator.Reload()
  scalars = accumulator.Tags()['scalars']
  for tag in (
      'rm/loss',
      'rm/knn_accuracy',
      'rgrl/loss',
      'rgrl/test_accuracy',
      'teacher/linear_probe_accuracy',
      'teacher/knn_accuracy',
  ):
    assert tag in scalars, (tag, scalars)
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  last_rgrl_loss = [r['rgrl/loss'] for r in rows if 'rgrl/loss' in r][-1]
  events = accumulator.Scalars('rgrl/loss')
  assert events[-1].step == 4 and events[-1].value == pytest.approx(last_rgrl_loss, rel=1e-6)
  assert 'config/text_summary' in accumulator.Tags()['tensors']  # the config, as text


@pytest.mark.slow
def test_tiny_run_reports_the_linear_probe_as_a_teacher_monitor(run_without_tensorflow):
  workdir, result = run_without_tensorflow
  results = json.loads((workdir / 'results.json').read_text())
  assert 0.0 <= results['teacher_linear_probe_accuracy'] <= 1.0
  assert 0.0 <= results['teacher_knn_accuracy'] <= 1.0
  assert 'test_accuracy_last' in results  # RGRL ran after the probe
  assert 'not a noisy-label result' in result.stderr and 'linear probe' in result.stderr


@pytest.mark.slow
def test_tiny_run_without_a_terminal_logs_progress_lines(run_without_tensorflow):
  _, result = run_without_tensorflow
  lines = [line for line in result.stderr.splitlines() if 'progress.py' in line]
  # The first step's line (after the compile) and the stage's last line, for each stage.
  assert any(
      'rm: epoch 1.0/1, step 4/4 (100.0%)' in line and 'images/s' in line and 'ETA 0:00' in line for line in lines
  ), lines
  assert any(
      'rgrl: epoch 1.0/1, step 4/4 (100.0%)' in line and 'loss ' in line and 'loss n/a' not in line for line in lines
  ), lines


@pytest.mark.slow
def test_tiny_run_logs_to_wandb_offline(run_without_tensorflow):
  """The same scalars, the config and the final summary reach the offline W&B run (no network)."""
  workdir, _ = run_without_tensorflow
  run_id = (workdir / 'wandb_run_id.txt').read_text().strip()
  runs = list((workdir / 'wandb').glob(f'offline-run-*-{run_id}'))
  assert len(runs) == 1, list((workdir / 'wandb').iterdir())
  records = b''.join(p.read_bytes() for p in runs[0].glob('run-*.wandb'))
  for name in (
      b'rm/loss',
      b'rgrl/test_accuracy',
      b'teacher/linear_probe_accuracy',
      b'rgrl/step',  # scalars
      b'relation.K',
      b'noise.rate',  # the config
      b'test_accuracy_last',
      b'teacher_linear_probe_accuracy',
  ):  # the summary
    assert name in records, name


def test_tensorboard_events_in_a_bucket_are_uploaded_whole_through_fileio(tmp_path, monkeypatch):
  """gs:// event files go through fileio (etils.epath -> gcsfs): each upload replaces the object with the whole
  file, which tensorboard's reader loads. The bucket is faked by catching fileio.write_bytes."""
  from tensorboard.backend.event_processing import event_accumulator  # noqa: PLC0415
  from rmdnet_jax import fileio  # noqa: PLC0415
  from rmdnet_jax.training import metrics

  uploads = {}
  monkeypatch.setattr(fileio, 'write_bytes', lambda path, data: uploads.__setitem__(path, data))
  writer = metrics.TensorBoardWriter('gs://bucket/run/tensorboard', remote_flush_secs=3600.0)
  writer.write_scalars(1, {'rm/loss': 0.5})
  assert not uploads  # not yet: at most every remote_flush_secs, and on flush/close
  writer.write_scalars(2, {'rm/loss': 0.25})
  writer.close()
  [(path, data)] = uploads.items()
  assert path.startswith('gs://bucket/run/tensorboard/events.out.tfevents.')
  local = tmp_path / 'tb'
  local.mkdir()
  (local / path.rsplit('/', 1)[1]).write_bytes(data)
  accumulator = event_accumulator.EventAccumulator(str(local))
  accumulator.Reload()
  assert [(e.step, e.value) for e in accumulator.Scalars('rm/loss')] == [(1, 0.5), (2, 0.25)]
