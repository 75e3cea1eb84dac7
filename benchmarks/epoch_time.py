"""Wall time of whole training epochs through the real loop: host batching, transfer, step and logging.

  python -m benchmarks.epoch_time --model=resnet18 --width=64 --train_size=50000 --dtype=bfloat16 \
      --out=benchmarks/results/h100

Each stage (`--stages`, default SimSiam and RGRL) runs `--epochs` epochs (at least 2) of `loop.train`, the loop
`pipeline.rm_stage` and `pipeline.rgrl_stage` run, on `data.source=synthetic` images of `--train_size`
(50,000: a CIFAR epoch). What is built comes from the same library functions as in the pipeline:
`data.load`, `pipeline.stage_schedule`, `train_state.learning_rate_schedule`, the state constructors,
the steps as `benchmarks.throughput.make_step_fn` binds them, `parallel.pmap_step`, `data.host_batches` +
`parallel.shard`, `metrics.create_writer` (console, TensorBoard and metrics.jsonl, once per epoch) and an Orbax
checkpoint manager. Left out: the evaluation (`eval_fn`: the kNN monitor, test accuracy), the per-epoch
checkpoints (one checkpoint is written after the last epoch, outside the timing) and method epoch hooks; the
labels are the synthetic clean labels (their values do not change the cost).

The step is compiled ahead of the loop (as `benchmarks.throughput` does, so the loop's first call finds it in
JAX's cache): epoch 1 excludes that compile; the compiles that still happen inside an epoch (the loop's small
metric and learning-rate computations, compiled at the first log) are recorded from JAX's compile events and
reported. An epoch's time runs from the previous epoch's log (or the loop's start) to its own log, which reads
the epoch's metrics back and so waits for its last step: one number per epoch, as the loop's own
`images_per_second` scalar.

`--resident=on` (the default) keeps the training arrays on every device (`rmdnet_jax.device_data`) and ships
only the batch indices; `off` ships each batch's images from the host, as the pipeline does without it;
`on,off` measures both.

Writes OUT/epoch_time.json and OUT/epoch_time.md.
"""

import argparse
import os
import sys
import tempfile
import time
from typing import Optional, Sequence

import jax
import ml_collections

from benchmarks import common, throughput
from configs import default
from rmdnet_jax import (
    checkpoints,
    config_checks,
    data,
    device_data,
    distill,
    loop,
    metrics,
    parallel,
    pipeline,
    simsiam,
)
from rmdnet_jax import train_state as train_state_lib

# As rmdnet_jax.main, so that the timed step is the one training runs.
jax.config.update('jax_threefry_partitionable', False)

STAGES = throughput.STEPS
RESIDENT = ('on', 'off')
_LOOP_STAGE = {'simsiam': 'rm', 'rgrl': 'rgrl', 'ce': 'rgrl'}
_STREAM = {'simsiam': pipeline.STREAM_RM, 'rgrl': pipeline.STREAM_RGRL, 'ce': pipeline.STREAM_RGRL}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m benchmarks.epoch_time', description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='resnet18', help='Backbone of teacher and student (model.name).')
  parser.add_argument('--width', type=int, default=64, help='Channels of the first stage (model.width).')
  parser.add_argument(
      '--projector_dim', type=int, default=None, help='SimSiam projector width (default: configs/default.py, 2048).'
  )
  parser.add_argument('--num_classes', type=int, default=10, help='Classifier outputs (CIFAR-10: 10).')
  parser.add_argument('--dtype', default='float32', choices=throughput.DTYPES, help='model.dtype.')
  parser.add_argument('--image_size', type=int, default=32, help='Square image side in pixels.')
  parser.add_argument(
      '--train_size',
      type=int,
      default=50_000,
      help='Synthetic training images (data.synthetic_train_size); 50,000 is a CIFAR epoch.',
  )
  parser.add_argument(
      '--rm_batch', type=int, default=None, help='Global batch of the SimSiam stage (default: configs/default.py, 512).'
  )
  parser.add_argument(
      '--rgrl_batch',
      type=int,
      default=None,
      help='Global batch of the RGRL and CE stages (default: configs/default.py, 128).',
  )
  parser.add_argument('--stages', default='simsiam,rgrl', help=f'Comma-separated subset of {STAGES}.')
  parser.add_argument('--epochs', type=int, default=2, help='Epochs per stage (at least 2).')
  parser.add_argument(
      '--resident',
      default='on',
      help='on: the training set resident on the devices, only indices shipped per step '
      "(rmdnet_jax.device_data); off: batches shipped from the host; 'on,off': both.",
  )
  parser.add_argument('--edge_kind', default=None, help='relation.edge_kind (default: configs/default.py).')
  parser.add_argument('--teacher_layer', default=None, help='relation.teacher_layer (default: backbone).')
  parser.add_argument('--seed', type=int, default=0, help='Seed of the data, parameters and batch order.')
  parser.add_argument(
      '--workdir',
      default=None,
      help='Where the loop writes its metrics and checkpoint (default: a temporary directory).',
  )
  parser.add_argument('--out', default='benchmarks/results/latest', help='Directory for epoch_time.json/.md.')
  return parser


