"""Case-study analysis: ROC AUC, per-sample losses, t-SNE helpers, and the CLI on two tiny finished runs."""

import itertools
import json
import os
import shutil

import numpy as np
import pytest
from absl.testing import flagsaver

from rmdnet_jax.report import analysis
from rmdnet_jax.run import pipeline
from rmdnet_jax.methods import ce
from tests import helpers

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _config(**overrides):
  base = {**helpers.SHARED_EPOCHS, 'data.synthetic_train_size': 64}  # pipeline_test's config: programs from the cache
  base.update(overrides)
  return helpers.tiny_config(**base)


@pytest.fixture(scope='module')
def finished_runs(tmp_path_factory):
  """An RMDNet run (RM + RGRL) and its CE baseline (RGRL only, no teacher), two epochs each on 64 images."""
  rmdnet = str(tmp_path_factory.mktemp('rmdnet'))
  baseline = str(tmp_path_factory.mktemp('ce'))
  pipeline.run(_config(), rmdnet)
  pipeline.run(_config(**{'method.distill': False, 'stages': 'rgrl'}), baseline)
  return rmdnet, baseline


def _pairwise_auc(scores, positives):
  """The AUC's definition: P(s+ > s-) + P(s+ = s-) / 2 over all positive-negative pairs."""
  pos = [s for s, p in zip(scores, positives) if p]
  neg = [s for s, p in zip(scores, positives) if not p]
  wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
  return wins / (len(pos) * len(neg))


def test_roc_auc_hand_example():
  # Positives 0.35 and 0.8 against negatives 0.1 and 0.4: 0.35 beats 0.1 only, 0.8 beats both -> 3 of 4 pairs.
  assert analysis.roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
  assert analysis.roc_auc([1.0, 2.0, 3.0, 4.0], [0, 0, 1, 1]) == pytest.approx(1.0)
  assert analysis.roc_auc([4.0, 3.0, 2.0, 1.0], [0, 0, 1, 1]) == pytest.approx(0.0)


def test_roc_auc_counts_ties_as_half():
  assert analysis.roc_auc([2.0, 2.0, 2.0, 2.0], [1, 0, 1, 0]) == pytest.approx(0.5)
  # Positives {0.5, 0.9}, negatives {0.5, 0.2}: 0.5=0.5 counts 1/2, the other three pairs are wins -> 3.5 / 4.
  assert analysis.roc_auc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == pytest.approx(0.875)


def test_roc_auc_matches_pairwise_definition_with_many_ties():
  rng = np.random.default_rng(0)
  for _ in range(5):
    scores = rng.integers(0, 4, 40).astype(float)  # 4 distinct values over 40 scores: ties everywhere
    positives = rng.random(40) < 0.3
    assert analysis.roc_auc(scores, positives) == pytest.approx(_pairwise_auc(scores, positives), abs=1e-12)


def test_roc_auc_is_undefined_without_both_groups_and_refuses_nan():
  assert np.isnan(analysis.roc_auc([0.1, 0.2], [True, True]))
  assert np.isnan(analysis.roc_auc([0.1, 0.2], [False, False]))
  with pytest.raises(ValueError, match='finite'):
    analysis.roc_auc([0.1, float('nan')], [True, False])
  with pytest.raises(ValueError, match='entries'):
    analysis.roc_auc([0.1, 0.2, 0.3], [True, False])


def test_per_sample_losses_match_numpy_and_the_training_loss():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(50, 10)) * 3
  labels = rng.integers(0, 10, 50)
  probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  expected = -np.log(probs[np.arange(50), labels])
  losses = analysis.per_sample_losses(logits, labels)
  np.testing.assert_allclose(losses, expected, rtol=1e-12)
  # Their mean is the method loss the students were trained with.
  np.testing.assert_allclose(losses.mean(), float(ce.cross_entropy(logits.astype(np.float32), labels)), rtol=1e-5)


def test_per_sample_losses_are_stable_for_huge_logits_and_check_labels():
  losses = analysis.per_sample_losses(np.array([[1000.0, 0.0], [0.0, 1000.0]]), np.array([1, 1]))
  np.testing.assert_allclose(losses, [1000.0, 0.0], atol=1e-9)
  with pytest.raises(ValueError, match='labels must lie'):
    analysis.per_sample_losses(np.zeros((2, 3)), np.array([0, 3]))


def test_tsne_embed_small_set_is_seeded():
  features = np.random.default_rng(0).normal(size=(6, 16))
  a = analysis.tsne_embed(features, seed=0)
  assert a.shape == (6, 2) and np.all(np.isfinite(a))
  np.testing.assert_array_equal(a, analysis.tsne_embed(features, seed=0))
  assert analysis.tsne_perplexity(6) < 6 and analysis.tsne_perplexity(10_000) == 30.0


