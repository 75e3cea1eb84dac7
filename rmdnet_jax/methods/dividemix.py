"""DivideMix (Li et al., ICLR 2020): co-divide the data with a GMM on per-example losses, then semi-supervised
MixMatch on the division, two networks teaching each other.

  warm-up (epoch < warmup_epochs): cross-entropy on the noisy labels (+ a confidence penalty for asymmetric noise).
  before every later epoch (`divide`, on the host): each network's per-example CE on the un-augmented training
    set, min-max normalised, is fitted by a two-component GMM; p(clean) is the posterior of the low-loss component.
  each step, network i, using its PEER's division (p_j > p_threshold: labelled, weight w = p_j; else unlabelled):
    co-refinement   labelled target  = sharpen(w y + (1 - w) mean(p_i(view 1), p_i(view 2)))
    co-guessing     unlabelled target = sharpen(mean of both networks on both views)
    MixMatch        lambda ~ Beta(alpha, alpha), lambda = max(lambda, 1 - lambda); mix every view with a random
                    partner (inputs and targets); L = L_x (CE, labelled positions) + lambda_u(t) L_u (squared
                    error, unlabelled positions) + KL(uniform || mean prediction).

Fixed-shape variant (stated in docs/methods.md): the reference draws equal-size batches from separate labelled and
unlabelled loaders; here every global batch is the same uniform sample as for the other methods, and each example
is labelled or unlabelled by mask, so the step compiles once and the labelled/unlabelled ratio of a batch follows
the division. Both networks are updated at every step (the reference alternates them within an epoch). Mixing
partners are drawn over the global batch (views and targets are gathered), so the result does not depend on the
number of devices. BatchNorm running statistics come from the un-mixed view's forward pass.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rmdnet_jax.core import parallel
from rmdnet_jax.methods import base, gmm


def init_state(num_examples: int, num_classes: int, settings: base.Settings) -> dict:
  del num_classes, settings
  # Before the first division every example counts as unlabelled (p = 0); warm-up never reads it.
  return {'clean_probability': jnp.zeros((2, num_examples), jnp.float32)}


def divide(method_state: dict, settings: base.Settings, *, epoch: int, logits_fn, labels: np.ndarray):
  """Co-divide before `epoch`: each network's GMM p(clean) per training example (None during warm-up)."""
  del method_state
  if epoch < settings.warmup_epochs:
    return None
  logits = np.asarray(logits_fn(), np.float64)  # [2, N, C]
  log_p = logits - logits.max(-1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
  losses = -np.take_along_axis(log_p, np.asarray(labels)[None, :, None], axis=-1)[..., 0]
  fit = dict(max_iter=settings.gmm_iterations, tol=settings.gmm_tol, reg_covar=settings.gmm_reg_covar)
  probs = np.stack([gmm.clean_probability(l, **fit) for l in losses])
  return {'clean_probability': probs.astype(np.float32)}


def sharpen(p: jax.Array, temperature: float) -> jax.Array:
  p = p ** (1.0 / temperature)
  return p / jnp.sum(p, axis=-1, keepdims=True)


def linear_rampup(progress, *, warmup_epochs: int, rampup_epochs: int):
  return jnp.clip((progress - warmup_epochs) / rampup_epochs, 0.0, 1.0)


def _gather_global(local: jax.Array) -> jax.Array:
  """[2b, ...] (view 1 rows, then view 2 rows) -> the global [2B, ...] in the same order."""
  b = local.shape[0] // 2
  return jnp.concatenate([parallel.all_gather(local[:b]), parallel.all_gather(local[b:])])


def mixmatch_loss(inputs: base.LossInputs, i: int, view_2: jax.Array, probs: tuple, settings: base.Settings):
  """Network i's MixMatch loss on its peer's division. `probs[k][v]`: network k's softmax on view v (no grad)."""
  temperature, alpha = settings.temperature, settings.alpha
  j = 1 - i
  num_classes = inputs.logits[0].shape[-1]
  p_clean = inputs.method_state['clean_probability'][j][inputs.index]
  labelled = p_clean > settings.p_threshold
  w = p_clean[:, None]
  one_hot = jax.nn.one_hot(inputs.labels, num_classes, dtype=jnp.float32)
  refined = sharpen(w * one_hot + (1.0 - w) * 0.5 * (probs[i][0] + probs[i][1]), temperature)
  guessed = sharpen(0.25 * (probs[0][0] + probs[0][1] + probs[1][0] + probs[1][1]), temperature)
  targets = jnp.where(labelled[:, None], refined, guessed)

  x = _gather_global(jnp.concatenate([inputs.view, view_2]))
  t = _gather_global(jnp.concatenate([targets, targets]))
  is_labelled = _gather_global(jnp.concatenate([labelled, labelled]))
  beta_key, perm_key = jax.random.split(jax.random.fold_in(inputs.rng, i))
  lam = jax.random.beta(beta_key, alpha, alpha)
  lam = jnp.maximum(lam, 1.0 - lam)
  partner = jax.random.permutation(perm_key, x.shape[0])
  b = inputs.labels.shape[0]
  local = parallel.global_example_index(b)
  positions = jnp.concatenate([local, x.shape[0] // 2 + local])
  mixed_x = lam * x[positions] + (1.0 - lam) * x[partner[positions]]
  mixed_t = lam * t[positions] + (1.0 - lam) * t[partner[positions]]
  position_labelled = is_labelled[positions]

  logits = base.float32(inputs.forward(i, mixed_x))
  log_p = jax.nn.log_softmax(logits, axis=-1)
  p = jnp.exp(log_p)
  loss_x = base.global_masked_mean(-jnp.sum(mixed_t * log_p, axis=-1), position_labelled)
  loss_u = base.global_masked_mean(jnp.mean((p - mixed_t) ** 2, axis=-1), ~position_labelled)
  weight_u = jnp.float32(settings.lambda_u) * linear_rampup(
      inputs.progress, warmup_epochs=settings.warmup_epochs, rampup_epochs=settings.rampup_epochs
  ).astype(jnp.float32)
  # The prior keeps the mixed predictions from collapsing onto few classes; the global batch mean is a pmean of
  # equal-size local means.
  mean_p = lax.pmean(jnp.mean(p, axis=0), parallel.AXIS)
  prior = jnp.full((num_classes,), 1.0 / num_classes)
  penalty = jnp.sum(prior * jnp.log(prior / mean_p))
  metrics = {
      'loss_x': loss_x,
      'loss_u': loss_u,
      'lambda_u': weight_u,
      'penalty': penalty,
      'labelled_fraction': lax.pmean(jnp.mean(labelled.astype(jnp.float32)), parallel.AXIS),
  }
  return loss_x + weight_u * loss_u + penalty, metrics


def dividemix_loss(inputs: base.LossInputs, settings: base.Settings) -> base.LossOutputs:
  """Warm-up CE before `warmup_epochs`, MixMatch on the co-division after (one loss per network).

  Args:
    inputs: the step's inputs; `logits` holds both networks' outputs on the first view.
    settings: `config.method.dividemix`:
      warmup_epochs: epochs of plain CE before the first division (the paper: 10 on CIFAR-10, 30 on CIFAR-100).
      p_threshold: p(clean) above which an example is labelled (0.5).
      temperature: sharpening temperature T (0.5).
      alpha: Beta(alpha, alpha) of the mixing coefficient (4).
      lambda_u: final weight of the unlabelled loss (the paper: 0 / 25 / 25 / 50 for CIFAR-10 sym 20/50/80/90,
        0 for asym 40; 25 / 150 / 150 / 150 for CIFAR-100).
      rampup_epochs: epochs over which lambda_u ramps up after warm-up (16).
      confidence_penalty: add the negative-entropy penalty during warm-up (the paper: asymmetric noise only).
      gmm_iterations, gmm_tol, gmm_reg_covar: the per-epoch GMM's EM (`divide`).
  """
  warmup_epochs = settings.warmup_epochs

  def warm(_):
    losses, metrics = [], {}
    for logits in inputs.logits:
      ce = jnp.mean(base.per_example_cross_entropy(logits, inputs.labels))
      if settings.confidence_penalty:
        log_p = jax.nn.log_softmax(base.float32(logits), axis=-1)
        ce = ce + jnp.mean(jnp.sum(jnp.exp(log_p) * log_p, axis=-1))
      losses.append(ce)
    # The same metrics as the MixMatch branch (cond needs equal types): losses in the logits' precision.
    zero = jnp.zeros((), base.float32(inputs.logits[0]).dtype)
    metrics = {
        'loss_x': zero,
        'loss_u': zero,
        'penalty': zero,
        'lambda_u': jnp.zeros((), jnp.float32),
        'labelled_fraction': jnp.zeros((), jnp.float32),
    }
    return tuple(losses), metrics

  def mixmatch(_):
    view_2 = inputs.second_view()
    # Predictions for co-refinement and co-guessing carry no gradient (the reference computes them under no_grad).
    probs = tuple(
        (
            jax.nn.softmax(base.float32(lax.stop_gradient(inputs.logits[k])), axis=-1),
            jax.nn.softmax(base.float32(lax.stop_gradient(inputs.forward(k, view_2))), axis=-1),
        )
        for k in range(2)
    )
    losses, all_metrics = [], []
    for i in range(2):
      loss, metrics = mixmatch_loss(inputs, i, view_2, probs, settings)
      losses.append(loss)
      all_metrics.append(metrics)
    return tuple(losses), jax.tree.map(lambda a, b: 0.5 * (a + b), *all_metrics)

  if warmup_epochs <= 0:  # no warm-up: the CE branch is never taken, so it is not compiled either
    losses, metrics = mixmatch(None)
  else:
    losses, metrics = lax.cond(inputs.progress < warmup_epochs, warm, mixmatch, None)
  return base.LossOutputs(losses=losses, metrics=metrics)


def check(settings: base.Settings) -> None:
  s = settings
  base.require(
      s.warmup_epochs >= 0 and s.rampup_epochs >= 1,
      f'method.dividemix.warmup_epochs={s.warmup_epochs} must be >= 0 and method.dividemix.rampup_epochs='
      f'{s.rampup_epochs} >= 1.',
  )
  base.require(0 <= s.p_threshold <= 1, f'method.dividemix.p_threshold={s.p_threshold} must be in [0, 1].')
  base.require(
      s.temperature > 0 and s.alpha > 0 and s.lambda_u >= 0,
      f'method.dividemix.temperature={s.temperature} and method.dividemix.alpha={s.alpha} must be > 0, '
      f'method.dividemix.lambda_u={s.lambda_u} >= 0.',
  )
  base.require(
      s.gmm_iterations >= 1 and s.gmm_tol > 0 and s.gmm_reg_covar > 0,
      f'method.dividemix.gmm_iterations={s.gmm_iterations} must be >= 1 and method.dividemix.gmm_tol='
      f'{s.gmm_tol}, method.dividemix.gmm_reg_covar={s.gmm_reg_covar} > 0.',
  )


METHOD = base.Method(
    name='dividemix',
    loss=dividemix_loss,
    num_networks=2,
    init_state=init_state,
    epoch_hook=divide,
    eval_networks='mean',
    check=check,
)
