"""benchmarks/simsiam_side_by_side.py on small synthetic run files (no torch), its jax-init on the tiny config, and
benchmarks/simsiam_reference.py (the PyTorch SimSiam, which skips where torch or torchvision is absent, as in CI):
one epoch at tiny width, its schedule and kNN against the JAX ones, its initialisers against models'."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import simsiam_side_by_side as side_by_side
from rmdnet_jax.core import models, relation
from rmdnet_jax.training import metrics
from rmdnet_jax.core import train_state as train_state_lib
from tests import helpers


def _write_jsonl(path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))


def _jax_run(directory, losses, z_stds, knns, init=None, steps_per_epoch=4):
  """A JAX RM run's metrics.jsonl as the loop writes it: a log row and an eval row per epoch, other rows between."""
  rows = []
  for epoch, (loss, spread, knn) in enumerate(zip(losses, z_stds, knns), start=1):
    step = epoch * steps_per_epoch
    rows += [
        {'step': step, 'steps_per_sec': 1.0},
        {'step': step, 'rm/loss': loss, 'rm/z_std': spread, 'rm/epoch': float(epoch), 'rm/learning_rate': 0.01},
        {'step': step, 'rm/knn_accuracy': knn},
    ]
  _write_jsonl(directory / 'metrics.jsonl', rows)
  config = helpers.tiny_config()
  (directory / 'config.json').write_text(config.to_json_best_effort())
  (directory / 'results.json').write_text('{}')
  if init is not None:
    (directory / 'init.json').write_text(json.dumps(dict(zip(side_by_side.METRICS, init))))


def _torch_run(directory, losses, z_stds, knns):
  rows = [
      {'epoch': e, 'loss': l, 'z_std': z, 'knn_accuracy': k} for e, (l, z, k) in enumerate(zip(losses, z_stds, knns))
  ]
  _write_jsonl(directory / 'metrics.jsonl', rows)
  (directory / 'run.json').write_text('{}')


def test_jax_epochs_joins_each_log_with_its_evaluation_and_init(tmp_path):
  _jax_run(tmp_path / 'jax_s0', [-0.1, -0.2], [0.04, 0.03], [0.2, 0.25], init=(0.0, 0.05, 0.18))
  epochs = side_by_side.jax_epochs(str(tmp_path / 'jax_s0'))
  assert epochs == {
      0: {'loss': 0.0, 'z_std': 0.05, 'knn_accuracy': 0.18},
      1: {'loss': -0.1, 'z_std': 0.04, 'knn_accuracy': 0.2},
      2: {'loss': -0.2, 'z_std': 0.03, 'knn_accuracy': 0.25},
  }


def test_plot_writes_the_figure_and_the_per_epoch_table(tmp_path):
  _jax_run(tmp_path / 'jax_s0', [-0.1, -0.2], [0.040, 0.030], [0.20, 0.25], init=(0.0, 0.050, 0.18))
  _jax_run(tmp_path / 'jax_s1', [-0.3, -0.4], [0.030, 0.020], [0.22, 0.27], init=(0.0, 0.050, 0.20))
  _torch_run(tmp_path / 'torch_s0', [0.0, -0.1, -0.2], [0.05, 0.045, 0.035], [0.18, 0.21, 0.24])
  _torch_run(tmp_path / 'torch_s1', [0.0, -0.1, -0.2], [0.05, 0.040, 0.030], [0.20, 0.23, 0.28])
  _torch_run(tmp_path / 'ablation_padding_same_s1', [0.0, -0.05, -0.15], [0.05, 0.042, 0.034], [0.2, 0.2, 0.2])
  png, md = map(pathlib.Path, side_by_side.plot(str(tmp_path)))
  assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  lines = md.read_text().splitlines()
  # The last epoch's summary; the ablation's change is paired with torch_s1: -0.15 - -0.2, 0.034 - 0.030, 0.2 - 0.28.
  assert '| PyTorch reference | s0, s1 | -0.2000 ± 0.0000 | 0.0325 ± 0.0035 | 0.2600 ± 0.0283 | – |' in lines
  assert (
      '| PyTorch reference, --padding=same | s1 | -0.1500 | 0.0340 | 0.2000 | +0.0500, +0.0040, -0.0800 (1 seed) |'
      in lines
  )
  rows = [line for line in lines if line.startswith('| ') and line[2].isdigit()]
  assert len(rows) == 3  # epochs 0, 1, 2
  epoch1 = [cell.strip() for cell in rows[1].strip('|').split('|')]
  # loss: JAX mean -0.2 in [-0.3, -0.1], torch -0.1 [-0.1, -0.1]: outside; z_std: JAX 0.035, torch [0.040, 0.045]:
  # outside; kNN: JAX 0.21, torch [0.21, 0.23]: inside.
  assert epoch1 == [
      '1',
      '-0.200 [-0.300, -0.100]',
      '-0.100 [-0.100, -0.100]',
      'no',
      '0.0350 [0.0300, 0.0400]',
      '0.0425 [0.0400, 0.0450]',
      'no',
      '0.210 [0.200, 0.220]',
      '0.220 [0.210, 0.230]',
      'yes',
  ]


