"""End to end: RM then RGRL through `pipeline.run` on 8 fake devices; resume and preemption; the hand-off."""

import json
import os
import shutil
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rmdnet_jax.core import parallel
from rmdnet_jax.datasets import data, noise
from rmdnet_jax.run import pipeline
from rmdnet_jax.stages import simsiam
from rmdnet_jax.training import checkpoints, loop
from rmdnet_jax.run import workdir as workdir_lib
from tests import helpers


def _config(**overrides):
  base = {**helpers.SHARED_EPOCHS, 'data.synthetic_train_size': 64}
  base.update(overrides)
  return helpers.tiny_config(**base)


def _restore_state(directory, step=None):
  mngr = ocp.CheckpointManager(directory, item_names=('state', 'meta'))
  step = mngr.latest_step() if step is None else step
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return step, restored['state']


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  results = pipeline.run(_config(), workdir)
  return workdir, results


def test_two_stage_run_writes_checkpoints_metrics_and_results(finished_run):
  workdir, results = finished_run
  for stage in ('rm', 'rgrl'):
    step, _ = _restore_state(os.path.join(workdir, stage))
    assert step == 8  # 2 epochs x 64 / 16
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  keys = set().union(*rows)
  for key in (
      'rm/loss',
      'rm/knn_accuracy',
      'rm/learning_rate',
      'rm/images_per_second',
      'rgrl/loss',
      'rgrl/method',
      'rgrl/node',
      'rgrl/edge',
      'rgrl/test_accuracy',
      'rgrl/train_accuracy_noisy_labels',
      'rgrl/train_accuracy_clean_labels',
  ):
    assert key in keys, key
  saved = json.load(open(os.path.join(workdir, 'results.json')))
  assert saved['rgrl_steps'] == 8
  for key in ('test_accuracy_best', 'test_accuracy_last', 'train_accuracy_clean_subset', 'train_accuracy_noisy_subset'):
    assert 0.0 <= saved[key] <= 1.0
  assert saved['test_accuracy_best'] >= saved['test_accuracy_last']
  assert os.path.isdir(os.path.join(workdir, 'tensorboard'))


def test_noisy_labels_saved_and_match_config(finished_run):
  workdir, _ = finished_run
  noisy, meta = noise.load_noisy_labels(os.path.join(workdir, 'noisy_labels.npz'))
  assert meta['kind'] == 'symmetric' and meta['rate'] == 0.5
  assert 0.3 < noisy.realized_rate < 0.7


def test_rgrl_teacher_is_exactly_the_final_rm_encoder(finished_run):
  workdir, _ = finished_run
  config = _config()
  dataset = data.load(config.data)
  teacher = simsiam.load_teacher(config, dataset, workdir)
  _, rm_state = _restore_state(os.path.join(workdir, 'rm'))
  assert set(teacher['params']) == {'backbone', 'projector'}
  for part in ('backbone', 'projector'):
    helpers.assert_trees_close(teacher['params'][part], rm_state['params'][part], rtol=0, atol=0)
    helpers.assert_trees_close(teacher['batch_stats'][part], rm_state['batch_stats'][part], rtol=0, atol=0)


def test_teacher_knn_stage_restores_and_evaluates(finished_run):
  workdir, _ = finished_run
  results = pipeline.run(_config(stages='teacher_knn'), workdir)
  assert 0.0 <= results['teacher_knn_accuracy'] <= 1.0


def test_finished_run_is_not_redone(finished_run, monkeypatch):
  workdir, results = finished_run
  monkeypatch.setattr(loop, 'feed', lambda *args: pytest.fail('a finished stage was trained again'))
  again = pipeline.run(_config(), workdir)
  assert again['test_accuracy_last'] == results['test_accuracy_last']
  # Every number is reported again, the teacher's kNN accuracy too (measured only when training starts).
  assert again == results
  assert (
      again['teacher_knn_accuracy']
      == json.loads(open(os.path.join(workdir, 'results.json')).read())['teacher_knn_accuracy']
  )


def _preempt_at(monkeypatch, calls_before_sigterm):
  """Wraps every pmapped step so that SIGTERM arrives during the given call numbers (counted over the run)."""
  original = parallel.pmap_step
  counter = {'n': 0}

  def pmap_step(fn, **kw):
    mapped = original(fn, **kw)

    def wrapped(*args):
      counter['n'] += 1
      if counter['n'] in calls_before_sigterm:
        os.kill(os.getpid(), signal.SIGTERM)
      return mapped(*args)

    return wrapped

  monkeypatch.setattr(parallel, 'pmap_step', pmap_step)


