"""Images/s per chip, ms/step, GFLOP/image and MFU of the three train steps, built by the stages that train them.

  python -m benchmarks.throughput --batch_per_device=256,512 --dtype=float32,bfloat16 \
      --peak_tflops=float32=495,bfloat16=989 --out=benchmarks/results/h100

Steps (`STEPS`), each the `loop.Stage` training builds, on synthetic CIFAR-sized data (`data.load`):

* simsiam: `simsiam.stage(...).step`, the RM stage (two views per source image).
* rgrl: `distill.stage(...).step` with the frozen teacher (a fresh RM network's `simsiam.teacher_variables`).
* ce: the CE baseline, `distill.stage(...)` with `method.distill=False` (no teacher forward, no relation terms).

The timed function is `parallel.pmap_step(stage.step)` itself, state donated, on the stage's first batch
(`data.host_batches`) placed on the devices once; XLA's FLOP count is the `cost_analysis()` of
`.lower(...).compile()` of that same pmapped function. Options: `--augment=off` also times the augmentation alone;
`--loop_epochs=N` also runs N epochs of the stage through `loop.train` (host batching or resident data, the
per-epoch log; no evaluation); `--compare-torch` first runs the PyTorch peer (`benchmarks.torch_peer`) in a
subprocess; `--profile_dir` traces a few more steps with `jax.profiler` and lists the slowest XLA ops. Every rgrl
row also times the relation loss alone at the step's global batch (its share of the step).

Writes OUT/throughput.json and OUT/throughput.md, with the hardware, software and command. Single host.
"""

import argparse
import dataclasses
import datetime
import gzip
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from configs import default
from rmdnet_jax.core import augment, models, parallel, relation
from rmdnet_jax.datasets import data, noise
from rmdnet_jax.stages import distill, simsiam
from rmdnet_jax.training import config_checks, loop

# As rmdnet_jax.main: training runs with this setting, which changes the compiled random-number code.
jax.config.update('jax_threefry_partitionable', False)

STEPS = ('simsiam', 'rgrl', 'ce')
DTYPES = ('float32', 'bfloat16')
CIFAR_TRAIN_SIZE = 50_000
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Smallest memory footprint first, so that the allocator's never-reset peak is close to each row's own.
_MEMORY_ORDER = {'ce': 0, 'rgrl': 1, 'simsiam': 2}
_DTYPE_ORDER = {'bfloat16': 0, 'float32': 1}
_AUGMENT = {'simsiam': augment.simsiam_views, 'rgrl': augment.pad_crop_flip, 'ce': augment.pad_crop_flip}
TORCH_MISSING = (
    '--compare-torch needs PyTorch, which the package does not install: pip install -r benchmarks/requirements.txt'
)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m benchmarks.throughput', description=__doc__.split('\n')[0])
  p.add_argument('--model', default='resnet18', help='Backbone of teacher and student (model.name).')
  p.add_argument('--width', type=int, default=64, help='Channels of the first stage (model.width).')
  p.add_argument('--projector_dim', type=int, default=None, help='SimSiam projector width (default 2048).')
  p.add_argument('--num_classes', type=int, default=10, help='Classifier outputs (CIFAR-10: 10).')
  p.add_argument('--batch_per_device', default='256,512', help='Comma-separated per-chip batch sizes.')
  p.add_argument('--dtype', default='float32,bfloat16', help='Comma-separated model.dtype values.')
  p.add_argument('--image_size', type=int, default=32, help='Square image side in pixels.')
  p.add_argument('--train_size', type=int, default=CIFAR_TRAIN_SIZE, help='Synthetic training images (an epoch).')
  p.add_argument('--bench', default=','.join(STEPS), help=f'Comma-separated subset of {STEPS}.')
  p.add_argument('--steps', type=int, default=50, help='Timed steps per repeat.')
  p.add_argument('--repeats', type=int, default=5, help='Timed repeats; the median is reported.')
  p.add_argument('--warmup', type=int, default=5, help='Untimed steps before the repeats.')
  p.add_argument('--augment', choices=('on', 'off'), default='on', help='off: also time the augmentation alone.')
  p.add_argument('--peak_tflops', default=None, help="MFU peak per chip: '989' or 'float32=495,bfloat16=989'.")
  p.add_argument('--edge_kind', default=None, help='relation.edge_kind (default: configs/default.py).')
  p.add_argument('--teacher_layer', default=None, help='relation.teacher_layer (default: backbone).')
  p.add_argument('--seed', type=int, default=0, help='Seed of the data and parameters.')
  p.add_argument('--loop_epochs', type=int, default=0, help='Also run this many epochs (>= 2) through loop.train.')
  p.add_argument('--loop_resident', default='on', help="Data of the loop epochs: on (resident), off (host), 'on,off'.")
  p.add_argument('--compare-torch', '--compare_torch', dest='compare_torch', action='store_true')
  p.add_argument('--torch_device', choices=('auto', 'cpu', 'cuda'), default='auto', help='Device of the peer.')
  p.add_argument('--torch_compile', choices=('auto', 'on', 'off'), default='auto', help='torch.compile in the peer.')
  p.add_argument('--profile_dir', default=None, help='Trace --profile_steps more steps of each row here.')
  p.add_argument('--profile_steps', type=int, default=3, help='Steps per trace (with --profile_dir).')
  p.add_argument('--profile_top', type=int, default=15, help='Ops listed per trace (with --profile_dir).')
  p.add_argument('--out', default='benchmarks/results/latest', help='Directory for throughput.json/.md.')
  return p