def test_plot_refuses_sides_that_logged_different_epochs(tmp_path):
  _jax_run(tmp_path / 'jax_s0', [-0.1, -0.2], [0.04, 0.03], [0.2, 0.25])  # no init.json: epochs 1, 2
  _torch_run(tmp_path / 'torch_s0', [0.0, -0.1, -0.2], [0.05, 0.045, 0.035], [0.18, 0.21, 0.24])
  with pytest.raises(ValueError, match='different epochs'):
    side_by_side.plot(str(tmp_path))


def test_collect_copies_only_the_small_files(tmp_path):
  _jax_run(tmp_path / 'runs' / 'jax_s0', [-0.1], [0.04], [0.2], init=(0.0, 0.05, 0.18))
  (tmp_path / 'runs' / 'jax_s0' / 'rm' / '32').mkdir(parents=True)  # a checkpoint: not copied
  _torch_run(tmp_path / 'runs' / 'torch_s0', [0.0, -0.1], [0.05, 0.04], [0.18, 0.2])
  out = tmp_path / 'out'
  side_by_side.collect([str(tmp_path / 'runs' / 'jax_s0'), str(tmp_path / 'runs' / 'torch_s0') + '/'], str(out))
  assert sorted(p.name for p in (out / 'jax_s0').iterdir()) == sorted(side_by_side.JAX_FILES)
  assert sorted(p.name for p in (out / 'torch_s0').iterdir()) == sorted(side_by_side.TORCH_FILES)


@pytest.mark.slow
def test_jax_init_gives_the_initial_networks_epoch_0(tmp_path):
  config = helpers.tiny_config()
  (tmp_path / 'config.json').write_text(config.to_json_best_effort())
  record = side_by_side.jax_init(str(tmp_path))
  assert json.loads((tmp_path / 'init.json').read_text())['knn_accuracy'] == record['knn_accuracy']
  assert -1.0 <= record['loss'] <= 1.0 and 0.0 < record['z_std'] < 1.0 and 0.0 <= record['knn_accuracy'] <= 1.0


# ---------------------------------------------------------------------------------------------------------------
# The PyTorch reference (skips without torch and torchvision).
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def reference():
  pytest.importorskip('torch')
  pytest.importorskip('torchvision')
  from benchmarks import simsiam_reference as module  # noqa: PLC0415  (imports torch)

  return module


def test_reference_trains_one_epoch_and_logs_each_epoch(reference, tmp_path):
  config = helpers.tiny_config()  # resnet_tiny width 4, 64 random 8x8 images, batch 16, 1 epoch
  # workers=0: no DataLoader process, as forking a process whose JAX is running (the tests') can deadlock.
  rows = reference.train(config, str(tmp_path), threads=1, workers=0, log=lambda _: None)
  saved = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert saved == rows and [r['epoch'] for r in rows] == [0, 1] and rows[1]['step'] == 4
  for row in rows:
    assert {'loss', 'z_std', 'knn_accuracy', 'learning_rate', 'train_seconds', 'eval_seconds'} <= set(row)
    assert -1.0 <= row['loss'] <= 1.0 and 0.0 < row['z_std'] < 1.0 and 0.0 <= row['knn_accuracy'] <= 1.0
  run = json.loads((tmp_path / 'run.json').read_text())
  assert run['config']['model']['name'] == 'resnet_tiny' and run['steps'] == 4 and run['wall_seconds'] > 0
  assert side_by_side.torch_epochs(str(tmp_path))[1]['knn_accuracy'] == rows[1]['knn_accuracy']


