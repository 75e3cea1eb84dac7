"""RM stage — relation modeling by SimSiam self-supervised pretraining (Chen & He, CVPR 2021).

Labels are never used here. The trained encoder (backbone + projector) is the frozen teacher of the RGRL stage,
and the relations it models between samples are what RGRL distils.

  simsiam_step(state, batch, rng, ctx)   the pure update, pmapped by `parallel.pmap_step`
  stage(config, dataset)                 the RM stage as a `loop.Stage` (its eval: the kNN monitor)
  load_teacher(config, dataset, workdir) the frozen teacher from an RM (or a student's RGRL) checkpoint
  encoder_features_fn, knn_monitor       the encoder's features and their kNN accuracy (a monitor)
"""

import functools
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from rmdnet_jax.core import augment, models, parallel, relation
from rmdnet_jax.datasets import data
from rmdnet_jax.training import checkpoints, loop, metrics
from rmdnet_jax.core import train_state as train_state_lib

# The RM stage's random stream: its init, augmentation and data order derive from fold_in(key(seed), STREAM).
STREAM = 1


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


def view_kwargs(augment_config: ml_collections.ConfigDict, mean, std) -> dict:
  """Keyword arguments of `augment.simsiam_views` from `config.rm.augment`."""
  aug = augment_config
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
    state: train_state_lib.TrainState,
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    ctx: Mapping[str, Any],
    *,
    view_kwargs: Mapping[str, Any],
):
  """One SimSiam update on this device's part of the global batch (run under `parallel.pmap_step`).

  Args:
    state: the RM train state (broadcast to all devices).
    batch: {'images': uint8 [b, H, W, 3]} — this device's slice of the global batch.
    rng: the step's key (same on all devices); views are drawn per example from its global position.
    ctx: broadcast extras; SimSiam needs none.
    view_kwargs: arguments of `augment.simsiam_views`.

  Returns:
    (new_state, metrics) with metrics averaged over devices.
  """
  del ctx
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


def abstract_state(config: ml_collections.ConfigDict, image_shape) -> Any:
  """The RM train state's structure, shapes and dtypes, replicated: what a restore reads into."""
  state = jax.eval_shape(lambda: create_simsiam_state(jax.random.key(0), config, image_shape, lambda step: 0.0))
  sharding = parallel.replicated_sharding()
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def stage(config: ml_collections.ConfigDict, dataset: data.Dataset) -> loop.Stage:
  """SimSiam on all training images (labels unused), its kNN accuracy monitored with the CLEAN labels."""
  schedule = loop.Schedule.for_stage(config.rm, len(dataset.train_images), config.log_every_steps)
  lr_fn = train_state_lib.learning_rate_schedule(config.rm, schedule.steps_per_epoch)
  init_rng, step_rng = loop.stage_keys(config.seed, STREAM)
  features_fn = encoder_features_fn(config.model, dataset, config.relation.teacher_layer)

  def before_training():
    logging.info(
        'rm: SimSiam on %d images, %d steps (%d epochs x %d), global batch %d on %d devices.',
        len(dataset.train_images), schedule.num_steps, config.rm.epochs, schedule.steps_per_epoch,
        config.rm.batch_size, parallel.global_device_count(),
    )  # fmt: skip
    logging.info('rm: the kNN monitor uses the CLEAN training labels (a monitor of the encoder, not a result).')

  return loop.Stage(
      name='rm',
      step=functools.partial(simsiam_step, view_kwargs=view_kwargs(config.rm.augment, dataset.mean, dataset.std)),
      init_state=parallel.replicate(create_simsiam_state(init_rng, config, dataset.image_shape, lr_fn)),
      arrays={'images': dataset.train_images},
      schedule=schedule,
      learning_rate_fn=lr_fn,
      global_batch_size=config.rm.batch_size,
      seed=config.seed,
      stream=STREAM,
      rng=step_rng,
      meta=checkpoints.stage_meta(config, 'rm', dataset.image_shape),
      evaluate=lambda s: {'knn_accuracy': knn_monitor(config, dataset, s.variables, features_fn)},
      before_training=before_training,
  )


