"""Linear probe of a frozen encoder: the standard evaluation of self-supervised features (SimSiam's CIFAR protocol).

A linear classifier is trained on the frozen features of the training images with the CLEAN labels and scored on
the test set. As the kNN monitor, it measures the teacher's representation, never a result on noisy labels.

The features are computed once (from the un-augmented images), standardised with the training set's mean and
standard deviation (a BatchNorm without affine parameters, as in MAE's linear probe), and the classifier is trained
with SGD + momentum and a cosine schedule, the whole run one jitted program. Precomputed features without
augmentation make the probe cheap (seconds); they give a probe accuracy typically within about a point of the
augmented 100-epoch protocol.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from rmdnet_jax.core import parallel
from rmdnet_jax.datasets import data
from rmdnet_jax.stages import simsiam


def standardise(train_features, *others):
  """(train - mean) / std with the training features' statistics, applied to `train_features` and `others`."""
  train = np.asarray(train_features, np.float32)
  mean = train.mean(axis=0)
  std = train.std(axis=0) + 1e-6
  return tuple((np.asarray(x, np.float32) - mean) / std for x in (train, *others))


@functools.partial(jax.jit, static_argnames=('num_classes', 'epochs', 'batch_size', 'momentum'))
def _train(
    features,
    labels,
    key,
    *,
    num_classes: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    momentum: float,
    weight_decay: float,
):
  n, d = features.shape
  steps_per_epoch = n // batch_size
  schedule = optax.cosine_decay_schedule(learning_rate, epochs * steps_per_epoch)
  tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(schedule, momentum=momentum))
  params = {'w': jnp.zeros((d, num_classes), jnp.float32), 'b': jnp.zeros((num_classes,), jnp.float32)}
  opt_state = tx.init(params)

  def loss_fn(p, x, y):
    logits = x @ p['w'] + p['b']
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def step(carry, idx):
    p, s = carry
    loss, grads = jax.value_and_grad(loss_fn)(p, features[idx], labels[idx])
    updates, s = tx.update(grads, s, p)
    return (optax.apply_updates(p, updates), s), loss

  def epoch(e, carry):
    order = jax.random.permutation(jax.random.fold_in(key, e), n)[: steps_per_epoch * batch_size]
    carry, _ = jax.lax.scan(step, carry, order.reshape(steps_per_epoch, batch_size))
    return carry

  params, _ = jax.lax.fori_loop(0, epochs, epoch, (params, opt_state))
  return params


def fit(
    train_features,
    train_labels,
    *,
    num_classes: int,
    epochs: int = 100,
    batch_size: int = 256,
    learning_rate: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> dict:
  """Trains the linear classifier on (already standardised) features; returns {'w': [D, C], 'b': [C]}."""
  features = jnp.asarray(train_features, jnp.float32)
  batch_size = min(batch_size, features.shape[0])
  return jax.device_get(
      _train(
          features,
          jnp.asarray(train_labels, jnp.int32),
          jax.random.key(seed),
          num_classes=num_classes,
          epochs=epochs,
          batch_size=batch_size,
          learning_rate=float(learning_rate),
          momentum=float(momentum),
          weight_decay=float(weight_decay),
      )
  )


def accuracy(train_features, train_labels, test_features, test_labels, *, num_classes: int, **kwargs) -> float:
  """Test accuracy of a linear classifier trained on the frozen training features (standardised here)."""
  train, test = standardise(train_features, test_features)
  params = fit(train, train_labels, num_classes=num_classes, **kwargs)
  predictions = np.argmax(test @ params['w'] + params['b'], axis=-1)
  return float(np.mean(predictions == np.asarray(test_labels)))


def teacher_monitors(config: ml_collections.ConfigDict, dataset: data.Dataset, teacher, writer) -> dict:
  """The linear_probe stage: the frozen teacher's linear probe (on its pooled backbone features, clean training
  labels, scored on the test set) beside its kNN monitor. Both measure the teacher's representation; neither is
  a result on noisy labels."""
  backbone = simsiam.encoder_features_fn(config.model, dataset, 'backbone')
  logging.info(
      'Linear probe: encoding %d train + %d test images with the frozen teacher.',
      len(dataset.train_images),
      len(dataset.test_images),
  )
  train_features = parallel.map_batches(backbone, teacher, dataset.train_images, config.eval_batch_size)
  test_features = parallel.map_batches(backbone, teacher, dataset.test_images, config.eval_batch_size)
  p = config.linear_probe
  probe = accuracy(
      train_features, dataset.train_labels, test_features, dataset.test_labels,
      num_classes=dataset.num_classes, epochs=p.epochs, batch_size=p.batch_size, learning_rate=p.learning_rate,
      momentum=p.momentum, weight_decay=p.weight_decay, seed=config.seed,
  )  # fmt: skip
  if config.relation.teacher_layer == 'backbone':  # the kNN monitor's features: the same arrays
    knn = simsiam.knn_accuracy(config.rm, dataset, train_features, test_features)
  else:
    features_fn = simsiam.encoder_features_fn(config.model, dataset, config.relation.teacher_layer)
    knn = simsiam.knn_monitor(config, dataset, teacher, features_fn)
  logging.info(
      "Teacher monitors (clean labels; the teacher's representation, not a noisy-label result): "
      'linear probe %.4f, kNN %.4f.',
      probe,
      knn,
  )
  writer.write_scalars(0, {'teacher/linear_probe_accuracy': probe, 'teacher/knn_accuracy': knn})
  return {'teacher_linear_probe_accuracy': probe, 'teacher_knn_accuracy': knn}
