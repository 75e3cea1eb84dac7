"""RGRL stage — relation-guided representation learning on the noisy labels.

Objective (the reconstruction in ../shared/paper/rmdnet.md, every weight a config key):

    L = L_method(W f(x), noisy y) + K * (w_node * L_node(t, s) + w_edge * L_edge(t, s))

with t = T(x) the frozen RM teacher's features and s = phi(f(x)) the student's projected features, both over the
*global* batch (gathered from all devices), and teacher and student looking at the same augmented view.
L_method is the plugged-in method's loss (`rmdnet_jax/methods`); a two-network method (Co-teaching, JoCoR,
DivideMix) sums one such objective per network, each network with its own relation terms against the teacher.

`distill_step(state, teacher, batch, rng)` is a pure function; `parallel.pmap_step` maps it over devices.
"""

from typing import Any, Callable, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections

from rmdnet_jax import augment, methods, models, parallel, relation
from rmdnet_jax.methods import base as methods_base
from rmdnet_jax import train_state as train_state_lib


def relation_kwargs(config: ml_collections.ConfigDict) -> dict:
  """Keyword arguments of `relation.relation_distillation_loss` from `config.relation`."""
  rel = config.relation
  return dict(
      node_weight=rel.node_weight,
      edge_weight=rel.edge_weight,
      edge_kind=rel.edge_kind,
      node_kind=rel.node_kind,
      center=rel.center,
      batch_center=rel.batch_center,
      k=rel.edge_topk if rel.edge_topk else None,
      temperature=rel.temperature,
      normalize=rel.normalize,
  )


def view_kwargs(config: ml_collections.ConfigDict, mean, std) -> dict:
  return dict(mean=tuple(mean), std=tuple(std), pad=config.rgrl.augment.pad, flip_prob=config.rgrl.augment.flip_prob)


def teacher_apply_fn(config: ml_collections.ConfigDict, layer: Optional[str] = None) -> Callable:
  """apply(variables, images_float) -> teacher features [b, D] of `layer` (default `config.relation.teacher_layer`).

  BatchNorm runs in inference mode: the teacher is frozen, its running statistics are part of it.
  """
  net = models.simsiam_net(config.model, axis_name=None)
  key = {'backbone': 'features', 'projector': 'z'}[layer or config.relation.teacher_layer]

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


def network(tree: Any, i: int, num_networks: int) -> Any:
  """Network i's slice of a (possibly stacked) params / batch_stats tree."""
  return tree if num_networks == 1 else jax.tree.map(lambda x: x[i], tree)


def stack_networks(trees: list) -> Any:
  return trees[0] if len(trees) == 1 else jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def create_distill_state(
    rng: jax.Array,
    config: ml_collections.ConfigDict,
    image_shape,
    learning_rate_fn,
    teacher: Optional[Mapping[str, Any]] = None,
    num_examples: int = 0,
) -> train_state_lib.StudentTrainState:
  """Initialises the student network(s) of `config.method` (each from its own key) and the method's state.

  With `relation.student_init == 'teacher'` every network's backbone starts as the teacher's. `num_examples` sizes
  per-example method state (ELR, DivideMix); methods without it ignore it.
  """
  method = methods.make_method(config.method)
  model = models.student_net(config, axis_name=parallel.AXIS)
  init_model = models.student_net(config, axis_name=None)
  init = jax.jit(init_model.init, static_argnames='train')
  dummy = jnp.zeros((2,) + tuple(image_shape), jnp.float32)
  per_network = []
  for net_rng in (jax.random.split(rng, method.num_networks) if method.num_networks > 1 else [rng]):
    variables = flax.core.unfreeze(init(net_rng, dummy, train=False))
    if config.relation.student_init == 'teacher':
      if teacher is None:
        raise ValueError(
            "relation.student_init='teacher' needs the RM teacher; run the 'rm' stage first "
            'or set relation.teacher_checkpoint.'
        )
      variables['params']['backbone'] = jax.tree.map(jnp.array, teacher['params']['backbone'])
      variables['batch_stats']['backbone'] = jax.tree.map(jnp.array, teacher['batch_stats']['backbone'])
    elif config.relation.student_init != 'random':
      raise ValueError(f"Unknown relation.student_init {config.relation.student_init!r}; use 'random' or " "'teacher'.")
    per_network.append(variables)
  tx = train_state_lib.make_optimizer(config.rgrl, learning_rate_fn)
  return train_state_lib.StudentTrainState.create(
      apply_fn=model.apply,
      params=stack_networks([v['params'] for v in per_network]),
      batch_stats=stack_networks([v['batch_stats'] for v in per_network]),
      tx=tx,
      method_state=method.init_state(num_examples, config.data.num_classes),
  )


