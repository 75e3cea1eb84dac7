"""Images/s per chip of the three RMDNet train steps, built exactly as the pipeline builds them.

  python -m benchmarks.throughput --batch_per_device=256,512 --dtype=float32,bfloat16 --peak_tflops=989 \
      --out=benchmarks/results/h100

Steps (see `STEPS`):

* simsiam — the RM stage's `simsiam.simsiam_step`: two SimSiam views per image, two forward/backward passes of
  backbone + projector + predictor. One "image" is one source image (two views).
* rgrl — the RGRL stage's `distill.distill_step` with the frozen teacher: pad-crop-flip view, teacher forward
  (inference mode), student forward/backward, CE on the labels and the relation losses on the gathered global
  batch.
* ce — the CE baseline: `distill_step` with `teacher_apply=None` (no teacher forward, no relation terms).

Each is wrapped by `parallel.pmap_step` over all local devices, with the state replicated and donated, exactly as
`pipeline.rm_stage` / `pipeline.rgrl_stage` do. The batch is random uint8 images (and labels) placed on the
devices once, so host input is not measured; augmentation runs inside the step, as in training. With
`--augment=off` the augmentation is also timed alone (the steps augment their uint8 input themselves and cannot
take ready-made views), and its share and the model-only throughput are reported.

FLOPs come from XLA's cost analysis of the compiled pmapped step (per chip); MFU = achieved FLOP/s / peak.
Writes OUT/throughput.json and OUT/throughput.md. Single-host: the batch is placed on this host's devices.

`--compare-torch` first runs the PyTorch peer (`benchmarks.torch_peer`, same model, width, batch per chip, dtype
and timing; model step only, augmentation excluded) in a subprocess, before JAX takes the accelerator, and adds its
images/s and the JAX/PyTorch ratio to every row. `--profile_dir=DIR` traces `--profile_steps` more steps of each
configuration with `jax.profiler` into DIR/<step>_<dtype>_b<batch> and prints the slowest XLA ops.
"""

import argparse
import functools
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from benchmarks import common
from configs import default
from rmdnet_jax import augment, config_checks, distill, methods, parallel, simsiam
from rmdnet_jax import train_state as train_state_lib

# As rmdnet_jax.main: the per-example keys are never sharded, and training runs with this setting, so the
# benchmark does too (it changes the compiled random-number code, hence the step time).
jax.config.update('jax_threefry_partitionable', False)

