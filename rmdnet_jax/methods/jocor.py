"""JoCoR (Wei et al., CVPR 2020): two networks trained by one joint loss with co-regularisation.

Instead of exchanging selections (Co-teaching), both networks minimise one loss per example,
(1 - lambda) (CE_1 + CE_2) + lambda (KL(p_2 || p_1) + KL(p_1 || p_2)), on the small-loss examples of that joint
loss: agreement is pushed on the examples the two already find easy, which are mostly clean. Forget-rate schedule
as in Co-teaching.
"""

from rmdnet_jax.methods import base


def jocor_per_example_loss(logits_1, logits_2, labels, co_lambda: float):
  ce = base.per_example_cross_entropy(logits_1, labels) + base.per_example_cross_entropy(logits_2, labels)
  kl = base.per_example_kl(logits_2, logits_1) + base.per_example_kl(logits_1, logits_2)
  return (1.0 - co_lambda) * ce + co_lambda * kl


def jocor_loss(inputs: base.LossInputs, settings: base.Settings) -> base.LossOutputs:
  """The joint loss over the small-joint-loss examples of the global batch.

  Args:
    inputs: the step's inputs; `logits` holds the two networks' outputs on the same view.
    settings: `config.method.jocor`: co_lambda, the weight of the symmetric KL co-regularisation (the paper: 0.9
      on CIFAR-10; its code's default is 0.1); forget_rate, forget_gradual_epochs, forget_exponent: the
      drop-rate schedule, as in Co-teaching.

  Returns:
    The joint loss split equally between the two networks (their sum is the objective; the gradient reaches both
    networks through both halves), and the drop rate as a metric.
  """
  logits_1, logits_2 = inputs.logits
  joint = jocor_per_example_loss(logits_1, logits_2, inputs.labels, settings.co_lambda)
  rate = base.scheduled_forget_rate(inputs.progress, settings)
  keep = base.num_to_keep(rate, base.global_batch_size(joint.shape[0]))
  loss = base.global_masked_mean(joint, base.small_loss_mask(joint, keep))
  return base.LossOutputs(losses=(0.5 * loss, 0.5 * loss), metrics={'forget_rate': rate})


def check(settings: base.Settings) -> None:
  base.require(0 <= settings.co_lambda <= 1, f'method.jocor.co_lambda={settings.co_lambda} must be in [0, 1].')
  base.check_forget_schedule('jocor', settings)


METHOD = base.Method(name='jocor', loss=jocor_loss, num_networks=2, check=check)
