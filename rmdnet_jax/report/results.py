"""The results table of a set of runs: mean ± std over seeds, the gain RMDNet brings, published numbers beside.

  python -m rmdnet_jax.report.results 'workdirs/grid/*' [--markdown=results.md] [--csv=results.csv]
  python -m rmdnet_jax.report.results 'workdirs/study/*' --per_run [--all]   # one row per run
  python -m rmdnet_jax.report.results --ladder results/ladder/runs   # the teacher-quality ladder (rmdnet_jax.report.ladder)

Each WORKDIR (local globs are expanded here, so quote them; gs:// paths are taken literally) is a run of
rmdnet_jax.main. Its config.json gives the row, (dataset, noise kind, rate), and the column, (method, RMDNet on or
off); its results.json gives the best and last test accuracy. CIFAR-N runs are rows of their base dataset with
noise 'human/LABEL' (e.g. cifar10, human/aggre) and no rate: the human labels have their own. Runs without results.json are unfinished: they are
listed in their own section and never averaged. Runs without an RGRL stage (the grid's SimSiam teacher cells) have
no test accuracy and are left out. The markdown goes to stdout and, with --markdown, to a file; --csv writes one
row per (setting, method, RMDNet) cell.
"""

import argparse
import csv
import dataclasses
import glob
import io
import json
import math
import os
import sys
from typing import Optional, Sequence

from rmdnet_jax import fileio
from rmdnet_jax.run import config_files

# Best test accuracy (%) published by other papers (PreAct ResNet-18, DivideMix protocol), copied from
# shared/paper/rmdnet.md, keyed by (dataset, noise kind, rate). These are comparison points, not RMDNet's numbers.
# The CIFAR-N rows (noise 'human/LABEL', rate 0) are CE as published with CIFAR-N (Wei et al., ICLR 2022), under
# that paper's protocol, not DivideMix's; the notes give no other CIFAR-N numbers.
PUBLISHED_METHODS = ('CE', 'DivideMix')
PUBLISHED = {
    ('cifar10', 'symmetric', 0.2): {'CE': 86.8, 'DivideMix': 96.1},
    ('cifar10', 'symmetric', 0.5): {'CE': 79.4, 'DivideMix': 94.6},
    ('cifar10', 'symmetric', 0.8): {'CE': 62.9, 'DivideMix': 93.2},
    ('cifar10', 'symmetric', 0.9): {'CE': 42.7, 'DivideMix': 76.0},
    ('cifar10', 'asymmetric', 0.4): {'CE': 85.0, 'DivideMix': 93.4},
    ('cifar100', 'symmetric', 0.2): {'CE': 62.0, 'DivideMix': 77.3},
    ('cifar100', 'symmetric', 0.5): {'CE': 46.7, 'DivideMix': 74.6},
    ('cifar100', 'symmetric', 0.8): {'CE': 19.9, 'DivideMix': 60.2},
    ('cifar100', 'symmetric', 0.9): {'CE': 10.1, 'DivideMix': 31.5},
    ('cifar10', 'human/aggre', 0.0): {'CE': 87.77},
    ('cifar10', 'human/worst', 0.0): {'CE': 77.69},
    ('cifar100', 'human/noisy', 0.0): {'CE': 55.50},
}
HUMAN_NOISE = 'human'
# tfds' CIFAR-N builders hold the CIFAR images: their runs are rows of the base dataset.
BASE_DATASETS = {'cifar10_n': 'cifar10', 'cifar100_n': 'cifar100'}
METRICS = (('best', 'test_accuracy_best'), ('last', 'test_accuracy_last'))
CSV_FIELDS = (
    'dataset',
    'noise',
    'rate',
    'method',
    'rmdnet',
    'n',
    'seeds',
    'best_mean',
    'best_std',
    'last_mean',
    'last_std',
    'rmdnet_gain_best',
    'rmdnet_gain_last',
) + tuple(f'published_{m.lower()}_best' for m in PUBLISHED_METHODS)


@dataclasses.dataclass(frozen=True)
class Run:
  """One work directory: where it sits in the table, and its accuracies in % (None while unfinished)."""

  workdir: str
  setting: tuple  # (dataset, noise kind, rate); CIFAR-N: (base dataset, 'human/LABEL', 0.0)
  column: tuple  # (method, rmdnet on)
  seed: int
  best: Optional[float]
  last: Optional[float]


