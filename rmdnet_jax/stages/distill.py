"""RGRL stage — relation-guided representation learning on the noisy labels.

Objective (the reconstruction in ../shared/paper/rmdnet.md, every weight a config key):

    L = L_method(W f(x), noisy y) + K * (w_node * L_node(t, s) + w_edge * L_edge(t, s))

with t = T(x) the frozen RM teacher's features and s = phi(f(x)) the student's projected features, both over the
*global* batch (gathered from all devices), and teacher and student looking at the same augmented view.
L_method is the plugged-in method's loss (`rmdnet_jax/methods`); a two-network method (Co-teaching, JoCoR,
DivideMix) sums one such objective per network, each network with its own relation terms against the teacher.

  distill_step(state, batch, rng, ctx)     the pure update (teacher in ctx), pmapped by `parallel.pmap_step`
  relation_terms                           the relation regulariser of every network (`relation.py`: the maths)
  stage(config, dataset, noisy, teacher)   the RGRL stage as a `loop.Stage` (its eval: test accuracy)
  final_report                             best/last accuracy and the memorisation of the mislabelled examples
"""

import functools
import os
from typing import Any, Callable, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from rmdnet_jax import methods
from rmdnet_jax.core import augment, models, parallel, relation
from rmdnet_jax.datasets import data, noise
from rmdnet_jax.stages import simsiam
from rmdnet_jax.training import checkpoints, loop, metrics
from rmdnet_jax.methods import base as methods_base
from rmdnet_jax.core import train_state as train_state_lib


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


def view_kwargs(augment_config: ml_collections.ConfigDict, mean, std) -> dict:
  """Keyword arguments of `augment.pad_crop_flip` from `config.rgrl.augment`."""
  return dict(mean=tuple(mean), std=tuple(std), pad=augment_config.pad, flip_prob=augment_config.flip_prob)


