"""This project's SimSiam beside the PyTorch reference (`benchmarks.simsiam_reference`): one figure, one table.

  python -m benchmarks.simsiam_side_by_side jax-init WORKDIR            # a JAX run's epoch 0 -> WORKDIR/init.json
  python -m benchmarks.simsiam_side_by_side collect --out=results/simsiam_reference RUN_DIR...
  python -m benchmarks.simsiam_side_by_side plot results/simsiam_reference

`jax-init` (JAX environment) gives a JAX RM run the epoch 0 the reference logs: the kNN accuracy of the initial
network (`stage.evaluate` of the stage's initial state, the run's own monitor), and its loss and z_std, the means
of `simsiam_step`'s metrics over the run's first epoch of batches and keys without keeping any update. The run's
config is read from WORKDIR/config.json, so the network, data and keys are the run's.

`collect` copies the small files of each run directory (the JAX run's metrics.jsonl, results.json, config.json and
init.json; the reference's metrics.jsonl and run.json; no checkpoints) into OUT/<run directory's name>.

`plot` reads OUT/jax_s*/, OUT/torch_s*/ and any OUT/ablation_<flag>_<value>_s*/ (reference runs with one ablation
flag, e.g. --padding=same) and writes OUT/side_by_side.png (loss, z_std and kNN accuracy against the epoch, each
seed a thin line, each side's mean a thick one over its seeds' min-max band, each ablation's mean dashed) and
OUT/side_by_side.md (per epoch: each side's mean and seed range, and whether this project's mean lies within the
reference's range; the last epoch's mean ± sd of every group, an ablation's change paired with the plain reference
run of its seed). No JAX and no torch needed.
"""

import argparse
import json
import os
import shutil
import sys
import warnings
from typing import Optional, Sequence

import numpy as np

METRICS = ('loss', 'z_std', 'knn_accuracy')
LABELS = {'loss': 'loss (negative cosine)', 'z_std': 'z_std (std of l2-normalised z)', 'knn_accuracy': 'kNN accuracy'}
SIDES = {'jax': 'rmdnet_jax (JAX)', 'torch': 'PyTorch reference'}
JAX_FILES = ('metrics.jsonl', 'results.json', 'config.json', 'init.json')
TORCH_FILES = ('metrics.jsonl', 'run.json')


def read_jsonl(path: str) -> list:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def jax_epochs(run_dir: str) -> dict:
  """{epoch: {metric: value}} of a JAX RM run: rm/loss and rm/z_std of each epoch's log, rm/knn_accuracy of the
  evaluation at the same step, epoch 0 from init.json (when there)."""
  rows = read_jsonl(os.path.join(run_dir, 'metrics.jsonl'))
  logs = [r for r in rows if 'rm/loss' in r and 'rm/epoch' in r]
  if not logs:
    raise ValueError(f'{run_dir}/metrics.jsonl has no rm/loss rows; is it an RM run?')
  steps_per_epoch = logs[0]['step'] / logs[0]['rm/epoch']
  knn = {r['step']: r['rm/knn_accuracy'] for r in rows if 'rm/knn_accuracy' in r}
  epochs = {}
  for r in logs:
    epoch = int(round(r['step'] / steps_per_epoch))
    epochs[epoch] = {'loss': r['rm/loss'], 'z_std': r['rm/z_std'], 'knn_accuracy': knn.get(r['step'])}
  init = os.path.join(run_dir, 'init.json')
  if os.path.exists(init):
    with open(init) as f:
      record = json.load(f)
    epochs[0] = {k: record[k] for k in METRICS}
  return epochs


def torch_epochs(run_dir: str) -> dict:
  """{epoch: {metric: value}} of a reference run (its metrics.jsonl)."""
  return {r['epoch']: {k: r[k] for k in METRICS} for r in read_jsonl(os.path.join(run_dir, 'metrics.jsonl'))}


def load_runs(directory: str) -> dict:
  """{'jax': {name: epochs}, 'torch': {name: epochs}, 'ablations': {ablation: {name: epochs}}} of DIRECTORY/jax_*/,
  DIRECTORY/torch_*/ and DIRECTORY/ablation_<ablation>_s<seed>/ (reference runs with one ablation flag)."""
  runs = {'jax': {}, 'torch': {}, 'ablations': {}}
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if not os.path.isdir(path):
      continue
    side = name.split('_', 1)[0]
    if side in ('jax', 'torch'):
      runs[side][name] = (jax_epochs if side == 'jax' else torch_epochs)(path)
    elif side == 'ablation':
      ablation = name[len('ablation_') :].rsplit('_s', 1)[0]
      runs['ablations'].setdefault(ablation, {})[name] = torch_epochs(path)
  for side in ('jax', 'torch'):
    if not runs[side]:
      raise ValueError(f'No {side}_* run directory in {directory}.')
  return runs


