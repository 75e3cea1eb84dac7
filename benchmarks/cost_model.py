"""Wall time and on-demand cost of every RMDNet configuration on TPU/GPU systems: an ESTIMATE, not a measurement.

Two steps, two commands:

  # 1. FLOPs from XLA's cost analysis of the real train and eval steps, at the paper's model, on the CPU
  #    (compiles, never runs, the full-width steps: a few minutes; the JSON is committed):
  JAX_PLATFORMS=cpu python -m benchmarks.cost_model measure --out=benchmarks/results/cost_model
  # 2. The tables (seconds): reads that JSON, `launch/grid.sh --list` and benchmarks/results/cpu/throughput.json:
  python -m benchmarks.cost_model table --mfu=0.35 --alt_mfu=0.15 --out=benchmarks/results/cost_model

The model: a stage's work is epochs x images per epoch x FLOP per image of its train step (XLA's count), plus its
evaluation's forward passes (XLA's count of the stages' own eval functions) and, for the kNN monitor, the
similarity matmul (an analytic count). A system does it in

  seconds = FLOP / (chips x peak dense bf16 FLOP/s per chip x MFU)

at an assumed model-FLOP utilisation (`--mfu`). Cost = seconds / 3600 x chips x on-demand price per chip-hour.
Nothing here was run on a TPU or GPU: no accelerator was available when this was written.

`measure` writes OUT/flops.json; `table` writes OUT/cost_model.json and OUT/cost_model.md.
"""

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from benchmarks import throughput
from configs import default
from rmdnet_jax.core import models, parallel
from rmdnet_jax.datasets import data
from rmdnet_jax.stages import distill, simsiam

# As rmdnet_jax.main: the steps whose FLOPs are counted are the ones training compiles.
jax.config.update('jax_threefry_partitionable', False)

CIFAR_TRAIN = 50_000
CIFAR_TEST = 10_000
STEPS = ('simsiam', 'rgrl', 'ce')
DEFAULT_FLOPS = os.path.join('benchmarks', 'results', 'cost_model', 'flops.json')
DEFAULT_CPU = os.path.join('benchmarks', 'results', 'cpu', 'throughput.json')
# A CPU run of throughput.py --compare-torch: PyTorch's FLOP counter beside XLA's for the same steps.
DEFAULT_TORCH_COUNT = os.path.join('benchmarks', 'results', 'cpu', 'compare_torch', 'throughput.json')
SOURCES_READ_ON = '2026-12-02'


@dataclasses.dataclass(frozen=True)
class System:
  """One machine of the table: its chips, their published peak and (where found) their on-demand price."""

  key: str  # what --price calls it
  name: str
  chips: int
  peak_tflops: float  # dense bf16, per chip
  peak_source: str
  price_per_chip_hour: Optional[float]  # USD, on demand; None: not found (the tables say so)
  price_source: str


# TPU VM prices: SkyPilot's catalog of GCP prices (github.com/skypilot-org/skypilot-catalog, catalogs/v8/gcp/vms.csv
# at commit 006059e0f18acb1341e22a27751e9f80df6ba92f; the stored copy carries no date), on demand, per VM-hour.
_SKYPILOT = 'skypilot-catalog catalogs/v8/gcp/vms.csv @006059e, on demand'
_H100_PRICE = (
    'GCP a3-highgpu-8g, us-central1, on demand: $88.49/h for 8 H100 80GB (VM with its 208 vCPUs, 1,872 GB '
    'and 6 TB local SSD) / 8 (the -2g and -4g VMs give the same per GPU); Cloud Billing Catalog snapshot '
    'of 2025-03-06 in github.com/Cyclenerd/google-cloud-pricing-cost-calculator pricing.yml'
)

SYSTEMS = (
    System(
        'v4-8',
        'v4-8',
        4,
        275.0,
        'cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16 per chip; v4-8 = 4 chips (8 cores)',
        12.88 / 4,
        f'tpu-v4-8, us-central2-b (the only v4 zone): $12.88/h / 4 chips; {_SKYPILOT}',
    ),
    System(
        'v5e-8',
        'v5e-8 (v5litepod-8)',
        8,
        197.0,
        'cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16 per chip, 8 chips',
        9.60 / 8,
        f'tpu-v5litepod-8, us-central1: $9.60/h / 8 chips; {_SKYPILOT}',
    ),
    System(
        'v5p-8',
        'v5p-8',
        4,
        459.0,
        'cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16 per chip; v5p-8 = 2x2x1 = 4 chips',
        16.80 / 4,
        f'tpu-v5p-8, us-central1: $16.80/h / 4 chips; {_SKYPILOT}',
    ),
    System(
        'v6e-8',
        'v6e-8',
        8,
        918.0,
        'cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16 per chip, 8 chips',
        21.60 / 8,
        f'tpu-v6e-8, us-central1: $21.60/h / 8 chips; {_SKYPILOT}',
    ),
    System(
        'h100',
        '1x H100 SXM',
        1,
        989.4,
        'NVIDIA H100 SXM: 1,979 TFLOP/s bf16 with 2:4 sparsity, 989.4 dense',
        88.49 / 8,
        _H100_PRICE,
    ),
)