# --- parsing and formatting ---------------------------------------------------------------------------------------


def parse_list(text: str, name: str, allowed: Optional[Sequence[str]] = None) -> list:
  """'a,b' -> ['a', 'b'] within `allowed`; without `allowed`, positive integers."""
  values = [v.strip() for v in text.split(',') if v.strip()]
  if allowed is None:
    if not values or not all(v.isdigit() and int(v) > 0 for v in values):
      raise ValueError(f'--{name}={text!r}: use a comma-separated list of positive integers.')
    return [int(v) for v in values]
  if not values or any(v not in allowed for v in values):
    raise ValueError(f'--{name}={text!r}: use a comma-separated subset of {", ".join(allowed)}.')
  return values


def parse_peak_tflops(text: Optional[str]) -> dict:
  """'989' -> {'*': 989.0}; 'float32=495,bfloat16=989' -> one peak per dtype (a dtype left out gets no MFU)."""
  if not text:
    return {}
  if '=' not in text:
    return {'*': float(text)}
  return {k.strip(): float(v) for k, _, v in (item.partition('=') for item in text.split(','))}


def fmt(value: Optional[float], digits: int = 1) -> str:
  return '—' if value is None else f'{value:,.{digits}f}'


def fmt_sig(value: Optional[float], digits: int = 4) -> str:
  return '—' if value is None else f'{value:.{digits}g}'


def fmt_pct(fraction: Optional[float]) -> str:
  if fraction is None:
    return '—'
  percent = 100 * fraction
  return f'{percent:.1f}%' if abs(percent) >= 0.1 or percent == 0 else f'{percent:.2g}%'


