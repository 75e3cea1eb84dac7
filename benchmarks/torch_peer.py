"""PyTorch peer of the three train steps `benchmarks.throughput` times, for a JAX/PyTorch ratio from one machine.

  python -m benchmarks.torch_peer --device=cuda --batch=512 --dtype=float32,bfloat16 --compile=on \
      --out=benchmarks/results/h100

Needs PyTorch, a benchmark-only requirement: `pip install -r benchmarks/requirements.txt`. The package itself never
imports torch. `python -m benchmarks.throughput --compare-torch` runs this module in a subprocess with its own
settings and puts both figures, and their ratio, in one table.

The networks are the JAX ones written in PyTorch (same parameter counts; `tests/benchmarks_test.py` checks it):
torchvision-style ResNets with the CIFAR stem (3x3 conv stride 1, no max-pool) at any `--width`, the SimSiam
projector (`model.projector_layers` x linear + BN, the last BN without affine parameters) and predictor (bottleneck
`predictor_dim`), the RGRL student (backbone + linear classifier + projection head into the teacher's feature
space). The stage sizes and block kind come from `rmdnet_jax.core.models.BACKBONES`; every hyperparameter from
`configs/default.py` (built by `benchmarks.throughput.make_config`, so both sides read the same config), the
initialisers too (`model.init`, `student.init`, `model.zero_init_residual`: `initialise`).
`benchmarks/simsiam_reference.py` trains these networks. BatchNorm uses flax's decay 0.9, which is torch's momentum
0.1. SGD: momentum 0.9, coupled weight decay 5e-4, as `train_state.make_optimizer`.

Steps, each a forward, a backward and an optimizer update:

* simsiam: two views, each its own forward pass (BatchNorm statistics per view, as the JAX step), the symmetric
  negative-cosine loss with the stop-gradient on the target.
* rgrl: the student's forward, CE on the labels, the frozen teacher's forward (eval mode, no gradient) and the
  relation terms of `rmdnet_jax.core.relation` (`relation.K`, node and edge weights and kinds from the config): the
  edge term is the Frobenius norm between the teacher's and the student's cosine-similarity graphs, the node term
  ||cos(t_i, s_j) - I||_F. Like the JAX losses they run in float32 whatever the compute dtype.
* ce: the student's forward and CE only.

What is timed is the model step only: the views are random normalised float tensors made on the device before
timing, so the data augmentation that the JAX step runs inside itself is *excluded* here (as in the issue's peer
numbers); the JAX side thus does more work per step. One device; the batch is that device's. `--dtype=bfloat16` is
`torch.autocast` to bfloat16 (parameters stay float32); `--compile=on` wraps the forward and loss in
`torch.compile` (default: on for CUDA, off on CPU, where it only adds compile time). On CUDA, float32 matmuls and
convolutions may use TF32 (`--tf32=on`, the default), as XLA does by default on the JAX side.

Timing matches `benchmarks.throughput`: `--warmup` untimed steps, then `--repeats` repeats of `--steps` steps,
each repeat synchronised once at its end; the median repeat is reported. FLOPs per step are counted by
`torch.utils.flop_counter.FlopCounterMode` (matmuls and convolutions, forward and backward only, so a little below
XLA's count, which includes elementwise work).

Writes OUT/torch_peer.json and OUT/torch_peer.md.
"""

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Mapping
from typing import Callable, Optional, Sequence

import ml_collections
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import throughput
from rmdnet_jax.core import models as jax_models

STEPS = throughput.STEPS
DTYPES = throughput.DTYPES
# flax's BatchNorm momentum is the decay of the running average; torch's is the weight of the new batch.
BN_MOMENTUM = 1.0 - jax_models.BN_MOMENTUM
EDGE_KINDS = ('frobenius', 'mse')
NODE_KINDS = ('frobenius', 'cosine')