# Issue #6's H100 figures for the SimSiam step, bf16, batch 512 per chip (benchmarks/README.md, "GPU / TPU"): neither
# was measured here. They put the assumed MFU in scale.
H100_SIMSIAM_REFERENCES = (
    ('the PyTorch peer with torch.compile, issue #6, not reproduced here', 22_200),
    ("issue #6's target for the JAX step, not measured", 33_000),
)


# --- the arithmetic -------------------------------------------------------------------------------------------


def wall_seconds(flop: float, chips: int, peak_tflops: float, mfu: float) -> float:
  """Seconds to do `flop` on `chips` chips of `peak_tflops` (per chip) at model-FLOP utilisation `mfu`."""
  if flop < 0 or chips < 1 or peak_tflops <= 0 or not 0 < mfu <= 1:
    raise ValueError(
        f'wall_seconds needs flop >= 0, chips >= 1, peak > 0 and 0 < mfu <= 1; got {flop}, {chips}, '
        f'{peak_tflops}, {mfu}.'
    )
  return flop / (chips * peak_tflops * 1e12 * mfu)


def cost_usd(seconds: float, chips: int, price_per_chip_hour: Optional[float]) -> Optional[float]:
  """On-demand cost of holding `chips` chips for `seconds`; None where the price is unknown."""
  if price_per_chip_hour is None:
    return None
  return seconds / 3600 * chips * price_per_chip_hour