def student_net(config: ml_collections.ConfigDict, axis_name: Optional[str] = None) -> models.StudentNet:
  """The RGRL network of `config.student`, its classifier over data.num_classes and its projection head
  (relation.projection_head) into the teacher's feature space (model, relation.teacher_layer)."""
  return models.StudentNet(
      backbone_name=config.student.name,
      width=config.student.width,
      num_classes=config.data.num_classes,
      embedding_dim=models.teacher_feature_dim(config.model, config.relation.teacher_layer),
      projection_head=config.relation.projection_head,
      dtype=models.compute_dtype(config.model.dtype),
      axis_name=axis_name,
      initializer=config.student.init,
  )


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
    method: Optional[methods_base.Method] = None,
) -> train_state_lib.StudentTrainState:
  """Initialises the student network(s) of `method` (default: config.method's; each network from its own key)
  and the method's state.

  With `relation.student_init == 'teacher'` every network's backbone starts as the teacher's. `num_examples` sizes
  per-example method state (ELR, DivideMix); methods without it ignore it.
  """
  method = method or methods.make_method(config.method)
  model = student_net(config, axis_name=parallel.AXIS)
  init_model = student_net(config, axis_name=None)
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
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    ctx: Mapping[str, Any],
    *,
    teacher_apply: Optional[Callable],
    method: methods_base.Method,
    K: float,
    relation_kwargs: Mapping[str, Any],
    view_kwargs: Mapping[str, Any],
    steps_per_epoch: int = 1,
    term_gradient_norms: bool = False,
):
  """One RGRL update on this device's part of the global batch (run under `parallel.pmap_step`).

  Args:
    state: the student's train state (broadcast): one network, or two stacked for two-network methods.
    batch: {'images': uint8 [b, H, W, 3], 'labels': int [b] noisy labels, 'index': int [b] dataset rows}
      ('index' keys per-example method state; without it the global batch position is used).
    rng: the step's key; augmentation is drawn per example from its global position.
    ctx: broadcast extras: ctx['teacher'], the frozen teacher's variables (unused by the baseline).
    teacher_apply: `simsiam.encoder_apply_fn(...)` of the teacher's layer, or None for the method-only baseline
      (no teacher forward at all).
    method: the plugged-in noisy-label method, its settings bound (`methods.make_method(config.method)`).
    K: weight of the relation terms; the baseline passes teacher_apply=None instead of K=0 so it skips the teacher.
    relation_kwargs: arguments of `relation.relation_distillation_loss`.
    view_kwargs: arguments of `augment.pad_crop_flip`.
    steps_per_epoch: converts the step count into the epoch progress that methods' schedules read.
    term_gradient_norms: also log each term's gradient norm (`logging.term_gradient_norms`, a diagnostic): the
      method's, K w_node L_node's and K w_edge L_edge's, and the cosine between the method's gradient and the
      relation terms'. One forward, three backward passes; the update is their sum, the same as without it.

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
    teacher_features = parallel.all_gather(jax.lax.stop_gradient(teacher_apply(ctx['teacher'], views)))

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
      regulariser, relation_metrics = relation_terms(teacher_features, outs, relation_kwargs)
      loss = loss + K * regulariser
      terms.update(relation_metrics)
    terms.update({f'method_{k}': v for k, v in result.metrics.items()})
    new_method_state = state.method_state if result.method_state is None else result.method_state
    return loss, (terms, outs[0]['logits'], stack_networks([s['batch_stats'] for s in stats]), new_method_state)

  if term_gradient_norms and distill:
    loss, grads, (terms, logits, batch_stats, method_state) = _per_term_gradients(
        loss_fn, state.params, K * num_networks, relation_kwargs
    )
  else:
    (loss, (terms, logits, batch_stats, method_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = parallel.global_mean(grads)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats, method_state=method_state)
  metrics = {'loss': loss, **terms, 'noisy_label_accuracy': jnp.mean(jnp.argmax(logits, -1) == labels)}
  return new_state, parallel.global_mean(metrics)


def _per_term_gradients(loss_fn: Callable, params, scale: float, relation_kwargs: Mapping[str, Any]) -> tuple:
  """(loss, the global-mean gradient, aux with the per-term gradient diagnostics in its terms) of `loss_fn`,
  whose objective is method + scale * (w_node * node + w_edge * edge) (`scale` = K times the number of networks,
  since the logged node and edge terms are means over the networks)."""

  def parts_fn(p):
    loss, aux = loss_fn(p)
    terms = aux[0]
    node = scale * relation_kwargs['node_weight'] * terms['node']
    edge = scale * relation_kwargs['edge_weight'] * terms['edge']
    return jnp.stack([loss - node - edge, node, edge]), (loss, aux)

  _, vjp_fn, (loss, aux) = jax.vjp(parts_fn, params, has_aux=True)
  (per_term,) = jax.vmap(vjp_fn)(jnp.eye(3))  # the gradient of each part: leading axis 3
  per_term = parallel.global_mean(per_term)
  grads = jax.tree.map(lambda g: jnp.sum(g, axis=0), per_term)
  leaves = jax.tree.leaves(per_term)
  flat = [g.reshape(3, -1) for g in leaves]
  norms = jnp.sqrt(sum(jnp.sum(jnp.square(g), axis=1) for g in flat))
  relation = [g[1] + g[2] for g in flat]
  dot = sum(jnp.sum(g[0] * r) for g, r in zip(flat, relation))
  relation_norm = jnp.sqrt(sum(jnp.sum(jnp.square(r)) for r in relation))
  terms = dict(aux[0])
  terms.update(
      grad_norm_method=norms[0],
      grad_norm_node=norms[1],
      grad_norm_edge=norms[2],
      grad_cos_method_relation=dot / jnp.maximum(norms[0] * relation_norm, 1e-12),
  )
  return loss, grads, (terms,) + tuple(aux[1:])


def relation_terms(teacher_features: jax.Array, outs, relation_kwargs: Mapping[str, Any]) -> tuple:
  """(sum over networks of the relation regulariser, its logged terms): every network gets its own relation terms
  against the same teacher; the logged node/edge/relation are means over the networks."""
  num_networks = len(outs)
  embeddings = [parallel.all_gather(o['embedding']) for o in outs]
  parts = [relation.relation_distillation_loss(teacher_features, e, **relation_kwargs) for e in embeddings]
  regulariser = sum(p[0] for p in parts)
  terms = {
      'node': sum(p[1]['node'] for p in parts) / num_networks,
      'edge': sum(p[1]['edge'] for p in parts) / num_networks,
      'relation': regulariser / num_networks,
  }
  # What the terms do to the graphs (first network): tells alignment from the node term's collapse.
  terms.update(
      relation.relation_diagnostics(
          teacher_features,
          embeddings[0],
          center=relation_kwargs['center'],
          batch_center=relation_kwargs['batch_center'],
      )
  )
  return regulariser, terms


def classify_fn(config: ml_collections.ConfigDict) -> Callable:
  """apply(variables, images_float) -> dict(logits, features) of the student in inference mode.

  A two-network student predicts as its method says (`Method.eval_networks`): the first network, or the mean of
  both networks' logits (DivideMix); features are the first network's.
  """
  net = student_net(config, axis_name=None)
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
  net = student_net(config, axis_name=None)
  n = methods.get_method(config.method.name).num_networks

  def apply(variables, images):
    return jnp.stack([net.apply(network(variables, i, n), images, train=False)['logits'] for i in range(n)], 1)

  return apply


# The RGRL stage's random stream (init, augmentation, data order): independent of the RM stage's.
STREAM = 2
# Teacher kNN accuracy (clean labels, monitor) below which the CPU study (docs/evidence.md) saw RMDNet lose to
# plain CE at every K it tried: the RGRL stage warns below it.
WEAK_TEACHER_KNN = 0.25


def needs_teacher(config: ml_collections.ConfigDict) -> bool:
  """Whether the RGRL stage uses the RM teacher: to distil from it, or to start from its backbone."""
  return bool(config.method.distill) or config.relation.student_init == 'teacher'


def stage(
    config: ml_collections.ConfigDict, dataset: data.Dataset, noisy: noise.NoisyLabels, teacher, writer
) -> loop.Stage:
  """The student trained on the noisy labels with (method.distill) or without the relation terms.

  `teacher`: the frozen teacher (`simsiam.load_teacher`); may be None when `needs_teacher` is False, and is unused
  then. Before its first step a distilling stage measures the teacher's kNN accuracy (into `report`, and a warning
  when it is weak).
  """
  schedule = loop.Schedule.for_stage(config.rgrl, len(dataset.train_images), config.log_every_steps)
  lr_fn = train_state_lib.learning_rate_schedule(config.rgrl, schedule.steps_per_epoch)
  init_rng, step_rng = loop.stage_keys(config.seed, STREAM)
  method = methods.make_method(config.method)
  distilling = bool(config.method.distill)
  state = create_distill_state(
      init_rng, config, dataset.image_shape, lr_fn, teacher, num_examples=len(dataset.train_images), method=method
  )
  step = functools.partial(
      distill_step,
      teacher_apply=simsiam.encoder_apply_fn(config.model, config.relation.teacher_layer) if distilling else None,
      method=method,
      K=config.relation.K,
      relation_kwargs=relation_kwargs(config),
      view_kwargs=view_kwargs(config.rgrl.augment, dataset.mean, dataset.std),
      steps_per_epoch=schedule.steps_per_epoch,
      term_gradient_norms=config.logging.term_gradient_norms,
  )
  report = {}
  apply_logits = logits_fn(config, dataset)

  def before_training():
    if distilling:
      report.update(simsiam.teacher_knn(config, dataset, teacher, writer))
      warn_if_weak_teacher(report['teacher_knn_accuracy'])
    relation_note = f' + relation distillation (K={config.relation.K})' if distilling else ''
    logging.info(
        'rgrl: %s on %s noisy labels (realised rate %.4f)%s, %d steps, global batch %d.',
        config.method.name, config.noise.kind, noisy.realized_rate, relation_note, schedule.num_steps,
        config.rgrl.batch_size,
    )  # fmt: skip

  return loop.Stage(
      name='rgrl',
      step=step,
      init_state=parallel.replicate(state),
      arrays={'images': dataset.train_images, 'labels': noisy.labels},
      schedule=schedule,
      learning_rate_fn=lr_fn,
      global_batch_size=config.rgrl.batch_size,
      seed=config.seed,
      stream=STREAM,
      rng=step_rng,
      meta=checkpoints.stage_meta(config, 'rgrl', dataset.image_shape),
      ctx={'teacher': teacher if distilling else None},
      evaluate=functools.partial(evaluate, config, dataset, noisy, apply_logits),
      epoch_start=method_epoch_hook(config, dataset, noisy, method),
      before_training=before_training,
      summarize=functools.partial(final_report, config, dataset, noisy, apply_logits, report),
      report=report,
  )


def warn_if_weak_teacher(knn_accuracy: float) -> None:
  """One warning when the teacher is as weak as the ones with which the CPU study saw RMDNet lose to CE."""
  if knn_accuracy < WEAK_TEACHER_KNN:
    logging.warning(
        "The teacher's kNN accuracy %.1f%% is below %.0f%%, where the CPU study saw RMDNet lose to plain CE at "
        'every K (docs/evidence.md); train the RM stage longer, or lower --config.relation.K.',
        100 * knn_accuracy,
        100 * WEAK_TEACHER_KNN,
    )


def outputs_fn(config: ml_collections.ConfigDict, dataset: data.Dataset) -> Callable:
  """apply(variables, uint8 images) -> {'logits', 'features'} of the student in inference mode."""
  return augment.on_uint8_images(classify_fn(config), dataset.mean, dataset.std)


def logits_fn(config: ml_collections.ConfigDict, dataset: data.Dataset) -> Callable:
  """apply(variables, uint8 images) -> the student's logits; built once per stage so it compiles once."""
  outputs = outputs_fn(config, dataset)
  return lambda variables, images: outputs(variables, images)['logits']


