"""Generalized cross-entropy (Zhang & Sabuncu, NeurIPS 2018): the negative Box-Cox transform of p_y.

L_q = (1 - p_y^q) / q interpolates between CE (q -> 0) and MAE (q = 1): the smaller weight it gives to
low-confidence examples makes it robust to the mislabelled ones, at the cost of slower fitting of clean ones.
"""

import jax
import jax.numpy as jnp

from rmdnet_jax.methods import base


def generalized_cross_entropy(logits: jax.Array, labels: jax.Array, *, q: float = 0.7) -> jax.Array:
  """Mean GCE loss.

  Args:
    logits: [b, C] float.
    labels: [b] int.
    q: Box-Cox exponent in (0, 1]; the paper's CIFAR setting is 0.7.

  Returns:
    The mean of (1 - p_y^q) / q over the batch.
  """
  # Promoted: powers of probabilities lose too much precision in bfloat16's 8 mantissa bits.
  log_p = jax.nn.log_softmax(base.float32(logits), axis=-1)
  log_p_y = jnp.take_along_axis(log_p, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
  # p_y^q = exp(q log p_y) stays finite and differentiable where p_y underflows; -expm1 keeps precision as q -> 0.
  return jnp.mean(-jnp.expm1(q * log_p_y) / q)


def check(settings: base.Settings) -> None:
  base.require(0 < settings.q <= 1, f'method.gce.q={settings.q} must be in (0, 1] (0.7 in Zhang & Sabuncu).')


METHOD = base.mean_loss_method('gce', generalized_cross_entropy, check)  # settings: q