def stage_work(
    flops: dict,
    stage: str,
    epochs: int,
    batch: int,
    chips: int,
    *,
    eval_every_epochs: int = 1,
    train_size: int = CIFAR_TRAIN,
    test_size: int = CIFAR_TEST,
    track_memorization: bool = True,
) -> dict:
  """FLOP of one stage on `chips` chips: {'train', 'eval', 'eval_one_chip'} (the last runs on a single chip).

  Args:
    flops: the `measure` record (steps, forward, relation).
    stage: 'rm' (SimSiam + kNN monitor), 'rgrl' (RMDNet) or 'ce' (the baseline), the latter two with test
      accuracy (and, with `track_memorization`, a pass over the training set) at each evaluation.
    epochs, batch: the stage's epochs and global batch; an epoch is train_size // batch steps, as
      `loop.Schedule.for_stage` makes it.
    chips: every chip computes the RGRL relation loss on the gathered global batch, so chips - 1 extra copies of
      it (XLA's count at the measured batch) are added per step; the measured step already holds one.
  """
  step = {'rm': 'simsiam', 'rgrl': 'rgrl', 'ce': 'ce'}[stage]
  images = epochs * (train_size // batch) * batch
  per_image = flops['steps'][step]['flops_per_image']
  train = images * per_image
  if stage == 'rgrl':
    train += epochs * (train_size // batch) * (chips - 1) * flops['relation']['flops']
  evaluations = epochs // eval_every_epochs if eval_every_epochs else 0
  one_chip = 0.0
  if stage == 'rm':
    # kNN monitor: teacher features of the training and test sets, then test x train similarities (on one chip).
    forward = evaluations * (train_size + test_size) * flops['forward']['teacher_features']['flops_per_image']
    one_chip = evaluations * 2.0 * test_size * train_size * flops['forward']['teacher_features']['dim']
  else:
    # Test accuracy (+ the training set's predictions for the memorisation curve) each evaluation, and the final
    # report: one more evaluation and one more pass over the training set.
    per_eval = test_size + (train_size if track_memorization else 0)
    forward = (evaluations * per_eval + per_eval + train_size) * flops['forward']['student_logits']['flops_per_image']
  return {'train': train, 'eval': forward, 'eval_one_chip': one_chip}


def stage_seconds(work: dict, system: System, mfu: float) -> float:
  """Wall time of `stage_work` on `system` at `mfu`."""
  return wall_seconds(work['train'] + work['eval'], system.chips, system.peak_tflops, mfu) + wall_seconds(
      work['eval_one_chip'], 1, system.peak_tflops, mfu
  )


# --- the grid ---------------------------------------------------------------------------------------------------


def grid_cells(lines: Sequence[str]) -> list[dict]:
  """`launch/grid.sh --list` lines -> [{'name', 'kind': rm | rgrl | ce, 'epochs', 'batch'}].

  A cell with --config.stages=rm is a SimSiam teacher; one with --config.method.distill=False is the CE
  baseline; any other RGRL cell is RMDNet. Epochs and batch come from configs/default.py unless the cell
  overrides them.
  """
  config = default.get_config()
  cells = []
  for line in lines:
    line = line.strip()
    if not line or line.startswith('#'):
      continue
    words = shlex.split(line)
    name = words[0]
    overrides = dict(w[len('--config.') :].split('=', 1) for w in words if w.startswith('--config.') and '=' in w)
    stages = overrides.get('stages', config.stages).split(',')
    if stages == ['rm']:
      kind, stage_cfg = 'rm', 'rm'
    elif stages == ['rgrl']:
      kind = 'ce' if overrides.get('method.distill', 'True') == 'False' else 'rgrl'
      stage_cfg = 'rgrl'
    else:
      raise ValueError(
          f'Grid cell {name!r} runs stages {stages}; the cost model knows cells of one stage, rm or '
          'rgrl, as launch/grid.sh makes them.'
      )
    stage = config[stage_cfg]
    cells.append(
        {
            'name': name,
            'kind': kind,
            'epochs': int(overrides.get(f'{stage_cfg}.epochs', stage.epochs)),
            'batch': int(overrides.get(f'{stage_cfg}.batch_size', stage.batch_size)),
        }
    )
  return cells


def list_grid(grid: str = 'paper') -> list[str]:
  """The cells `launch/grid.sh --list --grid=GRID` prints, one per line."""
  done = subprocess.run(
      ['bash', os.path.join('launch', 'grid.sh'), '--list', f'--grid={grid}'],
      cwd=throughput.REPO_ROOT,
      capture_output=True,
      text=True,
      check=False,
  )
  if done.returncode:
    raise ValueError(f'launch/grid.sh --list failed ({done.stderr.strip()}); it needs bash 4.4 or newer.')
  return done.stdout.splitlines()


# --- measure: XLA's FLOPs of the real steps ---------------------------------------------------------------------


def _eval_flops(fn, variables, batch: int, image_size: int) -> dict:
  images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.uint8)
  _, flops = throughput.compile_with_flops(jax.jit(fn).lower(jax.device_get(variables), images))
  return {
      'batch': batch,
      'flops_per_step': flops['flops'],
      'flops_per_image': flops['flops'] / batch,
      'flops_source': flops['flops_source'],
  }


def measure(args: argparse.Namespace, argv: Sequence[str] = ()) -> dict:
  """XLA's FLOPs per image of the stages' train steps (the `.lower()` of `parallel.pmap_step(stage.step)`, as
  `benchmarks.throughput` times it) and of their eval functions, at the given model; writes OUT/flops.json."""
  kinds = throughput.parse_list(args.steps, 'steps', STEPS)
  devices = jax.device_count()
  for name in ('rm_batch', 'rgrl_batch', 'eval_batch'):
    if getattr(args, name) % devices:
      raise ValueError(f'--{name}={getattr(args, name)} does not split over the {devices} devices; use a multiple.')
  args.seed, args.train_size = 0, CIFAR_TRAIN
  environment = throughput.environment('benchmarks.cost_model', ['measure'] + list(argv))
  config = throughput.make_config(args, args.dtype, args.rgrl_batch)
  dataset = data.load(config.data)
  steps = {}
  for kind in kinds:
    batch = args.rm_batch if kind == 'simsiam' else args.rgrl_batch
    stage = throughput.build_stages(throughput.make_config(args, args.dtype, batch), dataset, (kind,))[kind]
    start = time.perf_counter()
    lowered = parallel.pmap_step(stage.step).lower(
        stage.init_state, throughput.first_batch(stage), jax.random.fold_in(stage.rng, 0), stage.ctx
    )
    _, flops = throughput.compile_with_flops(lowered)
    compile_s = time.perf_counter() - start
    per_chip = batch // devices
    steps[kind] = {
        'global_batch': batch,
        'batch_per_chip': per_chip,
        'flops_per_step_per_chip': flops['flops'],
        'flops_per_image': flops['flops'] / per_chip,
        'flops_source': flops['flops_source'],
        'flops_lowered': flops['flops_lowered'],
        'compile_s': compile_s,
    }
    print(
        f"{kind:8s} global batch {batch:4d}: {flops['flops'] / per_chip / 1e9:.4g} GFLOP/image "
        f"({flops['flops_source']}, compiled in {compile_s:.0f} s)",
        flush=True,
    )

  stages = throughput.build_stages(config, dataset, ('rgrl',))
  eval_batch = args.eval_batch // devices
  layer = config.relation.teacher_layer
  teacher_vars = stages['rgrl'].ctx['teacher']
  teacher = _eval_flops(
      simsiam.encoder_features_fn(config.model, dataset, layer), teacher_vars, eval_batch, args.image_size
  )
  teacher['dim'] = models.teacher_feature_dim(config.model, layer)
  student_vars = stages['rgrl'].init_state.variables
  student = _eval_flops(distill.logits_fn(config, dataset), student_vars, eval_batch, args.image_size)
  relation = throughput.relation_cost(args.rgrl_batch, teacher['dim'], distill.relation_kwargs(config))
  record = {
      'benchmark': 'cost_model_flops',
      'environment': environment,
      'settings': {
          'model': args.model,
          'width': args.width,
          'projector_dim': config.model.projector_dim,
          'predictor_dim': config.model.predictor_dim,
          'image_size': args.image_size,
          'num_classes': args.num_classes,
          'dtype': args.dtype,
          'rm_batch': args.rm_batch,
          'rgrl_batch': args.rgrl_batch,
          'eval_batch': args.eval_batch,
          'num_devices': devices,
          'relation': distill.relation_kwargs(config),
      },
      'steps': steps,
      'forward': {'teacher_features': teacher, 'student_logits': student},
      'relation': {k: relation[k] for k in ('global_batch', 'dim', 'flops', 'flops_source')},
  }
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, 'flops.json')
  with open(path, 'w') as f:
    json.dump(record, f, indent=2)
    f.write('\n')
  print(f'Wrote {path}.', flush=True)
  return record