def seed_of(name: str) -> str:
  """'s0' of 'torch_s0', 'jax_s0' or 'ablation_padding_same_s0'."""
  return name.rsplit('_', 1)[-1]


def per_epoch(runs: dict, metric: str) -> tuple:
  """(epochs, values [seeds, epochs]) of one side's runs for `metric`; NaN where a run has no value."""
  epochs = sorted(set().union(*(set(e) for e in runs.values())))
  values = np.array(
      [[np.nan if (v := r.get(e, {}).get(metric)) is None else v for e in epochs] for r in runs.values()], float
  )
  return np.array(epochs), values


def _nan_stats(values: np.ndarray) -> tuple:
  """(mean, min, max) over seeds [seeds, epochs], ignoring NaN; NaN for an epoch no seed has."""
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', RuntimeWarning)  # an epoch no seed evaluated: an all-NaN column
    return np.nanmean(values, 0), np.nanmin(values, 0), np.nanmax(values, 0)


def _cell(mean: float, low: float, high: float, digits: int) -> str:
  if np.isnan(mean):
    return '–'
  return f'{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]'


DIGITS = {'loss': 3, 'z_std': 4, 'knn_accuracy': 3}


def table(runs: dict) -> str:
  """The per-epoch markdown table: each side's mean [min, max] over seeds, and whether the JAX mean lies in the
  reference's seed range."""
  header = ['epoch']
  columns = []
  for metric in METRICS:
    epochs, jax_values = per_epoch(runs['jax'], metric)
    torch_epochs_, torch_values = per_epoch(runs['torch'], metric)
    if list(epochs) != list(torch_epochs_):
      raise ValueError(f'The sides logged different epochs: JAX {list(epochs)}, torch {list(torch_epochs_)}.')
    jax_stats, torch_stats = _nan_stats(jax_values), _nan_stats(torch_values)
    inside = [
        '–' if np.isnan(m) or np.isnan(lo) else ('yes' if lo <= m <= hi else 'no')
        for m, lo, hi in zip(jax_stats[0], *torch_stats[1:])
    ]
    columns += [
        [_cell(*s, DIGITS[metric]) for s in zip(*jax_stats)],
        [_cell(*s, DIGITS[metric]) for s in zip(*torch_stats)],
        inside,
    ]
    header += [f'{metric} JAX', f'{metric} torch', 'in range']
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for i, epoch in enumerate(epochs):
    lines.append('| ' + ' | '.join([str(int(epoch))] + [c[i] for c in columns]) + ' |')
  return '\n'.join(lines)


def _seeds(n: int) -> str:
  return f'{n} seed' + ('s' if n != 1 else '')


def _mean_sd(values) -> str:
  values = np.asarray([v for v in values if v is not None], float)
  if not len(values):
    return '–'
  if len(values) == 1:
    return f'{values[0]:.4f}'
  return f'{values.mean():.4f} ± {values.std(ddof=1):.4f}'


def final_table(runs: dict) -> str:
  """The last epoch: each group's mean ± sd over seeds; for an ablation, also its mean change against the plain
  reference run of the same seed (same initial weights and data order: a paired difference)."""
  last = max(max(r) for r in runs['torch'].values())
  groups = [('rmdnet_jax (JAX)', runs['jax'], None), ('PyTorch reference', runs['torch'], None)]
  groups += [(f'PyTorch reference, --{a.replace("_", "=", 1)}', r, a) for a, r in sorted(runs['ablations'].items())]
  lines = [
      '| run | seeds | loss | z_std | kNN accuracy | paired change vs the reference (loss, z_std, kNN) |',
      '|---|---|---|---|---|---|',
  ]
  plain = {seed_of(name): epochs for name, epochs in runs['torch'].items()}
  for label, group, ablation in groups:
    values = {m: [epochs.get(last, {}).get(m) for epochs in group.values()] for m in METRICS}
    paired = '–'
    if ablation is not None:
      deltas = {m: [] for m in METRICS}
      for name, epochs in group.items():
        reference = plain.get(seed_of(name), {}).get(last)
        if reference is not None and last in epochs:
          for m in METRICS:
            deltas[m].append(epochs[last][m] - reference[m])
      if deltas['loss']:
        paired = ', '.join(f'{np.mean(deltas[m]):+.4f}' for m in METRICS) + f' ({_seeds(len(deltas["loss"]))})'
    seeds = ', '.join(seed_of(n) for n in group)
    lines.append(f'| {label} | {seeds} | ' + ' | '.join(_mean_sd(values[m]) for m in METRICS) + f' | {paired} |')
  return f'Epoch {last} (mean ± standard deviation over seeds):\n\n' + '\n'.join(lines)