STEPS = ('simsiam', 'rgrl', 'ce')
DTYPES = ('float32', 'bfloat16')
# The optimizer's learning-rate schedule is built for a CIFAR-sized epoch; its values do not change the cost.
CIFAR_TRAIN_SIZE = 50_000
# Order in which configurations run within one batch size: smallest memory footprint first, so that the
# allocator's never-reset peak (see common.peak_memory_bytes) is as close as possible to each one's own.
_MEMORY_ORDER = {'ce': 0, 'rgrl': 1, 'simsiam': 2}
_DTYPE_ORDER = {'bfloat16': 0, 'float32': 1}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m benchmarks.throughput', description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='resnet18', help='Backbone of teacher and student (model.name).')
  parser.add_argument('--width', type=int, default=64, help='Channels of the first stage (model.width).')
  parser.add_argument(
      '--projector_dim', type=int, default=None, help='SimSiam projector width (default: configs/default.py, 2048).'
  )
  parser.add_argument('--num_classes', type=int, default=10, help='Classifier outputs (CIFAR-10: 10).')
  parser.add_argument('--batch_per_device', default='256,512', help='Comma-separated per-chip batch sizes.')
  parser.add_argument('--dtype', default='float32,bfloat16', help='Comma-separated model.dtype values.')
  parser.add_argument('--image_size', type=int, default=32, help='Square image side in pixels.')
  parser.add_argument('--bench', default=','.join(STEPS), help=f'Comma-separated subset of {STEPS}.')
  parser.add_argument('--steps', type=int, default=50, help='Timed steps per repeat.')
  parser.add_argument('--repeats', type=int, default=5, help='Timed repeats; the median is reported.')
  parser.add_argument('--warmup', type=int, default=5, help='Untimed steps before the repeats.')
  parser.add_argument(
      '--augment',
      choices=('on', 'off'),
      default='on',
      help='off: also time the augmentation alone and report the model-only throughput.',
  )
  parser.add_argument(
      '--peak_tflops',
      default=None,
      help='Peak dense TFLOP/s per chip for MFU: one number, or per dtype as '
      "'float32=67,bfloat16=989'. Without it no MFU is reported.",
  )
  parser.add_argument('--edge_kind', default=None, help='relation.edge_kind (default: configs/default.py).')
  parser.add_argument('--teacher_layer', default=None, help='relation.teacher_layer (default: backbone).')
  parser.add_argument('--seed', type=int, default=0, help='Seed of the parameters, images and labels.')
  parser.add_argument(
      '--compare-torch',
      '--compare_torch',
      dest='compare_torch',
      action='store_true',
      help='Also time the PyTorch peer (benchmarks/torch_peer.py) with the same settings and '
      'report its images/s and jax/torch; needs pip install -r benchmarks/requirements.txt.',
  )
  parser.add_argument(
      '--torch_device',
      choices=('auto', 'cpu', 'cuda'),
      default='auto',
      help='Device of the PyTorch peer (auto: cuda when PyTorch sees one, else cpu).',
  )
  parser.add_argument(
      '--torch_compile',
      choices=('auto', 'on', 'off'),
      default='auto',
      help='torch.compile in the PyTorch peer (auto: on for cuda, off on cpu).',
  )
  parser.add_argument(
      '--profile_dir',
      default=None,
      help='Trace --profile_steps extra steps of each configuration with jax.profiler into '
      'PROFILE_DIR/<step>_<dtype>_b<batch> and print the slowest XLA ops.',
  )
  parser.add_argument('--profile_steps', type=int, default=3, help='Steps per trace (with --profile_dir).')
  parser.add_argument('--profile_top', type=int, default=15, help='Ops listed per trace (with --profile_dir).')
  parser.add_argument('--out', default='benchmarks/results/latest', help='Directory for throughput.json/.md.')
  return parser


def make_config(
    args: argparse.Namespace, dtype: str, global_batch: int, num_devices: Optional[int] = None
) -> ml_collections.ConfigDict:
  """configs/default.py with the benchmark's model, dtype, image size and batch; validated like a run's.

  `num_devices` (default: JAX's device count) is what the batch must divide; the PyTorch peer passes 1 so that
  it never initialises a JAX backend.
  """
  config = default.get_config()
  config.data.source = 'synthetic'
  config.data.num_classes = args.num_classes
  config.data.synthetic_image_size = args.image_size
  config.data.synthetic_train_size = max(CIFAR_TRAIN_SIZE, global_batch)
  config.model.name = config.student.name = args.model
  config.model.width = config.student.width = args.width
  config.model.dtype = dtype
  if args.projector_dim:
    config.model.projector_dim = args.projector_dim
  if args.edge_kind:
    config.relation.edge_kind = args.edge_kind
  if args.teacher_layer:
    config.relation.teacher_layer = args.teacher_layer
  config.rm.batch_size = config.rgrl.batch_size = global_batch
  config_checks.validate(config, num_devices)
  return config


