"""Registry of noisy-label methods; each one's loss is the "method loss" of the RGRL objective.

    CE, GCE, SCE          one network, a loss of (logits, labels)
    Co-teaching, JoCoR    two networks, small-loss selection over the global batch
    ELR                   one network, per-example target estimates kept in the train state
    DivideMix             two networks, GMM co-divide before each epoch, MixMatch

Adding a method: one new file in this folder that defines `METHOD = base.Method(...)` (or
`base.from_mean_loss(name, loss_fn, hyperparameters)` for a plain loss of logits and labels), plus one line in
`METHODS` below; its hyperparameters are keys of `config.method` (add them, with defaults, to
configs/default.py). See `base.py` for the interface and README "Adding a noisy-label method".
"""

import ml_collections

from rmdnet_jax.methods import base, ce, coteaching, dividemix, elr, gce, jocor, sce

METHODS: dict[str, base.Method] = {
    'ce': base.from_mean_loss('ce', ce.cross_entropy),
    'gce': base.from_mean_loss('gce', gce.generalized_cross_entropy, {'q': 'gce_q'}),
    'sce': base.from_mean_loss(
        'sce', sce.symmetric_cross_entropy, {'alpha': 'sce_alpha', 'beta': 'sce_beta', 'log_zero': 'sce_log_zero'}
    ),
    'coteaching': coteaching.METHOD,
    'jocor': jocor.METHOD,
    'elr': elr.METHOD,
    'dividemix': dividemix.METHOD,
}


def get_method(name: str) -> base.Method:
  """The unbound method `name` (its hyperparameters not yet read from a config)."""
  if name not in METHODS:
    raise ValueError(
        f'Unknown method.name {name!r}; choose one of {sorted(METHODS)} ' '(e.g. --config.method.name=ce).'
    )
  return METHODS[name]


def make_method(method_config: ml_collections.ConfigDict) -> base.Method:
  """`config.method.name`'s method with its hyperparameters read from `config.method` and bound."""
  return get_method(method_config.name).bind(method_config)
