"""The teacher-quality ladder: does RMDNet beat CE, and from which teacher quality on (README, "Evidence").

  python -m rmdnet_jax.report.results --ladder results/ladder/runs [--markdown=results/ladder/table.md]
      [--figure=results/ladder/ladder.png] [--wide=results/ladder/wide.md]

Reads every run under the directory (work directories of rmdnet_jax.main, or their committed copies: config.json,
results.json, metrics.jsonl) and sorts them into
  * teachers: RM runs (SimSiam; learning rate 0 = a random-init network with calibrated BatchNorm) and RGRL runs on
    clean labels (noise.kind=none), which are diagnostic teachers only, never the method;
  * baselines: RGRL runs without relation distillation (method.distill=False) on noisy labels;
  * ladder cells: RMDNet runs, keyed by (teacher, K, node kind), seeds averaged.
The table has one row per cell, sorted by the teacher's kNN accuracy, with its gain over the baseline; the figure
plots best and last test accuracy against teacher kNN, one line per (K, node kind), the baseline as a band.
"""

import dataclasses
import io
import json
import math
import os
from typing import Optional, Sequence

from rmdnet_jax import fileio
from rmdnet_jax.report import results

DIAGNOSTIC = 'diagnostic: trained on clean labels'


@dataclasses.dataclass
class LadderRun:
  name: str
  config: dict
  results: dict
  path: str = ''

  def get(self, dotted: str, default=None):
    node = self.config
    for part in dotted.split('.'):
      if not isinstance(node, dict) or part not in node:
        return default
      node = node[part]
    return node


def load_runs(directory: str) -> list:
  """Every run (a subdirectory with config.json) under `directory`, sorted by name."""
  runs = []
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if fileio.exists(os.path.join(path, 'config.json')):
      runs.append(
          LadderRun(
              name,
              results._read_json(os.path.join(path, 'config.json')),
              results._read_json(os.path.join(path, 'results.json')),
              path,
          )
      )
  return runs


def rm_curve(run: LadderRun) -> list:
  """[(epoch, loss, z_std, kNN accuracy)] at every kNN evaluation of an RM run's metrics.jsonl."""
  path = os.path.join(run.path, 'metrics.jsonl')
  by_step = {}
  for line in fileio.read_text(path).splitlines() if run.path and fileio.exists(path) else []:
    if line.strip():
      row = json.loads(line)
      by_step.setdefault(row['step'], {}).update(row)
  return [
      (r.get('rm/epoch'), r.get('rm/loss'), r.get('rm/z_std'), r['rm/knn_accuracy'])
      for _, r in sorted(by_step.items())
      if 'rm/knn_accuracy' in r
  ]


def _stages(run: LadderRun) -> list:
  return [s.strip() for s in str(run.get('stages', '')).split(',')]


def teacher_kind(run: LadderRun) -> str:
  """What kind of teacher a teacher run makes."""
  if 'rgrl' in _stages(run):
    return f'supervised, {DIAGNOSTIC}'
  if float(run.get('rm.learning_rate', 1.0)) == 0.0:
    return 'random init (BatchNorm calibrated)'
  return f'SimSiam, {run.get("rm.epochs")} epochs on {run.get("data.train_subset") or "all"} images'


def teacher_of(run: LadderRun) -> str:
  """The teacher a distilling run used: its work directory's name, and the step when not the latest."""
  path = str(run.get('relation.teacher_checkpoint', '') or '').rstrip('/')
  name = os.path.basename(os.path.dirname(path)) if os.path.basename(path) in ('rm', 'rgrl') else os.path.basename(path)
  step = int(run.get('relation.teacher_step', 0) or 0)
  return name + (f'@{step}' if step else '') if name else '(this run)'


def _fmt(stats: Optional[tuple], pct: bool = True) -> str:
  if stats is None:
    return '—'
  scale = 100.0 if pct else 1.0
  mean, std = stats
  return f'{scale * mean:.1f}' + (f' ± {scale * std:.1f}' if std is not None and not math.isnan(std) else '')


