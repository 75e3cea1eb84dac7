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


def test_make_method_binds_the_config_hyperparameters(x64):
  logits, labels = batch(5)
  config = default.get_config().method
  config.name, config.gce_q = 'gce', 0.3
  np.testing.assert_allclose(
      mean_loss(config)(jnp.asarray(logits), jnp.asarray(labels)), gce_ref(logits, labels, 0.3), rtol=1e-12
  )
  config.name, config.sce_alpha, config.sce_beta, config.sce_log_zero = 'sce', 2.0, 0.5, -3.0
  np.testing.assert_allclose(
      mean_loss(config)(jnp.asarray(logits), jnp.asarray(labels)), sce_ref(logits, labels, 2.0, 0.5, -3.0), rtol=1e-12
  )
  config.name = 'ce'
  np.testing.assert_allclose(
      mean_loss(config)(jnp.asarray(logits), jnp.asarray(labels)), ce_ref(logits, labels), rtol=1e-12
  )
  assert methods.get_method('ce').loss.mean_loss is ce.cross_entropy


def test_every_hyperparameter_is_a_config_key():
  method_config = default.get_config().method
  for name, method in methods.METHODS.items():
    assert method.name == name
    for key in method.hyperparameters.values():
      assert key in method_config, f'{name} reads method.{key}, which configs/default.py lacks'
    methods.make_method(ml_collections.ConfigDict({**method_config.to_dict(), 'name': name}))


def test_bind_refuses_a_hyperparameter_no_function_takes():
  broken = methods.base.Method(name='broken', loss=methods.get_method('ce').loss, hyperparameters={'q': 'gce_q'})
  with pytest.raises(TypeError, match='none of its functions take'):
    broken.bind(default.get_config().method)


@pytest.mark.parametrize(
    'key, value, message',
    [
        ('gce_q', 0.0, 'method.gce_q'),
        ('gce_q', 1.5, 'method.gce_q'),
        ('gce_q', float('nan'), 'method.gce_q'),
        ('sce_alpha', -0.1, 'method.sce_alpha'),
        ('sce_beta', -1.0, 'method.sce_beta'),
        ('forget_rate', 1.0, 'method.forget_rate'),
        ('forget_gradual_epochs', -1, 'method.forget_gradual_epochs'),
        ('forget_exponent', 0.0, 'method.forget_exponent'),
        ('jocor_lambda', 1.5, 'method.jocor_lambda'),
        ('elr_lambda', -1.0, 'method.elr_lambda'),
        ('elr_beta', 1.0, 'method.elr_beta'),
        ('dividemix_warmup_epochs', -1, 'method.dividemix_warmup_epochs'),
        ('dividemix_rampup_epochs', 0, 'method.dividemix_rampup_epochs'),
        ('dividemix_p_threshold', 1.5, 'method.dividemix_p_threshold'),
        ('dividemix_temperature', 0.0, 'method.dividemix_p_threshold'),
        ('dividemix_lambda_u', float('inf'), 'method.dividemix_lambda_u'),
        ('dividemix_gmm_iterations', 0, 'method.dividemix_gmm_iterations'),
        ('dividemix_gmm_reg_covar', 0.0, 'method.dividemix_gmm_iterations'),
    ],
)
def test_config_checks_reject_bad_hyperparameters(key, value, message):
  config = default.get_config()
  config.method[key] = value
  with pytest.raises(config_checks.ConfigError, match=message):
    config_checks.validate(config, num_devices=8)


@pytest.mark.parametrize('name', sorted(methods.METHODS))
def test_every_method_passes_validation(name):
  config = default.get_config()
  config.method.name = name
  config_checks.validate(config, num_devices=8)