def expand(patterns: Sequence[str]) -> list:
  """Work directories named by `patterns`, local globs expanded, in sorted order without duplicates."""
  out = []
  for pattern in patterns:
    matches = [pattern] if fileio.is_remote(pattern) else sorted(glob.glob(pattern)) or [pattern]
    out.extend(m.rstrip('/') for m in matches)
  return sorted(set(out))


def load_run(workdir: str) -> Optional[Run]:
  """The run in `workdir`, or None when it has no RGRL stage (nothing to report).

  Raises:
    FileNotFoundError: `workdir` has no config.json, so it is not a run's work directory.
  """
  config_path = os.path.join(workdir, 'config.json')
  if not fileio.exists(config_path):
    raise FileNotFoundError(f'{workdir} has no config.json; name work directories of rmdnet_jax.main runs.')
  config = json.loads(fileio.read_text(config_path))
  if 'rgrl' not in [s.strip() for s in config['stages'].split(',')]:
    return None
  results_path = os.path.join(workdir, 'results.json')
  results = json.loads(fileio.read_text(results_path)) if fileio.exists(results_path) else {}
  best, last = (100.0 * results[key] if key in results else None for _, key in METRICS)
  noise = config['noise']
  kind = noise['kind']
  # Without noise, and with human noise, the rate key is unused; zero it so that runs with different leftover
  # rates share a row.
  rate = 0.0 if kind in ('none', HUMAN_NOISE) else round(float(noise['rate']), 4)
  if kind == HUMAN_NOISE:
    kind = f'{HUMAN_NOISE}/{noise.get("human_label", "")}'
  dataset = BASE_DATASETS.get(config['data']['name'], config['data']['name'])
  return Run(
      workdir=workdir,
      setting=(dataset, kind, rate),
      column=(config['method']['name'], bool(config['method']['distill'])),
      seed=int(config['seed']),
      best=best,
      last=last,
  )


def mean_std(values: Sequence[float]) -> tuple:
  """Mean and sample standard deviation (ddof 1; nan for a single value, which has no spread to estimate)."""
  n = len(values)
  mean = sum(values) / n
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float('nan')
  return mean, std


@dataclasses.dataclass
class Table:
  """Finished runs grouped by setting and column, plus the unfinished ones."""

  cells: dict  # (setting, column) -> [Run]
  settings: list  # sorted
  columns: list  # sorted: by method, RMDNet off before on
  unfinished: list  # [Run]

  def stats(self, setting, column, metric: str) -> Optional[tuple]:
    runs = self.cells.get((setting, column))
    return mean_std([getattr(r, metric) for r in runs]) + (len(runs),) if runs else None

  def gain(self, setting, method: str, metric: str) -> Optional[float]:
    on, off = self.stats(setting, (method, True), metric), self.stats(setting, (method, False), metric)
    return on[0] - off[0] if on and off else None


def build_table(runs: Sequence[Run]) -> Table:
  cells, unfinished = {}, []
  for run in runs:
    if run.best is None or run.last is None:
      unfinished.append(run)
    else:
      cells.setdefault((run.setting, run.column), []).append(run)
  for group in cells.values():
    group.sort(key=lambda r: (r.seed, r.workdir))
  return Table(
      cells=cells,
      settings=sorted({s for s, _ in cells}),
      columns=sorted({c for _, c in cells}),
      unfinished=sorted(unfinished, key=lambda r: (r.setting, r.column, r.seed, r.workdir)),
  )


def _column_name(column: tuple) -> str:
  method, rmdnet = column
  return f'{method} + RMDNet' if rmdnet else method


def _cell(stats: Optional[tuple]) -> str:
  if stats is None:
    return '—'
  mean, std, n = stats
  return f'{mean:.2f} (n=1)' if n == 1 else f'{mean:.2f} ± {std:.2f} (n={n})'


def _signed(x: Optional[float]) -> str:
  return '—' if x is None else f'{x:+.2f}'


def _gain_methods(table: Table) -> list:
  methods = sorted({m for m, _ in table.columns})
  return [m for m in methods if (m, True) in table.columns and (m, False) in table.columns]


def _is_human(setting: tuple) -> bool:
  return setting[1].startswith(f'{HUMAN_NOISE}/')


def _rate(setting: tuple, missing: str = '—') -> str:
  # Human noise has no rate to show: the rate column is the synthetic flip rate, and CIFAR-N labels bring their own.
  return missing if _is_human(setting) else f'{setting[2]:g}'


