"""Model shapes and sizes: the CIFAR ResNet-18 has the well-known 11.17M parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmdnet_jax import distill, models
from tests import helpers


def _count(params):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


# Backbone parameters without the classifier: torchvision-style CIFAR ResNet-18 (11,173,962 with a 10-way
# linear layer) and DivideMix's PreActResNet-18 (stem BN, no final BN).
@pytest.mark.parametrize('name, expected', [('resnet18', 11_168_832), ('preact_resnet18', 11_166_144)])
def test_backbone_parameter_counts(name, expected):
  net = models.make_backbone(name, 64, jnp.float32, None)
  shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  assert _count(shapes['params']) == expected
  assert models.feature_dim(name, 64) == 512


def test_simsiam_and_student_output_shapes():
  config = helpers.tiny_config()
  net = models.simsiam_net(config.model)
  x = jnp.zeros((4,) + helpers.IMAGE_SHAPE)
  variables = net.init(jax.random.key(0), x, train=False)
  out = net.apply(variables, x, train=False)
  assert out['features'].shape == (4, 32) and out['z'].shape == (4, 16) and out['p'].shape == (4, 16)
  # The projector's last BatchNorm has no affine parameters (SimSiam).
  assert 'BatchNorm_2' in variables['batch_stats']['projector']
  assert 'BatchNorm_2' not in variables['params']['projector']
  assert 'scale' in variables['params']['projector']['BatchNorm_1']
  student = distill.student_net(config)
  out = student.apply(student.init(jax.random.key(1), x, train=False), x, train=False)
  assert out['logits'].shape == (4, 10) and out['embedding'].shape == (4, 32)  # teacher backbone dim


def test_bfloat16_compute_keeps_float32_params():
  config = helpers.tiny_config(**{'model.dtype': 'bfloat16'})
  net = models.simsiam_net(config.model)
  variables = net.init(jax.random.key(0), jnp.zeros((2,) + helpers.IMAGE_SHAPE), train=False)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables['params']))
  assert net.apply(variables, jnp.ones((2,) + helpers.IMAGE_SHAPE), train=False)['z'].dtype == jnp.float32
