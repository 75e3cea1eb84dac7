"""Bad input as a user meets it: one sentence naming the problem and the fix, no traceback, nothing lost.

The work directory (a file, under a file, not writable, in use by another run, a damaged run file), data that is
refused after a start (no config.json or labels are left behind to refuse the corrected command), and the
command line itself for one case of each error class. The data files' own refusals are in tests/data_test.py and
tests/cifar_n_test.py.
"""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from rmdnet_jax import checkpoints, data, fileio, metrics, noise, pipeline
from rmdnet_jax import workdir as workdir_lib
from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_FILES = ('config.json', 'noisy_labels.npz', workdir_lib.LOCK_FILE, 'metrics.jsonl')


def assert_one_sentence(text: str):
  assert '\n' not in text and text.endswith('.'), text
  assert text.count('. ') <= text.count('e.g. '), text


def refused(config, workdir, error=(workdir_lib.WorkdirError, noise.NoisyLabelsFileError), match=None) -> str:
  with pytest.raises(error, match=match) as info:
    pipeline.run(config, str(workdir))
  assert_one_sentence(str(info.value))
  return str(info.value)


def main(*args, timeout=240):
  """`python -m rmdnet_jax.main ARGS` as a user types it (one device, tests/conftest.py's fast-compile flags)."""
  env = dict(
      os.environ,
      JAX_PLATFORMS='cpu',
      TF_CPP_MIN_LOG_LEVEL='3',
      XLA_FLAGS='--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true',
  )
  return subprocess.run(
      [sys.executable, '-m', 'rmdnet_jax.main', '--config=configs/tiny.py', *args],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
  )