# --- table ------------------------------------------------------------------------------------------------------


def parse_prices(text: Optional[str]) -> dict:
  """'v5e-8=1.2,v6e-8=2.7' -> {System.key: USD per chip-hour}."""
  prices = {}
  for item in (text or '').split(','):
    if not item.strip():
      continue
    name, sep, value = item.partition('=')
    try:
      prices[name.strip()] = float(value)
    except ValueError:
      sep = ''
    if not sep or prices.get(name.strip(), -1) < 0:
      raise ValueError(f'--price={text!r}: use SYSTEM=USD_PER_CHIP_HOUR pairs, e.g. v5e-8=1.2,v6e-8=2.7.')
  known = [s.key for s in SYSTEMS]
  unknown = [n for n in prices if n not in known]
  if unknown:
    raise ValueError(f'--price names unknown system(s) {", ".join(unknown)}; use {", ".join(known)}.')
  return prices


def with_prices(systems: Sequence[System], prices: dict) -> list[System]:
  return [
      dataclasses.replace(s, price_per_chip_hour=prices[s.key], price_source='given with --price')
      if s.key in prices
      else s
      for s in systems
  ]


def fmt_time(seconds: float) -> str:
  hours = seconds / 3600
  if seconds < 600:
    return f'{seconds / 60:.1f} min'
  if hours < 1:
    return f'{seconds / 60:.0f} min'
  if hours < 48:
    return f'{hours:.1f} h'
  return f'{hours / 24:.1f} d'


def fmt_usd(value: Optional[float]) -> str:
  if value is None:
    return 'price not found'
  return f'${value:,.2f}' if value < 10 else f'${value:,.0f}'


def configurations(flops: dict, cells: Sequence[dict]) -> list[dict]:
  """The table's rows: each stage alone, one RMDNet run, and the grid (its cells added up)."""
  config = default.get_config()
  rm, rgrl = config.rm, config.rgrl
  counts = {k: sum(c['kind'] == k for c in cells) for k in ('rm', 'rgrl', 'ce')}
  return [
      {
          'name': f'RM (SimSiam teacher), {rm.epochs} epochs, batch {rm.batch_size}',
          'parts': [('rm', rm.epochs, rm.batch_size)],
      },
      {
          'name': f'RGRL (RMDNet student), {rgrl.epochs} epochs, batch {rgrl.batch_size}',
          'parts': [('rgrl', rgrl.epochs, rgrl.batch_size)],
      },
      {
          'name': f'CE baseline, {rgrl.epochs} epochs, batch {rgrl.batch_size}',
          'parts': [('ce', rgrl.epochs, rgrl.batch_size)],
      },
      {
          'name': 'one RMDNet run (RM + RGRL)',
          'parts': [('rm', rm.epochs, rm.batch_size), ('rgrl', rgrl.epochs, rgrl.batch_size)],
      },
      {
          'name': (
              f'paper grid, {len(cells)} cells ({counts["rm"]} teachers + {counts["rgrl"]} RMDNet + '
              f'{counts["ce"]} CE), one after another'
          ),
          'parts': [(c['kind'], c['epochs'], c['batch']) for c in cells],
          'grid': True,
      },
  ]