def _bn2d(channels: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(channels, eps=jax_models.BN_EPSILON, momentum=BN_MOMENTUM)


def _bn1d(features: int, affine: bool = True) -> nn.BatchNorm1d:
  return nn.BatchNorm1d(features, eps=jax_models.BN_EPSILON, momentum=BN_MOMENTUM, affine=affine)


# Padding of the convolutions (`CifarResNet(padding=...)`). 'torch': kernel // 2 on every side, torchvision's.
# 'same': XLA's SAME, what `models` uses (nn.Conv's padding='SAME'): for a stride-2 3x3 conv on an even input it pads
# 0 before and 1 after, so its outputs are centred on odd pixels while the stride-2 1x1 shortcut samples even ones.
PADDINGS = ('torch', 'same')


class SameConv2d(nn.Conv2d):
  """nn.Conv2d with XLA/TensorFlow SAME padding: total max((ceil(n / s) - 1) s + k - n, 0), the odd one after."""

  def forward(self, x):
    pads = []
    for size, kernel, stride in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
      total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
      pads += [total // 2, total - total // 2]
    return super().forward(F.pad(x, pads))


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, padding: str = 'torch') -> nn.Conv2d:
  if padding not in PADDINGS:
    raise ValueError(f'Unknown padding {padding!r}; use one of {PADDINGS}.')
  if padding == 'same':
    return SameConv2d(in_channels, out_channels, kernel, stride, padding=0, bias=False)
  return nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
  """`models.BasicBlock`: post-activation residual block, 1x1 conv + BN projection when the shape changes."""

  def __init__(self, in_channels: int, filters: int, stride: int, padding: str = 'torch'):
    super().__init__()
    self.conv1, self.bn1 = _conv(in_channels, filters, 3, stride, padding), _bn2d(filters)
    self.conv2, self.bn2 = _conv(filters, filters, 3, 1, padding), _bn2d(filters)
    self.shortcut = None
    if stride != 1 or in_channels != filters:
      self.shortcut = nn.Sequential(_conv(in_channels, filters, 1, stride, padding), _bn2d(filters))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class PreActBlock(nn.Module):
  """`models.PreActBlock`: pre-activation residual block, bare 1x1 conv projection."""

  def __init__(self, in_channels: int, filters: int, stride: int, padding: str = 'torch'):
    super().__init__()
    self.bn1, self.conv1 = _bn2d(in_channels), _conv(in_channels, filters, 3, stride, padding)
    self.bn2, self.conv2 = _bn2d(filters), _conv(filters, filters, 3, 1, padding)
    shortcut = stride != 1 or in_channels != filters
    self.shortcut = _conv(in_channels, filters, 1, stride, padding) if shortcut else None

  def forward(self, x):
    y = F.relu(self.bn1(x))
    shortcut = x if self.shortcut is None else self.shortcut(y)
    y = F.relu(self.bn2(self.conv1(y)))
    return self.conv2(y) + shortcut


_BLOCKS = {jax_models.BasicBlock: BasicBlock, jax_models.PreActBlock: PreActBlock}


def initialise(module: nn.Module, init: str) -> nn.Module:
  """Re-draws `module`'s convolution and linear weights as `models` does for `init` (`model.init`).

  'torch': torchvision's ResNet initialisers, what `models` means by torch: conv kernels kaiming_normal(fan_out,
  relu) (torch.nn.Conv2d's own default is kaiming_uniform(a=sqrt(5)), which torchvision replaces); linear layers
  keep torch.nn.Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases. 'flax': flax's
  defaults, lecun_normal (truncated normal, variance 1/fan_in) kernels and zero biases. BatchNorm starts at
  scale 1, bias 0 either way (flax's and torch's default).
  """
  if init not in jax_models.INITS:
    raise ValueError(f'Unknown initialiser {init!r}; use one of {jax_models.INITS}.')
  for m in module.modules():
    if isinstance(m, (nn.Conv2d, nn.Linear)):
      if init == 'torch' and isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
      elif init == 'flax':
        # flax's variance_scaling(1, fan_in, truncated_normal): a normal cut at 2 of its sigmas, sigma scaled up
        # by 1/0.8796 (the std of a standard normal truncated to [-2, 2]) so the variance is 1/fan_in.
        sigma = (1.0 / m.weight[0].numel()) ** 0.5 / 0.87962566103423978
        nn.init.trunc_normal_(m.weight, std=sigma, a=-2.0 * sigma, b=2.0 * sigma)
        if m.bias is not None:
          nn.init.zeros_(m.bias)
  return module


class CifarResNet(nn.Module):
  """`models.CifarResNet`: CIFAR stem (3x3 conv stride 1 + BN + ReLU, no max-pool), stages, global mean pool.

  `init` and `zero_init_residual` are `model.init` and `model.zero_init_residual`; `padding` one of `PADDINGS`."""

  def __init__(
      self, name: str, width: int, init: str = 'torch', zero_init_residual: bool = False, padding: str = 'torch'
  ):
    super().__init__()
    if name not in jax_models.BACKBONES:
      raise ValueError(f'Unknown model {name!r}; use one of {sorted(jax_models.BACKBONES)}.')
    spec = jax_models.BACKBONES[name].keywords
    block = _BLOCKS[spec['block_cls']]
    self.stem = nn.Sequential(_conv(3, width, 3, 1, padding), _bn2d(width), nn.ReLU(inplace=True))
    layers, channels = [], width
    for i, num_blocks in enumerate(spec['stage_sizes']):
      for j in range(num_blocks):
        layers.append(block(channels, width * 2**i, 2 if i > 0 and j == 0 else 1, padding))
        channels = width * 2**i
    self.blocks = nn.Sequential(*layers)
    self.feature_dim = channels
    initialise(self, init)
    if zero_init_residual:
      for layer in layers:
        if isinstance(layer, BasicBlock):  # as models.BasicBlock; a pre-activation branch ends in a conv
          nn.init.zeros_(layer.bn2.weight)

  def forward(self, x):
    return torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1).float()


