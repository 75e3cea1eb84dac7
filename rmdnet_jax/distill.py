"""RGRL stage — relation-guided representation learning on the noisy labels.

Objective (the reconstruction in ../shared/paper/rmdnet.md, every weight a config key):

    L = L_method(W f(x), noisy y) + K * (w_node * L_node(t, s) + w_edge * L_edge(t, s))

with t = T(x) the frozen RM teacher's features and s = phi(f(x)) the student's projected features, both over the
*global* batch (gathered from all devices), and teacher and student looking at the same augmented view.

`distill_step(state, teacher, batch, rng)` is a pure function; `parallel.pmap_step` maps it over devices.
"""
from typing import Any, Callable, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections

from rmdnet_jax import augment, models, parallel, relation
from rmdnet_jax import train_state as train_state_lib


def relation_kwargs(config: ml_collections.ConfigDict) -> dict:
  """Keyword arguments of `relation.relation_distillation_loss` from `config.relation`."""
  rel = config.relation
  return dict(node_weight=rel.node_weight, edge_weight=rel.edge_weight, edge_kind=rel.edge_kind,
              node_kind=rel.node_kind, center=rel.center,
              k=rel.edge_topk if rel.edge_topk else None, temperature=rel.temperature)


def view_kwargs(config: ml_collections.ConfigDict, mean, std) -> dict:
  return dict(mean=tuple(mean), std=tuple(std), pad=config.rgrl.augment.pad,
              flip_prob=config.rgrl.augment.flip_prob)


def teacher_apply_fn(config: ml_collections.ConfigDict) -> Callable:
  """apply(variables, images_float) -> teacher features [b, D] of `config.relation.teacher_layer`.

  BatchNorm runs in inference mode: the teacher is frozen, its running statistics are part of it.
  """
  net = models.simsiam_net(config.model, axis_name=None)
  key = {'backbone': 'features', 'projector': 'z'}[config.relation.teacher_layer]

  def apply(variables, images):
    return net.apply(variables, images, train=False, method=models.SimSiamNet.encode)[key]

  return apply


def teacher_variables(rm_state_or_variables) -> dict:
  """The frozen teacher: the RM network's params and BatchNorm statistics, without the predictor."""
  params = dict(rm_state_or_variables['params'])
  params.pop('predictor', None)
  stats = dict(rm_state_or_variables['batch_stats'])
  stats.pop('predictor', None)
  return {'params': params, 'batch_stats': stats}


def create_distill_state(rng: jax.Array, config: ml_collections.ConfigDict, image_shape, learning_rate_fn,
                         teacher: Optional[Mapping[str, Any]] = None) -> train_state_lib.TrainState:
  """Initialises the student; with `relation.student_init == 'teacher'` its backbone starts as the teacher's."""
  model = models.student_net(config, axis_name=parallel.AXIS)
  init_model = models.student_net(config, axis_name=None)
  variables = jax.jit(init_model.init, static_argnames='train')(
      rng, jnp.zeros((2,) + tuple(image_shape), jnp.float32), train=False)
  variables = flax.core.unfreeze(variables)
  if config.relation.student_init == 'teacher':
    if teacher is None:
      raise ValueError("relation.student_init='teacher' needs the RM teacher; run the 'rm' stage first "
                       'or set relation.teacher_checkpoint.')
    variables['params']['backbone'] = jax.tree.map(jnp.array, teacher['params']['backbone'])
    variables['batch_stats']['backbone'] = jax.tree.map(jnp.array, teacher['batch_stats']['backbone'])
  elif config.relation.student_init != 'random':
    raise ValueError(f"Unknown relation.student_init {config.relation.student_init!r}; use 'random' or 'teacher'.")
  tx = train_state_lib.make_optimizer(config.rgrl, learning_rate_fn)
  return train_state_lib.create_train_state(model, variables, tx)


def distill_step(state: train_state_lib.TrainState, teacher: Optional[Mapping[str, Any]],
                 batch: Mapping[str, jax.Array], rng: jax.Array, *, teacher_apply: Optional[Callable],
                 method_loss: Callable, K: float, relation_kwargs: Mapping[str, Any],
                 view_kwargs: Mapping[str, Any]):
  """One RGRL update on this device's part of the global batch (run under `parallel.pmap_step`).

  Args:
    state: the student's train state (broadcast).
    teacher: frozen teacher variables (broadcast), or None for the method-only baseline.
    batch: {'images': uint8 [b, H, W, 3], 'labels': int [b] noisy labels}.
    rng: the step's key; augmentation is drawn per example from its global position.
    teacher_apply: `teacher_apply_fn(config)`, or None for the baseline (no teacher forward at all).
    method_loss: loss(logits, labels) of the plugged-in noisy-label method (CE for RMDNet).
    K: weight of the relation terms; the baseline passes teacher=None instead of K=0 so it skips the teacher.
    relation_kwargs: arguments of `relation.relation_distillation_loss`.
    view_kwargs: arguments of `augment.pad_crop_flip`.

  Returns:
    (new_state, metrics) averaged over devices; metrics hold each loss term separately.
  """
  images, labels = batch['images'], batch['labels']
  keys = parallel.per_example_keys(rng, images.shape[0])
  # Teacher and student see the same augmented view, so their relation graphs describe the same samples.
  views = augment.pad_crop_flip(keys, images, **view_kwargs)
  distill = teacher_apply is not None
  if distill:
    # Frozen: no gradient (stop_gradient, redundant with the relation losses' own, kept for clarity) and no
    # BatchNorm updates (inference mode). Gathered so the graph spans the global batch.
    teacher_features = parallel.all_gather(jax.lax.stop_gradient(teacher_apply(teacher, views)))

  def loss_fn(params):
    out, updates = state.apply_fn({'params': params, 'batch_stats': state.batch_stats}, views, train=True,
                                  mutable=['batch_stats'])
    method = method_loss(out['logits'], labels)
    terms = {'method': method}
    loss = method
    if distill:
      student_features = parallel.all_gather(out['embedding'])
      regulariser, parts = relation.relation_distillation_loss(teacher_features, student_features,
                                                               **relation_kwargs)
      loss = loss + K * regulariser
      terms.update(node=parts['node'], edge=parts['edge'], relation=regulariser)
    return loss, (terms, out['logits'], updates['batch_stats'])

  (loss, (terms, logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = parallel.global_mean(grads)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  metrics = {'loss': loss, **terms,
             'noisy_label_accuracy': jnp.mean(jnp.argmax(logits, -1) == labels)}
  return new_state, parallel.global_mean(metrics)


def classify_fn(config: ml_collections.ConfigDict) -> Callable:
  """apply(variables, images_float) -> dict(logits, features) of the student in inference mode."""
  net = models.student_net(config, axis_name=None)

  def apply(variables, images):
    out = net.apply(variables, images, train=False)
    return {'logits': out['logits'], 'features': out['features']}

  return apply
