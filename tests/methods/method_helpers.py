"""What the tests of rmdnet_jax/methods/ share: float64 numpy references of the losses, small random problems,
a method's loss run through the pmapped interface, the config-check assertion, and the whole-step check (8
devices = 1 device) with a small MLP student. The `x64` fixture is in tests/methods/conftest.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax import lax

from configs import default
from rmdnet_jax import methods
from rmdnet_jax.core import parallel
from rmdnet_jax.datasets import data
from rmdnet_jax.stages import distill
from rmdnet_jax.training import config_checks
from rmdnet_jax.core import train_state as train_state_lib
from rmdnet_jax.methods import base
from tests import helpers

C = 5  # classes of every small problem
BATCH = 6  # examples of `batch` (the one-network losses)
PROBLEM_BATCH = 16  # examples of `problem` (the methods run on 1 and on 8 devices)


# --- small problems and numpy references -----------------------------------------------------------------------


def batch(seed=0, scale=3.0):
  """Logits [BATCH, C] and labels [BATCH]."""
  rng = np.random.default_rng(seed)
  return rng.normal(size=(BATCH, C)) * scale, rng.integers(0, C, (BATCH,))


def problem(seed=0, n=PROBLEM_BATCH, scale=2.0):
  """Two networks' logits [n, C] and labels [n]."""
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, C)) * scale, rng.normal(size=(n, C)) * scale, rng.integers(0, C, n))


def softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def ce_ref(logits, labels):
  """Mean cross-entropy."""
  return np.mean(-np.log(softmax(logits)[np.arange(len(labels)), labels]))


def per_example_ce(logits, labels):
  return -log_softmax(logits)[np.arange(len(labels)), labels]


def kl(p_logits, q_logits):
  """KL(softmax(p) || softmax(q)) per example."""
  return np.sum(softmax(p_logits) * (log_softmax(p_logits) - log_softmax(q_logits)), -1)


def gce_ref(logits, labels, q):
  return np.mean((1.0 - softmax(logits)[np.arange(len(labels)), labels] ** q) / q)


def sce_ref(logits, labels, alpha, beta, log_zero):
  p = softmax(logits)
  target = np.eye(C)[labels]
  log_target = np.where(target > 0, 0.0, log_zero)  # the clamped log of the one-hot label
  rce = -np.sum(p * log_target, axis=-1)
  return alpha * ce_ref(logits, labels) + beta * np.mean(rce)


# --- methods through their interface ---------------------------------------------------------------------------


def method_config(name):
  """The default `config.method` section with method.name = `name`."""
  config = default.get_config()
  config.method.name = name
  return config.method


def method_for(name, **settings):
  """`name` bound to its default settings block with `settings` overridden."""
  config = method_config(name)
  for key, value in settings.items():
    config[name][key] = value
  return methods.make_method(config)


def no_step_inputs(logits, labels):
  """LossInputs of a one-network method that reads only the logits and the labels."""
  return base.LossInputs(
      logits=(logits,),
      labels=labels,
      index=None,
      method_state={},
      progress=None,
      rng=None,
      view=None,
      second_view=None,
      forward=None,
  )


def mean_loss(method_config):
  """The bound single-network method as loss(logits, labels), through the Method interface."""
  method = methods.make_method(method_config)

  def loss(logits, labels):
    return method.loss(no_step_inputs(logits, labels)).losses[0]

  return loss


def assert_gradients_finite_for_confident_wrong_predictions(name):
  """The one-network method `name`'s loss and gradient stay finite in float32 where p_y underflows."""
  # Logits of +-80 put p_y near exp(-160), which underflows float32: the regime of a memorised wrong label.
  logits, labels = batch(4, scale=80.0)
  loss = mean_loss(method_config(name))
  value, grad = jax.value_and_grad(loss)(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
  assert np.isfinite(value)
  assert np.all(np.isfinite(grad))


def run_loss(
    method,
    logits,
    labels,
    *,
    num_devices,
    index=None,
    method_state=None,
    progress=0.0,
    rng_seed=3,
    view=None,
    view_2=None,
    forward=None,
):
  """The method's global loss (device mean of the shares), new state and metrics on `num_devices` devices."""
  n = len(labels)
  index = np.arange(n) if index is None else index
  view = np.zeros((n, 2, 2, 3)) if view is None else view
  view_2 = np.zeros_like(view) if view_2 is None else view_2
  sharded = jax.tree.map(
      lambda x: jnp.asarray(x).reshape((num_devices, -1) + x.shape[1:]), (tuple(logits), labels, index, view, view_2)
  )

  def f(logits, labels, index, view, view_2):
    out = method.loss(
        base.LossInputs(
            logits=logits,
            labels=labels,
            index=index,
            method_state=method_state or {},
            progress=jnp.asarray(progress, jnp.float32),
            rng=jax.random.key(rng_seed),
            view=view,
            second_view=lambda: view_2,
            forward=forward,
        )
    )
    return (
        lax.pmean(jnp.stack(out.losses), parallel.AXIS),
        out.method_state,
        lax.pmean(dict(out.metrics), parallel.AXIS),
    )

  fn = jax.pmap(f, axis_name=parallel.AXIS, out_axes=None, devices=jax.devices()[:num_devices])
  return jax.device_get(fn(*sharded))


# --- settings checks -------------------------------------------------------------------------------------------


def assert_validation_refuses(key, value, message):
  """config_checks.validate refuses `method.<key>` = `value` in one line matching `message`, whichever method.name
  is (every method's block is checked: a cell's config.json records them all)."""
  config = default.get_config()
  block, leaf = key.split('.')
  config.method[block][leaf] = value
  with pytest.raises(config_checks.ConfigError, match=message) as info:
    config_checks.validate(config, num_devices=8)
  assert '\n' not in str(info.value)


# --- whole steps: 8 devices = 1 device -------------------------------------------------------------------------


class MlpStudent(nn.Module):
  """A student small enough that compiling every method's step twice (8 devices, 1 device) stays cheap: the step
  code is the same whatever the network (`state.apply_fn`); the ResNet student runs in distill_test and the
  DivideMix pipeline test. BatchNorm syncs over the device axis, as the ResNet's does."""

  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = True):
    h = nn.Dense(16)(x.reshape(x.shape[0], -1))
    h = nn.relu(nn.BatchNorm(use_running_average=not train, axis_name=parallel.AXIS if train else None)(h))
    return {'features': h, 'logits': nn.Dense(self.num_classes)(h), 'embedding': nn.Dense(8)(h)}