def write_outputs(out_dir: str, name: str, record: dict, markdown_text: str) -> tuple[str, str]:
  """Writes OUT/name.json and OUT/name.md; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = os.path.join(out_dir, name + '.json'), os.path.join(out_dir, name + '.md')
  with open(paths[0], 'w') as f:
    json.dump(record, f, indent=2)
    f.write('\n')
  with open(paths[1], 'w') as f:
    f.write(markdown_text)
  return paths


# --- environment ----------------------------------------------------------------------------------------------


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown'


def host_environment(module: str, argv: Sequence[str]) -> dict:
  """Date, host, git revision and command; touches no JAX device (the PyTorch peer records only this)."""

  def git(*args):
    return subprocess.run(('git', '-C', REPO_ROOT) + args, capture_output=True, text=True, check=False).stdout.strip()

  try:
    revision = {'commit': git('rev-parse', 'HEAD') or None, 'dirty': bool(git('status', '--porcelain'))}
  except OSError:
    revision = {'commit': None, 'dirty': None}
  return {
      'date_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      # On a shared host other processes steal cores; the load at the start qualifies CPU timings.
      'hardware': {'cpu_model': cpu_model(), 'cpu_count': os.cpu_count(), 'load_average_1m_at_start': _load()},
      'software': {'python': platform.python_version()},
      'git': revision,
      'command': ' '.join(['python', '-m', module] + list(argv)),
  }


def _load() -> Optional[float]:
  try:
    return round(os.getloadavg()[0], 2)
  except (AttributeError, OSError):
    return None


def environment(module: str, argv: Sequence[str]) -> dict:
  """`host_environment` plus the JAX devices and library versions."""
  record = host_environment(module, argv)
  device = jax.local_devices()[0]
  record['hardware'] = {
      'platform': device.platform,
      'device_kind': device.device_kind,
      'device_count': jax.device_count(),
      'local_device_count': jax.local_device_count(),
      'process_count': jax.process_count(),
      **record['hardware'],
  }
  versions = {m: getattr(importlib.import_module(m), '__version__', None) for m in ('jaxlib', 'flax', 'optax')}
  record['software'].update(
      jax=jax.__version__,
      **versions,
      jax_threefry_partitionable=bool(jax.config.jax_threefry_partitionable),
      xla_flags=os.environ.get('XLA_FLAGS', ''),
  )
  return record


def environment_markdown(env: dict) -> str:
  hw, sw = env['hardware'], env['software']
  return (
      f"- Hardware: {hw['device_count']} x {hw['device_kind']} ({hw['platform']}); host CPU {hw['cpu_model']}, "
      f"{hw['cpu_count']} cores (1-min load average {hw['load_average_1m_at_start']} at the start); "
      f"{hw['process_count']} process(es).\n"
      f"- Software: JAX {sw['jax']} (jaxlib {sw['jaxlib']}), Flax {sw['flax']}, Optax {sw['optax']}, "
      f"Python {sw['python']}; jax_threefry_partitionable={sw['jax_threefry_partitionable']}"
      + (f"; XLA_FLAGS={sw['xla_flags']!r}" if sw['xla_flags'] else '')
      + f".\n- Date (UTC): {env['date_utc']}; git {env['git']['commit'] or 'unknown'}"
      + (' (uncommitted changes)' if env['git']['dirty'] else '')
      + f".\n- Command: `{env['command']}`\n"
  )


def peak_memory_bytes() -> Optional[int]:
  """Largest `peak_bytes_in_use` of the local devices since the process started; None on the CPU."""
  peaks = []
  for device in jax.local_devices():
    try:
      stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without statistics raise various errors
      stats = {}
    if 'peak_bytes_in_use' in stats:
      peaks.append(int(stats['peak_bytes_in_use']))
  return max(peaks) if peaks else None


# --- the stages -----------------------------------------------------------------------------------------------


def make_config(args, dtype: str, global_batch: int, num_devices: Optional[int] = None) -> ml_collections.ConfigDict:
  """configs/default.py with the benchmark's model, dtype, data and batch, validated like a run's. The PyTorch
  peer passes `num_devices=1`, so that it never initialises a JAX backend."""
  config = default.get_config()
  config.data.source = 'synthetic'
  config.data.num_classes = args.num_classes
  config.data.synthetic_image_size = args.image_size
  config.data.synthetic_train_size = max(getattr(args, 'train_size', CIFAR_TRAIN_SIZE), global_batch)
  config.data.synthetic_seed = config.seed = args.seed
  config.model.name = config.student.name = args.model
  config.model.width = config.student.width = args.width
  config.model.dtype = dtype
  config.model.projector_dim = args.projector_dim or config.model.projector_dim
  config.relation.edge_kind = args.edge_kind or config.relation.edge_kind
  config.relation.teacher_layer = args.teacher_layer or config.relation.teacher_layer
  config.rm.batch_size = config.rgrl.batch_size = global_batch
  config_checks.validate(config, num_devices)
  return config


def build_stages(config: ml_collections.ConfigDict, dataset: data.Dataset, kinds: Sequence[str]) -> dict:
  """{kind: loop.Stage} as `pipeline.run` builds them; the rgrl teacher is a fresh RM network's."""
  stages = {}
  if 'simsiam' in kinds or 'rgrl' in kinds:
    stages['simsiam'] = simsiam.stage(config, dataset)
  noisy = noise.NoisyLabels(dataset.train_labels, 0.0, np.eye(dataset.num_classes))
  for kind in ('rgrl', 'ce'):
    if kind in kinds:
      stage_config = config.copy_and_resolve_references()
      stage_config.method.distill = kind == 'rgrl'
      teacher = simsiam.teacher_variables(stages['simsiam'].init_state.variables) if kind == 'rgrl' else None
      stages[kind] = distill.stage(stage_config, dataset, noisy, teacher, writer=None)
  return {k: stages[k] for k in kinds}


def first_batch(stage: loop.Stage) -> dict:
  """The stage's first global batch as the loop makes it, sharded over the devices once, before timing."""
  batch = next(
      data.host_batches(
          dict(stage.arrays), start_step=0, num_steps=1, global_batch_size=stage.global_batch_size,
          seed=stage.seed, stream=stage.stream, host_slice=slice(None),
      )
  )  # fmt: skip
  sharding = NamedSharding(Mesh(np.array(jax.devices()), (parallel.AXIS,)), PartitionSpec(parallel.AXIS))
  return jax.device_put(parallel.shard(batch), sharding)


