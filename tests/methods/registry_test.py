"""rmdnet_jax/methods/__init__.py, the registry of methods: every method registered under its name with its
settings block, `make_method` binding `config.method.<name>`, and every method's block validated."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default
from rmdnet_jax import methods
from rmdnet_jax.training import config_checks
from tests.methods import method_helpers


def test_make_method_binds_the_methods_settings_block(x64):
  logits, labels = method_helpers.batch(5)
  config = default.get_config().method
  config.name, config.gce.q = 'gce', 0.3
  np.testing.assert_allclose(
      method_helpers.mean_loss(config)(jnp.asarray(logits), jnp.asarray(labels)),
      method_helpers.gce_ref(logits, labels, 0.3),
      rtol=1e-12,
  )
  config.name, config.sce.alpha, config.sce.beta, config.sce.log_zero = 'sce', 2.0, 0.5, -3.0
  np.testing.assert_allclose(
      method_helpers.mean_loss(config)(jnp.asarray(logits), jnp.asarray(labels)),
      method_helpers.sce_ref(logits, labels, 2.0, 0.5, -3.0),
      rtol=1e-12,
  )
  config.name = 'ce'
  np.testing.assert_allclose(
      method_helpers.mean_loss(config)(jnp.asarray(logits), jnp.asarray(labels)),
      method_helpers.ce_ref(logits, labels),
      rtol=1e-12,
  )


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


def test_an_unknown_method_name_is_refused_naming_the_choices():
  with pytest.raises(ValueError, match=r"Unknown method.name 'mixup'; choose one of \['ce', 'coteaching'"):
    methods.get_method('mixup')
  with pytest.raises(ValueError, match='Unknown method.name'):
    methods.make_method(method_helpers.method_config('mixup'))


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