def encoder_apply_fn(model_config: ml_collections.ConfigDict, layer: str) -> Callable:
  """apply(variables, float images) -> the encoder's features [b, D] of `layer` ('backbone': pooled features,
  'projector': z). BatchNorm in inference mode: as a teacher the encoder is frozen, its statistics part of it."""
  net = models.simsiam_net(model_config, axis_name=None)
  if layer == 'backbone':

    def apply(variables, images):
      return net.apply(variables, images, train=False, method=models.SimSiamNet.backbone_features)

    return apply

  def apply(variables, images):
    return net.apply(variables, images, train=False, method=models.SimSiamNet.encode)['z']

  return apply


def encoder_features_fn(model_config: ml_collections.ConfigDict, dataset: data.Dataset, layer: str) -> Callable:
  """apply(variables, uint8 images) -> the encoder's features of `layer`, normalised with the dataset's
  statistics; built once per use so it compiles once."""
  return augment.on_uint8_images(encoder_apply_fn(model_config, layer), dataset.mean, dataset.std)


def knn_monitor(config: ml_collections.ConfigDict, dataset: data.Dataset, variables, features_fn) -> float:
  """kNN accuracy of the encoder's features on the test set. Uses the CLEAN training labels: a monitor of
  representation quality only, never a reported noisy-label result."""
  # DEBUG: each evaluation is one line on the console, its result (progress.Progress.evaluated).
  logging.debug('kNN monitor: encoding %d train + %d test images.', len(dataset.train_images), len(dataset.test_images))
  train_features = parallel.map_batches(features_fn, variables, dataset.train_images, config.eval_batch_size)
  test_features = parallel.map_batches(features_fn, variables, dataset.test_images, config.eval_batch_size)
  return knn_accuracy(config.rm, dataset, train_features, test_features)


def knn_accuracy(rm_config, dataset: data.Dataset, train_features, test_features) -> float:
  """The kNN monitor's accuracy (rm.knn_k neighbours, rm.knn_temperature) of precomputed features."""
  return metrics.knn_accuracy(
      train_features, dataset.train_labels, test_features, dataset.test_labels,
      num_classes=dataset.num_classes, k=rm_config.knn_k, temperature=rm_config.knn_temperature,
  )  # fmt: skip


def teacher_variables(rm_variables: Mapping[str, Any]) -> dict:
  """The frozen teacher: the network's params and BatchNorm statistics, without the predictor (if it has one)."""
  return {part: {k: v for k, v in rm_variables[part].items() if k != 'predictor'} for part in ('params', 'batch_stats')}


def load_teacher(config: ml_collections.ConfigDict, dataset: data.Dataset, workdir: str) -> dict:
  """The frozen teacher from a checkpoint (relation.teacher_checkpoint, or WORKDIR/rm; the step
  relation.teacher_step, or the latest), refusing one of another architecture or dataset, or an unfinished RM
  stage of this run.

  An RM checkpoint gives the SimSiam encoder (backbone and projector). An RGRL checkpoint (a student's, e.g. CE on
  clean labels: a teacher of controlled quality) gives its backbone only; then config.model must describe that
  backbone and relation.teacher_layer must be 'backbone'."""
  directory = config.relation.teacher_checkpoint or os.path.join(workdir, 'rm')
  finished = None
  if not config.relation.teacher_checkpoint:
    finished = loop.Schedule.for_stage(config.rm, len(dataset.train_images)).num_steps
  variables, step = checkpoints.restore_teacher(
      directory,
      abstract_state(config, dataset.image_shape),
      checkpoints.stage_meta(config, 'rm', dataset.image_shape),
      step=config.relation.teacher_step,
      finished_step=finished,
  )
  if 'projector' not in variables['params'] and config.relation.teacher_layer != 'backbone':
    raise checkpoints.CheckpointError(
        f'The teacher checkpoint in {directory} is an RGRL student, which has no projector; set '
        '--config.relation.teacher_layer=backbone.'
    )
  logging.info('Teacher: checkpoint %s at step %d.', directory, step)
  return teacher_variables(variables)


def teacher_knn(config: ml_collections.ConfigDict, dataset: data.Dataset, teacher, writer) -> dict:
  """The teacher_knn stage: the restored teacher's kNN accuracy (proves the RM -> RGRL hand-off)."""
  features_fn = encoder_features_fn(config.model, dataset, config.relation.teacher_layer)
  accuracy = knn_monitor(config, dataset, teacher, features_fn)
  logging.info('Teacher kNN accuracy (clean labels, monitor): %.4f', accuracy)
  writer.write_scalars(0, {'teacher/knn_accuracy': accuracy})
  return {'teacher_knn_accuracy': accuracy}
