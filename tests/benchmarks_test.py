"""Smoke tests of benchmarks/: each main runs end to end with the tiniest settings and writes sane JSON/markdown.

The numbers themselves are not checked (they depend on the machine), only that they exist and are positive.
Only the RGRL step is timed here: it goes through every part of the throughput benchmark (RM state, teacher,
student, relation losses, cost analysis) and XLA compiles one step in ~15 s on a 2-core CPU, where all three
steps take ~60 s; the SimSiam and CE steps differ only in the arguments `step_inputs` passes, checked below.
"""
import json

import jax

from benchmarks import relation_graph, throughput

# resnet_tiny at width 4 on 8x8 images, 2 images per (fake) device, one timed step.
TINY_MODEL = ['--model=resnet_tiny', '--width=4', '--image_size=8', '--projector_dim=16']
TINY_TIMING = ['--steps=1', '--repeats=1', '--warmup=1']


def test_throughput_reports_the_rgrl_step(tmp_path):
  record = throughput.main(TINY_MODEL + TINY_TIMING + ['--batch_per_device=2', '--dtype=float32', '--bench=rgrl',
                                                       f'--out={tmp_path}'])
  saved = json.loads((tmp_path / 'throughput.json').read_text())
  assert saved['results'] == json.loads(json.dumps(record['results']))
  assert [r['step'] for r in saved['results']] == ['rgrl']
  for row in saved['results']:
    assert row['num_devices'] == jax.device_count() == 8
    assert row['global_batch'] == 16
    assert row['images_per_s_per_chip'] > 0
    assert row['flops_per_step_per_chip'] > 0 and row['gflop_per_image'] > 0
    assert row['mfu'] is None  # no --peak_tflops
  assert saved['environment']['hardware']['platform'] == 'cpu'
  table = (tmp_path / 'throughput.md').read_text()
  assert '| step | dtype | batch/device | images/s/chip | ms/step | GFLOP/image | MFU |' in table


def test_relation_graph_reports_cost_and_step_share(tmp_path):
  record = relation_graph.main(TINY_MODEL + TINY_TIMING + ['--batch_sizes=16,32,64', '--max_batch=32', '--dim=32',
                                                           '--step_global_batch=16', '--rgrl_step_ms=50',
                                                           '--peak_tflops=1', f'--out={tmp_path}'])
  saved = json.loads((tmp_path / 'relation_graph.json').read_text())
  assert [r['global_batch'] for r in saved['results']] == [16, 32]  # --max_batch drops 64
  for row in saved['results']:
    assert row['images_per_s'] > 0 and row['flops'] > 0 and 0 < row['mfu']
    # resnet_tiny width 4 has 32-d teacher features, so the share is projected for D = 32.
    assert 0 < row['projected_step_share'] < 1
  step = saved['rgrl_step']
  assert step['ms_per_step'] == 50 and step['relation_dim'] == 32
  assert step['relation_share'] == record['rgrl_step']['relation_share'] > 0
  assert '## Share of the RGRL step' in (tmp_path / 'relation_graph.md').read_text()


def test_step_inputs_match_the_pipeline_call_signatures(monkeypatch):
  # Strings stand in for the states: only which state, teacher and batch each step receives is checked, and
  # replication is recorded instead of performed.
  monkeypatch.setattr(throughput.parallel, 'replicate', lambda tree: ('replicated', tree))
  states = {'rm': 'rm_state', 'teacher': 'teacher', 'student': 'student_state'}
  batch = {'images': 'images', 'labels': 'labels'}
  config = throughput.make_config(throughput.build_parser().parse_args(TINY_MODEL), 'float32', 16)

  fn, sharded, args = throughput.step_inputs('simsiam', config, states, batch)
  assert fn.func is throughput.simsiam.simsiam_step and sharded == (1,)
  assert args == (('replicated', 'rm_state'), {'images': 'images'})

  fn, sharded, args = throughput.step_inputs('ce', config, states, batch)
  assert fn.func is throughput.distill.distill_step and sharded == (2,)
  assert fn.keywords['teacher_apply'] is None  # the CE baseline: no teacher forward, no relation terms
  assert args == (('replicated', 'student_state'), None, batch)

  fn, sharded, args = throughput.step_inputs('rgrl', config, states, batch)
  assert fn.func is throughput.distill.distill_step and sharded == (2,)
  assert fn.keywords['teacher_apply'] is not None
  assert args == (('replicated', 'student_state'), ('replicated', 'teacher'), batch)