def predict(config: ml_collections.ConfigDict, variables, images: np.ndarray, apply: Callable) -> np.ndarray:
  """The student's predicted class of every image [N] (`apply` = `logits_fn(...)`)."""
  return np.argmax(parallel.map_batches(apply, variables, images, config.eval_batch_size), axis=-1)


def evaluate(config, dataset: data.Dataset, noisy: noise.NoisyLabels, apply: Callable, state) -> dict:
  """Test accuracy; with rgrl.track_memorization also the training set's agreement with the noisy and the clean
  labels."""
  preds = predict(config, state.variables, dataset.test_images, apply)
  scalars = {'test_accuracy': float(np.mean(preds == dataset.test_labels))}
  if config.rgrl.track_memorization:
    # The memorisation curve: agreement with the noisy labels rising while agreement with the (hidden) clean
    # labels falls is the network fitting the noise. Clean labels are read here for this curve only.
    train_preds = predict(config, state.variables, dataset.train_images, apply)
    scalars['train_accuracy_noisy_labels'] = float(np.mean(train_preds == noisy.labels))
    scalars['train_accuracy_clean_labels'] = float(np.mean(train_preds == dataset.train_labels))
  return scalars


def method_epoch_hook(config, dataset: data.Dataset, noisy: noise.NoisyLabels, method: methods_base.Method):
  """The stage's epoch_start for a method with an epoch hook (DivideMix's co-divide), else None."""
  if method.epoch_hook is None:
    return None
  apply = augment.on_uint8_images(network_logits_fn(config), dataset.mean, dataset.std)

  def epoch_start(state, epoch):
    def train_logits():
      logging.info(
          'rgrl: %s epoch %d: predicting the %d training images.', method.name, epoch, len(dataset.train_images)
      )
      out = parallel.map_batches(apply, state.variables, dataset.train_images, config.eval_batch_size)
      return np.moveaxis(out, 1, 0)  # [networks, N, C]

    new = method.epoch_hook(
        jax.device_get(state.method_state), epoch=epoch, logits_fn=train_logits, labels=noisy.labels
    )
    if new is None:
      return state
    return state.replace(method_state=parallel.replicate(jax.tree.map(np.asarray, new)))

  return epoch_start