def markdown(table: Table) -> str:
  """The results as markdown: a best and a last test-accuracy table, then the unfinished runs."""
  gain_methods = _gain_methods(table)
  published = [m for m in PUBLISHED_METHODS if any(m in PUBLISHED.get(s, {}) for s in table.settings)]
  lines = ['# Results', '']
  for metric, _ in METRICS:
    header = (
        ['dataset', 'noise', 'rate']
        + [_column_name(c) for c in table.columns]
        + [f'{m}: RMDNet gain' for m in gain_methods]
    )
    if metric == 'best':
      header += [f'published {m}' for m in published]
    lines += [
        f'## {metric.capitalize()} test accuracy (%)',
        '',
        '| ' + ' | '.join(header) + ' |',
        '|' + '---|' * len(header),
    ]
    for setting in table.settings:
      row = [setting[0], setting[1], _rate(setting)]
      row += [_cell(table.stats(setting, c, metric)) for c in table.columns]
      row += [_signed(table.gain(setting, m, metric)) for m in gain_methods]
      if metric == 'best':
        row += [f'{PUBLISHED[setting][m]:.1f}' if m in PUBLISHED.get(setting, {}) else '—' for m in published]
      lines.append('| ' + ' | '.join(row) + ' |')
    lines.append('')
  lines.append(
      'Mean ± sample standard deviation over seeds (n runs). RMDNet gain: mean with RMDNet minus mean '
      'without, same method and setting.'
  )
  if any(s in PUBLISHED and not _is_human(s) for s in table.settings):
    lines.append(
        'Published: best test accuracy reported by other papers (PreAct ResNet-18, DivideMix protocol; '
        'paper/rmdnet.md), not RMDNet results.'
    )
  if any(s in PUBLISHED and _is_human(s) for s in table.settings):
    lines.append(
        'Published CIFAR-N (human/…): CE as published with CIFAR-N (Wei et al., ICLR 2022, its own '
        'protocol; paper/rmdnet.md), not RMDNet results.'
    )
  lines.append('')
  if table.unfinished:
    lines += [
        '## Unfinished (no results.json; not averaged)',
        '',
        '| workdir | dataset | noise | rate | method | RMDNet | seed |',
        '|---|---|---|---|---|---|---|',
    ]
    for r in table.unfinished:
      lines.append(
          f'| {r.workdir} | {r.setting[0]} | {r.setting[1]} | {_rate(r.setting)} | {r.column[0]} | '
          f'{"on" if r.column[1] else "off"} | {r.seed} |'
      )
    lines.append('')
  return '\n'.join(lines)


def _number(x: Optional[float]) -> str:
  return '' if x is None or math.isnan(x) else f'{x:.4f}'


