"""CIFAR ResNets and the heads RMDNet puts on them.

Backbones map images [B, H, W, 3] to pooled features [B, 8 * width]. All of them use the CIFAR stem (3x3 conv,
stride 1, no max-pool), so 32x32 inputs keep enough resolution for four stages.

* `SimSiamNet` — RM stage: backbone + projector + predictor. Its backbone (and optionally projector) is the
  frozen teacher of the RGRL stage.
* `StudentNet` — RGRL stage: backbone + linear classifier + projection head phi that maps student features into
  the teacher's feature space, where the relation graphs are compared.

BatchNorm takes an `axis_name`: inside `parallel.pmap_step` it is `parallel.AXIS`, so batch statistics are computed
over the global batch and N devices train exactly like one device on the same batch.
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any

# PyTorch's BatchNorm default (momentum 0.1 in torch's convention) so schedules ported from torch recipes match.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# Initialisers (`model.init`, `student.init`). 'torch' is what the PyTorch references we compare with start from:
# torchvision's ResNets draw conv kernels from kaiming_normal(fan_out, relu), and torch.nn.Linear draws weights and
# biases from U(-1/sqrt(fan_in), 1/sqrt(fan_in)). 'flax' is flax's own defaults (lecun_normal kernels, zero biases),
# what this project used before the SimSiam recipe was checked against a PyTorch reference (README, "Evidence").
INITS = ('torch', 'flax')
_TORCH_CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# U(-b, b) with b = 1/sqrt(fan_in) has variance 1/(3 fan_in).
_TORCH_LINEAR_INIT = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def _torch_bias_init(fan_in: int):
  bound = 1.0 / max(fan_in, 1) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _check_init(init: str) -> None:
  if init not in INITS:
    raise ValueError(f'Unknown initialiser {init!r}; set model.init / student.init to one of {", ".join(INITS)}.')


def conv_init_kwargs(init: str) -> dict:
  """Keyword arguments of nn.Conv for the initialiser `init`."""
  _check_init(init)
  return {'kernel_init': _TORCH_CONV_INIT} if init == 'torch' else {}


def dense(features: int, fan_in: int, init: str, **kwargs) -> nn.Dense:
  """nn.Dense initialised by `init` ('torch' needs the input width `fan_in` for torch.nn.Linear's bias). The
  parameter tree is nn.Dense's whatever the initialiser, so checkpoints of either restore into both."""
  _check_init(init)
  if init == 'torch':
    kwargs = {'kernel_init': _TORCH_LINEAR_INIT, 'bias_init': _torch_bias_init(fan_in), **kwargs}
  return nn.Dense(features, **kwargs)


class BasicBlock(nn.Module):
  """Post-activation residual block of ResNet-18/34."""

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (3, 3), self.strides)(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3))(y)
    # zero_init_residual (torchvision's option, Goyal et al. 2017): the residual branch's last BN scale starts at 0,
    # so every block starts as the identity. Off by default; a SimSiam recipe option (`model.zero_init_residual`).
    y = self.norm(scale_init=nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones)(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), self.strides, name='conv_proj')(residual)
      residual = self.norm(name='norm_proj')(residual)
    return nn.relu(residual + y)


class PreActBlock(nn.Module):
  """Pre-activation residual block (He et al. 2016), the DivideMix-protocol backbone of noisy-label papers."""

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  zero_init_residual: bool = False  # unused: a pre-activation branch ends in a conv (config_checks refuses it)

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm()(x))
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.filters:
      shortcut = self.conv(self.filters, (1, 1), self.strides, name='conv_proj')(y)
    y = self.conv(self.filters, (3, 3), self.strides)(y)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3))(y)
    return y + shortcut


