"""Tests for rmdnet_jax.run.workdir: the directory refused at once when it cannot be used, the saved config that later
runs must match, and WORKDIR/run.lock (one run per work directory).

What a user sees when `pipeline.run` or the command line meets a bad work directory is in tests/bad_input_test.py.
"""

import json
import os
import socket
import time

import jax
import pytest

from rmdnet_jax import fileio
from rmdnet_jax.run import config_files
from rmdnet_jax.run import workdir as workdir_lib
from tests import helpers
from tests.helpers import assert_one_sentence, dead_pid, lock_of

# --------------------------------------------------------------------------------------------------------------
# prepare: a directory that can be written, or one sentence.
# --------------------------------------------------------------------------------------------------------------


def test_prepare_creates_missing_parents_and_accepts_an_existing_directory(tmp_path):
  workdir = tmp_path / 'a' / 'b' / 'run'
  workdir_lib.prepare(str(workdir))
  assert workdir.is_dir() and os.listdir(workdir) == []  # the write probe is removed
  (workdir / 'keep').write_text('x')
  workdir_lib.prepare(str(workdir))
  assert (workdir / 'keep').read_text() == 'x'


def test_prepare_refuses_a_file_and_a_path_under_a_file(tmp_path):
  (tmp_path / 'file').write_text('notes')
  with pytest.raises(workdir_lib.WorkdirError, match='is a file, not a directory; pass a directory path') as info:
    workdir_lib.prepare(str(tmp_path / 'file'))
  assert_one_sentence(str(info.value))
  assert (tmp_path / 'file').read_text() == 'notes'
  with pytest.raises(
      workdir_lib.WorkdirError, match=f'cannot be created because {tmp_path / "file"} is a file, not a directory'
  ) as info:
    workdir_lib.prepare(str(tmp_path / 'file' / 'sub' / 'run'))
  assert_one_sentence(str(info.value))


# --------------------------------------------------------------------------------------------------------------
# The saved config: read_saved_config, check_config.
# --------------------------------------------------------------------------------------------------------------


def test_read_saved_config_is_none_without_a_file(tmp_path):
  assert workdir_lib.read_saved_config(str(tmp_path)) is None
  assert workdir_lib.read_saved_config(str(tmp_path / 'absent')) is None


def test_read_saved_config_is_flat_and_brought_up_to_date(tmp_path):
  config = helpers.tiny_config()
  workdir_lib.check_config(config, str(tmp_path))
  saved = workdir_lib.read_saved_config(str(tmp_path))
  assert saved == config_files.flatten(json.loads(config.to_json_best_effort()))
  # A config.json of an older version: a key added later is missing; it reads as the value those runs had.
  raw = json.loads((tmp_path / 'config.json').read_text())
  key = next(iter(config_files.KEYS_ADDED_LATER))
  section, leaf = key.split('.')
  del raw[section][leaf]
  (tmp_path / 'config.json').write_text(json.dumps(raw))
  old = workdir_lib.read_saved_config(str(tmp_path))
  assert old[key] == config_files.KEYS_ADDED_LATER[key] and old == saved | {key: old[key]}


def test_check_config_saves_only_when_asked(tmp_path):
  config = helpers.tiny_config()
  workdir_lib.check_config(config, str(tmp_path), save=False)
  assert not (tmp_path / 'config.json').exists()
  workdir_lib.check_config(config, str(tmp_path))
  assert json.loads((tmp_path / 'config.json').read_text()) == json.loads(config.to_json_best_effort())
  workdir_lib.check_config(config, str(tmp_path))  # the same config again is accepted


def test_check_config_refuses_a_changed_key_in_one_sentence(tmp_path):
  workdir_lib.check_config(helpers.tiny_config(), str(tmp_path))
  before = (tmp_path / 'config.json').read_text()
  changed = helpers.tiny_config(**{'relation.K': 2.5, 'seed': 7})
  with pytest.raises(workdir_lib.WorkdirConfigMismatch) as info:
    workdir_lib.check_config(changed, str(tmp_path))
  message = str(info.value)
  assert_one_sentence(message)
  assert f'{tmp_path} holds a run with a different config' in message
  assert 'relation.K: 1.0 -> 2.5' in message and 'seed: 0 -> 7' in message
  assert '--config.allow_config_change=True' in message and 'use a new --workdir' in message
  assert (tmp_path / 'config.json').read_text() == before  # a refused run does not overwrite it
  # A key only one side has is a change too.
  raw = json.loads(before)
  raw['rm']['unknown_key'] = 1
  (tmp_path / 'config.json').write_text(json.dumps(raw))
  with pytest.raises(workdir_lib.WorkdirConfigMismatch, match=r'rm.unknown_key: 1 -> None'):
    workdir_lib.check_config(helpers.tiny_config(), str(tmp_path), save=False)


