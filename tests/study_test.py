"""The CPU study's machinery on tiny data: a teacher from a chosen RM step, the weak-teacher warning, the relation
diagnostics in metrics.jsonl, the per-run results table and K figure (the teacher-geometry measurement is in
tests/report/teacher_geometry_test.py)."""

import json
import logging
import os

import jax
import numpy as np
import pytest

from rmdnet_jax.datasets import data
from rmdnet_jax.report import results
from rmdnet_jax.run import config_files, pipeline
from rmdnet_jax.stages import distill, simsiam
from rmdnet_jax.training import checkpoints
from rmdnet_jax.run import workdir as workdir_lib
from tests import helpers

RM_STEPS_PER_EPOCH = 4  # 64 images / batch 16


@pytest.fixture(scope='module')
def study(tmp_path_factory):
  """One RM run (2 epochs, every checkpoint kept), then two RGRL cells on its epoch-1 teacher and a CE cell."""
  base = tmp_path_factory.mktemp('study')
  rm_dir = str(base / 'simsiam')
  pipeline.run(helpers.tiny_config(**{'rm.epochs': 2, 'stages': 'rm', 'max_to_keep': 5}), rm_dir)
  cells = {'k1': {'relation.K': 1.0}, 'k01': {'relation.K': 0.1}, 'ce': {'method.distill': False}}
  common = {
      **helpers.SHARED_EPOCHS,  # pipeline_test's epochs: its K=1 and CE steps can come from the session's cache
      'stages': 'rgrl',
      'relation.teacher_checkpoint': os.path.join(rm_dir, 'rm'),
      'relation.teacher_step': RM_STEPS_PER_EPOCH,
  }
  runs = {}
  for name, overrides in cells.items():
    workdir = str(base / name)
    runs[name] = (workdir, pipeline.run(helpers.tiny_config(**common, **overrides), workdir))
  return base, rm_dir, runs


def test_rgrl_reports_the_teacher_it_restored_and_logs_diagnostics(study):
  _, _, runs = study
  workdir, summary = runs['k1']
  assert 0.0 <= summary['teacher_knn_accuracy'] <= 1.0
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  train_rows = [r for r in rows if 'rgrl/node' in r]
  for key in ('node_diag_cos', 'node_offdiag_rms', 'teacher_graph_mean', 'student_graph_mean', 'edge_offdiag_rms'):
    values = [r[f'rgrl/{key}'] for r in train_rows]
    assert values and all(np.isfinite(values)), key
  assert all(-1.0 <= r['rgrl/node_diag_cos'] <= 1.0 for r in train_rows)
  # The CE baseline has no teacher: no kNN of it, no relation diagnostics.
  _, ce_summary = runs['ce']
  assert 'teacher_knn_accuracy' not in ce_summary


def test_teacher_step_selects_that_checkpoint_and_refuses_a_missing_one(study):
  _, rm_dir, _ = study
  config = helpers.tiny_config(**{'rm.epochs': 2})
  dataset = data.load(config.data)
  meta = checkpoints.stage_meta(config, 'rm', dataset.image_shape)
  target = jax.eval_shape(
      lambda: simsiam.create_simsiam_state(jax.random.key(0), config, dataset.image_shape, lambda step: 0.0)
  )
  first, step = checkpoints.restore_teacher(os.path.join(rm_dir, 'rm'), target, meta, step=RM_STEPS_PER_EPOCH)
  last, last_step = checkpoints.restore_teacher(os.path.join(rm_dir, 'rm'), target, meta)
  assert (step, last_step) == (RM_STEPS_PER_EPOCH, 2 * RM_STEPS_PER_EPOCH)
  assert not all(
      np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first['params']), jax.tree.leaves(last['params']))
  )
  with pytest.raises(checkpoints.CheckpointError, match=r'no RM checkpoint at step 5 \(it has steps 4, 8\)'):
    checkpoints.restore_teacher(os.path.join(rm_dir, 'rm'), target, meta, step=5)


def test_weak_teacher_warning_is_one_sentence(caplog):
  with caplog.at_level(logging.WARNING):
    distill.warn_if_weak_teacher(distill.WEAK_TEACHER_KNN - 0.01)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and 'RMDNet lose to plain CE' in warnings[0] and warnings[0].count('. ') == 0
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    distill.warn_if_weak_teacher(distill.WEAK_TEACHER_KNN + 0.01)
  assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_per_run_table_and_k_figure(study, capsys):
  base, _, runs = study
  png = str(base / 'k.png')
  assert results.main([str(base / '*'), '--per_run', '--all', '--k_figure', png]) == 0
  table = capsys.readouterr().out
  header = table.splitlines()[0]
  assert 'method.distill' in header and 'relation.K' in header and 'final node_diag_cos' in header
  body = [line for line in table.splitlines()[2:] if line.startswith('| ')]
  assert sorted(line.split(' | ')[0].strip('| ') for line in body) == ['ce', 'k01', 'k1']  # RM cell left out
  best_k1 = f"{100 * runs['k1'][1]['test_accuracy_best']:.2f}"
  assert any(line.startswith('| k1 |') and best_k1 in line for line in body)
  with open(png, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_work_directory_from_before_the_new_relation_keys_resumes(study):
  _, _, runs = study
  workdir, summary = runs['k01']
  path = os.path.join(workdir, 'config.json')
  saved = json.load(open(path))
  for key in config_files.KEYS_ADDED_LATER:
    section, leaf = key.split('.')
    saved[section].pop(leaf)
  with open(path, 'w') as f:
    json.dump(saved, f)
  # teacher_step differs from the saved (implicit) 0, so that alone is a config change; with the keys at the
  # values older runs had, the finished run is accepted and skipped.
  config = helpers.tiny_config(
      **{
          'stages': 'rgrl',
          **helpers.SHARED_EPOCHS,
          'relation.K': 0.1,
          'relation.teacher_checkpoint': summary['workdir'] + '/../simsiam/rm',
      }
  )
  again = pipeline.run(config, workdir)
  assert again['test_accuracy_last'] == summary['test_accuracy_last']
  config.relation.teacher_step = RM_STEPS_PER_EPOCH
  with pytest.raises(workdir_lib.WorkdirConfigMismatch, match='relation.teacher_step: 0 -> 4'):
    pipeline.run(config, workdir)