def compile_with_flops(lowered) -> tuple[Any, dict]:
  """Compiles `lowered`; XLA's FLOPs of one execution (per device for SPMD programs), compiled module first."""

  def flops_of(analysis_fn):
    try:
      analysis = analysis_fn()
    except Exception:  # noqa: BLE001 - optional; some backends do not implement it
      return None
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per partition
      analysis = analysis[0] if analysis else None
    value = (analysis or {}).get('flops')
    return float(value) if value and value > 0 else None

  flops_lowered = flops_of(lowered.cost_analysis)
  compiled = lowered.compile()
  flops_compiled = flops_of(compiled.cost_analysis)
  source = 'xla_cost_analysis_compiled' if flops_compiled else ('xla_cost_analysis_lowered' if flops_lowered else None)
  return compiled, {
      'flops': flops_compiled or flops_lowered,
      'flops_source': source,
      'flops_compiled': flops_compiled,
      'flops_lowered': flops_lowered,
  }


def time_repeats(run_once: Callable[[], Any], repeats: int) -> list[float]:
  """Seconds of `repeats` calls of `run_once`, each ended by one `block_until_ready` (never one per step)."""
  times = []
  # Every input is on the devices already: an implicit transfer inside the timed region is an error, not a number.
  with jax.transfer_guard('disallow'):
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(run_once())
      times.append(time.perf_counter() - start)
  return times


def measure_step(stage: loop.Stage, batch: dict, args, profile_dir: Optional[str] = None) -> dict:
  """Compiles `parallel.pmap_step(stage.step)` (FLOPs from that lowering), then times it from a fresh copy of the
  stage's initial state: `args.warmup` steps, then `args.repeats` x `args.steps`, the median repeat."""
  step = parallel.pmap_step(stage.step)
  count = args.warmup + args.steps * args.repeats + (args.profile_steps if profile_dir else 0)
  keys = [parallel.replicate(jax.random.fold_in(stage.rng, i)) for i in range(count)]
  state = parallel.replicate(jax.device_get(stage.init_state))  # donated: the stage's own copy stays intact
  start = time.perf_counter()
  _, flops = compile_with_flops(step.lower(state, batch, keys[0], stage.ctx))
  compile_s = time.perf_counter() - start
  holder = {'state': state, 'next': 0}
  del state

  def run(n):
    state, first = holder.pop('state'), holder['next']
    for key in keys[first : first + n]:
      state, _ = step(state, batch, key, stage.ctx)
    holder['state'], holder['next'] = state, first + n
    return state

  # The first call finds the executable compiled above in JAX's cache; a first step as slow as the compile
  # would show that it did not.
  start = time.perf_counter()
  jax.block_until_ready(run(1))
  first_step_s = time.perf_counter() - start
  jax.block_until_ready(run(args.warmup - 1))
  seconds = time_repeats(lambda: run(args.steps), args.repeats)
  result = {
      'repeat_seconds': seconds,
      'ms_per_step': 1e3 * statistics.median(seconds) / args.steps,
      'flops_per_step_per_chip': flops['flops'],
      **{k: flops[k] for k in ('flops_source', 'flops_compiled', 'flops_lowered')},
      'compile_s': compile_s,
      'first_step_s': first_step_s,
  }
  if profile_dir:
    with jax.profiler.trace(profile_dir):  # synchronised inside, so the trace holds every traced step
      jax.block_until_ready(run(args.profile_steps))
    result['profile_dir'] = profile_dir
    for name, by_kind in (('top_ops', False), ('top_op_kinds', True)):
      result[name] = trace_top_ops(profile_dir, steps=args.profile_steps, top=args.profile_top, by_kind=by_kind)
  holder.clear()
  return result


def measure_augment(kind: str, stage: loop.Stage, images, args) -> dict:
  """The step's own augmentation (its bound `view_kwargs`) alone, pmapped over the same devices, same keys."""
  view_kwargs = stage.step.keywords['view_kwargs']

  def views(rng, x):
    return _AUGMENT[kind](parallel.per_example_keys(rng, x.shape[0]), x, **view_kwargs)

  fn = parallel.pmap_apply(views)
  keys = [parallel.replicate(jax.random.fold_in(stage.rng, i)) for i in range(args.warmup + args.steps)]
  jax.block_until_ready([fn(k, images) for k in keys[: args.warmup]])
  seconds = time_repeats(lambda: [fn(k, images) for k in keys[args.warmup :]], args.repeats)
  return {
      'augment_ms_per_step': 1e3 * statistics.median(seconds) / args.steps,
      'augment_recipe': _AUGMENT[kind].__name__,
  }