def assert_user_error(result, *needles) -> str:
  """The command failed with one `error: ...` sentence and no traceback; returns that sentence."""
  assert result.returncode != 0, result.stdout[-2000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1, result.stderr[-3000:]
  sentence = lines[0][len('error: ') :]
  assert_one_sentence(sentence)
  for needle in needles:
    assert needle in sentence, sentence
  return sentence


def lock_of(pid: int, host: str = None, **extra) -> str:
  return json.dumps(
      {
          'pid': pid,
          'host': host or socket.gethostname(),
          'started': '2026-01-01 00:00:00 UTC',
          'process_start': workdir_lib._process_start_time(pid),
          **extra,
      }
  )


def dead_pid() -> int:
  process = subprocess.Popen(['true'])
  process.wait()
  return process.pid


# --------------------------------------------------------------------------------------------------------------
# The command line: one case of each error class, as the user sees it.
# --------------------------------------------------------------------------------------------------------------


def test_cli_workdir_that_is_a_file(tmp_path):
  (tmp_path / 'run').write_text('notes')
  sentence = assert_user_error(main(f'--workdir={tmp_path / "run"}'), 'is a file, not a directory')
  assert (tmp_path / 'run').read_text() == 'notes'
  assert 'pass a directory path' in sentence


def test_cli_npz_that_is_not_a_zip_leaves_the_workdir_free(tmp_path):
  (tmp_path / 'data.npz').write_text('x_train,y_train\n')
  workdir = tmp_path / 'run'
  assert_user_error(
      main(
          f'--workdir={workdir}',
          '--config.data.source=npz',
          '--config.data.name=cifar10',
          f'--config.data.npz_path={tmp_path / "data.npz"}',
      ),
      'is not an .npz',
      'prepare_data --dataset=cifar10 --npz=FILE',
  )
  assert not [f for f in RUN_FILES if (workdir / f).exists()]


def test_cli_second_run_on_a_workdir_in_use(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'run.lock').write_text(lock_of(os.getpid()))  # this live process "runs" there
  assert_user_error(
      main(f'--workdir={workdir}'),
      f'is in use by process {os.getpid()} on host ' f'{socket.gethostname()}',
      f'delete {workdir / "run.lock"}',
  )
  assert json.loads((workdir / 'run.lock').read_text())['pid'] == os.getpid()  # not taken from the live run
  assert not (workdir / 'config.json').exists()


# --------------------------------------------------------------------------------------------------------------
# The work directory.
# --------------------------------------------------------------------------------------------------------------


def test_workdir_under_a_file_is_refused(tmp_path):
  (tmp_path / 'file').write_text('')
  message = refused(
      helpers.tiny_config(),
      tmp_path / 'file' / 'sub' / 'run',
      match='cannot be created because .*file is a file, not a directory',
  )
  assert 'pass a path under a directory' in message


@pytest.mark.skipif(not os.path.isdir('/sys'), reason='needs /sys, a directory nobody can create files in')
def test_workdir_that_is_not_writable_is_refused():
  # Root writes through any permission bits, but not into sysfs: it stands in for a read-only directory.
  if os.path.exists('/sys/rmdnet_test_run'):
    pytest.skip('/sys accepts new entries here')
  refused(helpers.tiny_config(), '/sys', match='--workdir=/sys is not writable .*; pass a directory you can write')
  refused(
      helpers.tiny_config(),
      '/sys/rmdnet_test_run',
      match=r'cannot be created \(.* in /sys\); pass a directory you can write to',
  )


def test_refused_starts_leave_no_run_files(tmp_path):
  """Data, labels and teacher are checked before config.json and noisy_labels.npz are written: the corrected
  command must not be refused as 'a different config'."""
  workdir = tmp_path / 'run'
  bad_npz = tmp_path / 'floats.npz'
  good = dict(
      x_train=helpers.images(64), y_train=helpers.labels(64), x_test=helpers.images(32), y_test=helpers.labels(32)
  )
  np.savez(bad_npz, **{**good, 'x_train': good['x_train'] / 255.0})
  np.savez(tmp_path / 'no_human_labels.npz', **good)
  attempts = [
      (
          helpers.tiny_config(**{'data.source': 'tfds', 'data.name': 'cifar10', 'data.data_dir': str(tmp_path / 'no')}),
          data.DataUnavailableError,
          'prepare_data',
      ),
      (
          helpers.tiny_config(**{'data.source': 'npz', 'data.name': 'cifar10', 'data.npz_path': str(bad_npz)}),
          data.DataUnavailableError,
          'x_train is float64',
      ),
      (
          helpers.tiny_config(
              **{
                  'data.source': 'npz',
                  'data.name': 'cifar10_n',
                  'noise.kind': 'human',
                  'data.npz_path': str(tmp_path / 'no_human_labels.npz'),
                  'noise.human_label': 'aggre',
              }
          ),
          data.DataUnavailableError,
          'none were loaded',
      ),
      (helpers.tiny_config(stages='rgrl'), checkpoints.CheckpointError, None),  # no RM checkpoint to distil from
      (helpers.tiny_config(stages='teacher_knn'), checkpoints.CheckpointError, None),
  ]
  for config, error, match in attempts:
    with pytest.raises(error, match=match):
      pipeline.run(config, str(workdir))
    assert not [f for f in RUN_FILES if (workdir / f).exists()], config.data
  # The corrected command (another data source, noise and stages) is accepted as a new run.
  corrected = helpers.tiny_config(**{'noise.kind': 'symmetric', 'data.synthetic_train_size': 48})
  workdir_lib.check_config(corrected, str(workdir))
  noise.labels_for_run(corrected.noise, data.load(corrected.data), str(workdir))


def test_truncated_noisy_labels_are_one_sentence(tmp_path):
  config = helpers.tiny_config()
  dataset = data.load(config.data)
  good = str(tmp_path / 'good')
  helpers.noisy_labels_for_run(config, dataset, good)
  raw = open(os.path.join(good, 'noisy_labels.npz'), 'rb').read()
  for name, damaged in (('truncated', raw[: len(raw) // 2]), ('garbage', b'not an npz')):
    workdir = tmp_path / name
    workdir.mkdir()
    (workdir / 'noisy_labels.npz').write_bytes(damaged)
    message = refused(config, workdir, match='noisy_labels.npz is not (a readable noisy-label file|an .npz)')
    assert 'delete it, and the same config remakes the same labels' in message
    assert not (workdir / 'config.json').exists()
    # The advice holds: without the file the same config makes the same labels again.
    os.remove(workdir / 'noisy_labels.npz')
    remade = helpers.noisy_labels_for_run(config, dataset, str(workdir))
    original, _ = noise.load_noisy_labels(os.path.join(good, 'noisy_labels.npz'))
    np.testing.assert_array_equal(remade.labels, original.labels)


def test_noisy_labels_of_another_shape_are_refused(tmp_path):
  config = helpers.tiny_config()
  dataset = data.load(config.data)
  helpers.noisy_labels_for_run(config, dataset, str(tmp_path))
  noisy, meta = noise.load_noisy_labels(tmp_path / 'noisy_labels.npz')
  noise.save_noisy_labels(tmp_path / 'noisy_labels.npz', noisy._replace(labels=noisy.labels[:-3]), meta)
  with pytest.raises(noise.NoisyLabelsFileError, match=r'labels of shape \(61,\) .* do not fit'):
    noise.load_noisy_labels(tmp_path / 'noisy_labels.npz')
  refused(config, tmp_path, match='do not fit each other or its metadata; delete it')


def test_damaged_config_json_is_one_sentence(tmp_path):
  (tmp_path / 'config.json').write_text('{"seed": 0, "rm": {')
  refused(helpers.tiny_config(), tmp_path, match='config.json is damaged .JSONDecodeError')


# --------------------------------------------------------------------------------------------------------------
# One run per work directory: WORKDIR/run.lock.
# --------------------------------------------------------------------------------------------------------------


def test_lock_refuses_a_live_run_and_names_it(tmp_path):
  path = tmp_path / 'run.lock'
  path.write_text(lock_of(os.getpid()))
  with pytest.raises(workdir_lib.WorkdirError) as info:
    with workdir_lib.lock(str(tmp_path)):
      pytest.fail('took a lock that a live process holds')
  message = str(info.value)
  assert_one_sentence(message)
  assert f'process {os.getpid()} on host {socket.gethostname()} (started 2026-01-01 00:00:00 UTC)' in message
  assert f'delete {path}' in message
  assert json.loads(path.read_text())['pid'] == os.getpid()


def test_lock_of_another_host_is_refused_even_if_its_pid_is_free_here(tmp_path):
  (tmp_path / 'run.lock').write_text(lock_of(dead_pid(), host='other-host'))
  with pytest.raises(workdir_lib.WorkdirError, match='on host other-host'):
    with workdir_lib.lock(str(tmp_path)):
      pass


def test_lock_of_a_lost_host_is_taken_over_once_its_heartbeat_stops(tmp_path):
  # A preempted VM can die before removing its lock, and a recreated VM has another host name.
  path = tmp_path / 'run.lock'
  path.write_text(lock_of(1234, host='lost-host', heartbeat=time.time() - 60))
  with pytest.raises(workdir_lib.WorkdirError, match=r'on host lost-host \(started .*, last heartbeat 60 s ago\)'):
    with workdir_lib.lock(str(tmp_path)):
      pass
  path.write_text(lock_of(1234, host='lost-host', heartbeat=time.time() - workdir_lib.STALE_AFTER_SECS - 1))
  with workdir_lib.lock(str(tmp_path)):
    assert json.loads(path.read_text())['pid'] == os.getpid()
  assert not path.exists()


def test_lock_heartbeat_is_refreshed_while_the_run_runs(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir_lib, 'HEARTBEAT_SECS', 0.02)
  path = tmp_path / 'run.lock'
  with workdir_lib.lock(str(tmp_path)):
    first = json.loads(path.read_text())['heartbeat']
    deadline = time.time() + 5
    while json.loads(path.read_text())['heartbeat'] == first and time.time() < deadline:
      time.sleep(0.01)
    assert json.loads(path.read_text())['heartbeat'] > first
  assert not path.exists()  # released although the heartbeat had rewritten it


@pytest.mark.parametrize('how', ['dead pid', 'reused pid'])
def test_stale_lock_is_taken_over_and_released(tmp_path, how):
  path = tmp_path / 'run.lock'
  stale = lock_of(dead_pid()) if how == 'dead pid' else lock_of(os.getpid(), process_start='1')
  if how == 'reused pid' and workdir_lib._process_start_time(os.getpid()) is None:
    pytest.skip('no /proc: a reused pid cannot be told apart')
  path.write_text(stale)
  with workdir_lib.lock(str(tmp_path)):
    held = json.loads(path.read_text())
    assert held['pid'] == os.getpid() and held['process_start'] == workdir_lib._process_start_time(os.getpid())
    assert sorted(os.listdir(tmp_path)) == ['run.lock']  # the stale lock moved aside was removed
  assert not path.exists()


def test_lock_is_released_when_the_run_fails(tmp_path):
  with pytest.raises(ZeroDivisionError):
    with workdir_lib.lock(str(tmp_path)):
      assert (tmp_path / 'run.lock').exists()
      1 / 0
  assert not (tmp_path / 'run.lock').exists()
  with workdir_lib.lock(str(tmp_path)):  # and the next run takes it
    pass


def test_only_process_zero_takes_the_lock(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  with workdir_lib.lock(str(tmp_path)):
    assert not (tmp_path / 'run.lock').exists()


def test_bucket_lock_is_best_effort_but_refuses_a_live_run(tmp_path, monkeypatch):
  # A gs:// work directory goes through etils' epath; a local path stands in for the bucket here.
  monkeypatch.setattr(fileio, 'is_remote', lambda path: True)
  with workdir_lib.lock(str(tmp_path)):
    assert json.loads((tmp_path / 'run.lock').read_text())['pid'] == os.getpid()
    with pytest.raises(workdir_lib.WorkdirError, match='is in use by process'):
      with workdir_lib.lock(str(tmp_path)):
        pass
  assert not (tmp_path / 'run.lock').exists()


def test_pipeline_refuses_a_workdir_in_use_before_any_work(tmp_path):
  (tmp_path / 'run.lock').write_text(lock_of(os.getpid()))
  refused(helpers.tiny_config(), tmp_path, match='is in use by process')
  assert sorted(os.listdir(tmp_path)) == ['run.lock']


# --------------------------------------------------------------------------------------------------------------
# metrics.jsonl is appended to, not rewritten.
# --------------------------------------------------------------------------------------------------------------


def test_metrics_rows_are_appended_not_rewritten(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  writer = metrics.JsonlWriter(str(path))
  writer.write_scalars(1, {'a': 1.0})
  inode = os.stat(path).st_ino
  with open(path, 'a') as f:
    f.write('{"step": 1, "b": 2.0}\n')  # a row this writer did not write (e.g. another stage's writer)
  writer.write_scalars(2, {'a': 2.0})
  assert os.stat(path).st_ino == inode  # the same file, not a rewritten copy
  assert [(r['step'], sorted(r)) for r in metrics.read_jsonl(str(path))] == [
      (1, ['a', 'step']),
      (1, ['b', 'step']),
      (2, ['a', 'step']),
  ]


def test_metrics_row_torn_by_a_crash_is_dropped_on_resume(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a": ')
  metrics.JsonlWriter(str(path)).write_scalars(2, {'a': 2.0})
  assert [r['step'] for r in metrics.read_jsonl(str(path))] == [1, 2]
  path.write_text('{"step": 1, "a"')
  metrics.JsonlWriter(str(path)).write_scalars(3, {'a': 3.0})
  assert [r['step'] for r in metrics.read_jsonl(str(path))] == [3]