def _step_setup(name, **settings):
  config = helpers.tiny_config(
      **{'method.name': name, 'rgrl.learning_rate': 0.05, **{f'method.{name}.{k}': v for k, v in settings.items()}}
  )
  method = methods.make_method(config.method)
  num_examples = 32
  model = MlpStudent()
  nets = [
      model.init(k, jnp.zeros((2,) + helpers.IMAGE_SHAPE), train=False)
      for k in jax.random.split(jax.random.key(0), method.num_networks)
  ]
  tx = train_state_lib.make_optimizer(config.rgrl, train_state_lib.learning_rate_schedule(config.rgrl, 4))
  state = helpers.to_host(
      train_state_lib.StudentTrainState.create(
          apply_fn=model.apply,
          params=distill.stack_networks([v['params'] for v in nets]),
          batch_stats=distill.stack_networks([v['batch_stats'] for v in nets]),
          tx=tx,
          method_state=method.init_state(num_examples, config.data.num_classes),
      )
  )
  # A fixed random projection as the frozen teacher's features.
  teacher = {'w': np.random.default_rng(11).normal(size=(int(np.prod(helpers.IMAGE_SHAPE)), 8)).astype(np.float32)}
  step = functools.partial(
      distill.distill_step,
      teacher_apply=lambda t, x: x.reshape(x.shape[0], -1) @ t['w'],
      method=method,
      K=config.relation.K,
      relation_kwargs=distill.relation_kwargs(config),
      view_kwargs=distill.view_kwargs(config.rgrl.augment, data.CIFAR10_MEAN, data.CIFAR10_STD),
      steps_per_epoch=2,
  )
  rng = np.random.default_rng(0)
  batch = {
      'images': helpers.images(16),
      'labels': helpers.labels(16),
      'index': rng.permutation(num_examples)[:16].astype(np.int32),
  }
  return state, teacher, step, batch


def assert_step_8_devices_equals_1_device(name, settings, prepare_state=None):
  """Method `name` (its block with `settings` overridden), RMDNet's relation terms on (one set per network for
  the two-network methods): two RGRL steps on 8 devices equal two on 1 device, and they train.

  `prepare_state(state)` edits the initial train state. Returns the batch and the state after the 1-device steps.
  """
  state, teacher, step, batch = _step_setup(name, **settings)
  if prepare_state is not None:
    state = prepare_state(state)
  s8, m8 = helpers.run_rgrl_steps(step, state, teacher, batch, 8)
  s1, m1 = helpers.run_rgrl_steps(step, state, teacher, batch, 1)
  for key in m1:
    np.testing.assert_allclose(m8[key], m1[key], rtol=2e-4, atol=1e-6, err_msg=key)
  helpers.assert_trees_close(s8.params, s1.params, rtol=2e-4, atol=2e-5)
  helpers.assert_trees_close(s8.batch_stats, s1.batch_stats, rtol=2e-4, atol=2e-5)
  helpers.assert_trees_close(s8.method_state, s1.method_state, rtol=2e-4, atol=1e-6)
  num_networks = methods.get_method(name).num_networks
  if num_networks == 2:
    # Two networks from different keys, each with its own relation terms: they stay different.
    first = jax.tree.leaves(s1.params)[0]
    assert first.shape[0] == 2 and not np.allclose(first[0], first[1])
  assert float(m1['node']) > 0 and float(m1['edge']) > 0
  before = jax.tree.leaves(helpers.to_host(state.params))
  assert any(not np.allclose(a, b) for a, b in zip(before, jax.tree.leaves(helpers.to_host(s1.params))))
  return batch, s1