class CifarResNet(nn.Module):
  """ResNet with the CIFAR stem. Returns globally average-pooled features [B, width * 2**(len(stages)-1)]."""

  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  width: int = 64
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None
  initializer: str = 'torch'  # INITS
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(
        nn.Conv, use_bias=False, dtype=self.dtype, padding='SAME', **conv_init_kwargs(self.initializer)
    )
    # Cross-device statistics only matter in training; at inference the running averages are used.
    norm = functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=self.dtype,
        axis_name=self.axis_name if train else None,
    )
    x = x.astype(self.dtype)
    x = conv(self.width, (3, 3), name='conv_init')(x)
    # Both variants keep the stem's BN + ReLU and pool the last block's output directly: for PreAct this is the
    # PreActResNet-18 of DivideMix's code, the backbone behind the DivideMix-protocol numbers we compare with.
    x = nn.relu(norm(name='bn_init')(x))
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = self.block_cls(
            self.width * 2**i, conv=conv, norm=norm, strides=strides, zero_init_residual=self.zero_init_residual
        )(x)
    return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)


ResNet18 = functools.partial(CifarResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(CifarResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
PreActResNet18 = functools.partial(CifarResNet, stage_sizes=(2, 2, 2, 2), block_cls=PreActBlock)
# For tests and smoke runs only: one block per stage, use with a tiny width.
ResNetTiny = functools.partial(CifarResNet, stage_sizes=(1, 1, 1, 1), block_cls=BasicBlock)

BACKBONES = {
    'resnet18': ResNet18,
    'resnet34': ResNet34,
    'preact_resnet18': PreActResNet18,
    'resnet_tiny': ResNetTiny,
}


def feature_dim(name: str, width: int) -> int:
  """Size of the pooled backbone features of `BACKBONES[name]` at `width`."""
  num_stages = len(BACKBONES[name].keywords['stage_sizes'])
  return width * 2 ** (num_stages - 1)


def make_backbone(
    name: str,
    width: int,
    dtype: Any,
    axis_name: Optional[str],
    init: str = 'torch',
    zero_init_residual: bool = False,
) -> nn.Module:
  if name not in BACKBONES:
    raise ValueError(
        f'Unknown model.name {name!r}; choose one of {sorted(BACKBONES)} ' '(e.g. --config.model.name=resnet18).'
    )
  return BACKBONES[name](
      width=width,
      dtype=dtype,
      axis_name=axis_name,
      initializer=init,
      zero_init_residual=zero_init_residual,
      name='backbone',
  )


def _norm(dtype, axis_name, train, use_scale=True, use_bias=True):
  return nn.BatchNorm(
      use_running_average=not train,
      momentum=BN_MOMENTUM,
      epsilon=BN_EPSILON,
      dtype=dtype,
      axis_name=axis_name if train else None,
      use_scale=use_scale,
      use_bias=use_bias,
  )


class Projector(nn.Module):
  """SimSiam projector: num_layers x (linear, BN), ReLU between, the last BN without affine parameters. The SimSiam
  paper's CIFAR recipe (its appendix D) has 2 layers; its ImageNet recipe 3."""

  dim: int = 2048
  num_layers: int = 2
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None
  initializer: str = 'torch'

  @nn.compact
  def __call__(self, x, train: bool = True):
    for i in range(self.num_layers):
      x = dense(self.dim, x.shape[-1], self.initializer, use_bias=False, dtype=self.dtype)(x)
      last = i == self.num_layers - 1
      x = _norm(self.dtype, self.axis_name, train, use_scale=not last, use_bias=not last)(x)
      if not last:
        x = nn.relu(x)
    return x.astype(jnp.float32)


class Predictor(nn.Module):
  """SimSiam predictor: bottleneck MLP dim -> hidden -> dim."""

  dim: int = 2048
  hidden_dim: int = 512
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None
  initializer: str = 'torch'

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = dense(self.hidden_dim, x.shape[-1], self.initializer, use_bias=False, dtype=self.dtype)(x)
    x = nn.relu(_norm(self.dtype, self.axis_name, train)(x))
    x = dense(self.dim, self.hidden_dim, self.initializer, dtype=self.dtype)(x)
    return x.astype(jnp.float32)


class SimSiamNet(nn.Module):
  """Backbone + projector (+ predictor): the RM network and, frozen, the RGRL teacher."""

  backbone_name: str = 'resnet18'
  width: int = 64
  projector_dim: int = 2048
  projector_layers: int = 2
  predictor_dim: int = 512
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None
  initializer: str = 'torch'
  zero_init_residual: bool = False

  def setup(self):
    self.backbone = make_backbone(
        self.backbone_name, self.width, self.dtype, self.axis_name, self.initializer, self.zero_init_residual
    )
    self.projector = Projector(self.projector_dim, self.projector_layers, self.dtype, self.axis_name, self.initializer)
    self.predictor = Predictor(self.projector_dim, self.predictor_dim, self.dtype, self.axis_name, self.initializer)

  def __call__(self, x, train: bool = True):
    """Returns dict(features [B, F], z [B, P] projection, p [B, P] prediction)."""
    features = self.backbone(x, train=train)
    z = self.projector(features, train=train)
    return {'features': features, 'z': z, 'p': self.predictor(z, train=train)}

  def backbone_features(self, x, train: bool = False):
    """The pooled backbone features alone: all a teacher restored from a student's backbone has."""
    return self.backbone(x, train=train)

  def encode(self, x, train: bool = False):
    """Teacher view: dict(features, z) without the predictor (which the teacher never uses)."""
    features = self.backbone(x, train=train)
    return {'features': features, 'z': self.projector(features, train=train)}


class StudentNet(nn.Module):
  """RGRL network: backbone f, classifier W and projection head phi into the teacher's feature space."""

  backbone_name: str = 'resnet18'
  width: int = 64
  num_classes: int = 10
  embedding_dim: int = 512  # the teacher's feature dimension
  projection_head: str = 'linear'  # 'linear' | 'mlp'
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None
  initializer: str = 'torch'

  def setup(self):
    self.backbone = make_backbone(self.backbone_name, self.width, self.dtype, self.axis_name, self.initializer)
    features = feature_dim(self.backbone_name, self.width)
    self.classifier = dense(self.num_classes, features, self.initializer, dtype=self.dtype)
    if self.projection_head == 'linear':
      self.head = dense(self.embedding_dim, features, self.initializer, dtype=self.dtype)
    elif self.projection_head == 'mlp':
      self.head = nn.Sequential(
          [
              dense(self.embedding_dim, features, self.initializer, dtype=self.dtype),
              nn.relu,
              dense(self.embedding_dim, self.embedding_dim, self.initializer, dtype=self.dtype),
          ]
      )
    else:
      raise ValueError(f"Unknown relation.projection_head {self.projection_head!r}; use 'linear' or 'mlp'.")

  def __call__(self, x, train: bool = True):
    """Returns dict(features [B, F], logits [B, C], embedding [B, D_teacher])."""
    features = self.backbone(x, train=train)
    return {
        'features': features,
        'logits': self.classifier(features).astype(jnp.float32),
        'embedding': self.head(features).astype(jnp.float32),
    }


DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(name: str):
  if name not in DTYPES:
    raise ValueError(f'Unknown model.dtype {name!r}; use one of {sorted(DTYPES)}.')
  return DTYPES[name]


def simsiam_net(model_config, axis_name: Optional[str] = None) -> SimSiamNet:
  """The RM network named by `config.model` (also the teacher's architecture)."""
  return SimSiamNet(
      backbone_name=model_config.name,
      width=model_config.width,
      projector_dim=model_config.projector_dim,
      projector_layers=model_config.projector_layers,
      predictor_dim=model_config.predictor_dim,
      dtype=compute_dtype(model_config.dtype),
      axis_name=axis_name,
      initializer=model_config.init,
      zero_init_residual=model_config.zero_init_residual,
  )


def teacher_feature_dim(model_config, teacher_layer: str) -> int:
  if teacher_layer == 'backbone':
    return feature_dim(model_config.name, model_config.width)
  if teacher_layer == 'projector':
    return model_config.projector_dim
  raise ValueError(f"Unknown relation.teacher_layer {teacher_layer!r}; use 'backbone' or 'projector'.")