def make_config(args: argparse.Namespace, kind: str) -> ml_collections.ConfigDict:
  """`throughput.make_config` with the stage's batch, the data size, the epochs and no evaluation."""
  default_batch = default.get_config()
  batch = (
      (args.rm_batch or default_batch.rm.batch_size)
      if kind == 'simsiam'
      else (args.rgrl_batch or default_batch.rgrl.batch_size)
  )
  config = throughput.make_config(args, args.dtype, batch)
  config.data.synthetic_train_size = args.train_size
  config.data.synthetic_seed = args.seed
  config.seed = args.seed
  config.log_every_steps = 0  # once per epoch: each log closes one timed epoch
  for stage in (config.rm, config.rgrl):
    stage.epochs = args.epochs
    stage.eval_every_epochs = 0  # evaluation is not part of the epoch time
    stage.checkpoint_every_epochs = 0  # one checkpoint, after the last epoch's log
  config_checks.validate(config)
  return config


class EpochClock:
  """A metric writer that notes when each epoch's log arrives, then passes everything to the real writer."""

  def __init__(self, writer, stage: str):
    self._writer = writer
    self._epoch_key = f'{stage}/epoch'
    self.times, self.scalars = [], []

  def write_scalars(self, step, scalars):
    if self._epoch_key in scalars:  # the loop's interval log, not clu's periodic progress report
      self.times.append(time.perf_counter())
      self.scalars.append({k: float(v) for k, v in scalars.items()})
    self._writer.write_scalars(step, scalars)

  def __getattr__(self, name):
    return getattr(self._writer, name)


class CompileEvents:
  """Records JAX's backend compile events (seconds, with the time they ended) while active."""

  def __init__(self):
    self.events = []

  def __call__(self, event: str, duration: float, **kwargs):
    del kwargs
    if event == '/jax/core/compile/backend_compile_duration':
      self.events.append((time.perf_counter(), duration))

  def __enter__(self):
    jax.monitoring.register_event_duration_secs_listener(self)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self)

  def seconds_between(self, start: float, end: float) -> float:
    return sum(d for t, d in self.events if start < t <= end)


def stage_inputs(
    kind: str,
    config: ml_collections.ConfigDict,
    dataset: data.Dataset,
    steps_per_epoch: int,
    learning_rate_fn,
    seed: int,
):
  """The replicated state, the step (un-pmapped), its sharded argument numbers, its broadcast arguments and the
  host arrays, as `pipeline.rm_stage` / `pipeline.rgrl_stage` build them."""
  init_rng = jax.random.key(seed)
  image_shape = dataset.image_shape
  step_fn, sharded_argnums = throughput.make_step_fn(kind, config, steps_per_epoch=steps_per_epoch)
  if kind == 'simsiam':
    state = simsiam.create_simsiam_state(init_rng, config, image_shape, learning_rate_fn)
    return parallel.replicate(state), step_fn, sharded_argnums, (), {'images': dataset.train_images}
  teacher = None
  if kind == 'rgrl':
    # A fresh RM network stands in for the trained teacher: its forward costs the same.
    rm_lr = train_state_lib.learning_rate_schedule(config.rm, steps_per_epoch)
    rm_state = simsiam.create_simsiam_state(jax.random.fold_in(init_rng, 1), config, image_shape, rm_lr)
    teacher = parallel.replicate(
        distill.teacher_variables({'params': rm_state.params, 'batch_stats': rm_state.batch_stats})
    )
  state = distill.create_distill_state(
      init_rng, config, image_shape, learning_rate_fn, teacher, num_examples=len(dataset.train_images)
  )
  arrays = {'images': dataset.train_images, 'labels': dataset.train_labels}
  return parallel.replicate(state), step_fn, sharded_argnums, (teacher,), arrays