class Projector(nn.Module):
  """`models.Projector`: num_layers x (linear without bias, BN), ReLU between, the last BN without affine."""

  def __init__(self, in_features: int, dim: int, num_layers: int):
    super().__init__()
    layers = []
    for i in range(num_layers):
      last = i == num_layers - 1
      layers += [nn.Linear(in_features if i == 0 else dim, dim, bias=False), _bn1d(dim, affine=not last)]
      if not last:
        layers.append(nn.ReLU(inplace=True))
    self.layers = nn.Sequential(*layers)

  def forward(self, x):
    return self.layers(x).float()


class Predictor(nn.Module):
  """`models.Predictor`: bottleneck MLP dim -> hidden (BN, ReLU) -> dim."""

  def __init__(self, dim: int, hidden_dim: int):
    super().__init__()
    self.layers = nn.Sequential(
        nn.Linear(dim, hidden_dim, bias=False), _bn1d(hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, dim)
    )

  def forward(self, x):
    return self.layers(x).float()


class SimSiamNet(nn.Module):
  """`models.SimSiamNet`: backbone + projector + predictor; `encode` is the teacher's view (no predictor).
  `padding`: the backbone's (`PADDINGS`)."""

  def __init__(self, model_config: ml_collections.ConfigDict, padding: str = 'torch'):
    super().__init__()
    self.backbone = CifarResNet(
        model_config.name, model_config.width, model_config.init, model_config.zero_init_residual, padding
    )
    self.projector = initialise(
        Projector(self.backbone.feature_dim, model_config.projector_dim, model_config.projector_layers),
        model_config.init,
    )
    self.predictor = initialise(Predictor(model_config.projector_dim, model_config.predictor_dim), model_config.init)

  def forward(self, x):
    features = self.backbone(x)
    z = self.projector(features)
    return {'features': features, 'z': z, 'p': self.predictor(z)}

  def encode(self, x):
    features = self.backbone(x)
    return {'features': features, 'z': self.projector(features)}


class StudentNet(nn.Module):
  """`models.StudentNet`: backbone, linear classifier and projection head into the teacher's feature space."""

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__()
    self.backbone = CifarResNet(config.student.name, config.student.width, config.student.init)
    features = self.backbone.feature_dim
    embedding = jax_models.teacher_feature_dim(config.model, config.relation.teacher_layer)
    self.classifier = initialise(nn.Linear(features, config.data.num_classes), config.student.init)
    if config.relation.projection_head == 'linear':
      self.head = nn.Linear(features, embedding)
    else:
      self.head = nn.Sequential(nn.Linear(features, embedding), nn.ReLU(), nn.Linear(embedding, embedding))
    initialise(self.head, config.student.init)

  def forward(self, x):
    features = self.backbone(x)
    return {'features': features, 'logits': self.classifier(features).float(), 'embedding': self.head(features).float()}