def relation_cost(batch: int, dim: int, relation_kwargs: dict, *, steps: int = 0, repeats: int = 1) -> dict:
  """XLA's FLOPs (and, with `steps`, the ms) of the relation loss's value and gradient w.r.t. the student's
  features, alone on one chip at global batch `batch`: every chip computes it on the gathered global batch."""

  def loss(student, teacher):
    return relation.relation_distillation_loss(teacher, student, **relation_kwargs)[0]

  rng = np.random.default_rng(0)
  student, teacher = (jnp.asarray(rng.standard_normal((batch, dim), np.float32)) for _ in range(2))
  compiled, flops = compile_with_flops(jax.jit(jax.value_and_grad(loss)).lower(student, teacher))
  result = {'global_batch': batch, 'dim': dim, 'flops': flops['flops'], 'flops_source': flops['flops_source']}
  if steps:
    jax.block_until_ready(compiled(student, teacher))
    seconds = time_repeats(lambda: [compiled(student, teacher) for _ in range(steps)], repeats)
    result['ms'] = 1e3 * statistics.median(seconds) / steps
  return result


def loop_epochs(stage: loop.Stage, epochs: int, resident: bool, workdir: str) -> dict:
  """`epochs` epochs of `stage` through `loop.train` (no evaluation, one checkpoint after the last log); the
  loop's own images/s of each epoch, read at its per-epoch log (epoch 1 includes the step's compilation)."""
  sched = stage.schedule
  stage = dataclasses.replace(
      stage,
      init_state=parallel.replicate(jax.device_get(stage.init_state)),
      schedule=dataclasses.replace(
          sched, num_steps=epochs * sched.steps_per_epoch, log_every_steps=sched.steps_per_epoch,
          eval_every_steps=0, checkpoint_every_steps=0,
      ),
      evaluate=None, before_training=None, summarize=None,
  )  # fmt: skip
  writer = _Recorder()
  options = loop.Options(resident_on_device=resident, max_to_keep=1, progress={'bar': False})
  loop.train(stage, workdir=workdir, writer=writer, options=options)
  per_epoch = [row[f'{stage.name}/images_per_second'] for row in writer.rows if f'{stage.name}/epoch' in row]
  return {
      'epochs': epochs,
      'steps_per_epoch': sched.steps_per_epoch,
      'images_per_s_per_epoch': per_epoch,
      'images_per_s_per_chip': per_epoch[-1] / jax.device_count(),
  }


class _Recorder:
  """The loop's metric writer: keeps the scalars (a run's console/TensorBoard/jsonl writes once per epoch)."""

  def __init__(self):
    self.rows = []

  def write_scalars(self, step, scalars):
    del step
    self.rows.append(dict(scalars))

  def flush(self):
    pass


# --- profile --------------------------------------------------------------------------------------------------


def trace_top_ops(trace_dir: str, *, steps: int, top: int = 15, by_kind: bool = False) -> list[dict]:
  """The slowest XLA ops of the newest `jax.profiler` trace under `trace_dir` (stdlib only).

  An op is a trace event naming its HLO instruction (`args.hlo_op`: XLA:CPU thunks, GPU kernels), else any event
  on a `/device:` timeline. Times are inclusive (a while loop contains its body); `by_kind` adds up `NAME.N`.
  Rows {'op', 'module', 'calls', 'total_ms', 'ms_per_step_per_device', 'share'}, slowest first.
  """
  paths = [os.path.join(r, f) for r, _, fs in os.walk(trace_dir) for f in fs if f.endswith('.trace.json.gz')]
  if not paths:
    return []
  with gzip.open(max(paths, key=os.path.getmtime), 'rt') as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  names = {e['pid']: e.get('args', {}).get('name', '') for e in events if e.get('name') == 'process_name'}
  spans = [e for e in events if e.get('ph') == 'X' and 'dur' in e]
  ops = [e for e in spans if 'hlo_op' in e.get('args', {})] or [
      e for e in spans if '/device:' in names.get(e['pid'], '')
  ]
  totals, calls, devices = {}, {}, set()
  for e in ops:
    args = e.get('args', {})
    op = args.get('hlo_op', e['name'])
    key = (re.sub(r'\.\d+$', '', op) if by_kind else op, args.get('hlo_module', ''))
    totals[key] = totals.get(key, 0.0) + float(e['dur'])
    calls[key] = calls.get(key, 0) + 1
    devices.add((e['pid'], args.get('device_ordinal')))
  grand_total = sum(totals.values())
  return [
      {
          'op': op,
          'module': module,
          'calls': calls[(op, module)],
          'total_ms': us / 1e3,
          'ms_per_step_per_device': us / 1e3 / max(steps, 1) / max(len(devices), 1),
          'share': us / grand_total if grand_total else None,
      }
      for (op, module), us in sorted(totals.items(), key=lambda kv: -kv[1])[:top]
  ]


def top_ops_markdown(rows: Sequence[dict]) -> str:
  lines = ['| op | HLO module | calls | ms/step/device | share |', '|---|---|---|---|---|']
  for r in rows:
    lines.append(
        f"| `{r['op']}` | `{r['module']}` | {r['calls']} | {fmt(r['ms_per_step_per_device'], 3)} | "
        f"{fmt_pct(r['share'])} |"
    )
  return '\n'.join(lines)