METRICS = (
    ('best', 'test_accuracy_best'),
    ('last', 'test_accuracy_last'),
    ('memorised', 'train_memorized_noisy_subset'),
)


@dataclasses.dataclass
class Ladder:
  teachers: list  # [(name, kind, LadderRun)]
  baseline: list  # [LadderRun] method alone on noisy labels
  cells: dict  # (teacher, K, node_kind) -> [LadderRun]
  unfinished: list  # [name]

  def stats(self, runs: Sequence[LadderRun], key: str) -> Optional[tuple]:
    values = [r.results[key] for r in runs if r.results.get(key) is not None]
    return results.mean_std(values) if values else None


def build(runs: Sequence[LadderRun]) -> Ladder:
  teachers, baseline, cells, unfinished = [], [], {}, []
  for run in runs:
    stages = _stages(run)
    if 'rgrl' not in stages or run.get('noise.kind') == 'none':
      teachers.append((run.name, teacher_kind(run), run))
      continue
    if not run.results:
      unfinished.append(run.name)
    elif not run.get('method.distill', True):
      baseline.append(run)
    else:
      key = (teacher_of(run), float(run.get('relation.K')), str(run.get('relation.node_kind')))
      cells.setdefault(key, []).append(run)
  return Ladder(teachers, baseline, cells, unfinished)


def _teacher_knn(ladder: Ladder, key: tuple) -> Optional[float]:
  stats = ladder.stats(ladder.cells[key], 'teacher_knn_accuracy')
  return stats[0] if stats else None


def _sorted_cells(ladder: Ladder) -> list:
  return sorted(ladder.cells, key=lambda k: (_teacher_knn(ladder, k) or 0.0, k[0], k[2], k[1]))


def markdown(ladder: Ladder) -> str:
  """The ladder's table (8 columns) and the teachers' and baseline's lines."""
  base = {m: ladder.stats(ladder.baseline, key) for m, key in METRICS}
  lines = [
      '| teacher | teacher kNN | K | node | best | last | memorised | Δ best / Δ last vs CE |',
      '|---|---|---|---|---|---|---|---|',
  ]
  if ladder.baseline:
    lines.append(
        f'| none (CE, {len(ladder.baseline)} seed{"s" if len(ladder.baseline) > 1 else ""}) | — | — | — | {_fmt(base["best"])} | {_fmt(base["last"])} '
        f'| {_fmt(base["memorised"])} | — |'
    )
  for key in _sorted_cells(ladder):
    runs = ladder.cells[key]
    s = {m: ladder.stats(runs, k) for m, k in METRICS}
    gains = []
    for m in ('best', 'last'):
      gains.append(f'{100 * (s[m][0] - base[m][0]):+.1f}' if s[m] and base[m] else '—')
    seeds = f' ({len(runs)} seeds)' if len(runs) > 1 else ''
    knn = _teacher_knn(ladder, key)
    lines.append(
        f'| {key[0]}{seeds} | {_fmt((knn, None)) if knn is not None else "—"} | {key[1]:g} | {key[2]} '
        f'| {_fmt(s["best"])} | {_fmt(s["last"])} | {_fmt(s["memorised"])} | {gains[0]} / {gains[1]} |'
    )
  if base['best'] and base['last']:
    lines += [
        '',
        'Where RMDNet starts to beat CE: the lowest teacher kNN whose cell beats the CE mean, per (K, node) '
        '("none" where no teacher did; the cells above it need not all beat CE).',
        '',
        '| K | node | beats CE on best from teacher kNN | beats CE on last from teacher kNN |',
        '|---|---|---|---|',
    ]
    for k, node in sorted({(k[1], k[2]) for k in ladder.cells}):
      row = [f'{k:g}', node]
      for m in ('best', 'last'):
        wins = [
            _teacher_knn(ladder, key)
            for key in _sorted_cells(ladder)
            if (key[1], key[2]) == (k, node)
            and _teacher_knn(ladder, key) is not None
            and ladder.stats(ladder.cells[key], dict(METRICS)[m])[0] > base[m][0] + 1e-9
        ]
        row.append(f'{100 * min(wins):.1f}%' if wins else 'none')
      lines.append('| ' + ' | '.join(row) + ' |')
  lines += ['', '| teacher run | kind | its own test accuracy (best) |', '|---|---|---|']
  for name, kind, run in ladder.teachers:
    own = run.results.get('test_accuracy_best')
    lines.append(f'| {name} | {kind} | {_fmt((own, None)) if own is not None else "—"} |')
  for name, kind, run in ladder.teachers:
    curve = rm_curve(run)
    if len(curve) > 1:
      lines += [
          '',
          f'{name} ({kind}), its kNN monitor by epoch:',
          '',
          '| epoch | loss | z_std | kNN |',
          '|---|---|---|---|',
      ]
      lines += [f'| {e:g} | {loss:.3f} | {z:.4f} | {100 * knn:.1f} |' for e, loss, z, knn in curve]
  lines += [
      '',
      "Accuracies in % (mean ± sample std over seeds where there are several). teacher kNN: the teacher's "
      'backbone features, weighted kNN on the clean labels of the RGRL training images (a monitor, measured in the '
      'RMDNet run). memorised: share of the mislabelled training examples the final student predicts as their '
      'noisy label. Δ: RMDNet minus CE, in points.',
  ]
  if ladder.unfinished:
    lines += ['', 'Unfinished (no results.json): ' + ', '.join(ladder.unfinished)]
  return '\n'.join(lines)