@pytest.mark.parametrize('warmup_epochs', [0.0, 1.5])
def test_reference_learning_rate_is_the_jax_schedule(reference, warmup_epochs):
  config = helpers.tiny_config(**{'rm.epochs': 4, 'rm.warmup_epochs': warmup_epochs, 'rm.learning_rate': 0.03})
  jax_schedule = train_state_lib.learning_rate_schedule(config.rm, 10)
  for step in range(0, 41):
    assert reference.learning_rate(config.rm, 10, step) == pytest.approx(float(jax_schedule(step)), rel=1e-5, abs=1e-9)


def test_reference_knn_is_the_jax_knn(reference):
  torch = reference.torch
  rng = np.random.default_rng(0)
  bank, queries = rng.normal(size=(200, 16)).astype(np.float32), rng.normal(size=(50, 16)).astype(np.float32)
  labels = rng.integers(0, 10, 200)
  expected = metrics.knn_predict(bank, labels, queries, num_classes=10, k=20, temperature=0.1)
  got = reference.knn_predict(
      torch.tensor(bank), torch.tensor(labels), torch.tensor(queries), num_classes=10, k=20, temperature=0.1
  )
  np.testing.assert_array_equal(got.numpy(), expected)


def _stds_by_shape(arrays):
  """{shape (flax layout): mean std} of the >= 2-D weights: conv [kh, kw, in, out], linear [in, out]."""
  groups = {}
  for shape, array in arrays:
    groups.setdefault(shape, []).append(float(np.std(array)))
  return {shape: float(np.mean(stds)) for shape, stds in groups.items()}


@pytest.mark.parametrize('init', models.INITS)
def test_reference_networks_start_from_the_jax_initialisers(reference, init):
  config = helpers.tiny_config(**{'model.width': 16, 'model.projector_dim': 64, 'model.init': init})
  variables = models.simsiam_net(config.model).init(jax.random.key(0), np.zeros((2, 8, 8, 3), np.float32), train=False)
  jax_weights = [(x.shape, np.asarray(x)) for x in jax.tree.leaves(variables['params']) if x.ndim >= 2]
  reference.torch.manual_seed(0)
  net = reference.torch_peer.SimSiamNet(config.model)
  torch_weights = []
  for p in net.parameters():
    if p.ndim == 4:  # [out, in, kh, kw] -> [kh, kw, in, out]
      torch_weights.append((tuple(p.permute(2, 3, 1, 0).shape), p.detach().permute(2, 3, 1, 0).numpy()))
    elif p.ndim == 2:  # [out, in] -> [in, out]
      torch_weights.append((tuple(p.T.shape), p.detach().T.numpy()))
  jax_stds, torch_stds = _stds_by_shape(jax_weights), _stds_by_shape(torch_weights)
  assert jax_stds.keys() == torch_stds.keys()
  for shape, std in jax_stds.items():
    # 10%: about 3 standard errors of the smallest tensor's std (the stem's 432 weights); the two initialisers'
    # stds differ by 30% or more for most layers (torch's conv: sqrt(2 / fan_out); flax's: 1 / sqrt(fan_in)).
    assert torch_stds[shape] == pytest.approx(std, rel=0.1), shape