def markdown(runs: dict, directory: str) -> str:
  names = {side: ', '.join(sorted(runs[side])) for side in ('jax', 'torch')}
  return '\n'.join(
      [
          '# SimSiam: rmdnet_jax beside an independent PyTorch reference',
          '',
          f"Runs: JAX {names['jax']}; PyTorch {names['torch']} (in `{directory}`). Each cell is the mean over "
          'seeds [min, max]; "in range": the JAX mean lies within the reference\'s seed range. Epoch 0 is the '
          'initial network (its loss and z_std over one epoch of batches without updates). loss and z_std are '
          "means over each epoch's steps (each step's value before its update), kNN is after the epoch.",
          '',
          table(runs),
          '',
          final_table(runs),
          '',
          'Written by `python -m benchmarks.simsiam_side_by_side plot ' + directory + '` (benchmarks/README.md).',
          '',
      ]
  )


def figure(runs: dict, path: str, title: str = '', healthy_z_std: Optional[float] = None) -> None:
  import matplotlib  # noqa: PLC0415  (only `plot` needs it)

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # noqa: PLC0415

  colors = {'jax': 'tab:blue', 'torch': 'tab:orange'}
  ablation_colors = iter(['tab:green', 'tab:purple', 'tab:brown', 'tab:gray'])
  ablation_colors = {a: next(ablation_colors, 'black') for a in sorted(runs['ablations'])}
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  for ax, metric in zip(axes, METRICS):
    for ablation, group in sorted(runs['ablations'].items()):
      epochs, values = per_epoch(group, metric)
      mean = _nan_stats(values)[0]
      keep = ~np.isnan(mean)
      ax.plot(
          epochs[keep],
          mean[keep],
          color=ablation_colors[ablation],
          linewidth=1.5,
          linestyle='--',
          label=f'PyTorch reference --{ablation.replace("_", "=", 1)}, {_seeds(len(group))}',
      )
    for side in ('torch', 'jax'):
      epochs, values = per_epoch(runs[side], metric)
      mean, low, high = _nan_stats(values)
      keep = ~np.isnan(mean)
      ax.fill_between(epochs[keep], low[keep], high[keep], color=colors[side], alpha=0.2, linewidth=0)
      for name, row in zip(runs[side], values):
        ok = ~np.isnan(row)
        ax.plot(epochs[ok], row[ok], color=colors[side], linewidth=0.8, alpha=0.6)
      ax.plot(
          epochs[keep],
          mean[keep],
          color=colors[side],
          linewidth=2,
          marker='o',
          markersize=3,
          label=f'{SIDES[side]}, {_seeds(len(runs[side]))}',
      )
    if metric == 'z_std' and healthy_z_std:
      ax.axhline(healthy_z_std, color='gray', linestyle='--', linewidth=1, label='1/sqrt(dim)')
    ax.set_xlabel('epoch (0 = initial network)')
    ax.set_title(LABELS[metric])
    ax.grid(alpha=0.3)
  handles, labels = axes[1].get_legend_handles_labels()  # the z_std panel's: every line, and 1/sqrt(dim)
  fig.legend(handles[::-1], labels[::-1], loc='lower center', ncol=min(len(labels), 5), fontsize=8, frameon=False)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout(rect=(0, 0.07, 1, 1))
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _describe(directory: str, runs: dict) -> tuple:
  """(figure title, 1/sqrt(projector_dim)) from the first JAX run's config.json, when there."""
  first = os.path.join(directory, sorted(runs['jax'])[0], 'config.json')
  if not os.path.exists(first):
    return '', None
  with open(first) as f:
    c = json.load(f)
  m, rm = c['model'], c['rm']
  train = c['data']['train_subset'] or 'all'
  title = (
      f"SimSiam, {m['name']} width {m['width']}, projector {m.get('projector_layers', 3)} x {m['projector_dim']}, "
      f"predictor {m['predictor_dim']}, init {m.get('init', 'flax')}; {train} CIFAR-10 images, batch "
      f"{rm['batch_size']}, lr {rm['learning_rate']}{' per 256' if rm['scale_lr_by_batch'] else ''}, "
      f"{rm['epochs']} epochs; kNN k={rm['knn_k']} on {c['data']['test_subset'] or 'all'} test images"
  )
  return title, 1.0 / np.sqrt(m['projector_dim'])