def _paths_in_order(tree, prefix=()):
  """The leaf paths of a nested mapping in insertion order: for variables fresh from flax's `init`, the order the
  modules were created (JAX's own tree functions sort dict keys, so trees they rebuild lose it)."""
  for key, value in tree.items():
    if isinstance(value, Mapping):
      yield from _paths_in_order(value, prefix + (key,))
    else:
      yield prefix + (key,)


def torch_layout(array) -> np.ndarray:
  """A flax array in torch's layout: conv kernels [kh, kw, in, out] -> [out, in, kh, kw], dense [in, out] ->
  [out, in]; vectors unchanged."""
  array = np.asarray(array)
  return array.transpose(3, 2, 0, 1) if array.ndim == 4 else array.T if array.ndim == 2 else array


def flax_leaves(tree, like=None) -> list:
  """The leaves of `tree` (params, batch_stats, gradients) in the creation order of `like` (default: `tree`
  itself), the order of `load_flax_variables`; `like` is the `init` output whose tree `tree` has."""

  def get(path):
    node = tree
    for key in path:
      node = node[key]
    return node

  return [get(path) for path in _paths_in_order(tree if like is None else like)]


def load_flax_variables(net: nn.Module, variables, like=None) -> nn.Module:
  """Copies the flax variables ({'params', 'batch_stats'}) of the matching `models` network into `net`.

  `variables` must be fresh from flax's `init`, or `like` (an `init` output of the same network) gives the order
  (restored or updated trees lose it: see `flax_leaves`). Both networks create
  their layers in the same order, so the parameters pair up in order: conv kernels
  [kh, kw, in, out] -> [out, in, kh, kw], dense kernels [in, out] -> [out, in], BatchNorm scale/bias -> weight/bias,
  mean/var -> running_mean/running_var. Every pair's shape is checked. For tests that run both steps on one network.
  """
  pairs = [
      (list(net.parameters()), flax_leaves(variables['params'], like and like['params'])),
      (
          [b for name, b in net.named_buffers() if name.endswith(('running_mean', 'running_var'))],
          flax_leaves(variables.get('batch_stats', {}), like and like.get('batch_stats', {})),
      ),
  ]
  with torch.no_grad():
    for tensors, arrays in pairs:
      if len(tensors) != len(arrays):
        raise ValueError(f'{len(arrays)} flax arrays for {len(tensors)} torch tensors: not the same network.')
      for tensor, array in zip(tensors, arrays):
        array = torch_layout(array)
        if tuple(array.shape) != tuple(tensor.shape):
          raise ValueError(f'A flax array of shape {array.shape} for a torch tensor of shape {tuple(tensor.shape)}.')
        tensor.copy_(torch.from_numpy(np.array(array)))
  return net


def count_parameters(module: nn.Module) -> int:
  """Trainable parameters, as flax counts `params` (BatchNorm running statistics are buffers here)."""
  return sum(p.numel() for p in module.parameters())


def simsiam_loss(p1, p2, z1, z2):
  """`simsiam.simsiam_loss`: 1/2 D(p1, sg(z2)) + 1/2 D(p2, sg(z1)) with D the negative mean cosine."""

  def d(p, z):
    return -F.cosine_similarity(p, z.detach(), dim=-1, eps=1e-8).mean()

  return 0.5 * d(p1, z2) + 0.5 * d(p2, z1)


def _prepare(features, center: bool):
  features = features.float()
  if center:
    features = features - features.mean(dim=-1, keepdim=True)
  return F.normalize(features, dim=-1, eps=1e-8)


