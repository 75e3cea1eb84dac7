"""Registry of noisy-label methods whose loss is the "method loss" of the RGRL objective.

A method is a function `loss(logits [b, C], labels [b], **hyperparameters) -> scalar` (mean over this device's
examples). Adding one: a new file in this folder, one line in `METHODS`, and, if it has hyperparameters, a line
in `HYPERPARAMETERS` mapping its keyword arguments to `config.method` keys (plus those keys in
configs/default.py).
"""
import functools
from typing import Callable

import ml_collections

from rmdnet_jax.methods import ce, gce, sce

METHODS: dict[str, Callable] = {
    'ce': ce.cross_entropy,
    'gce': gce.generalized_cross_entropy,
    'sce': sce.symmetric_cross_entropy,
}

# method name -> {keyword argument of its loss: key in config.method}. Config keys carry the method's prefix so
# that several methods' settings live side by side in one config.
HYPERPARAMETERS: dict[str, dict[str, str]] = {
    'gce': {'q': 'gce_q'},
    'sce': {'alpha': 'sce_alpha', 'beta': 'sce_beta', 'log_zero': 'sce_log_zero'},
}


def get_method_loss(name: str) -> Callable:
  """The loss function of method `name`, with its own default hyperparameters."""
  if name not in METHODS:
    raise ValueError(f'Unknown method.name {name!r}; choose one of {sorted(METHODS)} '
                     '(e.g. --config.method.name=ce).')
  return METHODS[name]


def make_method_loss(method_config: ml_collections.ConfigDict) -> Callable:
  """`loss(logits, labels)` of `method_config.name` with its hyperparameters read from `method_config`.

  Args:
    method_config: the `config.method` section (name plus the method's hyperparameter keys).

  Returns:
    The loss with its hyperparameters bound by functools.partial.
  """
  loss = get_method_loss(method_config.name)
  kwargs = {arg: method_config[key] for arg, key in HYPERPARAMETERS.get(method_config.name, {}).items()}
  return functools.partial(loss, **kwargs) if kwargs else loss
