"""The teacher-quality ladder report (`python -m rmdnet_jax.report.results --ladder DIR`): runs sorted into teachers,
baseline and cells; the table's numbers, gains and order; the figure and the wide table are written."""

import json

from rmdnet_jax.report import ladder, results


def _run(root, name, config, res=None):
  d = root / name
  d.mkdir()
  (d / 'config.json').write_text(json.dumps(config))
  if res is not None:
    (d / 'results.json').write_text(json.dumps(res))


def _rgrl(distill=True, teacher='', K=1.0, node='cosine', noise='symmetric', seed=0, step=0):
  return {
      'stages': 'rgrl',
      'seed': seed,
      'noise': {'kind': noise, 'rate': 0.5},
      'method': {'name': 'ce', 'distill': distill},
      'relation': {'teacher_checkpoint': teacher, 'K': K, 'node_kind': node, 'teacher_step': step},
  }


def _res(best, last, memorised, knn=None):
  out = {'test_accuracy_best': best, 'test_accuracy_last': last, 'train_memorized_noisy_subset': memorised}
  if knn is not None:
    out['teacher_knn_accuracy'] = knn
  return out


def _ladder_dir(tmp_path):
  root = tmp_path / 'runs'
  root.mkdir()
  _run(root, 'ce_s0', _rgrl(distill=False), _res(0.25, 0.24, 0.70))
  _run(root, 'ce_s1', _rgrl(distill=False, seed=1), _res(0.27, 0.22, 0.72))
  _run(root, 'teacher_random', {'stages': 'rm', 'rm': {'learning_rate': 0.0, 'epochs': 1}}, {})
  _run(root, 'teacher_clean', _rgrl(distill=False, noise='none'), _res(0.40, 0.39, 0.0))
  _run(root, 'clean_K1_cosine', _rgrl(teacher='/w/teacher_clean/rgrl'), _res(0.33, 0.32, 0.30, knn=0.41))
  _run(root, 'random_K1_cosine', _rgrl(teacher='/w/teacher_random/rm'), _res(0.24, 0.23, 0.60, knn=0.20))
  _run(root, 'simsiam_e15_K1_cosine', _rgrl(teacher='/w/simsiam/rm', step=480), _res(0.25, 0.25, 0.5, knn=0.22))
  _run(root, 'unfinished', _rgrl(teacher='/w/teacher_random/rm', node='frobenius'))
  return root


def test_runs_are_sorted_into_teachers_baseline_and_cells(tmp_path):
  table = ladder.build(ladder.load_runs(str(_ladder_dir(tmp_path))))
  assert [n for n, _, _ in table.teachers] == ['teacher_clean', 'teacher_random']
  assert 'diagnostic: trained on clean labels' in table.teachers[0][1]
  assert table.teachers[1][1].startswith('random init')
  assert sorted(r.name for r in table.baseline) == ['ce_s0', 'ce_s1']
  assert set(table.cells) == {
      ('teacher_clean', 1.0, 'cosine'),
      ('teacher_random', 1.0, 'cosine'),
      ('simsiam@480', 1.0, 'cosine'),
  }
  assert table.unfinished == ['unfinished']


def test_table_rows_sorted_by_teacher_knn_with_gains_over_ce(tmp_path, capsys):
  root = _ladder_dir(tmp_path)
  md, wide, png = tmp_path / 'table.md', tmp_path / 'wide.md', tmp_path / 'ladder.png'
  assert results.main(['--ladder', str(root), f'--markdown={md}', f'--wide={wide}', f'--figure={png}']) == 0
  text = md.read_text()
  assert capsys.readouterr().out.strip() == text.strip()
  header = text.splitlines()[0]
  assert header.count('|') - 1 <= 8  # at most 8 columns
  rows = [l for l in text.splitlines() if l.startswith('| teacher_') or l.startswith('| simsiam')][:3]
  assert [r.split(' | ')[0] for r in rows] == ['| teacher_random', '| simsiam@480', '| teacher_clean']
  # CE: best 26.0 ± 1.4 (25, 27), last 23.0 ± 1.4; the clean-teacher cell gains 33 - 26 = +7.0 and 32 - 23 = +9.0
  assert '| none (CE, 2 seeds) | — | — | — | 26.0 ± 1.4 | 23.0 ± 1.4 | 71.0 ± 1.4 | — |' in text
  assert '| teacher_clean | 41.0 | 1 | cosine | 33.0 | 32.0 | 30.0 | +7.0 / +9.0 |' in text
  assert 'Unfinished (no results.json): unfinished' in text
  # K=1 cosine: the random (20%) and SimSiam (22%) teachers lose to CE's best; the clean one (41%) wins. On last
  # accuracy, SimSiam's 25.0 beats CE's 23.0 already.
  assert '| 1 | cosine | 41.0% | 22.0% |' in text
  assert png.read_bytes()[:4] == b'\x89PNG'
  assert 'clean_K1_cosine' in wide.read_text() and 'teacher_knn_accuracy' in wide.read_text()


def test_a_simsiam_teachers_knn_curve_is_listed(tmp_path):
  root = _ladder_dir(tmp_path)
  _run(root, 'simsiam', {'stages': 'rm', 'rm': {'learning_rate': 0.03, 'epochs': 10}, 'data': {'train_subset': 64}})
  rows = [
      {'step': 2, 'rm/loss': -0.5, 'rm/z_std': 0.03, 'rm/epoch': 1.0},
      {'step': 2, 'rm/knn_accuracy': 0.2},
      {'step': 4, 'rm/loss': -0.7, 'rm/z_std': 0.02, 'rm/epoch': 2.0},
      {'step': 4, 'rm/knn_accuracy': 0.25},
  ]
  (root / 'simsiam' / 'metrics.jsonl').write_text('\n'.join(json.dumps(r) for r in rows) + '\n')
  text = ladder.markdown(ladder.build(ladder.load_runs(str(root))))
  assert 'simsiam (SimSiam, 10 epochs on 64 images), its kNN monitor by epoch:' in text
  assert '| 1 | -0.500 | 0.0300 | 20.0 |' in text and '| 2 | -0.700 | 0.0200 | 25.0 |' in text