def final_report(
    config, dataset: data.Dataset, noisy: noise.NoisyLabels, apply: Callable, report: dict, state, workdir
) -> dict:
  """Best and last test accuracy, and how the student treats the clean and the mislabelled training examples
  (clean labels are used for this report only); `apply` = `logits_fn(...)`. With the teacher's kNN accuracy as
  logged when training started if this process did not measure it (`report`, the stage's report so far): a
  finished stage run again skips `before_training`, and its results.json must not lose the value."""
  last = evaluate(config, dataset, noisy, apply, state)['test_accuracy']
  rows = metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  history = [row['rgrl/test_accuracy'] for row in rows if 'rgrl/test_accuracy' in row]
  logged_knn = [row['teacher/knn_accuracy'] for row in rows if 'teacher/knn_accuracy' in row]
  preds = predict(config, state.variables, dataset.train_images, apply)
  is_clean = noisy.labels == dataset.train_labels

  def mean_or_nan(x):
    return float(np.mean(x)) if len(x) else float('nan')

  return {
      'test_accuracy_last': last,
      'test_accuracy_best': max(history + [last]),
      'train_accuracy_clean_subset': mean_or_nan(preds[is_clean] == dataset.train_labels[is_clean]),
      'train_accuracy_noisy_subset': mean_or_nan(preds[~is_clean] == dataset.train_labels[~is_clean]),
      'train_memorized_noisy_subset': mean_or_nan(preds[~is_clean] == noisy.labels[~is_clean]),
      'noise_realized_rate': noisy.realized_rate,
      'rgrl_steps': int(state.step),
      **(
          {'teacher_knn_accuracy': logged_knn[-1]}
          if config.method.distill and 'teacher_knn_accuracy' not in report and logged_knn
          else {}
      ),
  }