def relation_losses(teacher_features, student_features, relation_config: ml_collections.ConfigDict):
  """(node, edge) of `relation.relation_distillation_loss` for the kinds in `EDGE_KINDS` / `NODE_KINDS`.

  Always float32 (outside autocast), as the JAX losses, whose graphs lose most of their signal in bfloat16.
  """
  rel = relation_config
  with torch.autocast(teacher_features.device.type, enabled=False):
    t = _prepare(teacher_features.detach(), rel.center)
    s = _prepare(student_features, rel.center)
    a_t, a_s = t @ t.T, s @ s.T
    if rel.edge_kind == 'frobenius':
      edge = torch.sqrt(torch.sum(torch.square(a_t - a_s)))
    else:
      edge = torch.mean(torch.square(a_t - a_s))
    if rel.node_kind == 'frobenius':
      cross = t @ s.T
      node = torch.sqrt(torch.sum(torch.square(cross - torch.eye(cross.shape[0], device=cross.device))))
    else:
      node = torch.mean(1.0 - torch.sum(t * s, dim=-1))
  return node, edge


def check_supported(config: ml_collections.ConfigDict) -> None:
  """Refuses relation settings this peer does not implement (it mirrors the default losses and their
  cheap variants; the kl edge loss's top-k neighbourhoods are not written here)."""
  rel = config.relation
  if rel.edge_kind not in EDGE_KINDS or rel.node_kind not in NODE_KINDS:
    raise ValueError(
        f'The PyTorch peer implements relation.edge_kind in {EDGE_KINDS} and node_kind in '
        f'{NODE_KINDS}, not {rel.edge_kind!r}/{rel.node_kind!r}.'
    )


def _learning_rate(stage_config, batch: int) -> float:
  # The value does not change the cost; the peak rate of train_state.learning_rate_schedule keeps it realistic.
  return stage_config.learning_rate * (batch / 256 if stage_config.scale_lr_by_batch else 1.0)


def _sgd(parameters, stage_config, batch: int) -> torch.optim.SGD:
  return torch.optim.SGD(
      parameters,
      lr=_learning_rate(stage_config, batch),
      momentum=stage_config.momentum,
      weight_decay=stage_config.weight_decay,
      nesterov=stage_config.nesterov,
  )


def build_step(
    kind: str,
    config: ml_collections.ConfigDict,
    *,
    batch: int,
    device: torch.device,
    dtype: str,
    compile_step: bool,
    memory_format: torch.memory_format,
    seed: int = 0,
):
  """One train step of `kind` on fixed inputs made on `device`.

  Args:
    kind: one of `STEPS`.
    config: `throughput.make_config(...)`: model, relation terms, optimizer.
    batch: images per step (one device).
    device: where to run.
    dtype: 'float32', or 'bfloat16' for autocast.
    compile_step: wrap the forward and the loss in `torch.compile`.
    memory_format: of the networks and the input views.
    seed: of the parameters and inputs.

  Returns:
    (step, eager_step, networks): `step()` runs one update and returns the loss tensor without synchronising;
    `eager_step` is the same without `torch.compile` (for counting FLOPs); `networks` maps names to modules.
  """
  if kind not in STEPS:
    raise ValueError(f'Unknown step {kind!r}; use one of {STEPS}.')
  torch.manual_seed(seed)
  generator = torch.Generator().manual_seed(seed)
  size = config.data.synthetic_image_size
  autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=dtype == 'bfloat16')

  def view():
    # Normalised images are about standard normal; their values do not change the cost.
    return torch.randn((batch, 3, size, size), generator=generator).to(device, memory_format=memory_format)

  def place(module):
    return module.to(device, memory_format=memory_format)

  if kind == 'simsiam':
    net = place(SimSiamNet(config.model)).train()
    optimizer = _sgd(net.parameters(), config.rm, batch)
    networks = {'simsiam': net}
    inputs = (view(), view())

    def loss_fn(view1, view2):
      with autocast():
        # Two forward passes, not one over the concatenated views: BatchNorm statistics are per view.
        out1, out2 = net(view1), net(view2)
      loss = simsiam_loss(out1['p'], out2['p'], out1['z'], out2['z'])
      # The JAX step's collapse monitor: per-dimension std of the normalised projections.
      z_std = torch.std(F.normalize(out1['z'].detach(), dim=-1), dim=0, unbiased=False).mean()
      return loss, z_std

  else:
    check_supported(config)
    student = place(StudentNet(config)).train()
    optimizer = _sgd(student.parameters(), config.rgrl, batch)
    networks = {'student': student}
    teacher = None
    if kind == 'rgrl':
      teacher = place(SimSiamNet(config.model)).eval().requires_grad_(False)
      networks['teacher'] = teacher
    layer = {'backbone': 'features', 'projector': 'z'}[config.relation.teacher_layer]
    rel = config.relation
    labels = torch.randint(0, config.data.num_classes, (batch,), generator=generator).to(device)
    inputs = (view(), labels)

    def loss_fn(views, labels):
      with autocast():
        out = student(views)
        if teacher is not None:
          with torch.no_grad():
            teacher_features = teacher.encode(views)[layer]
      loss = F.cross_entropy(out['logits'], labels)
      if teacher is not None:
        node, edge = relation_losses(teacher_features, out['embedding'], rel)
        loss = loss + rel.K * (rel.node_weight * node + rel.edge_weight * edge)
      accuracy = (out['logits'].argmax(-1) == labels).float().mean()
      return loss, accuracy

  def make(fn):
    def step():
      optimizer.zero_grad(set_to_none=True)
      loss, _ = fn(*inputs)
      loss.backward()
      optimizer.step()
      return loss

    return step

  eager = make(loss_fn)
  return (make(torch.compile(loss_fn)) if compile_step else eager), eager, networks