def distill_step(
    state: train_state_lib.StudentTrainState,
    teacher: Optional[Mapping[str, Any]],
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    *,
    teacher_apply: Optional[Callable],
    method: methods_base.Method,
    K: float,
    relation_kwargs: Mapping[str, Any],
    view_kwargs: Mapping[str, Any],
    steps_per_epoch: int = 1,
):
  """One RGRL update on this device's part of the global batch (run under `parallel.pmap_step`).

  Args:
    state: the student's train state (broadcast): one network, or two stacked for two-network methods.
    teacher: frozen teacher variables (broadcast), or None for the method-only baseline.
    batch: {'images': uint8 [b, H, W, 3], 'labels': int [b] noisy labels, 'index': int [b] dataset rows}
      ('index' keys per-example method state; without it the global batch position is used).
    rng: the step's key; augmentation is drawn per example from its global position.
    teacher_apply: `teacher_apply_fn(config)`, or None for the baseline (no teacher forward at all).
    method: the plugged-in noisy-label method, hyperparameters bound (`methods.make_method(config.method)`).
    K: weight of the relation terms; the baseline passes teacher=None instead of K=0 so it skips the teacher.
    relation_kwargs: arguments of `relation.relation_distillation_loss`.
    view_kwargs: arguments of `augment.pad_crop_flip`.
    steps_per_epoch: converts the step count into the epoch progress that methods' schedules read.

  Returns:
    (new_state, metrics) averaged over devices; metrics hold each loss term separately (for two networks, the
    mean over the networks; `loss` is the total objective).
  """
  images, labels = batch['images'], batch['labels']
  b = images.shape[0]
  index = batch['index'] if 'index' in batch else parallel.global_example_index(b)
  num_networks = method.num_networks
  keys = parallel.per_example_keys(rng, b)
  # Teacher and student see the same augmented view, so their relation graphs describe the same samples.
  views = augment.pad_crop_flip(keys, images, **view_kwargs)
  distill = teacher_apply is not None
  if distill:
    # Frozen: no gradient (stop_gradient, redundant with the relation losses' own, kept for clarity) and no
    # BatchNorm updates (inference mode). Gathered so the graph spans the global batch.
    teacher_features = parallel.all_gather(jax.lax.stop_gradient(teacher_apply(teacher, views)))

  def second_view():
    return augment.pad_crop_flip(parallel.per_example_keys(jax.random.fold_in(rng, 2), b), images, **view_kwargs)

  def loss_fn(params):
    def apply(i, x):
      return state.apply_fn(
          {'params': network(params, i, num_networks), 'batch_stats': network(state.batch_stats, i, num_networks)},
          x,
          train=True,
          mutable=['batch_stats'],
      )

    outs, stats = zip(*(apply(i, views) for i in range(num_networks)))
    result = method.loss(
        methods_base.LossInputs(
            logits=tuple(o['logits'] for o in outs),
            labels=labels,
            index=index,
            method_state=state.method_state,
            progress=state.step / steps_per_epoch,
            rng=jax.random.fold_in(rng, 1),
            view=views,
            second_view=second_view,
            forward=lambda i, x: apply(i, x)[0]['logits'],
        )
    )
    loss = sum(result.losses)
    terms = {'method': loss / num_networks}
    if distill:
      # Every network gets its own relation terms against the same teacher.
      embeddings = [parallel.all_gather(o['embedding']) for o in outs]
      parts = [relation.relation_distillation_loss(teacher_features, e, **relation_kwargs) for e in embeddings]
      regulariser = sum(p[0] for p in parts)
      loss = loss + K * regulariser
      terms.update(
          node=sum(p[1]['node'] for p in parts) / num_networks,
          edge=sum(p[1]['edge'] for p in parts) / num_networks,
          relation=regulariser / num_networks,
      )
      # What the terms do to the graphs (first network): tells alignment from the node term's collapse.
      terms.update(
          relation.relation_diagnostics(
              teacher_features,
              embeddings[0],
              center=relation_kwargs['center'],
              batch_center=relation_kwargs['batch_center'],
          )
      )
    terms.update({f'method_{k}': v for k, v in result.metrics.items()})
    new_method_state = state.method_state if result.method_state is None else result.method_state
    return loss, (terms, outs[0]['logits'], stack_networks([s['batch_stats'] for s in stats]), new_method_state)

  (loss, (terms, logits, batch_stats, method_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = parallel.global_mean(grads)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats, method_state=method_state)
  metrics = {'loss': loss, **terms, 'noisy_label_accuracy': jnp.mean(jnp.argmax(logits, -1) == labels)}
  return new_state, parallel.global_mean(metrics)


def classify_fn(config: ml_collections.ConfigDict) -> Callable:
  """apply(variables, images_float) -> dict(logits, features) of the student in inference mode.

  A two-network student predicts as its method says (`Method.eval_networks`): the first network, or the mean of
  both networks' logits (DivideMix); features are the first network's.
  """
  net = models.student_net(config, axis_name=None)
  method = methods.get_method(config.method.name)
  n = method.num_networks

  def apply(variables, images):
    outs = [net.apply(network(variables, i, n), images, train=False) for i in range(n)]
    logits = outs[0]['logits'] if method.eval_networks == 'first' else sum(o['logits'] for o in outs) / n
    return {'logits': logits, 'features': outs[0]['features']}

  return apply


def network_logits_fn(config: ml_collections.ConfigDict) -> Callable:
  """apply(variables, images_float) -> [b, num_networks, C] logits of every network, inference mode (the input of
  epoch hooks such as DivideMix's division)."""
  net = models.student_net(config, axis_name=None)
  n = methods.get_method(config.method.name).num_networks

  def apply(variables, images):
    return jnp.stack([net.apply(network(variables, i, n), images, train=False)['logits'] for i in range(n)], 1)

  return apply
