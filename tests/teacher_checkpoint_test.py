"""A teacher from any trained backbone (`relation.teacher_checkpoint` naming an RGRL work directory): a student
trained on clean labels becomes the teacher of another run; a teacher that cannot serve is refused in one sentence
by the command a user types."""

import json
import os

import jax
import numpy as np
import pytest

from rmdnet_jax.core import parallel
from rmdnet_jax.datasets import data
from rmdnet_jax.run import pipeline
from rmdnet_jax.stages import distill, simsiam
from rmdnet_jax.training import checkpoints
from tests import helpers


@pytest.fixture(scope='module')
def clean_teacher(tmp_path_factory):
  """A CE student trained on the clean labels of the tiny config: WORKDIR/rgrl."""
  workdir = tmp_path_factory.mktemp('clean_teacher')
  config = helpers.tiny_config(
      **helpers.SHARED_EPOCHS, **{'stages': 'rgrl', 'method.distill': False, 'noise.kind': 'none'}
  )
  pipeline.run(config, str(workdir))
  return workdir


def test_an_rgrl_work_directory_is_a_teacher_of_its_backbone(clean_teacher, tmp_path):
  config = helpers.tiny_config(
      **helpers.SHARED_EPOCHS, **{'stages': 'rgrl', 'relation.teacher_checkpoint': str(clean_teacher)}
  )
  pipeline.run(config, str(tmp_path))
  summary = json.loads((tmp_path / 'results.json').read_text())
  assert 0.0 <= summary['teacher_knn_accuracy'] <= 1.0 and summary['rgrl_steps'] > 0
  # The restored teacher is exactly the student's backbone, BatchNorm statistics included.
  config.relation.teacher_checkpoint = str(clean_teacher / 'rgrl')
  dataset = data.load(config.data)
  teacher = simsiam.load_teacher(config, dataset, workdir='')
  assert sorted(teacher['params']) == ['backbone'] and sorted(teacher['batch_stats']) == ['backbone']
  mngr = checkpoints.manager(str(clean_teacher / 'rgrl'), read_only=True)
  saved = mngr.restore(
      mngr.latest_step(), args=checkpoints.ocp.args.Composite(state=checkpoints.ocp.args.StandardRestore())
  )
  for part in ('params', 'batch_stats'):
    for a, b in zip(jax.tree.leaves(teacher[part]['backbone']), jax.tree.leaves(saved['state'][part]['backbone'])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_teacher_network_that_does_not_fit_is_refused_naming_both(clean_teacher, tmp_path):
  result = helpers.run_main(
      *helpers.tiny_config_flags(**helpers.SHARED_EPOCHS, **{'stages': 'rgrl', 'model.width': 16}),
      f'--config.relation.teacher_checkpoint={clean_teacher / "rgrl"}',
      f'--workdir={tmp_path}',
  )
  helpers.assert_user_error(result, 'holds a student resnet_tiny of width 4', 'resnet_tiny of width 16')
  assert not (tmp_path / 'config.json').exists()  # refused before the run wrote anything


def test_a_student_teacher_has_no_projector_layer(clean_teacher, tmp_path):
  result = helpers.run_main(
      *helpers.tiny_config_flags(**helpers.SHARED_EPOCHS, **{'stages': 'rgrl', 'relation.teacher_layer': 'projector'}),
      f'--config.relation.teacher_checkpoint={clean_teacher}',
      f'--workdir={tmp_path}',
  )
  helpers.assert_user_error(result, 'has no projector', '--config.relation.teacher_layer=backbone')


def test_a_work_directory_with_both_stages_must_name_one(tmp_path):
  for stage in ('rm', 'rgrl'):
    os.makedirs(tmp_path / 'run' / stage)
  with pytest.raises(checkpoints.CheckpointError, match='both an RM and an RGRL stage') as info:
    checkpoints.teacher_directory(str(tmp_path / 'run'))
  helpers.assert_one_sentence(str(info.value))
  os.rmdir(tmp_path / 'run' / 'rm')
  assert checkpoints.teacher_directory(str(tmp_path / 'run')) == str(tmp_path / 'run' / 'rgrl')


@pytest.mark.slow
def test_a_two_network_student_teaches_with_its_first_network(tmp_path):
  config = helpers.tiny_config(**{'method.name': 'coteaching'})
  state = distill.create_distill_state(jax.random.key(3), config, helpers.IMAGE_SHAPE, lambda step: 0.0)
  assert jax.tree.leaves(state.params['backbone'])[0].shape[0] == 2  # stacked networks
  mngr = checkpoints.manager(str(tmp_path / 'rgrl'))
  checkpoints.save(mngr, 5, parallel.replicate(state), checkpoints.stage_meta(config, 'rgrl', helpers.IMAGE_SHAPE))
  mngr.wait_until_finished()
  rm_target = jax.eval_shape(
      lambda: simsiam.create_simsiam_state(jax.random.key(0), config, helpers.IMAGE_SHAPE, lambda step: 0.0)
  )
  expected = checkpoints.stage_meta(config, 'rm', helpers.IMAGE_SHAPE)
  teacher, step = checkpoints.restore_teacher(str(tmp_path), rm_target, expected)
  assert step == 5
  first = jax.tree.map(lambda x: np.asarray(x)[0], helpers.to_host(state.params['backbone']))
  helpers.assert_trees_close(teacher['params']['backbone'], first, rtol=0, atol=0)