def csv_text(table: Table) -> str:
  """One row per (setting, method, RMDNet) cell of finished runs; empty fields where a value does not exist."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(CSV_FIELDS)
  for setting in table.settings:
    for column in table.columns:
      runs = table.cells.get((setting, column))
      if not runs:
        continue
      best, last = table.stats(setting, column, 'best'), table.stats(setting, column, 'last')
      gains = [table.gain(setting, column[0], m) if column[1] else None for m, _ in METRICS]
      writer.writerow(
          [
              setting[0],
              setting[1],
              _rate(setting, ''),
              column[0],
              str(column[1]).lower(),
              len(runs),
              ' '.join(str(r.seed) for r in runs),
              _number(best[0]),
              _number(best[1]),
              _number(last[0]),
              _number(last[1]),
          ]
          + [_number(g) for g in gains]
          + [_number(PUBLISHED.get(setting, {}).get(m)) for m in PUBLISHED_METHODS]
      )
  return out.getvalue()


# Config keys that never tell two runs' results apart (paths, logging, bookkeeping): left out of the per-run view.
# The teacher's checkpoint path stays: it tells which runs distilled from a teacher.
NOT_SETTINGS = tuple(k for k in config_files.RESUMABLE_KEYS if k != 'relation.teacher_checkpoint')
# Final training diagnostics of the relation terms, read from the last RGRL row of metrics.jsonl.
DIAGNOSTICS = (
    'node',
    'edge',
    'method',
    'node_diag_cos',
    'node_offdiag_rms',
    'teacher_graph_mean',
    'student_graph_mean',
    'graph_corr',
)


def _read_json(path: str) -> dict:
  return json.loads(fileio.read_text(path)) if fileio.exists(path) else {}


def run_rows(workdirs: Sequence[str]) -> tuple:
  """(setting keys in which the runs differ, one row per RGRL run): its differing settings, results.json and the
  last logged value of each of DIAGNOSTICS."""
  configs, rows = {}, []
  for w in workdirs:
    # Brought up to date, so that runs saved before a key was renamed or added line up with newer ones.
    config = config_files.read_saved_config(w) or {}
    if 'rgrl' in str(config.get('stages', '')).split(','):
      configs[w] = {k: v for k, v in config.items() if k not in NOT_SETTINGS and not k.startswith('logging.')}
  keys = sorted({k for c in configs.values() for k in c if len({repr(o.get(k)) for o in configs.values()}) > 1})
  for w, config in configs.items():
    last = {}
    path = os.path.join(w, 'metrics.jsonl')
    for line in (fileio.read_text(path).splitlines() if fileio.exists(path) else []):
      row = json.loads(line) if line.strip() else {}
      last.update({k: row[f'rgrl/{k}'] for k in DIAGNOSTICS if f'rgrl/{k}' in row})
    rows.append(
        {
            'workdir': w,
            'settings': {k: config.get(k) for k in keys},
            'results': _read_json(os.path.join(w, 'results.json')),
            'diagnostics': last,
        }
    )
  return keys, rows


def _setting(value) -> str:
  if isinstance(value, str) and '/' in value:
    return '/'.join(value.rstrip('/').split('/')[-2:])  # a path: its last two parts name it
  return str(value)


def _pct(x) -> str:
  return '—' if x is None else f'{100 * x:.2f}'


# The per-run table's results.json columns (in %): (header, key). The first four are always shown; `all_columns`
# adds the rest and the DIAGNOSTICS.
PER_RUN_RESULTS = (
    ('best', 'test_accuracy_best'),
    ('last', 'test_accuracy_last'),
    ('teacher kNN', 'teacher_knn_accuracy'),
    ('memorised noisy', 'train_memorized_noisy_subset'),
    ('clean-subset train acc', 'train_accuracy_clean_subset'),
)
PER_RUN_SHOWN = 4


def per_run_markdown(keys: list, rows: list, *, all_columns: bool = False) -> str:
  """One row per run: the settings in which runs differ, best and last test accuracy, the teacher's kNN accuracy and
  memorisation of the mislabelled examples; `all_columns` adds the clean subset's training accuracy and the final
  relation diagnostics."""
  shown = PER_RUN_RESULTS if all_columns else PER_RUN_RESULTS[:PER_RUN_SHOWN]
  diagnostics = DIAGNOSTICS if all_columns else ()
  header = ['run'] + keys + [name for name, _ in shown] + [f'final {d}' for d in diagnostics]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for r in sorted(rows, key=lambda r: [repr(r['settings'][k]) for k in keys] + [r['workdir']]):
    res, diag = r['results'], r['diagnostics']
    cells = (
        [os.path.basename(r['workdir'].rstrip('/'))]
        + [_setting(r['settings'][k]) for k in keys]
        + [_pct(res.get(key)) for _, key in shown]
        + [f'{diag[d]:.3f}' if d in diag else '—' for d in diagnostics]
    )
    lines.append('| ' + ' | '.join(cells) + ' |')
  note = (
      'Accuracies in %. teacher kNN: the restored teacher on clean labels (a monitor). memorised noisy: '
      'share of the mislabelled training examples predicted as their noisy label.'
  )
  if all_columns:
    note += (
        ' final: last logged training value; node_diag_cos = mean cos(t_i, s_i), node_offdiag_rms = RMS of '
        'cos(t_i, s_j), j != i.'
    )
  else:
    note += " --all adds the clean subset's training accuracy and the final relation diagnostics."
  lines += ['', note]
  return '\n'.join(lines)


def k_figure(rows: list, path: str) -> None:
  """Best test accuracy against relation.K, one line per group of RMDNet runs that differ in more than K (e.g. the
  teacher), and each method-only baseline as a horizontal line."""
  import matplotlib  # noqa: PLC0415 (only this option needs it)

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # noqa: PLC0415

  finished = [r for r in rows if r['results'].get('test_accuracy_best') is not None]
  # A line's label: the settings in which it differs from the most common value of each setting.
  common = {}
  for key in (finished[0]['settings'] if finished else {}):
    values = [r['settings'][key] for r in finished]
    common[key] = max(values, key=lambda v: sum(repr(v) == repr(o) for o in values))

  def label(r, skip):
    return ', '.join(
        f'{k.split(".")[-1]}={_setting(v)}'
        for k, v in r['settings'].items()
        if k not in skip and repr(v) != repr(common[k])
    )

  relation_keys = tuple(k for k in common if k.startswith('relation.'))
  reference_batch = int(common.get('rgrl.batch_size', 128))
  fig, ax = plt.subplots(figsize=(10.5, 4.8))
  lines = {}
  for r in finished:
    best = 100 * r['results']['test_accuracy_best']
    if not r['settings'].get('method.distill', True):
      name = f'{r["settings"].get("method.name", "ce")} alone {label(r, ("method.distill", ) + relation_keys)}'
      ax.axhline(best, color='black', linestyle='--' if len(ax.lines) % 2 == 0 else ':', label=name.strip())
      continue
    knn = r['results'].get('teacher_knn_accuracy')
    name = label(r, ('relation.K', 'relation.teacher_checkpoint', 'relation.teacher_step'))
    teacher = f'teacher step {r["settings"].get("relation.teacher_step", 0) or "last"}'
    teacher += f' (kNN {100 * knn:.1f}%)' if knn is not None else ''
    name = teacher + (f', {name}' if name else '')
    k = r['settings'].get('relation.K', 1.0)
    if r['settings'].get('relation.normalize') == 'per_node':
      # Plotted where it equals the unnormalised form at the common batch B: K_none = K_per_node / B.
      k /= reference_batch
      name += f' (at K/{reference_batch})'
    lines.setdefault(name, []).append((k, best))
  for name, points in sorted(lines.items()):
    points.sort()
    ax.plot([k for k, _ in points], [a for _, a in points], marker='o', label=name)
  ax.set_xscale('log')
  ax.set_xlabel('K (weight of the relation terms)')
  ax.set_ylabel('best test accuracy (%)')
  ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  ax.grid(alpha=0.3)
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format='png', dpi=120)
  plt.close(fig)
  fileio.write_bytes(path, png.getvalue())


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m rmdnet_jax.report.results', description=__doc__.split('\n')[0])
  parser.add_argument('workdirs', nargs='+', help='work directories of rmdnet_jax.main runs (local globs expand)')
  parser.add_argument('--markdown', help='also write the markdown to this file')
  parser.add_argument('--csv', help='write the per-cell CSV to this file')
  parser.add_argument(
      '--per_run',
      action='store_true',
      help='one row per run (the settings in which runs differ, relation diagnostics) instead of '
      'the table over seeds',
  )
  parser.add_argument(
      '--all',
      action='store_true',
      help="with --per_run: every column (also the clean subset's training accuracy and the final relation "
      'diagnostics)',
  )
  parser.add_argument('--k_figure', help='with --per_run: also plot best test accuracy against relation.K (PNG)')
  parser.add_argument(
      '--ladder',
      action='store_true',
      help='the teacher-quality ladder (rmdnet_jax.report.ladder) of the runs under each directory given',
  )
  parser.add_argument('--figure', help='with --ladder: also plot accuracy against teacher kNN (PNG)')
  parser.add_argument('--wide', help='with --ladder: also write every results.json number per run (markdown)')
  args = parser.parse_args(argv)
  if args.ladder:
    from rmdnet_jax.report import ladder  # noqa: PLC0415

    runs = [run for directory in expand(args.workdirs) for run in ladder.load_runs(directory)]
    table = ladder.build(runs)
    text = ladder.markdown(table)
    print(text)
    if args.markdown:
      fileio.write_text(args.markdown, text + '\n')
    if args.wide:
      fileio.write_text(args.wide, ladder.wide_markdown(table) + '\n')
    if args.figure:
      ladder.figure(table, args.figure)
    return 0
  if args.per_run:
    keys, rows = run_rows(expand(args.workdirs))
    text = per_run_markdown(keys, rows, all_columns=args.all)
    print(text)
    if args.markdown:
      fileio.write_text(args.markdown, text + '\n')
    if args.k_figure:
      k_figure(rows, args.k_figure)
    return 0
  try:
    runs = [load_run(w) for w in expand(args.workdirs)]
  except FileNotFoundError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  table = build_table([r for r in runs if r is not None])
  text = markdown(table)
  print(text)
  if args.markdown:
    fileio.write_text(args.markdown, text)
  if args.csv:
    fileio.write_text(args.csv, csv_text(table))
  return 0


if __name__ == '__main__':
  sys.exit(main())
