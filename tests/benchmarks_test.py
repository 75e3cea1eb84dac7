"""Smoke tests of benchmarks/: each main runs end to end with the tiniest settings and writes sane JSON/markdown.

The numbers themselves are not checked (they depend on the machine), only that they exist and are positive.
Only the RGRL step is timed here: it goes through every part of the throughput benchmark (RM state, teacher,
student, relation losses, cost analysis) and XLA compiles one step in ~15 s on a 2-core CPU, where all three
steps take ~60 s; the SimSiam and CE steps differ only in the arguments `step_inputs` passes, checked below.
Later runs of the same tiny RGRL step find it in the session's persistent compilation cache (tests/conftest.py).

The PyTorch peer's tests skip where torch is not installed (CI installs only requirements.txt; torch is in
benchmarks/requirements.txt).
"""

import json
import sys

import jax
import numpy as np
import pytest

from benchmarks import epoch_time, relation_graph, throughput
from rmdnet_jax import models, relation, simsiam

# resnet_tiny at width 4 on 8x8 images, 2 images per (fake) device, one timed step.
TINY_MODEL = ['--model=resnet_tiny', '--width=4', '--image_size=8', '--projector_dim=16']
TINY_TIMING = ['--steps=1', '--repeats=1', '--warmup=1']


def test_throughput_reports_the_rgrl_step(tmp_path):
  record = throughput.main(
      TINY_MODEL + TINY_TIMING + ['--batch_per_device=2', '--dtype=float32', '--bench=rgrl', f'--out={tmp_path}']
  )
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
  record = relation_graph.main(
      TINY_MODEL
      + TINY_TIMING
      + [
          '--batch_sizes=16,32,64',
          '--max_batch=32',
          '--dim=32',
          '--step_global_batch=16',
          '--rgrl_step_ms=50',
          '--peak_tflops=1',
          f'--out={tmp_path}',
      ]
  )
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


def test_throughput_profile_lists_the_slowest_ops(tmp_path):
  record = throughput.main(
      TINY_MODEL
      + TINY_TIMING
      + [
          '--batch_per_device=2',
          '--dtype=float32',
          '--bench=rgrl',
          f'--profile_dir={tmp_path / "trace"}',
          '--profile_steps=1',
          '--profile_top=5',
          f'--out={tmp_path}',
      ]
  )
  row = record['results'][0]
  assert row['profile_dir'] == str(tmp_path / 'trace' / 'rgrl_float32_b2')
  assert 0 < len(row['top_ops']) <= 5
  assert all(op['ms_per_step_per_device'] > 0 and 0 < op['share'] <= 1 for op in row['top_ops'])
  assert '## Slowest XLA ops: rgrl float32' in (tmp_path / 'throughput.md').read_text()


def test_compare_torch_without_torch_names_the_requirements_file(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, 'torch', None)  # what an environment without PyTorch looks like to imports
  with pytest.raises(SystemExit) as stop:
    throughput.main(
        TINY_MODEL + TINY_TIMING + ['--batch_per_device=2', '--bench=rgrl', '--compare-torch', f'--out={tmp_path}']
    )
  assert str(stop.value) == throughput.TORCH_MISSING
  assert 'pip install -r benchmarks/requirements.txt' in str(stop.value)
  assert not (tmp_path / 'throughput.json').exists()


def test_epoch_time_times_two_epochs_through_the_loop(tmp_path):
  record = epoch_time.main(
      TINY_MODEL
      + [
          '--train_size=48',
          '--rgrl_batch=16',
          '--stages=rgrl',
          '--epochs=2',
          f'--workdir={tmp_path / "work"}',
          f'--out={tmp_path}',
      ]
  )
  saved = json.loads((tmp_path / 'epoch_time.json').read_text())
  [row] = saved['results']
  assert row['step'] == 'rgrl' and row['resident'] is True  # --resident defaults to on
  assert row['steps_per_epoch'] == 3 and len(row['epoch_seconds']) == 2
  assert row['first_epoch_s'] > 0 and row['second_epoch_s'] > 0 and row['images_per_s_second_epoch'] > 0
  assert row['compile_s'] > 0 and row['flops_per_step_per_chip'] > 0
  # The loop really ran: one log per epoch, in the stage's metrics file.
  assert len(row['loop_images_per_second']) == 2
  logged = [
      json.loads(line) for line in (tmp_path / 'work' / 'rgrl_resident' / 'metrics.jsonl').read_text().splitlines()
  ]
  assert [row['rgrl/epoch'] for row in logged if 'rgrl/epoch' in row] == [1.0, 2.0]
  assert record['settings']['resident'] == ['on']
  assert '| rgrl | resident | 16 | 3 |' in (tmp_path / 'epoch_time.md').read_text()


