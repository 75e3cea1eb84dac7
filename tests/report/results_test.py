"""rmdnet_jax.report.results on hand-made work directories: grouping, mean ± std over seeds, gains, published numbers,
unfinished runs, and the exact markdown and CSV of a small case."""

import json

import pytest

from rmdnet_jax.report import results


def make_run(
    root,
    name,
    *,
    dataset='cifar10',
    kind='symmetric',
    rate=0.5,
    method='ce',
    rmdnet=False,
    seed=0,
    accuracy=None,
    stages='rm,rgrl',
):
  """A work directory as rmdnet_jax.main leaves it: config.json always, results.json once finished."""
  workdir = root / name
  workdir.mkdir()
  config = {
      'stages': stages,
      'seed': seed,
      'data': {'name': dataset, 'num_classes': 10},
      'noise': {'kind': kind, 'rate': rate, 'seed': seed},
      'method': {'name': method, 'distill': rmdnet},
  }
  (workdir / 'config.json').write_text(json.dumps(config))
  if accuracy is not None:
    best, last = accuracy
    (workdir / 'results.json').write_text(json.dumps({'test_accuracy_best': best, 'test_accuracy_last': last}))
  return str(workdir)


@pytest.fixture
def small_grid(tmp_path):
  make_run(tmp_path, 'ce_s0', seed=0, accuracy=(0.80, 0.70))
  make_run(tmp_path, 'ce_s1', seed=1, accuracy=(0.82, 0.74))
  make_run(tmp_path, 'rmd_s0', rmdnet=True, seed=0, accuracy=(0.85, 0.84))
  make_run(tmp_path, 'rmd_s1', rmdnet=True, seed=1)  # still running: listed, never averaged
  make_run(tmp_path, 'teacher_s0', rmdnet=True, stages='rm')  # a SimSiam teacher cell: no test accuracy
  return tmp_path


EXPECTED_MARKDOWN = """# Results

## Best test accuracy (%)

| dataset | noise | rate | ce | ce + RMDNet | ce: RMDNet gain | published CE | published DivideMix |
|---|---|---|---|---|---|---|---|
| cifar10 | symmetric | 0.5 | 81.00 ± 1.41 (n=2) | 85.00 (n=1) | +4.00 | 79.4 | 94.6 |

## Last test accuracy (%)

| dataset | noise | rate | ce | ce + RMDNet | ce: RMDNet gain |
|---|---|---|---|---|---|
| cifar10 | symmetric | 0.5 | 72.00 ± 2.83 (n=2) | 84.00 (n=1) | +12.00 |

Mean ± sample standard deviation over seeds (n runs). RMDNet gain: mean with RMDNet minus mean without, same \
method and setting.
Published: best test accuracy reported by other papers (PreAct ResNet-18, DivideMix protocol; paper/rmdnet.md), \
not RMDNet results.

## Unfinished (no results.json; not averaged)

| workdir | dataset | noise | rate | method | RMDNet | seed |
|---|---|---|---|---|---|---|
| {root}/rmd_s1 | cifar10 | symmetric | 0.5 | ce | on | 1 |
"""

EXPECTED_CSV = """\
dataset,noise,rate,method,rmdnet,n,seeds,best_mean,best_std,last_mean,last_std,rmdnet_gain_best,rmdnet_gain_last,\
published_ce_best,published_dividemix_best
cifar10,symmetric,0.5,ce,false,2,0 1,81.0000,1.4142,72.0000,2.8284,,,79.4000,94.6000
cifar10,symmetric,0.5,ce,true,1,0,85.0000,,84.0000,,4.0000,12.0000,79.4000,94.6000
"""


def test_markdown_and_csv_of_a_small_grid(small_grid, tmp_path_factory, capsys):
  out = tmp_path_factory.mktemp('out')
  assert results.main([str(small_grid / '*'), f'--markdown={out / "r.md"}', f'--csv={out / "r.csv"}']) == 0
  expected = EXPECTED_MARKDOWN.format(root=small_grid)
  assert (out / 'r.md').read_text() == expected
  assert capsys.readouterr().out == expected + '\n'
  assert (out / 'r.csv').read_text() == EXPECTED_CSV