def evaluate(flops: dict, rows: Sequence[dict], systems: Sequence[System], mfus: Sequence[float]) -> list[dict]:
  """Seconds and cost of every row on every system at every MFU."""
  out = []
  for row in rows:
    result = {'name': row['name'], 'grid': row.get('grid', False), 'systems': {}}
    for system in systems:
      works = [stage_work(flops, kind, epochs, batch, system.chips) for kind, epochs, batch in row['parts']]
      flop = sum(w['train'] + w['eval'] + w['eval_one_chip'] for w in works)
      per_mfu = {}
      for mfu in mfus:
        seconds = sum(stage_seconds(w, system, mfu) for w in works)
        per_mfu[str(mfu)] = {'seconds': seconds, 'usd': cost_usd(seconds, system.chips, system.price_per_chip_hour)}
      result['systems'][system.name] = {'flop': flop, 'mfu': per_mfu}
    one_chip = [stage_work(flops, kind, epochs, batch, 1) for kind, epochs, batch in row['parts']]
    result['flop_one_chip'] = sum(w['train'] + w['eval'] + w['eval_one_chip'] for w in one_chip)
    result['eval_share'] = sum(w['eval'] + w['eval_one_chip'] for w in one_chip) / result['flop_one_chip']
    out.append(result)
  return out


def cpu_measured(cpu_record: dict) -> dict:
  """The float32 rows of a measured `throughput.py` CPU run: {step: row} with images/s and achieved FLOP/s."""
  rows = {}
  for r in cpu_record['results']:
    if r['dtype'] == 'float32':
      rows[r['step']] = r
  return rows


def torch_count_note(record: dict, path: str) -> Optional[str]:
  """How much more PyTorch's FLOP counter counted than XLA for the same steps, from a --compare-torch run."""
  ratios = [
      r['torch_gflop_per_image'] / r['gflop_per_image'] - 1
      for r in record.get('results', [])
      if r.get('torch_gflop_per_image') and r.get('gflop_per_image')
  ]
  if not ratios:
    return None
  return (
      f"* XLA's count may be low: for the same steps on the CPU (`{path}`), PyTorch's FLOP counter gave "
      f'{throughput.fmt_pct(min(ratios))} to {throughput.fmt_pct(max(ratios))} more (matmuls and convolutions only); '
      'the times would then be low by as much.'
  )


def _system_rows(results, names, key: str, alt_mfu, field: str, fmt, *, with_pflop: bool) -> list:
  """One table row per configuration (and, with `alt_mfu`, the paper grid at that MFU): `fmt` of `field`
  ('seconds' or 'usd') on every system, after the name (and the one-chip PFLOP)."""
  rows = []
  for r in results:
    lead = f"| {r['name']} | {r['flop_one_chip'] / 1e15:,.0f} | " if with_pflop else f"| {r['name']} | "
    rows.append(lead + ' | '.join(fmt(r['systems'][n]['mfu'][key][field]) for n in names) + ' |')
  if alt_mfu:
    grid = results[-1]
    lead = f'| paper grid at {alt_mfu:.0%} MFU | ' + ('| ' if with_pflop else '')
    rows.append(lead + ' | '.join(fmt(grid['systems'][n]['mfu'][str(alt_mfu)][field]) for n in names) + ' |')
  return rows