def measure_stage(
    kind: str, config: ml_collections.ConfigDict, dataset: data.Dataset, *, resident: bool, workdir: str, seed: int
) -> dict:
  """Runs `config`'s epochs of one stage through `loop.train` and times each epoch."""
  stage = _LOOP_STAGE[kind]
  stage_config = config.rm if kind == 'simsiam' else config.rgrl
  num_examples = len(dataset.train_images)
  sched = pipeline.stage_schedule(stage_config, num_examples, config.log_every_steps)
  lr_fn = train_state_lib.learning_rate_schedule(stage_config, sched.steps_per_epoch)
  state, step_fn, sharded_argnums, step_args, arrays = stage_inputs(
      kind, config, dataset, sched.steps_per_epoch, lr_fn, seed
  )
  batch_kwargs = dict(
      num_steps=sched.num_steps,
      global_batch_size=stage_config.batch_size,
      seed=config.seed,
      stream=_STREAM[kind],
      host_slice=parallel.host_batch_slice(stage_config.batch_size, jax.process_index(), jax.process_count()),
  )
  if resident:
    data_argnum = sharded_argnums[0]
    step_fn = device_data.with_resident_data(step_fn, data_argnum)
    sharded_argnums = (data_argnum + 1,)
    step_args = step_args + (device_data.put_resident(arrays),)

    def batches(start_step):
      return map(parallel.shard, device_data.index_batches(num_examples, start_step=start_step, **batch_kwargs))

  else:

    def batches(start_step):
      return map(parallel.shard, data.host_batches(arrays, start_step=start_step, **batch_kwargs))

  rng = jax.random.fold_in(jax.random.key(seed), _STREAM[kind])
  # The batch of step 0 as the loop will see it, for compiling ahead of the loop.
  compile_s, flops = throughput.compile_step(
      step_fn, sharded_argnums, (state, *step_args, next(batches(0)), jax.random.fold_in(rng, 0))
  )
  step = parallel.pmap_step(step_fn, sharded_argnums=sharded_argnums)

  stage_dir = os.path.join(workdir, f"{kind}_{'resident' if resident else 'host'}")
  writer = EpochClock(metrics.create_writer(stage_dir), stage)
  mngr = checkpoints.manager(os.path.join(stage_dir, stage), max_to_keep=1)
  meta = checkpoints.stage_meta(config, stage, dataset.image_shape)
  with CompileEvents() as compiles:
    start = time.perf_counter()
    state = loop.train(
        stage=stage,
        state=state,
        step_fn=step,
        batches=batches(0),
        rng=rng,
        start_step=0,
        schedule=sched,
        mngr=mngr,
        meta=meta,
        writer=writer,
        learning_rate_fn=lr_fn,
        global_batch_size=stage_config.batch_size,
        step_args=step_args,
    )
  mngr.close()
  del state
  ends = writer.times
  starts = [start] + ends[:-1]
  epoch_s = [end - begin for begin, end in zip(starts, ends)]
  examples = sched.steps_per_epoch * stage_config.batch_size
  return {
      'step': kind,
      'resident': resident,
      'global_batch': stage_config.batch_size,
      'num_devices': jax.device_count(),
      'train_size': num_examples,
      'steps_per_epoch': sched.steps_per_epoch,
      'examples_per_epoch': examples,
      'compile_s': compile_s,
      'flops_per_step_per_chip': flops['flops'],
      'epoch_seconds': epoch_s,
      'compile_s_during_epoch': [compiles.seconds_between(b, e) for b, e in zip(starts, ends)],
      'first_epoch_s': epoch_s[0],
      'second_epoch_s': epoch_s[1],
      'images_per_s_second_epoch': examples / epoch_s[1],
      'ms_per_step_second_epoch': 1e3 * epoch_s[1] / sched.steps_per_epoch,
      'loop_images_per_second': [s.get(f'{stage}/images_per_second') for s in writer.scalars],
  }


