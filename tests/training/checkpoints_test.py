"""Checkpoints: the state digest, and what a resume does with a damaged latest checkpoint (falls back to the newest
intact one with a warning, or refuses with one sentence naming the directory to remove)."""

import json
import logging as py_logging
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging

from rmdnet_jax.core import parallel
from rmdnet_jax.training import checkpoints

META = {'stage': 'rm', 'model': 'm'}


def _state(step):
  w = np.random.default_rng(step).normal(size=(64, 32)).astype(np.float32)
  return {'w': jnp.asarray(w), 'b': jnp.full((32,), float(step)), 'step': jnp.int32(step)}


def _target():
  return jax.tree.map(jnp.zeros_like, _state(0))


@pytest.fixture
def stage_dir(tmp_path):
  """A stage directory with intact checkpoints at steps 1, 2 and 3."""
  directory = tmp_path / 'rm'
  mngr = checkpoints.manager(str(directory))
  for step in (1, 2, 3):
    checkpoints.save(mngr, step, _state(step), META)
  mngr.wait_until_finished()
  mngr.close()
  return directory


def _files(directory, pattern):
  found = sorted(p for p in pathlib.Path(directory).glob(pattern) if p.is_file())
  assert found, pattern
  return found


def _truncate_data(step_dir):
  for path in _files(step_dir / 'state', '**/d/*'):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _remove_manifest(step_dir):
  for path in _files(step_dir / 'state', '**/manifest.ocdbt'):
    path.unlink()


def _garbage_state_metadata(step_dir):
  (step_dir / 'state' / '_METADATA').write_text('{not json')


def _garbage_meta(step_dir):
  (step_dir / 'meta' / 'metadata').write_bytes(b'\x00\xff garbage')


def _remove_meta(step_dir):
  shutil.rmtree(step_dir / 'meta')


def _empty_step_directory(step_dir):
  shutil.rmtree(step_dir)
  step_dir.mkdir()


def _other_bytes_that_load(step_dir):
  # A valid checkpoint's files with other contents: everything loads, only the digest can tell.
  shutil.rmtree(step_dir / 'state')
  shutil.copytree(step_dir.parent / '2' / 'state', step_dir / 'state')


DAMAGE = [
    _truncate_data,
    _remove_manifest,
    _garbage_state_metadata,
    _garbage_meta,
    _remove_meta,
    _empty_step_directory,
    _other_bytes_that_load,
]


def test_digest_is_in_the_meta_and_matches_the_state(stage_dir):
  meta = json.loads((stage_dir / '3' / 'meta' / 'metadata').read_text())
  assert meta['state_sha256'] == checkpoints.state_digest(_state(3))
  assert checkpoints.state_digest(_state(3)) != checkpoints.state_digest(_state(2))
  mngr = checkpoints.manager(str(stage_dir))
  restored = checkpoints.restore_latest(mngr, _target(), META)
  np.testing.assert_array_equal(np.asarray(restored['w']), np.asarray(_state(3)['w']))


@pytest.mark.parametrize('damage', DAMAGE, ids=lambda f: f.__name__.strip('_'))
def test_resume_falls_back_to_the_newest_intact_checkpoint(stage_dir, damage, monkeypatch):
  damage(stage_dir / '3')
  warnings = []
  monkeypatch.setattr(logging, 'warning', lambda msg, *args: warnings.append(msg % args))
  mngr = checkpoints.manager(str(stage_dir))
  restored = checkpoints.restore_latest(mngr, _target(), META)
  assert int(restored['step']) == 2
  np.testing.assert_array_equal(np.asarray(restored['w']), np.asarray(_state(2)['w']))
  assert any('is damaged' in w and str(stage_dir / '3') in w for w in warnings), warnings
  # Set aside, not deleted; the resumed run can write step 3 again.
  assert (stage_dir / '3.damaged').is_dir() and not (stage_dir / '3').exists()
  assert mngr.all_steps() == [1, 2]
  checkpoints.save(mngr, 3, _state(3), META)
  mngr.wait_until_finished()
  assert int(checkpoints.restore_latest(checkpoints.manager(str(stage_dir)), _target(), META)['step']) == 3


def test_every_checkpoint_damaged_is_refused_naming_the_directory(stage_dir):
  for step in ('1', '2', '3'):
    _truncate_data(stage_dir / step)
  with pytest.raises(
      checkpoints.CheckpointError, match='Every checkpoint in .*rm is damaged .*remove that ' 'directory'
  ):
    checkpoints.restore_latest(checkpoints.manager(str(stage_dir)), _target(), META)
  assert sorted(os.listdir(stage_dir)) == ['1', '2', '3']  # nothing renamed when nothing could be used


def test_another_config_is_not_taken_for_damage(stage_dir):
  with pytest.raises(checkpoints.CheckpointError, match='model=.m. but this run has model=.other.'):
    checkpoints.restore_latest(checkpoints.manager(str(stage_dir)), _target(), {**META, 'model': 'other'})
  assert sorted(os.listdir(stage_dir)) == ['1', '2', '3']


def test_damaged_teacher_is_refused_with_the_directory_to_remove(stage_dir):
  _other_bytes_that_load(stage_dir / '3')
  with pytest.raises(
      checkpoints.CheckpointError,
      match=f'The teacher checkpoint {stage_dir / "3"} is damaged .*digest.*remove that directory',
  ):
    checkpoints.restore_teacher(str(stage_dir), _target(), META)


def test_orbax_info_and_its_read_only_warnings_are_dropped_its_other_warnings_kept():
  handler = logging.get_absl_handler()
  before = list(handler.filters)
  checkpoints.quiet_orbax_logging()
  try:
    [keep] = [f for f in handler.filters if f not in before]

    def record(level, path, message):
      return py_logging.LogRecord('absl', level, path, 1, message, None, None)

    orbax = '/site-packages/orbax/checkpoint/checkpoint_manager.py'
    assert not keep(record(py_logging.INFO, orbax, 'Saving checkpoint'))
    assert not keep(record(py_logging.WARNING, orbax, 'Given directory is read only=/w/rm'))
    assert not keep(record(py_logging.WARNING, orbax, 'CheckpointManagerOptions.read_only=True, setting x=0.'))
    assert keep(record(py_logging.WARNING, orbax, 'Something else went wrong'))
    assert keep(record(py_logging.ERROR, orbax, 'Given directory is read only'))
    assert keep(record(py_logging.INFO, '/rmdnet_jax/training/loop.py', 'rm: resuming from step 4'))
  finally:
    for f in handler.filters:
      if f not in before:
        handler.removeFilter(f)


def test_saving_a_state_replicated_on_8_devices_compiles_nothing_and_restores_it(tmp_path):
  """Orbax's replica-parallel writing would cut every array into 8 slices, each a program to compile (136 for
  configs/tiny.py, ~7 of its ~40 CPU-seconds); `checkpoints.manager` has each array written whole."""
  assert jax.device_count() == 8
  state = parallel.replicate(_state(7))
  compiled = []

  def listener(event, seconds, **kwargs):
    del seconds, kwargs
    if event == '/jax/core/compile/backend_compile_duration':
      compiled.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    mngr = checkpoints.manager(str(tmp_path / 'rm'))
    checkpoints.save(mngr, 7, state, META)
    mngr.wait_until_finished()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiled == []
  restored = checkpoints.restore(mngr, 7, _target())
  mngr.close()
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(_state(7))):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