def build(
    flops: dict,
    cells: Sequence[dict],
    cpu_record: Optional[dict],
    *,
    mfu: float,
    alt_mfu: Optional[float],
    systems: Sequence[System] = SYSTEMS,
    cpu_path: str = DEFAULT_CPU,
    flops_path: str = DEFAULT_FLOPS,
    torch_record: Optional[dict] = None,
    torch_path: str = DEFAULT_TORCH_COUNT,
    command: str = '',
) -> tuple[dict, str]:
  """The record and the markdown of the time and cost tables."""
  mfus = [mfu] + ([alt_mfu] if alt_mfu else [])
  rows = configurations(flops, cells)
  results = evaluate(flops, rows, systems, mfus)
  s = flops['settings']
  names = [x.name for x in systems]
  key = str(mfu)
  lines = [
      '# Time and cost of the RMDNet configurations: ESTIMATE',
      '',
      f'**ESTIMATE at {mfu:.0%} MFU, not a measurement.** No TPU or GPU was available, so there is no measured '
      'accelerator figure: every time below is XLA-counted FLOP / (chips x published peak x MFU). '
      f"Model: {s['model']} width {s['width']}, projector {s['projector_dim']}, predictor "
      f"{s['predictor_dim']}, {s['image_size']}x{s['image_size']} images; CIFAR {CIFAR_TRAIN:,} training and "
      f'{CIFAR_TEST:,} test images; evaluation every epoch (configs/default.py).',
      '',
      '## Wall time (ESTIMATE)',
      '',
      '| configuration | PFLOP (1 chip) | ' + ' | '.join(names) + ' |',
      '|---|---|' + '---|' * len(names),
  ]
  lines += _system_rows(results, names, key, alt_mfu, 'seconds', fmt_time, with_pflop=True)
  lines += [
      '',
      f'## On-demand cost (ESTIMATE, USD, at {mfu:.0%} MFU)',
      '',
      '| configuration | ' + ' | '.join(names) + ' |',
      '|---|' + '---|' * len(names),
  ]
  lines += _system_rows(results, names, key, alt_mfu, 'usd', fmt_usd, with_pflop=False)

  default_cfg = default.get_config()
  lines += [
      '',
      f'## Implied time per train step (ESTIMATE, {mfu:.0%} MFU, training only)',
      '',
      '| step | global batch | ' + ' | '.join(names) + ' |',
      '|---|---|' + '---|' * len(names),
  ]
  for kind, stage, batch in (
      ('simsiam', 'rm', default_cfg.rm.batch_size),
      ('rgrl', 'rgrl', default_cfg.rgrl.batch_size),
      ('ce', 'ce', default_cfg.rgrl.batch_size),
  ):
    cells_ = []
    for x in systems:
      work = stage_work(flops, stage, 1, batch, x.chips)
      cells_.append(f"{1e3 * wall_seconds(work['train'], x.chips, x.peak_tflops, mfu) / (CIFAR_TRAIN // batch):.2f} ms")
    lines.append(f'| {kind} | {batch} | ' + ' | '.join(cells_) + ' |')
  lines += [
      '',
      'A step of a few milliseconds or less is where the per-step costs this model leaves out (dispatch, the '
      "gradient all-reduce's latency, small per-chip batches: RGRL's 128 is 16 images per chip on 8 chips) "
      'take over: read the times above as lower bounds, and the RGRL and CE ones especially.',
  ]

  lines += [
      '',
      '## Systems',
      '',
      '| system | chips | peak bf16 TFLOP/s per chip | source of the peak | '
      'on-demand USD per chip-hour | source of the price |',
      '|---|---|---|---|---|---|',
  ]
  for x in systems:
    price = '—' if x.price_per_chip_hour is None else f'{x.price_per_chip_hour:.2f}'
    lines.append(f'| {x.name} | {x.chips} | {x.peak_tflops:g} | {x.peak_source} | {price} | {x.price_source} |')

  lines += [
      '',
      "## Inputs: XLA's FLOP count per image",
      '',
      f'From `{flops_path}` (`python -m benchmarks.cost_model measure`): XLA cost analysis of the compiled '
      f"steps as `benchmarks/throughput.py` builds them, {s['dtype']}, on {s['num_devices']} CPU device(s).",
      '',
      '| step | global batch | GFLOP per image | FLOP source |',
      '|---|---|---|---|',
  ]
  for kind, label in (
      ('simsiam', 'RM: SimSiam step (two views)'),
      ('rgrl', 'RGRL: CE + teacher forward + relation terms'),
      ('ce', 'CE baseline step'),
  ):
    st = flops['steps'][kind]
    lines.append(f"| {label} | {st['global_batch']} | {st['flops_per_image'] / 1e9:.4g} | {st['flops_source']} |")
  for key_, label in (
      ('teacher_features', 'eval: teacher features (kNN monitor)'),
      ('student_logits', 'eval: student logits (test accuracy, memorisation)'),
  ):
    fw = flops['forward'][key_]
    lines.append(
        f"| {label} | {fw['batch'] * s['num_devices']} | {fw['flops_per_image'] / 1e9:.4g} | " f"{fw['flops_source']} |"
    )
  rel = flops['relation']
  lines.append(
      f"| relation loss alone, per step (B = {rel['global_batch']}, D = {rel['dim']}), computed on every "
      f"chip | {rel['global_batch']} | {rel['flops'] / rel['global_batch'] / 1e9:.4g} | "
      f"{rel['flops_source']} |"
  )
  shares = ', '.join(f"{r['name'].split(',')[0]} {throughput.fmt_pct(r['eval_share'])}" for r in results[:3])
  lines += ['', f'Evaluation share of the FLOP: {shares}.']

  if cpu_record:
    measured = cpu_measured(cpu_record)
    cs = cpu_record['settings']
    hw = cpu_record['environment']['hardware']
    lines += [
        '',
        f'## Measured: this development CPU only (`{cpu_path}`)',
        '',
        f"{hw['cpu_model']}, {hw['cpu_count']} cores, {cs['model']} width {cs['width']} (not 64), batch "
        f"{cs['batch_per_device'][0]}, float32, measured {cpu_record['environment']['date_utc']}. The last "
        'column applies its achieved FLOP/s to the full-width work above: an extrapolation, not a measurement.',
        '',
        '| step | images/s | GFLOP per image (width ' + str(cs['width']) + ') | achieved GFLOP/s | '
        'the same stage at width 64 at that rate |',
        '|---|---|---|---|---|',
    ]
    for kind, stage, epochs, batch in (
        ('simsiam', 'rm', default_cfg.rm.epochs, default_cfg.rm.batch_size),
        ('rgrl', 'rgrl', default_cfg.rgrl.epochs, default_cfg.rgrl.batch_size),
        ('ce', 'ce', default_cfg.rgrl.epochs, default_cfg.rgrl.batch_size),
    ):
      m = measured.get(kind)
      if not m:
        continue
      achieved = m['achieved_tflops_per_chip'] * 1e12
      work = stage_work(flops, stage, epochs, batch, 1)
      seconds = (work['train'] + work['eval'] + work['eval_one_chip']) / achieved
      lines.append(
          f"| {kind} | {m['images_per_s_per_chip']:.0f} | {m['gflop_per_image']:.4g} | "
          f'{achieved / 1e9:.1f} | {fmt_time(seconds)} ({epochs} epochs) |'
      )
    lines.append('')
    lines.append('No GPU was lent to this task, so there is no measured GPU figure.')

  lines += [
      '',
      '## How the estimate is made',
      '',
      f'* time = FLOP / (chips x peak x MFU); MFU = {mfu:.0%} (`--mfu`) for every step and evaluation pass. '
      'The RGRL batch of 128 is 16 images per chip on 8 chips, where a real MFU is likely lower.',
      f'* An epoch is {CIFAR_TRAIN:,} // batch steps (`loop.Schedule.for_stage`). RGRL adds, per step, '
      'chips - 1 extra copies of the relation loss: every chip computes it on the gathered global batch.',
      '* Evaluation every epoch: RM encodes the training and test sets for the kNN monitor (forward passes, '
      "XLA's count) and compares every test feature with every training feature (2 x test x train x D FLOP, "
      'an analytic count, on one chip); RGRL and CE predict the test set and, for the memorisation curve, the '
      'training set, plus the final report (one more evaluation and one more training-set pass).',
      '* Not modelled: compilation, checkpoint writes, host input, the teacher restore and its kNN check '
      'before RGRL, idle time between grid cells. CIFAR-100 cells are counted as CIFAR-10 (same images; '
      'the 100-way classifier adds < 0.01% of the FLOP).',
      reference_note(flops, systems),
      *[note for note in [torch_count_note(torch_record or {}, torch_path)] if note],
      '* The grid is run one cell after another on one machine (`launch/grid.sh`); its time is the sum of the '
      'cells.',
      f'* Prices and peaks: the sources in the table, read {SOURCES_READ_ON}. Cost = hours x chips x price '
      'per chip-hour (on demand; spot and committed-use prices are lower).',
  ]
  if command:
    lines += ['', f'Command: `{command}`']
  record = {
      'benchmark': 'cost_model',
      'mfu': mfu,
      'alt_mfu': alt_mfu,
      'flops_file': flops_path,
      'systems': [dataclasses.asdict(x) for x in systems],
      'grid_cells': list(cells),
      'results': results,
      'command': command,
  }
  return record, '\n'.join(lines) + '\n'


