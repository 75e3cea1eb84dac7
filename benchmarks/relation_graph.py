"""Cost of the RGRL relation losses alone as the global batch grows, and their share of the RGRL step.

  python -m benchmarks.relation_graph --batch_sizes=256,512,1024,2048,4096,8192 --out=benchmarks/results/h100

The RGRL step gathers the student and teacher features of the whole global batch B on every chip and computes
`relation.relation_distillation_loss` there: B x B graphs, O(B^2 D) work per chip, the same on every chip, while
the rest of the step's per-chip work grows only with the per-chip batch. This benchmark times that loss
(forward and gradient with respect to the student features, as in the step) alone on one chip for each B, with
D = 512 (the teacher dimension of ResNet-18 at width 64), and reports its share of one RGRL step: the step time
is either given (`--rgrl_step_ms`) or measured here, at the paper's global batch of 128 with the chosen model
(built as `benchmarks.throughput` builds it). From that one measurement it also projects the share at every
timed B, assuming the rest of the step grows linearly with the batch on the same devices.

Writes OUT/relation_graph.json and OUT/relation_graph.md.
"""

import argparse
import sys
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, throughput
from rmdnet_jax import distill, models, relation

# As rmdnet_jax.main, so that the measured RGRL step is the one training runs.
jax.config.update('jax_threefry_partitionable', False)

PAPER_RGRL_BATCH = 128


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m benchmarks.relation_graph', description=__doc__.split('\n')[0])
  parser.add_argument(
      '--batch_sizes',
      default='256,512,1024,2048,4096,8192',
      help='Comma-separated global batch sizes B of the relation graphs.',
  )
  parser.add_argument(
      '--max_batch', type=int, default=0, help='Skip batch sizes above this (0: no limit); e.g. 2048 on a CPU.'
  )
  parser.add_argument('--dim', type=int, default=512, help='Feature dimension D of teacher and student.')
  parser.add_argument('--steps', type=int, default=20, help='Timed calls (or RGRL steps) per repeat.')
  parser.add_argument('--repeats', type=int, default=5, help='Timed repeats; the median is reported.')
  parser.add_argument('--warmup', type=int, default=3, help='Untimed calls (or steps) first.')
  parser.add_argument(
      '--peak_tflops',
      default=None,
      help="Peak dense TFLOP/s per chip: one number, or per dtype as 'float32=67,bfloat16=989'. "
      'The relation losses always run in float32 (HIGHEST matmul precision).',
  )
  parser.add_argument(
      '--rgrl_step_ms',
      type=float,
      default=None,
      help='A measured RGRL step time (ms) at --step_global_batch with the model below; without '
      'it the step is measured here (see --no_step).',
  )
  parser.add_argument('--no_step', action='store_true', help='Neither measure nor report the step share.')
  parser.add_argument(
      '--step_global_batch', type=int, default=PAPER_RGRL_BATCH, help='Global batch of the RGRL step (the paper: 128).'
  )
  # The RGRL step: the same flags as benchmarks.throughput (also fix the relation losses' kinds).
  parser.add_argument('--model', default='resnet18', help='Backbone of teacher and student (model.name).')
  parser.add_argument('--width', type=int, default=64, help='Channels of the first stage (model.width).')
  parser.add_argument('--projector_dim', type=int, default=None, help='SimSiam projector width (default 2048).')
  parser.add_argument('--num_classes', type=int, default=10, help='Classifier outputs (CIFAR-10: 10).')
  parser.add_argument('--dtype', default='float32', choices=throughput.DTYPES, help='model.dtype of the step.')
  parser.add_argument('--image_size', type=int, default=32, help='Square image side in pixels.')
  parser.add_argument('--edge_kind', default=None, help='relation.edge_kind (default: configs/default.py).')
  parser.add_argument('--teacher_layer', default=None, help='relation.teacher_layer (default: backbone).')
  parser.add_argument('--seed', type=int, default=0, help='Seed of features, parameters, images and labels.')
  parser.add_argument('--out', default='benchmarks/results/latest', help='Directory for relation_graph.json/.md.')
  return parser