def markdown(record: dict) -> str:
  """The results table, the settings and the environment as markdown."""
  lines = [
      '| stage | data | global batch | steps/epoch | step compile s | epoch 1 s | epoch 2 s | '
      'images/s (epoch 2) | ms/step (epoch 2) | other compiles in epoch 1 s |',
      '|---|---|---|---|---|---|---|---|---|---|',
  ]
  for r in record['results']:
    lines.append(
        f"| {r['step']} | {'resident' if r['resident'] else 'host'} | {r['global_batch']} | "
        f"{r['steps_per_epoch']} | {common.fmt(r['compile_s'], 1)} | {common.fmt(r['first_epoch_s'], 2)} | "
        f"{common.fmt(r['second_epoch_s'], 2)} | {common.fmt(r['images_per_s_second_epoch'], 0)} | "
        f"{common.fmt(r['ms_per_step_second_epoch'], 1)} | {common.fmt(r['compile_s_during_epoch'][0], 2)} |"
    )
  s = record['settings']
  return '\n'.join(
      [
          '# Epoch time through the training loop',
          '',
          '\n'.join(lines),
          '',
          f"Model {s['model']} width {s['width']}, {s['dtype']}, {s['train_size']:,} synthetic "
          f"{s['image_size']}x{s['image_size']} images, {s['num_devices']} device(s), {s['epochs']} epochs per stage.",
          "An epoch: from the previous epoch's log (or the loop's start) to its own log, through `loop.train`: host "
          'batching, transfer, step and the per-epoch log; no evaluation and no per-epoch checkpoint. The step is '
          "compiled before the loop (step compile s); the other compiles that happen inside epoch 1 (the loop's small "
          'metric and learning-rate computations) are included in it and listed. data: resident = the training set on '
          'every device, only indices shipped (`rmdnet_jax.device_data`); host = each batch shipped from the host.',
          '',
          common.environment_markdown(record['environment']),
      ]
  )


def run(args: argparse.Namespace, argv: Sequence[str] = ()) -> dict:
  """Measures every requested (stage, resident) and writes OUT/epoch_time.json and OUT/epoch_time.md."""
  kinds = common.parse_str_list(args.stages, STAGES, 'stages')
  modes = common.parse_str_list(args.resident, RESIDENT, 'resident')
  if args.epochs < 2:
    raise ValueError('--epochs must be at least 2: the second epoch is the one without first-call effects.')
  if jax.process_count() > 1:
    raise ValueError('benchmarks.epoch_time is single-host; run it without jax.distributed.')
  environment = common.environment('benchmarks.epoch_time', argv)
  dataset = None
  results = []
  with tempfile.TemporaryDirectory(prefix='epoch_time_') as scratch:
    workdir = args.workdir or scratch
    for kind in kinds:
      config = make_config(args, kind)
      if dataset is None:  # the same synthetic training set for every stage
        dataset = data.load(config.data)
      for mode in modes:
        row = measure_stage(kind, config, dataset, resident=mode == 'on', workdir=workdir, seed=args.seed)
        results.append(row)
        print(
            f"{kind:8s} {'resident' if row['resident'] else 'host':8s} batch {row['global_batch']:5d}: "
            f"epoch 1 {row['first_epoch_s']:8.2f} s, epoch 2 {row['second_epoch_s']:8.2f} s "
            f"({row['images_per_s_second_epoch']:.1f} images/s; step compile {row['compile_s']:.1f} s)",
            flush=True,
        )
  record = {
      'benchmark': 'epoch_time',
      'environment': environment,
      'settings': {**vars(args), 'stages': kinds, 'resident': modes, 'num_devices': jax.device_count()},
      'results': results,
  }
  json_path, md_path = common.write_outputs(args.out, 'epoch_time', record, markdown(record))
  print(f'Wrote {json_path} and {md_path}.', flush=True)
  return record


def main(argv: Optional[Sequence[str]] = None) -> dict:
  """Parses `argv` (default: the command line) and runs the benchmark; returns the JSON record."""
  argv = list(sys.argv[1:] if argv is None else argv)
  return run(build_parser().parse_args(argv), argv)


if __name__ == '__main__':
  main()