def test_grouping_over_datasets_noises_and_methods(tmp_path):
  make_run(
      tmp_path, 'a', dataset='cifar100', kind='symmetric', rate=0.8, method='gce', rmdnet=True, accuracy=(0.5, 0.4)
  )
  make_run(tmp_path, 'b', dataset='cifar100', kind='symmetric', rate=0.8, method='gce', accuracy=(0.3, 0.2))
  make_run(tmp_path, 'c', dataset='cifar10', kind='pairflip', rate=0.45, method='sce', accuracy=(0.6, 0.55))
  make_run(tmp_path, 'd', dataset='cifar10', kind='none', rate=0.5, method='sce', accuracy=(0.9, 0.9))
  make_run(tmp_path, 'e', dataset='cifar10', kind='none', rate=0.0, method='sce', seed=1, accuracy=(0.92, 0.9))
  table = results.build_table([results.load_run(w) for w in results.expand([str(tmp_path / '*')])])
  assert table.settings == [('cifar10', 'none', 0.0), ('cifar10', 'pairflip', 0.45), ('cifar100', 'symmetric', 0.8)]
  assert table.columns == [('gce', False), ('gce', True), ('sce', False)]
  assert table.stats(('cifar10', 'none', 0.0), ('sce', False), 'best')[::2] == pytest.approx((91.0, 2))
  assert table.gain(('cifar100', 'symmetric', 0.8), 'gce', 'best') == pytest.approx(20.0)
  assert table.gain(('cifar10', 'pairflip', 0.45), 'sce', 'best') is None  # no RMDNet run to compare with
  text = results.markdown(table)
  # Published numbers exist for CIFAR-100 sym 80% (CE 19.9, DivideMix 60.2) and nowhere else in this grid.
  assert '| cifar100 | symmetric | 0.8 | 30.00 (n=1) | 50.00 (n=1) | — | +20.00 | 19.9 | 60.2 |' in text
  assert '| cifar10 | pairflip | 0.45 | — | — | 60.00 (n=1) | — | — | — |' in text
  assert 'Unfinished' not in text


def test_a_directory_that_is_not_a_run_is_refused(tmp_path, capsys):
  (tmp_path / 'empty').mkdir()
  assert results.main([str(tmp_path / 'empty')]) == 2
  assert 'has no config.json' in capsys.readouterr().err


def make_study_run(root, name, *, distill, K=1.0, results_json=None, diagnostics=None):
  """A run of a per-run study: settings as config.json sections, results.json and the last metrics.jsonl row."""
  workdir = root / name
  workdir.mkdir()
  config = {
      'stages': 'rgrl',
      'seed': 0,
      'data': {'name': 'cifar10', 'data_dir': f'/data/{name}'},  # a path: never a setting
      'noise': {'kind': 'symmetric', 'rate': 0.5},
      'method': {'name': 'ce', 'distill': distill},
      'relation': {'K': K, 'edge_kind': 'frobenius'},
      'logging': {'verbose': name == 'k1'},  # logging never is a setting either
  }
  (workdir / 'config.json').write_text(json.dumps(config))
  if results_json is not None:
    (workdir / 'results.json').write_text(json.dumps(results_json))
  if diagnostics is not None:
    (workdir / 'metrics.jsonl').write_text(json.dumps({'step': 8, **{f'rgrl/{k}': v for k, v in diagnostics.items()}}))
  return str(workdir)


@pytest.fixture
def study_runs(tmp_path):
  finished = {
      'test_accuracy_best': 0.415,
      'test_accuracy_last': 0.412,
      'train_memorized_noisy_subset': 0.0873,
      'train_accuracy_clean_subset': 0.4459,
  }
  make_study_run(tmp_path, 'ce', distill=False, results_json=finished, diagnostics={'method': 2.121})
  make_study_run(
      tmp_path,
      'k01',
      distill=True,
      K=0.1,
      results_json={**finished, 'test_accuracy_best': 0.306, 'teacher_knn_accuracy': 0.246},
      diagnostics={'node': 11.265, 'method': 2.187},
  )
  make_study_run(tmp_path, 'k1', distill=True)  # unfinished: no results.json, no metrics yet
  return tmp_path


def test_per_run_shows_the_settings_that_vary_and_four_results_by_default(study_runs, capsys):
  assert results.main([str(study_runs / '*'), '--per_run']) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == '| run | method.distill | relation.K | best | last | teacher kNN | memorised noisy |'
  assert lines[2:5] == [
      '| ce | False | 1.0 | 41.50 | 41.20 | — | 8.73 |',
      '| k01 | True | 0.1 | 30.60 | 41.20 | 24.60 | 8.73 |',
      '| k1 | True | 1.0 | — | — | — | — |',
  ]
  assert '--all adds' in lines[-1] and 'final:' not in lines[-1]


def test_per_run_all_gives_every_column(study_runs, tmp_path_factory, capsys):
  out = tmp_path_factory.mktemp('out') / 'table.md'
  assert results.main([str(study_runs / '*'), '--per_run', '--all', f'--markdown={out}']) == 0
  text = capsys.readouterr().out
  assert out.read_text() == text
  header = text.splitlines()[0].strip('| ').split(' | ')
  assert header == (
      ['run', 'method.distill', 'relation.K', 'best', 'last', 'teacher kNN', 'memorised noisy']
      + ['clean-subset train acc']
      + [f'final {d}' for d in results.DIAGNOSTICS]
  )
  k01 = next(line for line in text.splitlines() if line.startswith('| k01 |'))
  assert '| 44.59 | 11.265 | — | 2.187 |' in k01
  assert 'final: last logged training value' in text