def test_select_points_caps_each_class():
  labels = np.array([8] * 10 + [9] * 3 + [1] * 5)
  idx = analysis.select_points(labels, (8, 9), max_points=8)
  assert np.sum(labels[idx] == 8) == 4 and np.sum(labels[idx] == 9) == 3 and set(labels[idx]) == {8, 9}
  assert np.all(np.diff(idx) > 0)


def test_learning_curves_keep_the_last_row_of_a_resumed_step():
  rows = [
      {'step': 4, 'rgrl/test_accuracy': 0.1},
      {'step': 4, 'rgrl/loss': 2.0},
      {'step': 8, 'rgrl/test_accuracy': 0.2},
      {'step': 8, 'rgrl/test_accuracy': 0.3},
      {'step': 4, 'rm/knn_accuracy': 0.9},
  ]
  curves = analysis.learning_curves(rows, steps_per_epoch=4)
  np.testing.assert_array_equal(curves['epoch'], [1.0, 2.0])
  np.testing.assert_array_equal(curves['test_accuracy'], [0.1, 0.3])
  assert 'train_accuracy_noisy_labels' not in curves


def _run_cli(**flag_values):
  """analysis.main as `python -m rmdnet_jax.report.analysis --name=value ...` would run it."""
  flags_ = analysis.FLAGS
  was_parsed = flags_.is_parsed()
  if not was_parsed:
    flags_.mark_as_parsed()
  try:
    with flagsaver.flagsaver(**flag_values):
      analysis.main(['analysis'])
  finally:
    if not was_parsed:
      flags_.unparse_flags()


@pytest.mark.slow
def test_cli_writes_figures_and_aucs(finished_runs, tmp_path):
  rmdnet, baseline = finished_runs
  out = str(tmp_path / 'figures')
  # Classes 0 and 1 have 5 and 6 of the 32 synthetic test images; max_points=8 also exercises the subsampling.
  _run_cli(rmdnet_workdir=rmdnet, ce_workdir=baseline, out=out, classes=['0', '1'], max_points=8)
  for name in ('tsne_0_1.png', 'loss_histograms.png', 'learning_curves.png'):
    with open(os.path.join(out, name), 'rb') as f:
      assert f.read(8) == PNG_MAGIC, name
  with open(os.path.join(out, 'analysis.json')) as f:
    summary = json.load(f)
  assert set(summary['loss_auc']) == {'ce', 'rmdnet'}
  for auc in summary['loss_auc'].values():
    assert 0.0 <= auc <= 1.0
  assert summary['tsne']['points_per_class'] == {'0': 4, '1': 4}
  assert summary['memorization_curve'] is True  # the tiny runs log the train accuracy on noisy / clean labels
  assert summary['runs']['rmdnet']['rgrl_steps'] == summary['runs']['ce']['rgrl_steps'] == 8


def _one_sentence_error(fn, match):
  with pytest.raises(analysis.AnalysisError, match=match) as info:
    fn()
  assert '\n' not in str(info.value)


def test_missing_or_swapped_workdirs_are_refused_with_one_sentence(finished_runs, tmp_path):
  rmdnet, baseline = finished_runs
  out = str(tmp_path / 'out')
  _one_sentence_error(lambda: analysis.analyse(str(tmp_path / 'nothing'), baseline, out), 'has no config.json')
  _one_sentence_error(lambda: analysis.analyse(baseline, rmdnet, out), 'without distillation')
  _one_sentence_error(lambda: analysis.analyse(rmdnet, baseline, out, classes=(3, 3)), 'two different classes')
  with pytest.raises(SystemExit, match='^error: .*has no config.json'):
    _run_cli(rmdnet_workdir=str(tmp_path / 'nothing'), ce_workdir=baseline, out=out)


def test_unfinished_run_is_refused_with_one_sentence(finished_runs, tmp_path):
  rmdnet, baseline = finished_runs
  unfinished = str(tmp_path / 'unfinished')
  shutil.copytree(baseline, unfinished)
  # As if the run had been stopped before its first RGRL checkpoint.
  for entry in os.listdir(os.path.join(unfinished, 'rgrl')):
    shutil.rmtree(os.path.join(unfinished, 'rgrl', entry))
  _one_sentence_error(lambda: analysis.analyse(rmdnet, unfinished, str(tmp_path / 'out')), 'stopped at step 0 of 8')
