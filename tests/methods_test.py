"""Noisy-label method losses against float64 numpy references, their limits, gradients and config wiring."""

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from rmdnet_jax import config_checks, methods
from rmdnet_jax.methods import base, ce, gce, sce

B, C = 6, 5


@pytest.fixture
def x64():
  """float64 inside one test only, so the references can be compared at tight tolerance."""
  with jax.enable_x64(True):
    yield
  assert jnp.zeros(()).dtype == jnp.float32, 'x64 leaked out of the test'


def batch(seed=0, scale=3.0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(B, C)) * scale, rng.integers(0, C, (B,))


def softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def ce_ref(logits, labels):
  return np.mean(-np.log(softmax(logits)[np.arange(B), labels]))


def gce_ref(logits, labels, q):
  return np.mean((1.0 - softmax(logits)[np.arange(B), labels] ** q) / q)


def sce_ref(logits, labels, alpha, beta, log_zero):
  p = softmax(logits)
  target = np.eye(C)[labels]
  log_target = np.where(target > 0, 0.0, log_zero)  # the clamped log of the one-hot label
  rce = -np.sum(p * log_target, axis=-1)
  return alpha * ce_ref(logits, labels) + beta * np.mean(rce)


@pytest.mark.parametrize('q', [0.1, 0.7, 1.0])
def test_gce_matches_numpy(x64, q):
  logits, labels = batch()
  got = gce.generalized_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), q=q)
  assert got.dtype == jnp.float64
  np.testing.assert_allclose(got, gce_ref(logits, labels, q), rtol=1e-12)


@pytest.mark.parametrize('alpha, beta, log_zero', [(0.1, 1.0, -4.0), (6.0, 1.0, -4.0), (1.0, 0.5, -2.0)])
def test_sce_matches_numpy(x64, alpha, beta, log_zero):
  logits, labels = batch(1)
  got = sce.symmetric_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), alpha=alpha, beta=beta, log_zero=log_zero)
  np.testing.assert_allclose(got, sce_ref(logits, labels, alpha, beta, log_zero), rtol=1e-12)


def test_gce_approaches_ce_as_q_goes_to_zero(x64):
  logits, labels = batch(2)
  target = ce_ref(logits, labels)
  # (1 - p^q)/q = -log p - q (log p)^2 / 2 + O(q^2): the gap shrinks linearly in q.
  gaps = [
      abs(float(gce.generalized_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), q=q)) - target)
      for q in (1e-2, 1e-4, 1e-6)
  ]
  assert gaps[0] > gaps[1] > gaps[2]
  assert gaps[2] < 1e-5 * target


def test_sce_without_reverse_term_is_scaled_ce(x64):
  logits, labels = batch(3)
  got = sce.symmetric_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), alpha=0.1, beta=0.0)
  want = 0.1 * ce.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(got, want, rtol=1e-12)


MEAN_LOSS_METHODS = ('ce', 'gce', 'sce')


