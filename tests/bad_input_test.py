"""Bad input as a user meets it: one sentence naming the problem and the fix, no traceback, nothing lost.

The work directory (a file, under a file, not writable, in use by another run, a damaged run file), data that is
refused after a start (no config.json or labels are left behind to refuse the corrected command), and the
command line itself for one case of each error class. The data files' own refusals are in tests/datasets/data_test.py and
tests/datasets/cifar_n_test.py; WORKDIR/run.lock and the saved config's own behaviour in tests/run/workdir_test.py.
"""

import json
import os
import socket

import numpy as np
import pytest

from rmdnet_jax.datasets import data, noise
from rmdnet_jax.run import pipeline
from rmdnet_jax.training import checkpoints, metrics
from rmdnet_jax.run import workdir as workdir_lib
from tests import helpers
from tests.helpers import assert_one_sentence, lock_of

RUN_FILES = ('config.json', 'noisy_labels.npz', workdir_lib.LOCK_FILE, 'metrics.jsonl')


def refused(config, workdir, error=(workdir_lib.WorkdirError, noise.NoisyLabelsFileError), match=None) -> str:
  with pytest.raises(error, match=match) as info:
    pipeline.run(config, str(workdir))
  assert_one_sentence(str(info.value))
  return str(info.value)


def main(*args, timeout=240):
  """`python -m rmdnet_jax.main --config=configs/tiny.py ARGS` as a user types it."""
  return helpers.run_main('--config=configs/tiny.py', *args, timeout=timeout)


assert_user_error = helpers.assert_user_error


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