# --- the PyTorch peer -----------------------------------------------------------------------------------------


def run_torch_peer(args, kinds: Sequence[str], dtypes: Sequence[str], batches: Sequence[int]) -> dict:
  """Runs `benchmarks.torch_peer` with this run's settings in a subprocess, before this process initialises a
  JAX backend (on a GPU, JAX takes most of the memory when it starts); returns its JSON record."""
  if importlib.util.find_spec('torch') is None:  # find_spec: this process should not load torch
    raise SystemExit(TORCH_MISSING)
  with tempfile.TemporaryDirectory(prefix='torch_peer_') as out_dir:
    command = [sys.executable, '-m', 'benchmarks.torch_peer', f'--batch={",".join(map(str, batches))}']
    command += [f'--dtype={",".join(dtypes)}', f'--bench={",".join(kinds)}', f'--out={out_dir}']
    command += [f'--device={args.torch_device}', f'--compile={args.torch_compile}']
    for name in ('model', 'width', 'num_classes', 'image_size', 'steps', 'repeats', 'warmup', 'seed'):
      command.append(f'--{name}={getattr(args, name)}')
    command += [
        f'--{n}={getattr(args, n)}' for n in ('projector_dim', 'edge_kind', 'teacher_layer') if getattr(args, n)
    ]
    print('PyTorch peer: ' + ' '.join(command[1:]), flush=True)
    done = subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, check=False)
    if done.returncode:
      raise RuntimeError(f'The PyTorch peer failed with exit status {done.returncode}; its output is above.')
    with open(os.path.join(out_dir, 'torch_peer.json')) as f:
      return json.load(f)


def torch_note(record: dict) -> str:
  peer = record['torch_peer']
  env, settings = peer['environment'], peer['settings']
  jax_platform = record['environment']['hardware']['platform']
  note = (
      f"torch images/s: the PyTorch peer (`benchmarks/torch_peer.py`, PyTorch {env['software']['torch']}, "
      f"{env['software']['torch_num_threads']} thread(s)) on one {settings['device']} device "
      f"({env['hardware']['device_kind']}), torch.compile {'on' if settings['compiled'] else 'off'}, "
      f"bfloat16 rows by autocast; same model ({peer['parameters']['simsiam_net']:,} SimSiam parameters), "
      'batch per chip and timing, run just before the JAX steps on the same machine. Model step only: its input '
      'views are ready on the device, so augmentation is excluded there but included in the JAX step. '
      'jax/torch = JAX images/s/chip / PyTorch images/s.'
  )
  if settings['device'] != jax_platform and not (settings['device'] == 'cuda' and jax_platform == 'gpu'):
    note += f" PyTorch ran on {settings['device']} but JAX on {jax_platform}: not a like-for-like ratio."
  return note


# --- the run --------------------------------------------------------------------------------------------------


def summarise(kind: str, dtype: str, batch_per_device: int, timing: dict, peak: Optional[float]) -> dict:
  devices = jax.device_count()
  seconds, flops = timing['ms_per_step'] / 1e3, timing['flops_per_step_per_chip']
  row = {
      'step': kind,
      'dtype': dtype,
      'batch_per_device': batch_per_device,
      'global_batch': batch_per_device * devices,
      'num_devices': devices,
      **timing,
      'images_per_s_per_chip': batch_per_device / seconds,
      'images_per_s_total': batch_per_device * devices / seconds,
      'gflop_per_image': flops / batch_per_device / 1e9 if flops else None,
      'achieved_tflops_per_chip': flops / seconds / 1e12 if flops else None,
      'peak_tflops_per_chip': peak,
      'mfu': flops / seconds / (peak * 1e12) if flops and peak else None,
  }
  if (memory := peak_memory_bytes()) is not None:
    row['peak_memory_bytes_since_start'] = memory
  return row


def add_derived(row: dict, torch_row: Optional[dict]) -> None:
  """The augmentation's share and the model-only estimate, and the PyTorch peer's columns, where measured."""
  if 'augment_ms_per_step' in row:
    model_ms = row['ms_per_step'] - row['augment_ms_per_step']  # an estimate: XLA may fuse the two in the step
    row['augment_share'] = row['augment_ms_per_step'] / row['ms_per_step']
    row['model_only_ms_per_step'] = model_ms
    row['model_only_images_per_s_per_chip'] = row['batch_per_device'] / (model_ms / 1e3) if model_ms > 0 else None
  if 'relation_ms' in row:
    row['relation_share'] = row['relation_ms'] / row['ms_per_step']
  if torch_row:
    row['torch_images_per_s'] = torch_row['images_per_s']
    row['torch_ms_per_step'] = torch_row['ms_per_step']
    row['torch_gflop_per_image'] = torch_row.get('gflop_per_image')
    row['jax_over_torch'] = row['images_per_s_per_chip'] / torch_row['images_per_s']
    if row.get('model_only_images_per_s_per_chip'):
      row['model_only_jax_over_torch'] = row['model_only_images_per_s_per_chip'] / torch_row['images_per_s']


