"""Smoke tests of benchmarks/: each main runs end to end with the tiniest settings and writes sane JSON/markdown.

The numbers themselves are not checked (they depend on the machine), only that they exist and are positive.
Only the RGRL step is timed here: it goes through every part of the throughput benchmark (RM stage, teacher,
student, relation losses, cost analysis) and XLA compiles one step in ~15 s on a 2-core CPU, where all three
steps take ~60 s; the SimSiam and CE steps are the stages' own steps, checked below without compiling them.
Later runs of the same tiny RGRL step find it in the session's persistent compilation cache (tests/conftest.py).

The PyTorch peer's tests skip where torch is not installed (CI installs only requirements.txt; torch is in
benchmarks/requirements.txt).
"""

import json
import sys

import jax
import numpy as np
import pytest

from benchmarks import throughput
from rmdnet_jax.core import models, relation
from rmdnet_jax.datasets import data
from rmdnet_jax.stages import distill, simsiam

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
    assert row['flops_source'] == 'xla_cost_analysis_compiled'
    assert row['first_step_s'] < row['compile_s']  # the timed pmap reuses the executable its .lower() compiled
    assert 0 < row['relation_share'] < 1 and row['relation_dim'] == 32  # resnet_tiny width 4: 32-d teacher
  assert saved['environment']['hardware']['platform'] == 'cpu'
  table = (tmp_path / 'throughput.md').read_text()
  assert '| step | dtype | batch/device | images/s/chip | ms/step | GFLOP/image | MFU |' in table
  assert 'relation share' in table


def test_measured_steps_are_the_stages_steps():
  # Nothing is compiled: which step each benchmark row times, with which teacher, is checked on the stages.
  config = throughput.make_config(throughput.build_parser().parse_args(TINY_MODEL + TINY_TIMING), 'float32', 16)
  stages = throughput.build_stages(config, data.load(config.data), throughput.STEPS)
  assert stages['simsiam'].step.func is simsiam.simsiam_step
  assert stages['rgrl'].step.func is stages['ce'].step.func is distill.distill_step
  assert stages['rgrl'].step.keywords['teacher_apply'] is not None and stages['rgrl'].ctx['teacher'] is not None
  assert stages['ce'].step.keywords['teacher_apply'] is None  # the CE baseline: no teacher forward, no relation
  assert stages['rgrl'].ctx['teacher']['params']['backbone'] is stages['simsiam'].init_state.params['backbone']
  batch = throughput.first_batch(stages['rgrl'])
  assert batch['images'].shape == (8, 2, 8, 8, 3) and set(batch) == {'images', 'labels', 'index'}


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


def test_loop_epochs_run_the_stage_through_the_training_loop(tmp_path):
  args = throughput.build_parser().parse_args(TINY_MODEL + ['--train_size=48'])
  config = throughput.make_config(args, 'float32', 16)
  [stage] = throughput.build_stages(config, data.load(config.data), ('ce',)).values()
  result = throughput.loop_epochs(stage, 2, resident=True, workdir=str(tmp_path))
  assert result['steps_per_epoch'] == 3 and len(result['images_per_s_per_epoch']) == 2  # one log per epoch
  assert result['images_per_s_per_chip'] == pytest.approx(result['images_per_s_per_epoch'][-1] / 8)
  assert (tmp_path / 'rgrl').is_dir()  # the loop's checkpoint directory: loop.train really ran
  assert stage.init_state.step == 0  # the loop trained a copy; the stage's state was not donated


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
  assert torch_peer.count_parameters(backbone) == expected  # tests/core/models_test.py's flax figures


def test_torch_networks_have_the_jax_parameter_counts(torch_peer):
  config = throughput.make_config(throughput.build_parser().parse_args(TINY_MODEL), 'float32', 16)
  counts = torch_peer.parameter_counts(config)
  assert counts['backbone'] == _jax_parameter_count(models.make_backbone('resnet_tiny', 4, np.float32, None))
  assert counts['simsiam_net'] == _jax_parameter_count(models.simsiam_net(config.model))
  assert counts['student_net'] == _jax_parameter_count(distill.student_net(config))


def test_torch_losses_match_the_jax_losses(torch_peer):
  torch = torch_peer.torch
  rng = np.random.default_rng(0)
  t, s, p1, p2, z1, z2 = (rng.normal(size=(12, 6)).astype(np.float32) for _ in range(6))
  config = throughput.make_config(throughput.build_parser().parse_args(TINY_MODEL), 'float32', 16)
  node, edge = torch_peer.relation_losses(torch.tensor(t), torch.tensor(s), config.relation)
  _, parts = relation.relation_distillation_loss(t, s, **distill.relation_kwargs(config))
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
