"""Model shapes and sizes: the CIFAR ResNet-18 has the well-known 11.17M parameters."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmdnet_jax.core import models
from rmdnet_jax.stages import distill
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
  # Shapes and trees only: traced, never compiled.
  variables = jax.eval_shape(lambda: net.init(jax.random.key(0), x, train=False))
  out = jax.eval_shape(lambda v: net.apply(v, x, train=False), variables)
  assert out['features'].shape == (4, 32) and out['z'].shape == (4, 16) and out['p'].shape == (4, 16)
  # The projector's last BatchNorm has no affine parameters (SimSiam); the CIFAR recipe's projector has 2 layers.
  assert config.model.projector_layers == 2
  assert sorted(variables['batch_stats']['projector']) == ['BatchNorm_0', 'BatchNorm_1']
  assert 'BatchNorm_1' not in variables['params']['projector']
  assert 'scale' in variables['params']['projector']['BatchNorm_0']
  student = distill.student_net(config)
  out = jax.eval_shape(lambda: student.apply(student.init(jax.random.key(1), x, train=False), x, train=False))
  assert out['logits'].shape == (4, 10) and out['embedding'].shape == (4, 32)  # teacher backbone dim


def test_bfloat16_compute_keeps_float32_params():
  config = helpers.tiny_config(**{'model.dtype': 'bfloat16'})
  net = models.simsiam_net(config.model)
  variables = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((2,) + helpers.IMAGE_SHAPE), train=False))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables['params']))
  out = jax.eval_shape(lambda v: net.apply(v, jnp.ones((2,) + helpers.IMAGE_SHAPE), train=False), variables)
  assert out['z'].dtype == jnp.float32


@functools.cache  # shared by the two initialiser tests
def _student_and_rm_params(init):
  config = helpers.tiny_config(**{'model.init': init, 'student.init': init, 'relation.projection_head': 'mlp'})
  x = jnp.zeros((2,) + helpers.IMAGE_SHAPE)
  # Jitted: one compile each instead of one per operation.
  rm = jax.jit(models.simsiam_net(config.model).init, static_argnames='train')(jax.random.key(0), x, train=False)
  student = jax.jit(distill.student_net(config).init, static_argnames='train')(jax.random.key(0), x, train=False)
  rm, student = rm['params'], student['params']
  return rm, student


def test_torch_initialisers_match_torchvision_and_torch_linear():
  rm, student = _student_and_rm_params('torch')
  # torchvision's ResNet convs: kaiming_normal(fan_out, relu), std sqrt(2 / (out * kh * kw)), untruncated.
  kernel = np.asarray(rm['backbone']['conv_init']['kernel'])  # [3, 3, 3, width]
  np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / (kernel.shape[-1] * 9)), rtol=0.2)
  big = np.asarray(rm['backbone']['BasicBlock_3']['Conv_1']['kernel'])
  np.testing.assert_allclose(big.std(), np.sqrt(2.0 / (big.shape[-1] * 9)), rtol=0.05)
  assert np.abs(big).max() > 2.5 * big.std()  # a normal, not truncated at 2 std
  # torch.nn.Linear: weight and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  for dense in (student['classifier'], student['head']['layers_2'], rm['predictor']['Dense_1']):
    bound = 1 / np.sqrt(dense['kernel'].shape[0])
    for leaf in (dense['kernel'], dense['bias']):
      leaf = np.asarray(leaf)
      assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.8 * bound
  projector = np.asarray(rm['projector']['Dense_0']['kernel'])
  np.testing.assert_allclose(projector.std(), 1 / np.sqrt(3 * projector.shape[0]), rtol=0.05)


def test_flax_initialisers_are_flax_defaults_and_the_trees_agree():
  rm_flax, student_flax = _student_and_rm_params('flax')
  rm_torch, student_torch = _student_and_rm_params('torch')
  # One parameter tree whatever the initialiser: checkpoints of either restore into both.
  assert jax.tree.structure(rm_flax) == jax.tree.structure(rm_torch)
  assert jax.tree.structure(student_flax) == jax.tree.structure(student_torch)
  assert not np.any(np.asarray(student_flax['classifier']['bias']))  # flax's zero bias
  kernel = np.asarray(rm_flax['backbone']['BasicBlock_3']['Conv_1']['kernel'])
  fan_in = kernel.shape[2] * 9
  # lecun_normal: std sqrt(1 / fan_in), truncated at 2 std of the underlying normal.
  np.testing.assert_allclose(kernel.std(), np.sqrt(1.0 / fan_in), rtol=0.05)
  assert np.abs(kernel).max() < 2.3 * kernel.std()


def test_zero_init_residual_starts_every_block_as_its_shortcut():
  config = helpers.tiny_config(**{'model.zero_init_residual': True})
  variables = jax.jit(models.simsiam_net(config.model).init)(jax.random.key(0), jnp.zeros((2,) + helpers.IMAGE_SHAPE))
  blocks = {k: v for k, v in variables['params']['backbone'].items() if k.startswith('BasicBlock')}
  assert blocks
  for block in blocks.values():
    assert not np.any(np.asarray(block['BatchNorm_1']['scale']))  # the residual branch's last BN
    assert np.all(np.asarray(block['BatchNorm_0']['scale']) == 1)