def test_a_run_saved_before_the_recipe_changed_resumes_with_its_saved_recipe(tmp_path):
  """A config.json from before the CIFAR recipe (lr 0.06 per 256, 3-layer projector, no init keys) is resumed by the
  same command, which keeps those values; an explicit other value is a change, refused."""
  workdir_lib.check_config(helpers.tiny_config(), str(tmp_path))
  raw = json.loads((tmp_path / 'config.json').read_text())
  raw['rm']['learning_rate'], raw['model']['projector_layers'] = 0.06, 3
  raw['relation']['node_kind'] = 'frobenius'  # the default before the ladder
  for block in ('model', 'student'):
    del raw[block]['init']
  del raw['model']['zero_init_residual']
  (tmp_path / 'config.json').write_text(json.dumps(raw))
  config = helpers.tiny_config()
  assert (config.rm.learning_rate, config.model.projector_layers, config.model.init) == (0.03, 2, 'torch')
  assert config.relation.node_kind == 'cosine'
  workdir_lib.check_config(config, str(tmp_path))
  assert (config.rm.learning_rate, config.model.projector_layers) == (0.06, 3)
  assert (config.model.init, config.student.init, config.model.zero_init_residual) == ('flax', 'flax', False)
  assert config.relation.node_kind == 'frobenius'
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['model']['init'] == 'flax' and saved['rm']['learning_rate'] == 0.06
  with pytest.raises(workdir_lib.WorkdirConfigMismatch, match=r'model.projector_layers: 3 -> 4'):
    workdir_lib.check_config(helpers.tiny_config(**{'model.projector_layers': 4}), str(tmp_path))


def test_check_config_names_at_most_five_changes(tmp_path):
  workdir_lib.check_config(helpers.tiny_config(), str(tmp_path))
  changes = {'seed': 3, 'relation.K': 2.5, 'rm.epochs': 3, 'rgrl.epochs': 3, 'rm.batch_size': 32, 'rgrl.batch_size': 32}
  with pytest.raises(workdir_lib.WorkdirConfigMismatch) as info:
    workdir_lib.check_config(helpers.tiny_config(**changes), str(tmp_path))
  assert_one_sentence(str(info.value))
  assert str(info.value).count(' -> ') == 5


def test_check_config_accepts_resumable_keys_and_allow_config_change(tmp_path):
  workdir_lib.check_config(helpers.tiny_config(), str(tmp_path))
  resumable = {
      'stages': 'rgrl',
      'log_every_steps': 3,
      'eval_batch_size': 64,
      'max_to_keep': 1,
      'relation.teacher_checkpoint': '/elsewhere/rm',
      'logging.progress_bar': False,
  }
  assert set(resumable) <= set(config_files.RESUMABLE_KEYS)
  workdir_lib.check_config(helpers.tiny_config(**resumable), str(tmp_path))
  assert json.loads((tmp_path / 'config.json').read_text())['stages'] == 'rgrl'  # saved: the latest run's values
  # A result-changing key with allow_config_change=True: accepted, and the new values are saved.
  workdir_lib.check_config(helpers.tiny_config(**{'relation.K': 2.5, 'allow_config_change': True}), str(tmp_path))
  assert json.loads((tmp_path / 'config.json').read_text())['relation']['K'] == 2.5


def test_damaged_config_json_is_a_workdir_error_in_one_sentence(tmp_path):
  (tmp_path / 'config.json').write_text('{"seed": 0, "rm": {')
  for call in (
      lambda: workdir_lib.read_saved_config(str(tmp_path)),
      lambda: workdir_lib.check_config(helpers.tiny_config(), str(tmp_path)),
  ):
    with pytest.raises(workdir_lib.WorkdirError) as info:
      call()
    message = str(info.value)
    assert_one_sentence(message)
    assert f'{tmp_path / "config.json"} is damaged (JSONDecodeError' in message
    assert 'delete it to adopt this run' in message
  assert (tmp_path / 'config.json').read_text() == '{"seed": 0, "rm": {'  # left for the user to restore


def test_only_process_zero_writes_the_config(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  workdir_lib.check_config(helpers.tiny_config(), str(tmp_path))
  assert not (tmp_path / 'config.json').exists()


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