def _steps_per_epoch(stage_config) -> int:
  return max(1, CIFAR_TRAIN_SIZE // stage_config.batch_size)


def make_step_fn(kind: str, config: ml_collections.ConfigDict, steps_per_epoch: Optional[int] = None):
  """The un-pmapped step and its sharded argument numbers, with the arguments `pipeline` binds.

  `steps_per_epoch` (default: a CIFAR-sized epoch) turns the RGRL step count into the epoch progress that
  methods' schedules read; it does not change the cost of CE.
  """
  mean, std = augment.CIFAR10_MEAN, augment.CIFAR10_STD
  if kind == 'simsiam':
    return functools.partial(simsiam.simsiam_step, view_kwargs=simsiam.view_kwargs(config, mean, std)), (1,)
  if kind in ('rgrl', 'ce'):
    step = functools.partial(
        distill.distill_step,
        teacher_apply=distill.teacher_apply_fn(config) if kind == 'rgrl' else None,
        method=methods.make_method(config.method),
        K=config.relation.K,
        relation_kwargs=distill.relation_kwargs(config),
        view_kwargs=distill.view_kwargs(config, mean, std),
        steps_per_epoch=steps_per_epoch or _steps_per_epoch(config.rgrl),
    )
    return step, (2,)
  raise ValueError(f'Unknown step {kind!r}; use one of {STEPS}.')


def _mirror_of_pmap_step(step_fn, sharded_argnums: Sequence[int], num_args: int):
  """`jax.pmap` with exactly the arguments `parallel.pmap_step` passes.

  Lowering and compiling this gives the executable's cost analysis; since the function and every pmap argument
  are the same, JAX's compilation cache hands the executable to `pmap_step`'s first call instead of compiling
  again (if `pmap_step` ever changes its arguments, the only cost is a second compilation).
  """
  in_axes = tuple(0 if i in sharded_argnums else None for i in range(num_args))
  return jax.pmap(step_fn, axis_name=parallel.AXIS, in_axes=in_axes, out_axes=None, donate_argnums=(0,))


def compile_step(step_fn, sharded_argnums: Sequence[int], args: Sequence) -> tuple[float, dict]:
  """Compiles `parallel.pmap_step(step_fn, ...)` for `args` ahead of its first call; returns (seconds, FLOPs).

  `step_fn` must be the very object later given to `pmap_step`: the executable is found again in JAX's
  compilation cache by the function and the pmap arguments, so the first call does not compile.
  """
  start = time.perf_counter()
  lowered = _mirror_of_pmap_step(step_fn, sharded_argnums, len(args)).lower(*args)
  _, flops = common.compile_with_flops(lowered)
  return time.perf_counter() - start, flops


def device_batch(host_batch: dict) -> dict:
  """Shards a host batch [B, ...] over the devices as the pmapped step expects, once, before timing.

  The mesh is the one `jax.pmap` builds on a single host (all devices in `jax.devices()` order), so the step
  consumes the arrays where they lie.
  """
  sharding = NamedSharding(Mesh(np.array(jax.devices()), (parallel.AXIS,)), PartitionSpec(parallel.AXIS))
  return jax.device_put(parallel.shard(host_batch), sharding)


def host_batch(global_batch: int, image_size: int, num_classes: int, seed: int) -> dict:
  """Random uint8 images and int32 labels: the step's cost does not depend on the pixel values."""
  rng = np.random.default_rng(seed)
  return {
      'images': rng.integers(0, 256, (global_batch, image_size, image_size, 3), dtype=np.uint8),
      'labels': rng.integers(0, num_classes, (global_batch,)).astype(np.int32),
  }


def step_keys(seed: int, count: int) -> list:
  """One key per step as the training loop draws them (fold_in of the stage key), replicated in advance."""
  base = jax.random.key(seed)
  return [parallel.replicate(jax.random.fold_in(base, i)) for i in range(count)]


def initial_states(config: ml_collections.ConfigDict, image_shape, seed: int, kinds: Sequence[str]) -> dict:
  """Host copies of the states `kinds` need, created as the pipeline creates them.

  'rm': the RM (SimSiam) state; 'teacher': the frozen teacher taken from it; 'student': the RGRL student. Kept on
  the host because every benchmark donates its state: each one starts from a fresh replica.
  """
  init_rng = jax.random.key(seed)
  states = {}
  if 'simsiam' in kinds or 'rgrl' in kinds:
    rm_lr = train_state_lib.learning_rate_schedule(config.rm, _steps_per_epoch(config.rm))
    states['rm'] = jax.device_get(simsiam.create_simsiam_state(init_rng, config, image_shape, rm_lr))
    states['teacher'] = distill.teacher_variables(
        {'params': states['rm'].params, 'batch_stats': states['rm'].batch_stats}
    )
  if 'rgrl' in kinds or 'ce' in kinds:
    rgrl_lr = train_state_lib.learning_rate_schedule(config.rgrl, _steps_per_epoch(config.rgrl))
    states['student'] = jax.device_get(
        distill.create_distill_state(
            init_rng, config, image_shape, rgrl_lr, states.get('teacher'), num_examples=config.data.synthetic_train_size
        )
    )
  return states


def step_inputs(kind: str, config: ml_collections.ConfigDict, states: dict, batch: dict):
  """The step function, its sharded argument numbers and its arguments up to the key, as the pipeline passes them.

  Args:
    kind: one of `STEPS`.
    config: the run's config (model, dtype, batch).
    states: `initial_states(...)` (host copies; replicated here, since the step donates its state).
    batch: the device-resident sharded batch from `device_batch` (images and labels).

  Returns:
    (step_fn, sharded_argnums, args): SimSiam takes (state, {'images'}); RGRL and CE take (state, teacher,
    batch) with teacher None for CE, as `pipeline.rgrl_stage` passes it.
  """
  step_fn, sharded_argnums = make_step_fn(kind, config)
  if kind == 'simsiam':
    return step_fn, sharded_argnums, (parallel.replicate(states['rm']), {'images': batch['images']})
  teacher = parallel.replicate(states['teacher']) if kind == 'rgrl' else None
  return step_fn, sharded_argnums, (parallel.replicate(states['student']), teacher, batch)


def measure_step(
    kind: str,
    config: ml_collections.ConfigDict,
    states: dict,
    batch: dict,
    *,
    steps: int,
    repeats: int,
    warmup: int,
    profile_dir: Optional[str] = None,
    profile_steps: int = 0,
    profile_top: int = 15,
) -> dict:
  """Times `steps` x `repeats` calls of the pmapped step; returns timings, FLOPs and compile time.

  Args:
    kind: one of `STEPS`.
    config: the run's config (model, dtype, batch).
    states: `initial_states(...)`.
    batch: the device-resident sharded batch from `device_batch`.
    steps: timed steps per repeat.
    repeats: timed repeats.
    warmup: untimed steps first.
    profile_dir: if given, `profile_steps` more steps run under `jax.profiler.trace(profile_dir)` after the
      timed ones (so the trace never slows the timing).
    profile_steps: steps in the trace.
    profile_top: how many of the slowest ops to return.

  Returns:
    dict with repeat_seconds, ms_per_step, flops_per_step_per_chip (and how it was counted), compile_s and
    first_step_s; with `profile_dir`, also profile_dir, top_ops and top_op_kinds (`common.trace_top_ops`).
  """
  step_fn, sharded_argnums, (state, *rest) = step_inputs(kind, config, states, batch)
  pmapped = parallel.pmap_step(step_fn, sharded_argnums=sharded_argnums)
  keys = step_keys(1, warmup + steps * repeats + (profile_steps if profile_dir else 0))

  compile_s, flops = compile_step(step_fn, sharded_argnums, (state, *rest, keys[0]))

  # The first call should find the executable compiled above in JAX's cache; a first step as slow as the
  # compilation shows that it did not (then compile_s undercounts the compile time).
  first_step_s = None
  for i in range(warmup):
    start = time.perf_counter()
    state, _ = pmapped(state, *rest, keys[i])
    if i == 0:
      jax.block_until_ready(state)
      first_step_s = time.perf_counter() - start
  jax.block_until_ready(state)

  holder = {'state': state, 'next_key': warmup}
  del state

  def run_once():
    return run_once_n(holder, pmapped, rest, keys, steps)

  seconds = common.time_repeats(run_once, repeats)
  result = {
      'repeat_seconds': seconds,
      'ms_per_step': 1e3 * common.median(seconds) / steps,
      'flops_per_step_per_chip': flops['flops'],
      'flops_source': flops['flops_source'],
      'flops_compiled': flops['flops_compiled'],
      'flops_lowered': flops['flops_lowered'],
      'compile_s': compile_s,
      'first_step_s': first_step_s,
  }
  if profile_dir:
    # Synchronised before the trace stops, so that it holds every traced step's device work.
    with jax.profiler.trace(profile_dir):
      jax.block_until_ready(run_once_n(holder, pmapped, rest, keys, profile_steps))
    result['profile_dir'] = profile_dir
    result['top_ops'] = common.trace_top_ops(profile_dir, steps=profile_steps, top=profile_top)
    result['top_op_kinds'] = common.trace_top_ops(profile_dir, steps=profile_steps, top=profile_top, by_kind=True)
  holder.clear()
  return result


def run_once_n(holder: dict, pmapped, rest: Sequence, keys: Sequence, count: int):
  """Dispatches `count` more steps from `holder['state']` with the next unused keys; returns the new state."""
  state = holder.pop('state')
  first = holder['next_key']
  for key in keys[first : first + count]:
    state, _ = pmapped(state, *rest, key)
  holder['state'], holder['next_key'] = state, first + count
  return state


def augment_fn(recipe: str, config: ml_collections.ConfigDict):
  """The augmentation a step runs, alone: per-example keys from the global position, then the recipe."""
  mean, std = augment.CIFAR10_MEAN, augment.CIFAR10_STD
  if recipe == 'simsiam_views':
    kwargs = simsiam.view_kwargs(config, mean, std)
    views = functools.partial(augment.simsiam_views, **kwargs)
  else:
    kwargs = distill.view_kwargs(config, mean, std)
    views = functools.partial(augment.pad_crop_flip, **kwargs)

  def fn(rng, images):
    return views(parallel.per_example_keys(rng, images.shape[0]), images)

  return fn


def measure_augment(
    recipe: str, config: ml_collections.ConfigDict, images, *, steps: int, repeats: int, warmup: int
) -> dict:
  """Times the augmentation alone, pmapped over the same devices with the same keys as inside the step."""
  pmapped = jax.pmap(augment_fn(recipe, config), axis_name=parallel.AXIS, in_axes=(None, 0))
  keys = step_keys(1, warmup + steps * repeats)
  _, flops = common.compile_with_flops(pmapped.lower(keys[0], images))
  jax.block_until_ready([pmapped(keys[i], images) for i in range(warmup)])
  position = {'next_key': warmup}

  def run_once():
    # The outputs do not depend on each other, so all of them are waited on, not only the last one.
    first = position['next_key']
    position['next_key'] = first + steps
    return [pmapped(key, images) for key in keys[first : first + steps]]

  seconds = common.time_repeats(run_once, repeats)
  return {
      'augment_ms_per_step': 1e3 * common.median(seconds) / steps,
      'augment_flops_per_step_per_chip': flops['flops'],
  }


_AUGMENT_RECIPE = {'simsiam': 'simsiam_views', 'rgrl': 'pad_crop_flip', 'ce': 'pad_crop_flip'}


def summarise(
    kind: str,
    dtype: str,
    batch_per_device: int,
    timing: dict,
    peak_tflops: Optional[float],
    augment_timing: Optional[dict],
) -> dict:
  """One result row: throughput, FLOPs per image, MFU and (optionally) the augmentation's share."""
  devices = jax.device_count()
  ms = timing['ms_per_step']
  flops = timing['flops_per_step_per_chip']
  row = {
      'step': kind,
      'dtype': dtype,
      'batch_per_device': batch_per_device,
      'global_batch': batch_per_device * devices,
      'num_devices': devices,
      **timing,
      'images_per_s_per_chip': batch_per_device / (ms / 1e3),
      'images_per_s_total': batch_per_device * devices / (ms / 1e3),
      'gflop_per_image': flops / batch_per_device / 1e9 if flops else None,
      'achieved_tflops_per_chip': flops / (ms / 1e3) / 1e12 if flops else None,
      'peak_tflops_per_chip': peak_tflops,
      'mfu': flops / (ms / 1e3) / (peak_tflops * 1e12) if flops and peak_tflops else None,
  }
  peak_memory = common.peak_memory_bytes()
  if peak_memory is not None:
    row['peak_memory_bytes_since_start'] = peak_memory
  if augment_timing is not None:
    aug_ms = augment_timing['augment_ms_per_step']
    row.update(augment_timing)
    row['augment_recipe'] = _AUGMENT_RECIPE[kind]
    row['augment_share'] = aug_ms / ms
    # Only an estimate: inside the step XLA may fuse the augmentation with the first convolution.
    model_ms = ms - aug_ms
    row['model_only_ms_per_step'] = model_ms
    row['model_only_images_per_s_per_chip'] = batch_per_device / (model_ms / 1e3) if model_ms > 0 else None
  return row


TORCH_MISSING = (
    '--compare-torch needs PyTorch, which the package does not install: ' 'pip install -r benchmarks/requirements.txt'
)


def require_torch() -> None:
  """Stops with one sentence naming the requirements file when PyTorch is not installed."""
  # find_spec, not import: the PyTorch peer runs in its own process, and this one should not load torch.
  if importlib.util.find_spec('torch') is None:
    raise SystemExit(TORCH_MISSING)


def torch_peer_command(
    args: argparse.Namespace, kinds: Sequence[str], dtypes: Sequence[str], batches: Sequence[int], out_dir: str
) -> list[str]:
  """The `benchmarks.torch_peer` command with this run's model, batch per chip, dtypes and timing."""
  command = [
      sys.executable,
      '-m',
      'benchmarks.torch_peer',
      f'--model={args.model}',
      f'--width={args.width}',
      f'--num_classes={args.num_classes}',
      f'--image_size={args.image_size}',
      f'--batch={",".join(map(str, batches))}',
      f'--dtype={",".join(dtypes)}',
      f'--bench={",".join(kinds)}',
      f'--steps={args.steps}',
      f'--repeats={args.repeats}',
      f'--warmup={args.warmup}',
      f'--device={args.torch_device}',
      f'--compile={args.torch_compile}',
      f'--seed={args.seed}',
      f'--out={out_dir}',
  ]
  for name in ('projector_dim', 'edge_kind', 'teacher_layer'):
    if getattr(args, name):
      command.append(f'--{name}={getattr(args, name)}')
  return command


def run_torch_peer(
    args: argparse.Namespace, kinds: Sequence[str], dtypes: Sequence[str], batches: Sequence[int]
) -> dict:
  """Runs the PyTorch peer in a subprocess and returns its JSON record.

  A subprocess, run before this process initialises JAX's backend: on a GPU, JAX reserves most of the memory
  when it starts, and PyTorch in the same process would run out of it. The subprocess is told to keep JAX (which
  it imports for the config) on the CPU for the same reason.
  """
  require_torch()
  with tempfile.TemporaryDirectory(prefix='torch_peer_') as out_dir:
    command = torch_peer_command(args, kinds, dtypes, batches, out_dir)
    print('PyTorch peer: ' + ' '.join(command[1:]), flush=True)
    done = subprocess.run(command, cwd=common.REPO_ROOT, env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, check=False)
    if done.returncode:
      raise RuntimeError(f'The PyTorch peer failed with exit status {done.returncode}; its output is above.')
    with open(os.path.join(out_dir, 'torch_peer.json')) as f:
      return json.load(f)


def add_torch_columns(row: dict, torch_row: Optional[dict]) -> None:
  """Adds the PyTorch peer's figures of the same (step, dtype, batch) and the JAX/PyTorch ratios to `row`."""
  if torch_row is None:
    return
  torch_ips = torch_row['images_per_s']
  row['torch_images_per_s'] = torch_ips
  row['torch_ms_per_step'] = torch_row['ms_per_step']
  row['torch_gflop_per_image'] = torch_row.get('gflop_per_image')
  row['jax_over_torch'] = row['images_per_s_per_chip'] / torch_ips
  if row.get('model_only_images_per_s_per_chip'):
    row['model_only_jax_over_torch'] = row['model_only_images_per_s_per_chip'] / torch_ips


def markdown(record: dict) -> str:
  """The results table, the settings and the environment as markdown."""
  rows = record['results']
  with_memory = any('peak_memory_bytes_since_start' in r for r in rows)
  with_augment = any('augment_ms_per_step' in r for r in rows)
  with_torch = any('torch_images_per_s' in r for r in rows)
  header = ['step', 'dtype', 'batch/device', 'images/s/chip', 'ms/step', 'GFLOP/image', 'MFU', 'compile s']
  if with_augment:
    header += ['augment ms', 'augment share', 'model-only images/s/chip']
  if with_torch:
    header += ['torch images/s', 'jax/torch']
  if with_memory:
    header += ['peak mem GiB']
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for r in rows:
    cells = [
        r['step'],
        r['dtype'],
        str(r['batch_per_device']),
        common.fmt(r['images_per_s_per_chip'], 0),
        common.fmt(r['ms_per_step'], 2),
        common.fmt_sig(r['gflop_per_image']),
        common.fmt_pct(r['mfu']),
        common.fmt(r['compile_s'], 1),
    ]
    if with_augment:
      cells += [
          common.fmt(r.get('augment_ms_per_step'), 2),
          common.fmt_pct(r.get('augment_share')),
          common.fmt(r.get('model_only_images_per_s_per_chip'), 0),
      ]
    if with_torch:
      cells += [common.fmt(r.get('torch_images_per_s'), 0), common.fmt(r.get('jax_over_torch'), 2)]
    if with_memory:
      peak = r.get('peak_memory_bytes_since_start')
      cells += [common.fmt(peak / 2**30, 2) if peak is not None else '—']
    lines.append('| ' + ' | '.join(cells) + ' |')
  s = record['settings']
  notes = [
      '# Train-step throughput',
      '',
      '\n'.join(lines),
      '',
      f"Model {s['model']} width {s['width']}, {s['image_size']}x{s['image_size']} images, "
      f"{s['num_devices']} device(s); median of {s['repeats']} repeats of {s['steps']} steps after "
      f"{s['warmup']} warm-up step(s); augmentation inside the step (as in training).",
      'images/s/chip counts source images (a SimSiam image is two views). GFLOP/image: XLA cost analysis of the '
      'compiled step per chip / batch per chip. MFU: achieved FLOP/s / peak'
      + (f" ({s['peak_tflops']} TFLOP/s per chip)." if s['peak_tflops'] else ' (no --peak_tflops given).'),
  ]
  if with_augment:
    notes.append(
        "augment ms: the step's augmentation timed alone (pmapped, same keys); model-only = step - "
        'augment, an estimate since XLA may fuse the two inside the step.'
    )
  if with_memory:
    notes.append(
        "peak mem: the allocator's peak since the process started (an upper bound for the row; rows "
        'run from small to large footprint).'
    )
  if with_torch:
    notes.append(torch_note(record))
  text = '\n'.join(notes) + '\n\n' + common.environment_markdown(record['environment'])
  for r in rows:
    if r.get('top_ops'):
      text += (
          f"\n## Slowest XLA ops: {r['step']} {r['dtype']} batch/device {r['batch_per_device']}\n\n"
          f"Trace of {s['profile_steps']} steps in `{r['profile_dir']}` (inclusive times).\n\n"
          + common.top_ops_markdown(r['top_ops'])
          + '\n\nBy kind (all `NAME.N` together):\n\n'
          + common.top_ops_markdown(r['top_op_kinds'])
          + '\n'
      )
  return text


def torch_note(record: dict) -> str:
  """What the PyTorch columns measured, and on what."""
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


def run(args: argparse.Namespace, argv: Sequence[str] = ()) -> dict:
  """Runs every requested (batch, dtype, step) and writes OUT/throughput.json and OUT/throughput.md."""
  kinds = sorted(common.parse_str_list(args.bench, STEPS, 'bench'), key=_MEMORY_ORDER.get)
  dtypes = sorted(common.parse_str_list(args.dtype, DTYPES, 'dtype'), key=_DTYPE_ORDER.get)
  batches = sorted(common.parse_int_list(args.batch_per_device))
  peaks = common.parse_peak_tflops(args.peak_tflops)
  for name in ('steps', 'repeats'):
    if getattr(args, name) < 1:
      raise ValueError(f'--{name} must be at least 1.')
  if args.warmup < 1:
    raise ValueError('--warmup must be at least 1: the first call of a step may still compile it.')
  if args.profile_dir and args.profile_steps < 1:
    raise ValueError('--profile_steps must be at least 1.')
  # Before anything initialises JAX's backend (see run_torch_peer).
  torch_record = run_torch_peer(args, kinds, dtypes, batches) if args.compare_torch else None
  torch_rows = {(r['step'], r['dtype'], r['batch']): r for r in (torch_record or {}).get('results', [])}
  if jax.process_count() > 1:
    raise ValueError(
        "benchmarks.throughput is single-host: per-chip throughput is measured on one host's "
        'devices; run it without jax.distributed.'
    )
  devices = jax.device_count()
  image_shape = (args.image_size, args.image_size, 3)
  environment = common.environment('benchmarks.throughput', argv)

  # Parameters do not depend on the batch size, so each dtype's states are initialised once.
  states = {
      dtype: initial_states(make_config(args, dtype, batches[0] * devices), image_shape, args.seed, kinds)
      for dtype in dtypes
  }
  results = []
  for batch_per_device in batches:
    global_batch = batch_per_device * devices
    batch = device_batch(host_batch(global_batch, args.image_size, args.num_classes, args.seed))
    augment_cache = {}
    for dtype in dtypes:
      config = make_config(args, dtype, global_batch)
      for kind in kinds:
        profile_dir = (
            os.path.join(args.profile_dir, f'{kind}_{dtype}_b{batch_per_device}') if args.profile_dir else None
        )
        timing = measure_step(
            kind,
            config,
            states[dtype],
            batch,
            steps=args.steps,
            repeats=args.repeats,
            warmup=args.warmup,
            profile_dir=profile_dir,
            profile_steps=args.profile_steps,
            profile_top=args.profile_top,
        )
        augment_timing = None
        if args.augment == 'off':
          recipe = _AUGMENT_RECIPE[kind]
          if recipe not in augment_cache:  # float32 views whatever the model dtype: measured once per batch
            augment_cache[recipe] = measure_augment(
                recipe, config, batch['images'], steps=args.steps, repeats=args.repeats, warmup=args.warmup
            )
          augment_timing = augment_cache[recipe]
        row = summarise(kind, dtype, batch_per_device, timing, common.peak_for(peaks, dtype), augment_timing)
        add_torch_columns(row, torch_rows.get((kind, dtype, batch_per_device)))
        results.append(row)
        print(
            f'{kind:8s} {dtype:9s} batch/device {batch_per_device:5d}: '
            f"{row['images_per_s_per_chip']:10.1f} images/s/chip, {row['ms_per_step']:9.2f} ms/step, "
            f"{common.fmt_sig(row['gflop_per_image'])} GFLOP/image"
            + (
                f", torch {row['torch_images_per_s']:.1f} images/s, jax/torch {row['jax_over_torch']:.2f}"
                if 'jax_over_torch' in row
                else ''
            ),
            flush=True,
        )
        if row.get('top_ops'):
          print(
              f"Slowest XLA ops ({args.profile_steps} traced steps in {row['profile_dir']}):\n"
              + common.top_ops_markdown(row['top_ops'])
              + '\nBy kind:\n'
              + common.top_ops_markdown(row['top_op_kinds']),
              flush=True,
          )
    del batch

  record = {
      'benchmark': 'throughput',
      'environment': environment,
      'settings': {**vars(args), 'num_devices': devices, 'batch_per_device': batches, 'dtype': dtypes, 'bench': kinds},
      'results': results,
  }
  if torch_record is not None:
    record['torch_peer'] = torch_record
  json_path, md_path = common.write_outputs(args.out, 'throughput', record, markdown(record))
  print(f'Wrote {json_path} and {md_path}.', flush=True)
  return record


def main(argv: Optional[Sequence[str]] = None) -> dict:
  """Parses `argv` (default: the command line) and runs the benchmark; returns the JSON record."""
  argv = list(sys.argv[1:] if argv is None else argv)
  return run(build_parser().parse_args(argv), argv)


if __name__ == '__main__':
  main()