def run(args, argv: Sequence[str] = ()) -> dict:
  """Runs every requested (batch, dtype, step); writes OUT/throughput.json and OUT/throughput.md."""
  kinds = sorted(parse_list(args.bench, 'bench', STEPS), key=_MEMORY_ORDER.get)
  dtypes = sorted(parse_list(args.dtype, 'dtype', DTYPES), key=_DTYPE_ORDER.get)
  batches = sorted(parse_list(args.batch_per_device, 'batch_per_device'))
  resident_modes = parse_list(args.loop_resident, 'loop_resident', ('on', 'off'))
  peaks = parse_peak_tflops(args.peak_tflops)
  if min(args.steps, args.repeats, args.warmup, args.profile_steps) < 1:
    raise ValueError('--steps, --repeats, --warmup and --profile_steps must be at least 1.')
  if args.loop_epochs == 1 or args.loop_epochs < 0:
    raise ValueError('--loop_epochs must be 0 (off) or at least 2: epoch 1 includes the compilation.')
  torch_record = run_torch_peer(args, kinds, dtypes, batches) if args.compare_torch else None
  torch_rows = {(r['step'], r['dtype'], r['batch']): r for r in (torch_record or {}).get('results', [])}
  if jax.process_count() > 1:
    raise ValueError('benchmarks.throughput is single-host: run it without jax.distributed.')
  env = environment('benchmarks.throughput', argv)
  dataset = data.load(make_config(args, dtypes[0], batches[-1] * jax.device_count()).data)  # shared by all rows
  results = []
  for batch_per_device in batches:
    global_batch = batch_per_device * jax.device_count()
    for dtype in dtypes:
      config = make_config(args, dtype, global_batch)
      stages = build_stages(config, dataset, kinds)
      for kind in kinds:
        stage, name = stages[kind], f'{kind}_{dtype}_b{batch_per_device}'
        batch = first_batch(stage)
        timing = measure_step(stage, batch, args, args.profile_dir and os.path.join(args.profile_dir, name))
        if args.augment == 'off':
          timing.update(measure_augment(kind, stage, batch['images'], args))
        if kind == 'rgrl':
          dim = models.teacher_feature_dim(config.model, config.relation.teacher_layer)
          rel = relation_cost(global_batch, dim, stage.step.keywords['relation_kwargs'], steps=args.steps)
          timing.update(relation_ms=rel['ms'], relation_dim=dim, relation_flops=rel['flops'])
        if args.loop_epochs:
          with tempfile.TemporaryDirectory(prefix='loop_epochs_') as workdir:
            timing['loop'] = {
                m: loop_epochs(stage, args.loop_epochs, m == 'on', os.path.join(workdir, m)) for m in resident_modes
            }
        row = summarise(kind, dtype, batch_per_device, timing, peaks.get(dtype, peaks.get('*')))
        add_derived(row, torch_rows.get((kind, dtype, batch_per_device)))
        results.append(row)
        print(
            f"{kind:8s} {dtype:9s} batch/device {batch_per_device:5d}: {row['images_per_s_per_chip']:10.1f} "
            f"images/s/chip, {row['ms_per_step']:9.2f} ms/step, {fmt_sig(row['gflop_per_image'])} GFLOP/image"
            + (f", jax/torch {row['jax_over_torch']:.2f}" if 'jax_over_torch' in row else ''),
            flush=True,
        )
        if row.get('top_ops'):
          print(top_ops_markdown(row['top_ops']) + '\n' + top_ops_markdown(row['top_op_kinds']), flush=True)
        del batch
      del stages
  record = {
      'benchmark': 'throughput',
      'environment': env,
      'settings': {
          **vars(args),
          'num_devices': jax.device_count(),
          'batch_per_device': batches,
          'dtype': dtypes,
          'bench': kinds,
          'loop_resident': resident_modes,
      },
      'results': results,
  }
  if torch_record is not None:
    record['torch_peer'] = torch_record
  json_path, md_path = write_outputs(args.out, 'throughput', record, markdown(record))
  print(f'Wrote {json_path} and {md_path}.', flush=True)
  return record