def _synchronize(device: torch.device) -> None:
  if device.type == 'cuda':
    torch.cuda.synchronize(device)


def count_flops(step: Callable) -> Optional[float]:
  """FLOPs of one call of `step` (matmuls and convolutions, forward and backward), or None if uncountable."""
  try:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
      step()
    return float(counter.get_total_flops())
  except Exception:  # noqa: BLE001 - the count is informative only; some ops or versions are not supported
    return None


def measure(step: Callable, device: torch.device, *, steps: int, repeats: int, warmup: int) -> dict:
  """Times `step` as `benchmarks.throughput` times the JAX step: warm-up, then repeats synchronised once each."""
  start = time.perf_counter()
  step()
  _synchronize(device)
  first_step_s = time.perf_counter() - start  # includes torch.compile's compilation when it is on
  for _ in range(warmup - 1):
    step()
  _synchronize(device)
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      step()
    _synchronize(device)
    seconds.append(time.perf_counter() - start)
  return {
      'repeat_seconds': seconds,
      'ms_per_step': 1e3 * statistics.median(seconds) / steps,
      'first_step_s': first_step_s,
  }


def resolve_device(name: str) -> torch.device:
  if name == 'auto':
    name = 'cuda' if torch.cuda.is_available() else 'cpu'
  if name == 'cuda' and not torch.cuda.is_available():
    raise ValueError('--device=cuda but PyTorch sees no CUDA device (is the CPU build installed?).')
  return torch.device(name)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m benchmarks.torch_peer', description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='resnet18', help='Backbone of teacher and student (model.name).')
  parser.add_argument('--width', type=int, default=64, help='Channels of the first stage (model.width).')
  parser.add_argument(
      '--projector_dim', type=int, default=None, help='SimSiam projector width (default: configs/default.py, 2048).'
  )
  parser.add_argument('--num_classes', type=int, default=10, help='Classifier outputs (CIFAR-10: 10).')
  parser.add_argument('--batch', default='256,512', help='Comma-separated batch sizes (one device).')
  parser.add_argument(
      '--dtype',
      default='float32,bfloat16',
      help='Comma-separated: float32, bfloat16 (autocast; parameters stay float32).',
  )
  parser.add_argument('--image_size', type=int, default=32, help='Square image side in pixels.')
  parser.add_argument('--bench', default=','.join(STEPS), help=f'Comma-separated subset of {STEPS}.')
  parser.add_argument('--steps', type=int, default=50, help='Timed steps per repeat.')
  parser.add_argument('--repeats', type=int, default=5, help='Timed repeats; the median is reported.')
  parser.add_argument('--warmup', type=int, default=5, help='Untimed steps before the repeats.')
  parser.add_argument('--edge_kind', default=None, help='relation.edge_kind (default: configs/default.py).')
  parser.add_argument('--teacher_layer', default=None, help='relation.teacher_layer (default: backbone).')
  parser.add_argument(
      '--device', choices=('auto', 'cpu', 'cuda'), default='auto', help='auto: cuda when PyTorch sees one, else cpu.'
  )
  parser.add_argument(
      '--compile',
      choices=('auto', 'on', 'off'),
      default='auto',
      help='torch.compile the forward and loss; auto: on for cuda, off on cpu.',
  )
  parser.add_argument(
      '--memory_format',
      choices=('channels_last', 'contiguous'),
      default='channels_last',
      help='Layout of activations and convolution weights (channels_last is NHWC, as JAX).',
  )
  parser.add_argument(
      '--tf32',
      choices=('on', 'off'),
      default='on',
      help='cuda: let float32 matmuls and convolutions use TF32, as XLA does by default.',
  )
  parser.add_argument('--threads', type=int, default=0, help='torch.set_num_threads on the CPU (0: default).')
  parser.add_argument(
      '--count_flops',
      choices=('on', 'off'),
      default='on',
      help='Count FLOPs of one extra eager step with FlopCounterMode.',
  )
  parser.add_argument('--seed', type=int, default=0, help='Seed of the parameters and inputs.')
  parser.add_argument('--out', default='benchmarks/results/latest', help='Directory for torch_peer.json/.md.')
  return parser


