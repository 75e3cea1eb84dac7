"""Symmetric cross-entropy (Wang et al., ICCV 2019): alpha * CE + beta * reverse CE.

The reverse term RCE = -sum_k p_k log y_k swaps prediction and label. With a one-hot label, log 0 is undefined,
so it is clamped to A (the paper uses A = -4); RCE then equals -A * (1 - p_y), a bounded, noise-tolerant loss.
"""

import jax
import jax.numpy as jnp

from rmdnet_jax.methods import base


def symmetric_cross_entropy(
    logits: jax.Array, labels: jax.Array, *, alpha: float = 0.1, beta: float = 1.0, log_zero: float = -4.0
) -> jax.Array:
  """Mean SCE loss.

  Args:
    logits: [b, C] float.
    labels: [b] int.
    alpha: weight of CE (the paper's CIFAR-10 setting is 0.1; it uses 6.0 for CIFAR-100).
    beta: weight of the reverse CE (1.0 for CIFAR-10 and CIFAR-100 in the paper).
    log_zero: the value A that replaces log 0 for the non-label classes of the one-hot target.

  Returns:
    The mean of alpha * CE + beta * RCE over the batch.
  """
  logits = base.float32(logits)  # float64 stays float64 for exact reference checks
  log_p = jax.nn.log_softmax(logits, axis=-1)
  one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  ce = -jnp.sum(one_hot * log_p, axis=-1)
  # log of the clamped one-hot label: 0 for the label class, A elsewhere.
  log_target = (1.0 - one_hot) * log_zero
  rce = -jnp.sum(jnp.exp(log_p) * log_target, axis=-1)
  return jnp.mean(alpha * ce + beta * rce)


def check(settings: base.Settings) -> None:
  base.require(
      settings.alpha >= 0 and settings.beta >= 0,
      f'method.sce.alpha={settings.alpha} and method.sce.beta={settings.beta} must be >= 0.',
  )


METHOD = base.mean_loss_method('sce', symmetric_cross_entropy, check)  # settings: alpha, beta, log_zero