def wide_markdown(ladder: Ladder) -> str:
  """One row per run, every number results.json holds for it."""
  runs = [(n, r) for n, _, r in ladder.teachers] + [(r.name, r) for r in ladder.baseline]
  runs += [(r.name, r) for k in _sorted_cells(ladder) for r in ladder.cells[k]]
  keys = sorted(
      {k for _, r in runs for k, v in r.results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
  )
  lines = ['| run | ' + ' | '.join(keys) + ' |', '|---|' + '---|' * len(keys)]
  for name, r in runs:
    cells = [f'{r.results[k]:.4g}' if k in r.results else '—' for k in keys]
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def figure(ladder: Ladder, path: str) -> None:
  """Best and last test accuracy against the teacher's kNN accuracy, a line per (K, node kind), CE as a band."""
  import matplotlib  # noqa: PLC0415 (only the figure needs it)

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # noqa: PLC0415

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
  lines = {}
  for key in _sorted_cells(ladder):
    knn = _teacher_knn(ladder, key)
    if knn is not None:
      lines.setdefault((key[1], key[2]), []).append((knn, key))
  for ax, (metric, result_key) in zip(axes, METRICS[:2]):
    base = ladder.stats(ladder.baseline, result_key)
    if base:
      mean, std = base
      lo, hi = (mean - (std or 0.0), mean + (std or 0.0))
      ax.axhspan(100 * lo, 100 * hi, color='grey', alpha=0.25, label=f'CE ({len(ladder.baseline)} seeds)')
      ax.axhline(100 * mean, color='grey', linewidth=1)
    for (k, node), points in sorted(lines.items()):
      points.sort()
      ys = [100 * ladder.stats(ladder.cells[key], result_key)[0] for _, key in points]
      ax.plot(
          [100 * x for x, _ in points],
          ys,
          marker='o',
          linestyle='-' if node == 'cosine' else '--',
          label=f'RMDNet K={k:g}, node={node}',
      )
    ax.set_xlabel('teacher kNN accuracy (%)')
    ax.set_title(f'{metric} test accuracy')
    ax.grid(alpha=0.3)
  axes[0].set_ylabel('test accuracy (%)')
  axes[1].legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format='png', dpi=120)
  plt.close(fig)
  fileio.write_bytes(path, png.getvalue())