def environment(argv: Sequence[str], device: torch.device) -> dict:
  """`throughput.host_environment` plus PyTorch's version, threads and device."""
  record = throughput.host_environment('benchmarks.torch_peer', argv)
  record['hardware'].update(
      {
          'platform': device.type,
          'device_kind': torch.cuda.get_device_name(device) if device.type == 'cuda' else throughput.cpu_model(),
          'device_count': 1,
      }
  )
  record['software'].update(
      {
          'torch': torch.__version__,
          'torch_num_threads': torch.get_num_threads(),
          'cuda': torch.version.cuda,
          'cudnn': torch.backends.cudnn.version() if device.type == 'cuda' else None,
          'tf32_matmul': torch.backends.cuda.matmul.allow_tf32,
          'tf32_cudnn': torch.backends.cudnn.allow_tf32,
      }
  )
  return record


def markdown(record: dict) -> str:
  s, env = record['settings'], record['environment']
  lines = [
      '| step | dtype | batch | images/s | ms/step | GFLOP/image (matmul+conv) | first step s |',
      '|---|---|---|---|---|---|---|',
  ]
  for r in record['results']:
    lines.append(
        f"| {r['step']} | {r['dtype']} | {r['batch']} | {throughput.fmt(r['images_per_s'], 0)} | "
        f"{throughput.fmt(r['ms_per_step'], 2)} | {throughput.fmt_sig(r['gflop_per_image'])} | "
        f"{throughput.fmt(r['first_step_s'], 1)} |"
    )
  hw, sw = env['hardware'], env['software']
  return '\n'.join(
      [
          '# PyTorch peer: train-step throughput',
          '',
          '\n'.join(lines),
          '',
          f"Model {s['model']} width {s['width']} ({record['parameters']['simsiam_net']:,} SimSiam parameters), "
          f"{s['image_size']}x{s['image_size']} images, one {hw['platform']} device ({hw['device_kind']}); "
          f"torch.compile {'on' if s['compiled'] else 'off'}, {s['memory_format']}; median of {s['repeats']} repeats "
          f"of {s['steps']} steps after {s['warmup']} warm-up step(s).",
          'Model step only: the input views are made on the device before timing, so augmentation is excluded '
          '(the JAX step augments inside itself). images/s counts source images (a SimSiam image is two views).',
          '',
          f"- Host CPU {hw['cpu_model']}, {hw['cpu_count']} cores (1-min load average "
          f"{hw['load_average_1m_at_start']} at the start); PyTorch {sw['torch']} with {sw['torch_num_threads']} "
          f"thread(s), Python {sw['python']}.",
          f"- Date (UTC): {env['date_utc']}; git {env['git']['commit'] or 'unknown'}"
          + (' (uncommitted changes)' if env['git']['dirty'] else '')
          + '.',
          f"- Command: `{env['command']}`",
          '',
      ]
  )


