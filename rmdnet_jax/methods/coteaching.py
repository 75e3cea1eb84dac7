"""Co-teaching (Han et al., NeurIPS 2018): two networks, each trained on the small-loss examples of the other.

Deep networks fit clean examples before noisy ones, so in early epochs the small-loss examples are mostly clean.
Each network picks the (1 - forget_rate) fraction of the global batch with its smallest cross-entropy and hands
that selection to its peer; the two networks' different errors keep one from confirming its own mistakes. The
forget rate ramps linearly from 0 to its final value (the noise rate, assumed known) over the first epochs.

Deviation: the reference code divides the selected mean once more by the number kept (a constant factor on the
learning rate); this is the plain mean over the selection.
"""

import functools

import jax.numpy as jnp

from rmdnet_jax.methods import base


def coteaching_loss(inputs: base.LossInputs, settings: base.Settings) -> base.LossOutputs:
  """Cross-entropy of each network on the examples its peer ranks smallest-loss.

  Args:
    inputs: the step's inputs; `logits` holds the two networks' outputs on the same view.
    settings: `config.method.coteaching`: forget_rate, the final fraction of each global batch dropped (the
      paper: the noise rate); forget_gradual_epochs, the epochs over which the drop rate ramps up from 0 (the
      paper: 10); forget_exponent, the ramp ends at forget_rate ** forget_exponent (the paper: 1).

  Returns:
    One loss per network, and the fraction kept and the label agreement of the two selections as metrics.
  """
  logits_1, logits_2 = inputs.logits
  ce_1 = base.per_example_cross_entropy(logits_1, inputs.labels)
  ce_2 = base.per_example_cross_entropy(logits_2, inputs.labels)
  rate = base.scheduled_forget_rate(inputs.progress, settings)
  keep = base.num_to_keep(rate, base.global_batch_size(ce_1.shape[0]))
  selected_by_1 = base.small_loss_mask(ce_1, keep)
  selected_by_2 = base.small_loss_mask(ce_2, keep)
  # The exchange: network 1 learns from network 2's selection and vice versa.
  loss_1 = base.global_masked_mean(ce_1, selected_by_2)
  loss_2 = base.global_masked_mean(ce_2, selected_by_1)
  metrics = {'forget_rate': rate, 'selection_overlap': jnp.mean((selected_by_1 == selected_by_2).astype(jnp.float32))}
  return base.LossOutputs(losses=(loss_1, loss_2), metrics=metrics)


METHOD = base.Method(
    name='coteaching',
    loss=coteaching_loss,
    num_networks=2,
    check=functools.partial(base.check_forget_schedule, 'coteaching'),
)