@pytest.fixture
def torch_peer():
  pytest.importorskip('torch')
  from benchmarks import torch_peer as module  # imports torch

  return module


def _jax_parameter_count(module, image_size=8, **kwargs):
  shapes = jax.eval_shape(
      lambda: module.init(
          jax.random.key(0), np.zeros((2, image_size, image_size, 3), np.float32), train=False, **kwargs
      )
  )
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes['params']))


@pytest.mark.parametrize('name, expected', [('resnet18', 11_168_832), ('preact_resnet18', 11_166_144)])
def test_torch_backbone_has_the_jax_parameter_count(torch_peer, name, expected):
  with torch_peer.torch.device('meta'):
    backbone = torch_peer.CifarResNet(name, 64)
  assert torch_peer.count_parameters(backbone) == expected  # tests/models_test.py's flax figures


def test_torch_networks_have_the_jax_parameter_counts(torch_peer):
  config = throughput.make_config(throughput.build_parser().parse_args(TINY_MODEL), 'float32', 16)
  counts = torch_peer.parameter_counts(config)
  assert counts['backbone'] == _jax_parameter_count(models.make_backbone('resnet_tiny', 4, np.float32, None))
  assert counts['simsiam_net'] == _jax_parameter_count(models.simsiam_net(config.model))
  assert counts['student_net'] == _jax_parameter_count(models.student_net(config))


def test_torch_losses_match_the_jax_losses(torch_peer):
  torch = torch_peer.torch
  rng = np.random.default_rng(0)
  t, s, p1, p2, z1, z2 = (rng.normal(size=(12, 6)).astype(np.float32) for _ in range(6))
  config = throughput.make_config(throughput.build_parser().parse_args(TINY_MODEL), 'float32', 16)
  node, edge = torch_peer.relation_losses(torch.tensor(t), torch.tensor(s), config.relation)
  _, parts = relation.relation_distillation_loss(
      t, s, **{k: v for k, v in throughput.distill.relation_kwargs(config).items()}
  )
  np.testing.assert_allclose([float(node), float(edge)], [parts['node'], parts['edge']], rtol=1e-5)
  np.testing.assert_allclose(
      float(torch_peer.simsiam_loss(*map(torch.tensor, (p1, p2, z1, z2)))),
      simsiam.simsiam_loss(p1, p2, z1, z2),
      rtol=1e-5,
  )


def test_torch_peer_times_the_three_steps(torch_peer, tmp_path):
  record = torch_peer.main(
      TINY_MODEL + TINY_TIMING + ['--batch=4', '--dtype=float32,bfloat16', '--device=cpu', f'--out={tmp_path}']
  )
  saved = json.loads((tmp_path / 'torch_peer.json').read_text())
  assert [(r['step'], r['dtype']) for r in saved['results']] == [
      (step, dtype) for dtype in ('float32', 'bfloat16') for step in ('simsiam', 'rgrl', 'ce')
  ]
  for row in saved['results']:
    assert row['images_per_s'] > 0 and row['gflop_per_image'] > 0
  flops = {(r['step'], r['dtype']): r['flops_per_step'] for r in record['results']}
  # The teacher's forward pass and the second SimSiam view are real work.
  assert flops['simsiam', 'float32'] > flops['rgrl', 'float32'] > flops['ce', 'float32']
  assert saved['settings']['compiled'] is False  # off by default on the CPU
  assert 'augmentation is excluded' in (tmp_path / 'torch_peer.md').read_text()


def test_compare_torch_adds_the_torch_columns(torch_peer, tmp_path):
  record = throughput.main(
      TINY_MODEL
      + TINY_TIMING
      + [
          '--batch_per_device=2',
          '--dtype=float32',
          '--bench=rgrl',
          '--compare-torch',
          '--torch_device=cpu',
          f'--out={tmp_path}',
      ]
  )
  [row] = record['results']
  assert row['torch_images_per_s'] > 0
  assert row['jax_over_torch'] == pytest.approx(row['images_per_s_per_chip'] / row['torch_images_per_s'])
  assert record['torch_peer']['settings']['batch'] == [2]  # the JAX batch per chip
  assert '| torch images/s | jax/torch |' in (tmp_path / 'throughput.md').read_text()