def test_sigterm_then_resume_equals_uninterrupted_run(finished_run, tmp_path, monkeypatch):
  reference_dir, reference = finished_run
  workdir = str(tmp_path)
  # Preempt during RM at step 3 (mid-epoch), then during RGRL at its step 6.
  _preempt_at(monkeypatch, {3})
  with pytest.raises(loop.Preempted, match='Rerun the same command'):
    pipeline.run(_config(), workdir)
  assert _restore_state(os.path.join(workdir, 'rm'))[0] == 3
  monkeypatch.undo()
  _preempt_at(monkeypatch, {5 + 6})  # 5 remaining RM steps, then the 6th RGRL step
  with pytest.raises(loop.Preempted):
    pipeline.run(_config(), workdir)
  assert _restore_state(os.path.join(workdir, 'rgrl'))[0] == 6
  monkeypatch.undo()
  resumed = pipeline.run(_config(), workdir)
  # Bitwise on CPU: same data order, same keys, same noisy labels, same optimizer state.
  for stage in ('rm', 'rgrl'):
    _, a = _restore_state(os.path.join(reference_dir, stage))
    _, b = _restore_state(os.path.join(workdir, stage))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(x, y)
  assert resumed['test_accuracy_last'] == reference['test_accuracy_last']


def test_workdir_with_other_config_is_refused(finished_run):
  workdir, _ = finished_run
  with pytest.raises(workdir_lib.WorkdirConfigMismatch, match='allow_config_change'):
    pipeline.run(_config(**{'relation.K': 2.0}), workdir)


def test_rgrl_without_rm_checkpoint_says_how_to_fix(tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match='run the rm stage first'):
    pipeline.run(_config(stages='rgrl'), str(tmp_path))


def test_teacher_of_other_architecture_is_refused(finished_run, tmp_path):
  workdir, _ = finished_run
  config = _config(
      **{
          'model.width': 8,
          'student.width': 8,
          'relation.teacher_checkpoint': os.path.join(workdir, 'rm'),
          'stages': 'rgrl',
      }
  )
  with pytest.raises(checkpoints.CheckpointError, match='width=4'):
    pipeline.run(config, str(tmp_path))


def test_ce_baseline_runs_without_teacher(tmp_path):
  results = pipeline.run(_config(stages='rgrl', **{'method.distill': False}), str(tmp_path))
  assert results['rmdnet'] is False and results['rgrl_steps'] == 8
  rows = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert not any('rgrl/edge' in r for r in rows)


def test_resident_data_gives_the_same_run_as_host_batches(tmp_path):
  # The CE baseline (no teacher) keeps this cheap; the RM stage takes the same code path (tests/datasets/device_data_test).
  states = {}
  for resident in (True, False):
    workdir = str(tmp_path / str(resident))
    pipeline.run(
        _config(
            **{
                'stages': 'rgrl',
                'method.distill': False,
                'data.resident_on_device': resident,
                'rgrl.track_memorization': False,
            }
        ),
        workdir,
    )
    states[resident] = _restore_state(os.path.join(workdir, 'rgrl'))
  assert states[True][0] == states[False][0] == 8
  for a, b in zip(jax.tree.leaves(states[True][1]), jax.tree.leaves(states[False][1])):
    np.testing.assert_array_equal(a, b)


# config.method as rmdnet_jax wrote it before the method settings were nested (commit ea084db), with its defaults.
FLAT_METHOD_BLOCK = {k.split('.', 1)[1]: v for k, v in helpers.FLAT_METHOD_DEFAULTS.items()}


def test_work_directory_with_flat_method_keys_resumes_or_is_refused_in_one_sentence(finished_run, tmp_path):
  reference_dir, reference = finished_run
  workdir = str(tmp_path / 'old')
  shutil.copytree(reference_dir, workdir)
  path = os.path.join(workdir, 'config.json')
  saved = json.load(open(path))
  saved['method'] = dict(FLAT_METHOD_BLOCK)
  json.dump(saved, open(path, 'w'))
  # The same settings under their old names: the finished run is accepted and not trained again.
  again = pipeline.run(_config(), workdir)
  assert again['test_accuracy_last'] == reference['test_accuracy_last']
  # An old value that differs from today's is a config change, named with the key's new name.
  saved['method'] = {**FLAT_METHOD_BLOCK, 'gce_q': 0.5}
  json.dump(saved, open(path, 'w'))
  with pytest.raises(workdir_lib.WorkdirConfigMismatch) as refused:
    pipeline.run(_config(), workdir)
  message = str(refused.value)
  assert 'method.gce.q: 0.5 -> 0.7' in message and '\n' not in message