def test_reference_jax_crop_ablation_is_the_jax_crop(reference):
  from rmdnet_jax.core import augment  # noqa: PLC0415

  torch = reference.torch
  image = np.random.default_rng(0).uniform(size=(16, 16, 3)).astype(np.float32)
  crop = reference.JaxBoxCrop((0.2, 1.0))
  for seed in range(5):
    key = jax.random.key(seed)
    expected = augment.random_resized_crop(key, image, (0.2, 1.0))
    u = torch.tensor(np.asarray(jax.random.uniform(key, (4,), np.float32)))  # sample_crop_box's one draw
    got = crop.crop(torch.tensor(image).permute(2, 0, 1), u).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_same_padding_ablation_is_the_flax_convolution(reference):
  import flax.linen as nn  # noqa: PLC0415

  torch = reference.torch
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
  for kernel in (3, 1):
    same = reference.torch_peer._conv(3, 4, kernel, 2, 'same')
    hwio = same.weight.detach().permute(2, 3, 1, 0).numpy()
    expected = nn.Conv(4, (kernel, kernel), 2, padding='SAME', use_bias=False).apply({'params': {'kernel': hwio}}, x)
    got = same(torch.tensor(x).permute(0, 3, 1, 2)).detach().permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # torch's own padding (1 on each side) centres a stride-2 3x3 conv on other pixels than SAME (0 before, 1 after).
    symmetric = reference.torch_peer._conv(3, 4, kernel, 2, 'torch')
    symmetric.weight.data.copy_(same.weight.data)
    other = symmetric(torch.tensor(x).permute(0, 3, 1, 2)).detach().permute(0, 2, 3, 1).numpy()
    assert other.shape == expected.shape and np.allclose(other, expected, atol=1e-5) == (kernel == 1)


def test_reference_step_is_the_jax_step_on_the_same_weights_and_views(reference):
  """Network, loss, gradients, SGD, weight decay and schedule: two steps of both sides from one set of weights on
  the same views agree (with the ablation padding='same', the JAX networks' SAME padding)."""
  import optax  # noqa: PLC0415

  from rmdnet_jax.stages import simsiam  # noqa: PLC0415

  torch = reference.torch
  config = helpers.tiny_config(**{'rm.epochs': 2, 'rm.learning_rate': 0.5})  # a large step: a visible update
  model = models.simsiam_net(config.model)
  variables = model.init(jax.random.key(0), np.zeros((2, 8, 8, 3), np.float32), train=False)
  lr_fn = train_state_lib.learning_rate_schedule(config.rm, 4)
  state = train_state_lib.create_train_state(model, variables, train_state_lib.make_optimizer(config.rm, lr_fn))
  net = reference.torch_peer.load_flax_variables(reference.torch_peer.SimSiamNet(config.model, 'same'), variables)
  optimizer = torch.optim.SGD(net.parameters(), lr=0.0, momentum=0.9, weight_decay=config.rm.weight_decay)

  def jax_loss(params, batch_stats, view1, view2):  # simsiam.simsiam_step's loss_fn
    out1, updates = model.apply(
        {'params': params, 'batch_stats': batch_stats}, view1, train=True, mutable=['batch_stats']
    )
    out2, updates = model.apply({'params': params, **updates}, view2, train=True, mutable=['batch_stats'])
    return simsiam.simsiam_loss(out1['p'], out2['p'], out1['z'], out2['z']), (out1['z'], updates['batch_stats'])

  rng = np.random.default_rng(0)
  for step in range(2):
    view1, view2 = rng.normal(size=(2, 16, 8, 8, 3)).astype(np.float32)
    (loss, (z1, batch_stats)), grads = jax.value_and_grad(jax_loss, has_aux=True)(
        state.params, state.batch_stats, view1, view2
    )
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    to_torch = lambda x: torch.tensor(x).permute(0, 3, 1, 2)
    for group in optimizer.param_groups:
      group['lr'] = reference.learning_rate(config.rm, 4, step)
    torch_loss, torch_z_std = reference.simsiam_forward(net, to_torch(view1), to_torch(view2))
    optimizer.zero_grad()
    torch_loss.backward()
    torch_grads = [p.grad for p in net.parameters()]
    optimizer.step()
    assert float(torch_loss.detach()) == pytest.approx(float(loss), abs=1e-5)
    assert float(torch_z_std) == pytest.approx(float(jnp.mean(jnp.std(relation.l2_normalize(z1), axis=0))), abs=1e-6)
    peer = reference.torch_peer
    for got, expected in zip(torch_grads, peer.flax_leaves(grads, like=variables['params']), strict=True):
      np.testing.assert_allclose(got.numpy(), peer.torch_layout(expected), rtol=1e-3, atol=1e-6)
  for got, expected in zip(net.parameters(), peer.flax_leaves(state.params, like=variables['params']), strict=True):
    np.testing.assert_allclose(got.detach().numpy(), peer.torch_layout(expected), rtol=1e-4, atol=1e-6)
  assert float(optax.global_norm(jax.tree.map(lambda a, b: a - b, state.params, variables['params']))) > 1e-2