def reference_note(flops: dict, systems: Sequence[System]) -> str:
  """The MFU that issue #6's H100 images/s for the SimSiam step would be at XLA's FLOP count."""
  h100 = next(x for x in SYSTEMS if x.key == 'h100')
  per_image = flops['steps']['simsiam']['flops_per_image']
  parts = [
      f'{ips:,} images/s ({label}) would be {throughput.fmt_pct(ips * per_image / (h100.peak_tflops * 1e12))}'
      for label, ips in H100_SIMSIAM_REFERENCES
  ]
  return (
      f"* For scale, at XLA's {per_image / 1e9:.4g} GFLOP per SimSiam image on an H100 SXM "
      f'({h100.peak_tflops:g} TFLOP/s): ' + '; '.join(parts) + ' MFU.'
  )


def table(args: argparse.Namespace, argv: Sequence[str] = ()) -> dict:
  """Reads the FLOP record, the grid and the CPU measurements; writes OUT/cost_model.json and .md."""
  if not 0 < args.mfu <= 1 or (args.alt_mfu is not None and not 0 < args.alt_mfu <= 1):
    raise ValueError('--mfu and --alt_mfu are fractions in (0, 1], e.g. --mfu=0.35.')
  systems = with_prices(SYSTEMS, parse_prices(args.price))
  if not os.path.exists(args.flops):
    raise ValueError(f'{args.flops} does not exist; make it first with `python -m benchmarks.cost_model measure`.')
  with open(args.flops) as f:
    flops = json.load(f)
  cpu_record = None
  if args.cpu and os.path.exists(args.cpu):
    with open(args.cpu) as f:
      cpu_record = json.load(f)
  torch_record = None
  if os.path.exists(DEFAULT_TORCH_COUNT):
    with open(DEFAULT_TORCH_COUNT) as f:
      torch_record = json.load(f)
  cells = grid_cells(list_grid(args.grid))
  command = ' '.join(['python', '-m', 'benchmarks.cost_model', 'table'] + list(argv))
  record, markdown = build(
      flops,
      cells,
      cpu_record,
      mfu=args.mfu,
      alt_mfu=args.alt_mfu,
      systems=systems,
      cpu_path=args.cpu,
      flops_path=args.flops,
      torch_record=torch_record,
      command=command,
  )
  json_path, md_path = throughput.write_outputs(args.out, 'cost_model', record, markdown)
  print(markdown)
  print(f'Wrote {json_path} and {md_path}.', flush=True)
  return record


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m benchmarks.cost_model', description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  m = sub.add_parser('measure', help="XLA's FLOPs of the train steps and eval forwards (CPU is enough).")
  m.add_argument('--model', default='resnet18', help='Backbone of teacher and student (model.name).')
  m.add_argument('--width', type=int, default=64, help='Channels of the first stage (model.width).')
  m.add_argument('--projector_dim', type=int, default=None, help='SimSiam projector width (default 2048).')
  m.add_argument('--num_classes', type=int, default=10, help='Classifier outputs.')
  m.add_argument('--image_size', type=int, default=32, help='Square image side in pixels.')
  m.add_argument('--dtype', default='bfloat16', choices=throughput.DTYPES, help='model.dtype of the steps.')
  m.add_argument('--rm_batch', type=int, default=512, help='Global batch of the SimSiam step (the paper: 512).')
  m.add_argument('--rgrl_batch', type=int, default=128, help='Global batch of the RGRL/CE steps (the paper: 128).')
  m.add_argument('--eval_batch', type=int, default=1024, help='Global batch of the eval forwards (eval_batch_size).')
  m.add_argument('--steps', default=','.join(STEPS), help=f'Comma-separated subset of {STEPS}.')
  m.add_argument('--edge_kind', default=None, help='relation.edge_kind (default: configs/default.py).')
  m.add_argument('--teacher_layer', default=None, help='relation.teacher_layer (default: backbone).')
  m.add_argument('--out', default=os.path.dirname(DEFAULT_FLOPS), help='Directory for flops.json.')
  t = sub.add_parser('table', help='The time and cost tables from flops.json (seconds).')
  t.add_argument('--flops', default=DEFAULT_FLOPS, help='The JSON `measure` wrote.')
  t.add_argument(
      '--cpu',
      default=DEFAULT_CPU,
      help='A CPU throughput.json whose measured figures are shown beside ' "the estimate ('' for none).",
  )
  t.add_argument('--mfu', type=float, default=0.35, help='Assumed model-FLOP utilisation, a fraction.')
  t.add_argument('--alt_mfu', type=float, default=0.15, help='A second MFU for the grid rows (0 for none).')
  t.add_argument(
      '--price',
      default='',
      help='On-demand USD per chip-hour, e.g. v5e-8=1.2,v6e-8=2.7; overrides '
      'the built-in prices and fills those not found.',
  )
  t.add_argument('--grid', default='paper', help='launch/grid.sh --grid whose cells are added up.')
  t.add_argument('--out', default=os.path.dirname(DEFAULT_FLOPS), help='Directory for cost_model.json/.md.')
  return parser


def main(argv: Optional[Sequence[str]] = None) -> dict:
  """Parses `argv` (default: the command line) and runs `measure` or `table`; returns the JSON record."""
  argv = list(sys.argv[1:] if argv is None else argv)
  args = build_parser().parse_args(argv)
  try:
    if args.command == 'measure':
      return measure(args, argv[1:])
    if args.alt_mfu == 0:
      args.alt_mfu = None
    return table(args, argv[1:])
  except ValueError as e:
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  main()