def markdown(record: dict) -> str:
  """The results table, what its columns mean, the environment and any profiles."""
  rows, s = record['results'], record['settings']
  columns = [
      ('step', lambda r: r['step']),
      ('dtype', lambda r: r['dtype']),
      ('batch/device', lambda r: str(r['batch_per_device'])),
      ('images/s/chip', lambda r: fmt(r['images_per_s_per_chip'], 0)),
      ('ms/step', lambda r: fmt(r['ms_per_step'], 2)),
      ('GFLOP/image', lambda r: fmt_sig(r['gflop_per_image'])),
      ('MFU', lambda r: fmt_pct(r['mfu'])),
      ('compile s', lambda r: fmt(r['compile_s'], 1)),
  ]
  optional = [
      ('augment_ms_per_step', 'augment ms', lambda r: fmt(r.get('augment_ms_per_step'), 2)),
      ('augment_share', 'augment share', lambda r: fmt_pct(r.get('augment_share'))),
      ('model_only_ms_per_step', 'model-only images/s/chip', lambda r: fmt(r.get('model_only_images_per_s_per_chip'))),
      ('relation_share', 'relation share', lambda r: fmt_pct(r.get('relation_share'))),
      ('torch_images_per_s', 'torch images/s', lambda r: fmt(r.get('torch_images_per_s'), 0)),
      ('jax_over_torch', 'jax/torch', lambda r: fmt(r.get('jax_over_torch'), 2)),
      ('peak_memory_bytes_since_start', 'peak mem GiB', lambda r: fmt((r.get('peak_memory_bytes_since_start') or 0) / 2**30, 2)),
  ]  # fmt: skip
  columns += [(title, cell) for key, title, cell in optional if any(key in r for r in rows)]
  for mode in s['loop_resident'] if s['loop_epochs'] else ():
    columns.append((f'loop images/s/chip ({"resident" if mode == "on" else "host"})', _loop_cell(mode)))
  lines = ['| ' + ' | '.join(t for t, _ in columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(cell(r) for _, cell in columns) + ' |' for r in rows]
  peak = f" ({s['peak_tflops']} TFLOP/s per chip)." if s['peak_tflops'] else ' (no --peak_tflops given).'
  notes = [
      f"Model {s['model']} width {s['width']}, {s['image_size']}x{s['image_size']} images, {s['num_devices']} "
      f"device(s); median of {s['repeats']} repeats of {s['steps']} steps after {s['warmup']} warm-up step(s); "
      'augmentation inside the step (as in training).',
      'images/s/chip counts source images (a SimSiam image is two views). GFLOP/image: XLA cost analysis of the '
      'compiled pmapped step per chip / batch per chip. MFU: achieved FLOP/s / peak' + peak,
  ]
  if any('augment_ms_per_step' in r for r in rows):
    notes.append(
        "augment ms: the step's augmentation timed alone (pmapped, same keys); model-only = step - augment, an "
        'estimate since XLA may fuse the two inside the step.'
    )
  if any('relation_share' in r for r in rows):
    notes.append(
        'relation share: the relation loss (value and gradient) alone at the global batch, on one chip, / the ' 'step.'
    )
  if s['loop_epochs']:
    notes.append(
        f"loop: {s['loop_epochs']} epochs of {s['train_size']:,} images through `loop.train` (batching, transfer, "
        "step, per-epoch log; no evaluation), the last epoch's images/s; resident = the training set on the "
        'devices, host = batches shipped from the host.'
    )
  if any('peak_memory_bytes_since_start' in r for r in rows):
    notes.append("peak mem: the allocator's peak since the process started (an upper bound for the row).")
  if 'torch_peer' in record:
    notes.append(torch_note(record))
  text = '# Train-step throughput\n\n' + '\n'.join(lines) + '\n\n' + '\n'.join(notes) + '\n\n'
  text += environment_markdown(record['environment'])
  for r in rows:
    if r.get('top_ops'):
      text += (
          f"\n## Slowest XLA ops: {r['step']} {r['dtype']} batch/device {r['batch_per_device']}\n\n"
          f"Trace of {s['profile_steps']} steps in `{r['profile_dir']}` (inclusive times).\n\n"
          f"{top_ops_markdown(r['top_ops'])}\n\nBy kind (all `NAME.N` together):\n\n"
          f"{top_ops_markdown(r['top_op_kinds'])}\n"
      )
  return text


def _loop_cell(mode: str) -> Callable[[dict], str]:
  return lambda r: fmt(r['loop'][mode]['images_per_s_per_chip'], 0) if 'loop' in r else '—'


def main(argv: Optional[Sequence[str]] = None) -> dict:
  """Parses `argv` (default: the command line) and runs the benchmark; returns the JSON record."""
  argv = list(sys.argv[1:] if argv is None else argv)
  return run(build_parser().parse_args(argv), argv)


if __name__ == '__main__':
  main()
