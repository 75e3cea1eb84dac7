"""Cross-entropy on the (noisy) labels: the baseline, and the method loss of plain RMDNet."""

import jax
import optax

from rmdnet_jax.methods import base


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy. logits [b, C] float, labels [b] int."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


METHOD = base.mean_loss_method('ce', cross_entropy)  # no settings
