"""Registry of noisy-label methods whose loss is the "method loss" of the RGRL objective.

A method is a function `loss(logits [b, C], labels [b]) -> scalar` (mean over this device's examples).
Adding one: a new file in this folder and one line in `METHODS`.
"""
from typing import Callable

from rmdnet_jax.methods import ce

METHODS: dict[str, Callable] = {
    'ce': ce.cross_entropy,
}


def get_method_loss(name: str) -> Callable:
  if name not in METHODS:
    raise ValueError(f'Unknown method.name {name!r}; choose one of {sorted(METHODS)} '
                     '(e.g. --config.method.name=ce).')
  return METHODS[name]
