"""RM stage — relation modeling by SimSiam self-supervised pretraining (Chen & He, CVPR 2021).

Labels are never used here. The trained encoder (backbone + projector) is the frozen teacher of the RGRL stage,
and the relations it models between samples are what RGRL distils.

`simsiam_step(state, batch, rng)` is a pure function; `parallel.pmap_step` maps it over devices.
"""

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from rmdnet_jax import augment, models, parallel, relation
from rmdnet_jax import train_state as train_state_lib


def negative_cosine(p: jax.Array, z: jax.Array) -> jax.Array:
  """D(p, z) = -mean_i cos(p_i, sg(z_i)).

  The stop-gradient on the target is the whole trick of SimSiam: without it the two branches collapse to a
  constant. It is applied here, inside D, so that no caller can forget it.
  """
  z = jax.lax.stop_gradient(z)
  # A zero row (possible with a narrow predictor, whose ReLU can switch off every unit) gives 0, not NaN.
  return -jnp.mean(jnp.sum(relation.l2_normalize(p) * relation.l2_normalize(z), axis=-1))


def simsiam_loss(p1, p2, z1, z2) -> jax.Array:
  """Symmetric SimSiam loss: 1/2 D(p1, z2) + 1/2 D(p2, z1); minimum -1."""
  return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


def view_kwargs(config: ml_collections.ConfigDict, mean, std) -> dict:
  """Keyword arguments of `augment.simsiam_views` from `config.rm.augment`."""
  aug = config.rm.augment
  return dict(
      mean=tuple(mean),
      std=tuple(std),
      crop_scale=(aug.crop_scale_min, 1.0),
      brightness=aug.brightness,
      contrast=aug.contrast,
      saturation=aug.saturation,
      hue=aug.hue,
      jitter_prob=aug.jitter_prob,
      grayscale_prob=aug.grayscale_prob,
      flip_prob=aug.flip_prob,
  )


def create_simsiam_state(
    rng: jax.Array, config: ml_collections.ConfigDict, image_shape, learning_rate_fn
) -> train_state_lib.TrainState:
  """Initialises the RM network and its optimizer (on the host's default device; see parallel.replicate)."""
  model = models.simsiam_net(config.model, axis_name=parallel.AXIS)
  init_model = models.simsiam_net(config.model, axis_name=None)  # init runs outside pmap
  variables = jax.jit(init_model.init, static_argnames='train')(
      rng, jnp.zeros((2,) + tuple(image_shape), jnp.float32), train=False
  )
  tx = train_state_lib.make_optimizer(config.rm, learning_rate_fn)
  return train_state_lib.create_train_state(model, variables, tx)


def simsiam_step(
    state: train_state_lib.TrainState, batch: Mapping[str, jax.Array], rng: jax.Array, *, view_kwargs: Mapping[str, Any]
):
  """One SimSiam update on this device's part of the global batch (run under `parallel.pmap_step`).

  Args:
    state: the RM train state (broadcast to all devices).
    batch: {'images': uint8 [b, H, W, 3]} — this device's slice of the global batch.
    rng: the step's key (same on all devices); views are drawn per example from its global position.
    view_kwargs: arguments of `augment.simsiam_views`.

  Returns:
    (new_state, metrics) with metrics averaged over devices.
  """
  images = batch['images']
  keys = parallel.per_example_keys(rng, images.shape[0])
  view1, view2 = augment.simsiam_views(keys, images, **view_kwargs)

  def loss_fn(params):
    variables = {'params': params, 'batch_stats': state.batch_stats}
    # Each view is its own forward pass, as in the reference implementation: BatchNorm statistics are per view.
    out1, updates = state.apply_fn(variables, view1, train=True, mutable=['batch_stats'])
    out2, updates = state.apply_fn({'params': params, **updates}, view2, train=True, mutable=['batch_stats'])
    loss = simsiam_loss(out1['p'], out2['p'], out1['z'], out2['z'])
    return loss, (out1['z'], updates['batch_stats'])

  (loss, (z1, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = parallel.global_mean(grads)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  # Collapse monitor from the SimSiam paper: per-dimension std of the l2-normalised projection is ~1/sqrt(dim)
  # for healthy training and drops to 0 when all outputs collapse to one vector.
  z_std = jnp.mean(jnp.std(parallel.all_gather(relation.l2_normalize(z1)), axis=0))
  metrics = {'loss': loss, 'z_std': z_std}
  return new_state, parallel.global_mean(metrics)