def plot(directory: str) -> tuple:
  """Writes DIRECTORY/side_by_side.png and .md; returns their paths."""
  runs = load_runs(directory)
  png, md = os.path.join(directory, 'side_by_side.png'), os.path.join(directory, 'side_by_side.md')
  title, healthy = _describe(directory, runs)
  figure(runs, png, title, healthy)
  with open(md, 'w') as f:
    f.write(markdown(runs, directory))
  return png, md


def collect(run_dirs: Sequence[str], out: str) -> list:
  """Copies each run's small files into OUT/<its name>; returns the copied paths."""
  copied = []
  for run_dir in run_dirs:
    run_dir = run_dir.rstrip('/')
    is_jax = os.path.exists(os.path.join(run_dir, 'config.json'))
    names = JAX_FILES if is_jax else TORCH_FILES
    target = os.path.join(out, os.path.basename(run_dir))
    os.makedirs(target, exist_ok=True)
    for name in names:
      source = os.path.join(run_dir, name)
      if os.path.exists(source):
        copied.append(shutil.copy(source, os.path.join(target, name)))
      elif name != 'init.json':
        raise FileNotFoundError(f'{source} is missing; is {run_dir} a finished run?')
  return copied


def jax_init(workdir: str) -> dict:
  """The JAX run's epoch 0 (see the module docstring), written to WORKDIR/init.json."""
  import time  # noqa: PLC0415

  import jax  # noqa: PLC0415  (only this subcommand needs JAX)
  import ml_collections  # noqa: PLC0415

  jax.config.update('jax_threefry_partitionable', False)  # as rmdnet_jax.main: the run's random numbers
  from rmdnet_jax.core import parallel  # noqa: PLC0415
  from rmdnet_jax.datasets import data
  from rmdnet_jax.run import config_files
  from rmdnet_jax.stages import simsiam
  from rmdnet_jax.run import workdir as workdir_lib  # noqa: PLC0415

  start = time.perf_counter()
  flat = workdir_lib.read_saved_config(workdir)
  if flat is None:
    raise FileNotFoundError(f'{workdir}/config.json is missing; is {workdir} an RM run?')
  config = ml_collections.ConfigDict(config_files.unflatten(flat))
  dataset = data.load(config.data)
  stage = simsiam.stage(config, dataset)
  sched = stage.schedule
  # The stage's own step, not donating the state: every step sees the initial network, and nothing is kept.
  step_fn = parallel.pmap_step(stage.step, donate_state=False)
  batches = data.host_batches(
      dict(stage.arrays),
      start_step=0,
      num_steps=sched.steps_per_epoch,
      global_batch_size=stage.global_batch_size,
      seed=stage.seed,
      stream=stage.stream,
      host_slice=parallel.host_batch_slice(stage.global_batch_size, jax.process_index(), jax.process_count()),
  )
  sums = None
  for step, batch in enumerate(batches):
    _, step_metrics = step_fn(stage.init_state, parallel.shard(batch), jax.random.fold_in(stage.rng, step), stage.ctx)
    sums = step_metrics if sums is None else jax.tree.map(lambda a, b: a + b, sums, step_metrics)
  means = {k: float(v) / sched.steps_per_epoch for k, v in jax.device_get(sums).items()}
  record = {
      'epoch': 0,
      'step': 0,
      'loss': means['loss'],
      'z_std': means['z_std'],
      **stage.evaluate(stage.init_state),
      'seconds': time.perf_counter() - start,
      'command': 'python -m benchmarks.simsiam_side_by_side jax-init ' + workdir,
  }
  with open(os.path.join(workdir, 'init.json'), 'w') as f:
    json.dump(record, f, indent=2)
  return record


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m benchmarks.simsiam_side_by_side', description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  p = sub.add_parser('jax-init', help="A JAX RM run's epoch 0 -> WORKDIR/init.json (needs JAX).")
  p.add_argument('workdir')
  p = sub.add_parser('collect', help="Copy runs' small files into OUT/<name>.")
  p.add_argument('runs', nargs='+')
  p.add_argument('--out', required=True)
  p = sub.add_parser('plot', help='DIR/jax_*, DIR/torch_* -> DIR/side_by_side.png and .md.')
  p.add_argument('directory')
  return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = build_parser().parse_args(argv)
  if args.command == 'jax-init':
    record = jax_init(args.workdir)
    print(json.dumps({k: record[k] for k in ('loss', 'z_std', 'knn_accuracy', 'seconds')}))
  elif args.command == 'collect':
    for path in collect(args.runs, args.out):
      print(path)
  else:
    for path in plot(args.directory):
      print(f'Wrote {path}.')


if __name__ == '__main__':
  main(sys.argv[1:])
