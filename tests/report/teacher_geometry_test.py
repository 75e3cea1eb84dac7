"""Tests for rmdnet_jax.report.teacher_geometry: the geometry of a teacher's features, as a function and as a command."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from rmdnet_jax.core import parallel
from rmdnet_jax.datasets import data
from rmdnet_jax.report import teacher_geometry
from rmdnet_jax.stages import simsiam
from rmdnet_jax.training import checkpoints
from tests import helpers


@pytest.fixture(scope='module')
def rm_dir(tmp_path_factory):
  """WORKDIR/rm of a tiny run holding one RM checkpoint: the initialised SimSiam state (no training, which would
  cost a compile of the RM step; the properties measured below hold for any weights of a ReLU network)."""
  workdir = tmp_path_factory.mktemp('simsiam')
  config = helpers.tiny_config()
  image_shape = data.load(config.data).image_shape
  state = simsiam.create_simsiam_state(jax.random.key(0), config, image_shape, lambda step: 0.0)
  mngr = checkpoints.manager(str(workdir / 'rm'))
  checkpoints.save(mngr, 1, parallel.replicate(state), checkpoints.stage_meta(config, 'rm', image_shape))
  mngr.wait_until_finished()
  mngr.close()
  return str(workdir)


def test_teacher_geometry_of_relu_features(rm_dir):
  config = helpers.tiny_config(**{'rm.epochs': 2, 'relation.teacher_checkpoint': os.path.join(rm_dir, 'rm')})
  dataset = data.load(config.data)
  teacher = simsiam.load_teacher(config, dataset, workdir='')
  out = teacher_geometry.measure(config, dataset, teacher, batch=32)
  assert set(out) == {name for name, *_ in teacher_geometry.FORMS}
  # Pooled features after a ReLU are non-negative: every pair of images has a positive cosine...
  assert out['backbone']['teacher_graph_mean'] > 0.2
  # ...and centring over the batch makes the graph's off-diagonal mean exactly -1/(B-1) for a full-rank batch or 0
  # for zero rows; either way near 0.
  assert abs(out['backbone+batch_center']['teacher_graph_mean']) < 0.05
  assert out['backbone']['collapsed_node_loss'] == pytest.approx(np.sqrt(32))
  assert all(0.0 < r['top_direction_share'] <= 1.0 for r in out.values())
  table = teacher_geometry.format_table(out)
  assert table.count('\n') == len(out) + 1


@pytest.mark.slow
def test_teacher_geometry_command_prints_the_table(rm_dir, tmp_path):
  out = tmp_path / 'geometry.json'
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'rmdnet_jax.report.teacher_geometry',
          '--config=configs/tiny.py',
          '--config.data.synthetic_image_size=8',
          '--config.data.synthetic_train_size=64',
          '--config.model.width=4',
          '--config.student.width=4',
          '--config.model.projector_dim=16',
          '--config.model.predictor_dim=32',
          '--config.rm.batch_size=16',
          '--config.rgrl.batch_size=16',
          '--config.rm.knn_k=5',
          '--config.rm.epochs=2',
          '--batch=16',
          f'--config.relation.teacher_checkpoint={rm_dir}/rm',
          f'--out={out}',
      ],
      capture_output=True,
      text=True,
      timeout=300,
      cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert '| backbone |' in proc.stdout and set(json.load(open(out))) == {n for n, *_ in teacher_geometry.FORMS}