def time_relation(
    batch: int, dim: int, relation_kwargs: dict, *, steps: int, repeats: int, warmup: int, seed: int
) -> dict:
  """Times value-and-gradient of the relation loss w.r.t. the student features at global batch `batch`.

  Returns:
    dict with repeat_seconds, ms, flops (XLA cost analysis of the compiled function) and compile_s.
  """

  def loss(student, teacher):
    return relation.relation_distillation_loss(teacher, student, **relation_kwargs)[0]

  fn = jax.jit(jax.value_and_grad(loss))
  rng = np.random.default_rng(seed)
  # float32 features, as the step hands them over (the student's embedding and the teacher's features are cast
  # to float32 by the models whatever the compute dtype).
  student = jnp.asarray(rng.standard_normal((batch, dim), np.float32))
  teacher = jnp.asarray(rng.standard_normal((batch, dim), np.float32))
  start = time.perf_counter()
  compiled, flops = common.compile_with_flops(fn.lower(student, teacher))
  compile_s = time.perf_counter() - start
  jax.block_until_ready([compiled(student, teacher) for _ in range(warmup)])
  # Calls with the same inputs do not depend on each other, so every output of a repeat is waited on.
  seconds = common.time_repeats(lambda: [compiled(student, teacher) for _ in range(steps)], repeats)
  return {
      'repeat_seconds': seconds,
      'ms': 1e3 * common.median(seconds) / steps,
      'flops': flops['flops'],
      'flops_source': flops['flops_source'],
      'compile_s': compile_s,
  }


def measure_rgrl_step(args: argparse.Namespace, config) -> dict:
  """The RGRL step at `--step_global_batch`, built and timed as `benchmarks.throughput` does."""
  devices = jax.device_count()
  global_batch = args.step_global_batch
  if global_batch % devices:
    raise ValueError(f'--step_global_batch={global_batch} does not split over {devices} devices.')
  image_shape = (args.image_size, args.image_size, 3)
  states = throughput.initial_states(config, image_shape, args.seed, ('rgrl',))
  batch = throughput.device_batch(throughput.host_batch(global_batch, args.image_size, args.num_classes, args.seed))
  timing = throughput.measure_step(
      'rgrl', config, states, batch, steps=args.steps, repeats=args.repeats, warmup=max(1, args.warmup)
  )
  flops = timing['flops_per_step_per_chip']
  per_chip = global_batch // devices
  return {
      **timing,
      'source': 'measured',
      'images_per_s_per_chip': per_chip / (timing['ms_per_step'] / 1e3),
      'gflop_per_image': flops / per_chip / 1e9 if flops else None,
  }


def markdown(record: dict) -> str:
  """The per-batch table, the step share and the environment as markdown."""
  s = record['settings']
  lines = [
      '# Relation-graph losses vs. global batch',
      '',
      '| global batch B | D | ms (fwd+grad) | images/s (loss alone) | GFLOP/call | achieved TFLOP/s | MFU | '
      'B x B graph MiB | projected share of RGRL step |',
      '|---|---|---|---|---|---|---|---|---|',
  ]
  for r in record['results']:
    mfu = common.fmt_pct(r.get('mfu'))
    share = common.fmt_pct(r.get('projected_step_share'))
    gflop = r['flops'] / 1e9 if r['flops'] else None
    cells = [
        str(r['global_batch']),
        str(r['dim']),
        common.fmt(r['ms'], 3),
        common.fmt(r['images_per_s'], 0),
        common.fmt_sig(gflop),
        common.fmt(r['achieved_tflops'], 3),
        mfu,
        common.fmt(r['graph_mib'], 1),
        share,
    ]
    lines.append('| ' + ' | '.join(cells) + ' |')
  lines += [
      '',
      f"Relation loss: {s['relation_kwargs']}; float32 features, timed on one chip (each chip computes "
      f"it on the gathered global batch); median of {s['repeats']} repeats of {s['steps']} calls after "
      f"{s['warmup']} warm-up call(s).",
  ]
  step = record.get('rgrl_step')
  if step:
    b0 = step['global_batch']
    speed = f", {common.fmt(step['images_per_s_per_chip'], 0)} images/s/chip" if 'images_per_s_per_chip' in step else ''
    lines += [
        '',
        '## Share of the RGRL step',
        '',
        f"RGRL step ({step['source']}): model {s['model']} width {s['width']}, {s['dtype']}, "
        f"{s['image_size']}x{s['image_size']} images, global batch {b0} on {step['num_devices']} device(s): "
        f"{common.fmt(step['ms_per_step'], 2)} ms/step{speed}.",
        f"Relation loss at B = {b0}, D = {step['relation_dim']}: {common.fmt(step['relation_ms'], 3)} ms = "
        f"**{common.fmt_pct(step['relation_share'])}** of the step.",
        f'Projected share (table): relation ms(B) / (relation ms(B) + (step ms - relation ms({b0})) x B / {b0}), '
        'i.e. the rest of the step scaled linearly with the batch on the same devices: an estimate, not a '
        "measurement, given only where D equals the step's teacher dimension.",
    ]
  return '\n'.join(lines) + '\n\n' + common.environment_markdown(record['environment'])