def run(args: argparse.Namespace, argv: Sequence[str] = ()) -> dict:
  """Times every requested (batch, dtype, step); writes OUT/torch_peer.json and OUT/torch_peer.md."""
  kinds = throughput.parse_list(args.bench, 'bench', STEPS)
  dtypes = throughput.parse_list(args.dtype, 'dtype', DTYPES)
  batches = sorted(throughput.parse_list(args.batch, 'batch'))
  for name in ('steps', 'repeats', 'warmup'):
    if getattr(args, name) < 1:
      raise ValueError(f'--{name} must be at least 1.')
  device = resolve_device(args.device)
  compiled = args.compile == 'on' or (args.compile == 'auto' and device.type == 'cuda')
  memory_format = torch.channels_last if args.memory_format == 'channels_last' else torch.contiguous_format
  if args.threads:
    torch.set_num_threads(args.threads)
  if device.type == 'cuda':
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32 == 'on'
    torch.backends.cudnn.benchmark = True
  environment_record = environment(argv, device)
  results = []
  for batch in batches:
    for dtype in dtypes:
      config = throughput.make_config(args, dtype, batch, num_devices=1)
      for kind in kinds:
        step, eager_step, _ = build_step(
            kind,
            config,
            batch=batch,
            device=device,
            dtype=dtype,
            compile_step=compiled,
            memory_format=memory_format,
            seed=args.seed,
        )
        timing = measure(step, device, steps=args.steps, repeats=args.repeats, warmup=args.warmup)
        flops = count_flops(eager_step) if args.count_flops == 'on' else None
        ms = timing['ms_per_step']
        row = {
            'step': kind,
            'dtype': dtype,
            'batch': batch,
            **timing,
            'images_per_s': batch / (ms / 1e3),
            'flops_per_step': flops,
            'gflop_per_image': flops / batch / 1e9 if flops else None,
            'flops_source': 'torch_flop_counter_matmul_conv' if flops else None,
        }
        results.append(row)
        print(
            f"torch {kind:8s} {dtype:9s} batch {batch:5d}: {row['images_per_s']:10.1f} images/s, "
            f"{ms:9.2f} ms/step, {throughput.fmt_sig(row['gflop_per_image'])} GFLOP/image (matmul+conv)",
            flush=True,
        )
        del step, eager_step
        if device.type == 'cuda':
          torch.cuda.empty_cache()
  config = throughput.make_config(args, dtypes[0], batches[0], num_devices=1)
  record = {
      'benchmark': 'torch_peer',
      'environment': environment_record,
      'settings': {
          **vars(args),
          'bench': kinds,
          'dtype': dtypes,
          'batch': batches,
          'device': device.type,
          'compiled': compiled,
          'augmentation': 'excluded (model step only)',
      },
      'parameters': parameter_counts(config),
      'results': results,
  }
  json_path, md_path = throughput.write_outputs(args.out, 'torch_peer', record, markdown(record))
  print(f'Wrote {json_path} and {md_path}.', flush=True)
  return record


def parameter_counts(config: ml_collections.ConfigDict) -> dict:
  """Parameters of the PyTorch backbone, SimSiam network and student for `config` (compare with flax's)."""
  with torch.device('meta'):  # shapes only: no memory, instant even at width 64
    simsiam_net, student_net = SimSiamNet(config.model), StudentNet(config)
  return {
      'backbone': count_parameters(simsiam_net.backbone),
      'simsiam_net': count_parameters(simsiam_net),
      'student_net': count_parameters(student_net),
  }


def main(argv: Optional[Sequence[str]] = None) -> dict:
  """Parses `argv` (default: the command line) and runs the peer; returns the JSON record."""
  argv = list(sys.argv[1:] if argv is None else argv)
  return run(build_parser().parse_args(argv), argv)


if __name__ == '__main__':
  main()
