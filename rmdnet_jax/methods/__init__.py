"""Registry of noisy-label methods; each one's loss is the "method loss" of the RGRL objective.

    CE, GCE, SCE          one network, a loss of (logits, labels)
    Co-teaching, JoCoR    two networks, small-loss selection over the global batch
    ELR                   one network, per-example target estimates kept in the train state
    DivideMix             two networks, GMM co-divide before each epoch, MixMatch

Adding a method `mymethod`:
  1. rmdnet_jax/methods/mymethod.py defines `METHOD = base.Method(name='mymethod', loss=..., ...)`, or
     `METHOD = base.mean_loss_method('mymethod', my_loss, check)` for a plain mean loss of (logits, labels);
  2. one line `'mymethod': mymethod.METHOD,` in `METHODS` below;
  3. its settings block `config.method.mymethod` in configs/default.py (a method without settings needs none).
The method's functions receive that block as `settings`; see `base.py` for the interface and docs/methods.md,
"Adding a method".
"""

from typing import Mapping

from rmdnet_jax.methods import base, ce, coteaching, dividemix, elr, gce, jocor, sce

METHODS: Mapping[str, base.Method] = {
    'ce': ce.METHOD,
    'gce': gce.METHOD,
    'sce': sce.METHOD,
    'coteaching': coteaching.METHOD,
    'jocor': jocor.METHOD,
    'elr': elr.METHOD,
    'dividemix': dividemix.METHOD,
}


def get_method(name: str) -> base.Method:
  """The unbound method `name` (its settings not yet given)."""
  if name not in METHODS:
    raise ValueError(f'Unknown method.name {name!r}; choose one of {sorted(METHODS)} (e.g. --config.method.name=ce).')
  return METHODS[name]


def settings_of(method_config, name: str):
  """The settings block `config.method.<name>` of the `config.method` section ({} when the method has none)."""
  return method_config.get(name) or {}


def make_method(method_config) -> base.Method:
  """`config.method.name`'s method bound to its settings `config.method.<name>`."""
  return get_method(method_config.name).bind(settings_of(method_config, method_config.name))