def run(args: argparse.Namespace, argv: Sequence[str] = ()) -> dict:
  """Times the relation loss at every batch size, then the step share; writes OUT/relation_graph.json/.md."""
  batches = sorted(b for b in common.parse_int_list(args.batch_sizes) if not args.max_batch or b <= args.max_batch)
  if not batches:
    raise ValueError(f'No batch size in --batch_sizes={args.batch_sizes!r} is <= --max_batch={args.max_batch}.')
  for name in ('steps', 'repeats', 'dim'):
    if getattr(args, name) < 1:
      raise ValueError(f'--{name} must be at least 1.')
  if args.warmup < 0:
    raise ValueError('--warmup must be >= 0.')
  peak = common.peak_for(common.parse_peak_tflops(args.peak_tflops), 'float32')
  environment = common.environment('benchmarks.relation_graph', argv)
  step_config = throughput.make_config(args, args.dtype, args.step_global_batch)
  relation_kwargs = distill.relation_kwargs(step_config)
  timing_kwargs = dict(steps=args.steps, repeats=args.repeats, warmup=args.warmup, seed=args.seed)

  results = []
  for batch in batches:
    t = time_relation(batch, args.dim, relation_kwargs, **timing_kwargs)
    row = {
        'global_batch': batch,
        'dim': args.dim,
        **t,
        'images_per_s': batch / (t['ms'] / 1e3),
        'achieved_tflops': t['flops'] / (t['ms'] / 1e3) / 1e12 if t['flops'] else None,
        'mfu': t['flops'] / (t['ms'] / 1e3) / (peak * 1e12) if t['flops'] and peak else None,
        # One float32 B x B graph; the loss holds a handful of them (teacher, student, cross, differences).
        'graph_mib': batch * batch * 4 / 2**20,
    }
    peak_memory = common.peak_memory_bytes()
    if peak_memory is not None:
      row['peak_memory_bytes_since_start'] = peak_memory
    results.append(row)
    print(
        f"relation B={batch:6d} D={args.dim}: {row['ms']:10.3f} ms, "
        f"{common.fmt_sig(t['flops'] / 1e9 if t['flops'] else None)} GFLOP",
        flush=True,
    )

  step = None
  if not args.no_step:
    step_dim = models.teacher_feature_dim(step_config.model, step_config.relation.teacher_layer)
    if args.rgrl_step_ms is not None:
      step = {'source': 'given (--rgrl_step_ms)', 'ms_per_step': args.rgrl_step_ms}
    else:
      step = measure_rgrl_step(args, step_config)
    step.update(global_batch=args.step_global_batch, num_devices=jax.device_count(), relation_dim=step_dim)
    at_step = time_relation(args.step_global_batch, step_dim, relation_kwargs, **timing_kwargs)
    step['relation_ms'] = at_step['ms']
    step['relation_share'] = at_step['ms'] / step['ms_per_step']
    rest_ms = step['ms_per_step'] - at_step['ms']
    for row in results:
      if row['dim'] == step_dim and rest_ms > 0:
        projected = row['ms'] + rest_ms * row['global_batch'] / args.step_global_batch
        row['projected_step_ms'] = projected
        row['projected_step_share'] = row['ms'] / projected
    print(
        f"RGRL step ({step['source']}) at global batch {args.step_global_batch}: {step['ms_per_step']:.2f} ms; "
        f"relation {at_step['ms']:.3f} ms = {common.fmt_pct(step['relation_share'])} of it.",
        flush=True,
    )

  record = {
      'benchmark': 'relation_graph',
      'environment': environment,
      'settings': {
          **vars(args),
          'batch_sizes': batches,
          'num_devices': jax.device_count(),
          'relation_kwargs': relation_kwargs,
      },
      'results': results,
      'rgrl_step': step,
  }
  json_path, md_path = common.write_outputs(args.out, 'relation_graph', record, markdown(record))
  print(f'Wrote {json_path} and {md_path}.', flush=True)
  return record


def main(argv: Optional[Sequence[str]] = None) -> dict:
  """Parses `argv` (default: the command line) and runs the benchmark; returns the JSON record."""
  argv = list(sys.argv[1:] if argv is None else argv)
  return run(build_parser().parse_args(argv), argv)


if __name__ == '__main__':
  main()
