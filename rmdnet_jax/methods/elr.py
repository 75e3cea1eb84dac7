"""Early-learning regularisation (Liu et al., NeurIPS 2020).

Early in training the network's predictions are right on most mislabelled examples. ELR keeps, per example, a
running average t_i of its (clamped, renormalised) predictions and adds lambda * log(1 - <t_i, p_i>) to the
cross-entropy: the gradient pulls p_i towards t_i, so the early predictions keep being learned instead of the
noisy labels being memorised.

The targets are per example, so they live in the train state as an [N, C] array indexed by the dataset row that
every batch carries ('index'): they follow the examples through shuffling, device sharding and resume, and are
checkpointed with the network. Every device applies the whole global batch's update, so the replicas agree.
"""

import jax
import jax.numpy as jnp

from rmdnet_jax.core import parallel
from rmdnet_jax.methods import base

CLAMP = 1e-4  # the reference clamps probabilities to [1e-4, 1 - 1e-4] so log(1 - <t, p>) stays finite


def init_targets(num_examples: int, num_classes: int, settings: base.Settings) -> dict:
  del settings
  return {'targets': jnp.zeros((num_examples, num_classes), jnp.float32)}


def elr_loss(inputs: base.LossInputs, settings: base.Settings) -> base.LossOutputs:
  """CE + lambda * mean log(1 - <t_i, p_i>), after updating the targets of this global batch.

  Args:
    inputs: the step's inputs (uses logits[0], labels, index and method_state['targets']).
    settings: `config.method.elr`: reg_lambda, the weight lambda of the regulariser (the paper: 3 on CIFAR-10,
      7 on CIFAR-100); beta, the momentum of the target average (the paper: 0.7 on CIFAR-10, 0.9 on CIFAR-100).

  Returns:
    The loss, the new targets, and the regulariser as a metric.
  """
  logits = base.float32(inputs.logits[0])
  probs = jnp.clip(jax.nn.softmax(logits, axis=-1), CLAMP, 1.0 - CLAMP)
  detached = jax.lax.stop_gradient(probs)
  targets = inputs.method_state['targets']
  # Global update: every device scatters all examples of the global batch (indices are unique within a batch).
  index = parallel.all_gather(inputs.index)
  beta = settings.beta
  new_rows = beta * targets[index] + (1.0 - beta) * parallel.all_gather(
      detached / jnp.sum(detached, axis=-1, keepdims=True)
  )
  targets = targets.at[index].set(new_rows)
  local_targets = targets[inputs.index]
  regulariser = jnp.mean(jnp.log(1.0 - jnp.sum(local_targets * probs, axis=-1)))
  ce = jnp.mean(base.per_example_cross_entropy(logits, inputs.labels))
  return base.LossOutputs(
      losses=(ce + settings.reg_lambda * regulariser,),
      method_state={'targets': targets},
      metrics={'elr_regulariser': regulariser, 'ce': ce},
  )


def check(settings: base.Settings) -> None:
  base.require(
      settings.reg_lambda >= 0 and 0 <= settings.beta < 1,
      f'method.elr.reg_lambda={settings.reg_lambda} must be >= 0 and method.elr.beta={settings.beta} in [0, 1).',
  )


METHOD = base.Method(name='elr', loss=elr_loss, init_state=init_targets, check=check)
