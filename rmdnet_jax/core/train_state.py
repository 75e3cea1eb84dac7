"""Train state and optimizer shared by both stages (SGD + momentum, coupled weight decay, cosine schedule)."""

from typing import Any, Callable

import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
  """flax TrainState plus BatchNorm running statistics."""

  batch_stats: Any

  @property
  def variables(self) -> dict:
    """{'params', 'batch_stats'}: what the network's `apply` takes."""
    return {'params': self.params, 'batch_stats': self.batch_stats}


def learning_rate_schedule(stage_config, steps_per_epoch: int) -> Callable[[int], float]:
  """Cosine decay over the stage, optional linear warm-up.

  `stage_config.learning_rate` is the peak rate; with `scale_lr_by_batch` it is per 256 images
  (SimSiam's lr = base_lr * batch / 256 rule).
  """
  peak = stage_config.learning_rate
  if stage_config.scale_lr_by_batch:
    peak = peak * stage_config.batch_size / 256
  total_steps = stage_config.epochs * steps_per_epoch
  warmup_steps = int(stage_config.warmup_epochs * steps_per_epoch)
  if warmup_steps:
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps, max(total_steps, warmup_steps + 1))
  return optax.cosine_decay_schedule(peak, max(total_steps, 1))


def make_optimizer(stage_config, learning_rate_fn) -> optax.GradientTransformation:
  """SGD with momentum and PyTorch-style (coupled) weight decay: g <- g + wd * w before momentum."""
  return optax.chain(
      optax.add_decayed_weights(stage_config.weight_decay),
      optax.sgd(learning_rate_fn, momentum=stage_config.momentum, nesterov=stage_config.nesterov),
  )


class StudentTrainState(TrainState):
  """The RGRL student: for two-network methods every leaf of params and batch_stats is stacked on a leading axis
  of size 2 (one SGD over the stacked tree equals one SGD per network: it is elementwise). `method_state` is the
  method's per-example state (ELR's targets, DivideMix's division), checkpointed with the networks."""

  method_state: Any


def create_train_state(model, variables, tx) -> TrainState:
  return TrainState.create(
      apply_fn=model.apply, params=variables['params'], batch_stats=variables.get('batch_stats', {}), tx=tx
  )