def mean_loss(method_config):
  """The bound single-network method as loss(logits, labels), through the Method interface."""
  method = methods.make_method(method_config)

  def loss(logits, labels):
    inputs = base.LossInputs(
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
    return method.loss(inputs).losses[0]

  return loss


@pytest.mark.parametrize('name', MEAN_LOSS_METHODS)
def test_gradients_are_finite_even_for_confident_wrong_predictions(name):
  # Logits of +-80 put p_y near exp(-160), which underflows float32: the regime of a memorised wrong label.
  logits, labels = batch(4, scale=80.0)
  loss = mean_loss(_method_config(name))
  value, grad = jax.value_and_grad(loss)(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
  assert np.isfinite(value)
  assert np.all(np.isfinite(grad))


def _method_config(name):
  config = default.get_config()
  config.method.name = name
  return config.method


def test_make_method_binds_the_methods_settings_block(x64):
  logits, labels = batch(5)
  config = default.get_config().method
  config.name, config.gce.q = 'gce', 0.3
  np.testing.assert_allclose(
      mean_loss(config)(jnp.asarray(logits), jnp.asarray(labels)), gce_ref(logits, labels, 0.3), rtol=1e-12
  )
  config.name, config.sce.alpha, config.sce.beta, config.sce.log_zero = 'sce', 2.0, 0.5, -3.0
  np.testing.assert_allclose(
      mean_loss(config)(jnp.asarray(logits), jnp.asarray(labels)), sce_ref(logits, labels, 2.0, 0.5, -3.0), rtol=1e-12
  )
  config.name = 'ce'
  np.testing.assert_allclose(
      mean_loss(config)(jnp.asarray(logits), jnp.asarray(labels)), ce_ref(logits, labels), rtol=1e-12
  )


def test_bound_method_holds_its_settings_frozen():
  config = default.get_config().method
  config.name = 'dividemix'
  method = methods.make_method(config)
  assert method.settings == ml_collections.FrozenConfigDict(config.dividemix)
  config.dividemix.lambda_u = 1.0  # a later edit of the config does not reach the bound method
  assert method.settings.lambda_u == 25.0
  assert methods.get_method('dividemix').settings is None  # the registry's method stays unbound
  with pytest.raises(ValueError, match='already bound'):
    method.bind(config.dividemix)


def test_every_method_is_registered_under_its_name_and_its_settings_are_its_block():
  method_config = default.get_config().method
  for name, method in methods.METHODS.items():
    assert method.name == name
    assert method.settings is None
    if name != 'ce':  # the only method without settings
      assert isinstance(method_config[name], ml_collections.ConfigDict), name
    bound = methods.make_method(ml_collections.ConfigDict({**method_config.to_dict(), 'name': name}))
    assert bound.settings.to_dict() == (method_config[name].to_dict() if name in method_config else {})
  blocks = {k for k, v in method_config.items() if isinstance(v, ml_collections.ConfigDict)}
  assert blocks <= set(methods.METHODS), f'settings blocks of no method: {blocks - set(methods.METHODS)}'


def test_a_new_method_is_one_method_value():
  """What README "Adding a noisy-label method" describes: a Method with a loss of (inputs, settings)."""

  def loss(inputs, settings):
    return base.LossOutputs(losses=(settings.weight * ce.cross_entropy(inputs.logits[0], inputs.labels),))

  method = base.Method(name='scaled_ce', loss=loss).bind({'weight': 0.5})
  logits, labels = batch(6)
  inputs = base.LossInputs(
      logits=(jnp.asarray(logits),),
      labels=jnp.asarray(labels),
      index=None,
      method_state={},
      progress=None,
      rng=None,
      view=None,
      second_view=None,
      forward=None,
  )
  np.testing.assert_allclose(method.loss(inputs).losses[0], 0.5 * ce_ref(logits, labels), rtol=1e-6)
  assert method.init_state(10, 5) == {} and method.epoch_hook is None


@pytest.mark.parametrize(
    'key, value, message',
    [
        ('gce.q', 0.0, 'method.gce.q'),
        ('gce.q', 1.5, 'method.gce.q'),
        ('gce.q', float('nan'), 'method.gce.q'),
        ('sce.alpha', -0.1, 'method.sce.alpha'),
        ('sce.beta', -1.0, 'method.sce.beta'),
        ('sce.log_zero', float('-inf'), 'method.sce.log_zero=-inf must be a finite number'),
        ('coteaching.forget_rate', 1.0, 'method.coteaching.forget_rate'),
        ('coteaching.forget_gradual_epochs', -1, 'method.coteaching.forget_gradual_epochs'),
        ('coteaching.forget_exponent', 0.0, 'method.coteaching.forget_exponent'),
        ('jocor.forget_rate', -0.1, 'method.jocor.forget_rate'),
        ('jocor.forget_gradual_epochs', -1, 'method.jocor.forget_gradual_epochs'),
        ('jocor.co_lambda', 1.5, 'method.jocor.co_lambda'),
        ('elr.reg_lambda', -1.0, 'method.elr.reg_lambda'),
        ('elr.beta', 1.0, 'method.elr.beta'),
        ('dividemix.warmup_epochs', -1, 'method.dividemix.warmup_epochs'),
        ('dividemix.rampup_epochs', 0, 'method.dividemix.rampup_epochs'),
        ('dividemix.p_threshold', 1.5, 'method.dividemix.p_threshold'),
        ('dividemix.temperature', 0.0, 'method.dividemix.temperature'),
        ('dividemix.lambda_u', float('inf'), 'method.dividemix.lambda_u'),
        ('dividemix.gmm_iterations', 0, 'method.dividemix.gmm_iterations'),
        ('dividemix.gmm_reg_covar', 0.0, 'method.dividemix.gmm_reg_covar'),
        ('dividemix.gmm_iterations', True, 'method.dividemix.gmm_iterations=True must be an integer'),
        ('dividemix.confidence_penalty', None, 'method.dividemix.confidence_penalty=None must be True or False'),
    ],
)
def test_config_checks_reject_bad_settings(key, value, message):
  """Every method's block is checked, whichever method.name is (a cell's config.json records them all)."""
  config = default.get_config()
  block, leaf = key.split('.')
  config.method[block][leaf] = value
  with pytest.raises(config_checks.ConfigError, match=message) as info:
    config_checks.validate(config, num_devices=8)
  assert '\n' not in str(info.value)


def test_config_checks_want_the_used_methods_block():
  config = default.get_config()
  config.method.name = 'gce'
  del config.method['gce']
  with pytest.raises(config_checks.ConfigError, match='method.gce .* is missing'):
    config_checks.validate(config, num_devices=8)
  config.method.name = 'ce'  # another method's block may be absent (a config saved before that method existed)
  config_checks.validate(config, num_devices=8)


@pytest.mark.parametrize('name', sorted(methods.METHODS))
def test_every_method_passes_validation(name):
  config = default.get_config()
  config.method.name = name
  config_checks.validate(config, num_devices=8)
