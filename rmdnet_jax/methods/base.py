"""The interface every noisy-label method implements, and the cross-device reductions methods share.

A method is a `Method`: a `loss(inputs: LossInputs, **hyperparameters) -> LossOutputs` run inside the pmapped
RGRL step (`distill.distill_step`), plus what some methods need around it:

  num_networks    1, or 2 for methods that train two networks together (Co-teaching, JoCoR, DivideMix);
  init_state      per-sample state kept in the train state and checkpointed with it (ELR's targets);
  epoch_hook      a host-side update before each epoch from the whole training set's logits (DivideMix's GMM);
  eval_networks   how a two-network student predicts: 'first' network, or the 'mean' of both.

The step computes, for every network, a train-mode forward pass of the same augmented view the teacher sees
(`LossInputs.logits`); the method turns those into one loss per network. With RMDNet on, every network adds its
own relation terms against the same teacher. A method that needs more forward passes (DivideMix's MixMatch)
calls `LossInputs.forward`.

Losses are *this device's share*: the step averages gradients over devices, so a method's loss must be one whose
device average is the global-batch loss. A mean over this device's examples is (shards are equal); a mean over a
selected subset is not, and uses `global_masked_mean`. Selections and rankings use `parallel.all_gather` so they
depend on the global batch only, never on how it is split over devices.
"""

import dataclasses
import functools
import inspect
from typing import Callable, Mapping, Optional

import jax
import jax.numpy as jnp
from jax import lax

from rmdnet_jax import parallel


@dataclasses.dataclass(frozen=True)
class LossInputs:
  """What the step hands a method's loss (all arrays are this device's part of the global batch)."""

  logits: tuple  # one [b, C] per network: train-mode forward of `view`, differentiable
  labels: jax.Array  # [b] int noisy labels
  index: jax.Array  # [b] int dataset row of each example (keys per-sample state)
  method_state: dict  # the method's per-sample state (replicated), {} for stateless methods
  progress: jax.Array  # float scalar: epochs completed at this step (step / steps_per_epoch)
  rng: jax.Array  # key of this step for the method's own randomness (same on every device)
  view: jax.Array  # [b, H, W, 3] float: the augmented view the logits came from
  second_view: Callable  # () -> another augmentation of the same images, [b, H, W, 3]
  forward: Callable  # (network i, float images [n, H, W, 3]) -> logits [n, C]; train mode, BN stats
  # of the batch, running statistics not updated


@dataclasses.dataclass(frozen=True)
class LossOutputs:
  losses: tuple  # one scalar per network (this device's share)
  method_state: Optional[dict] = None  # the new per-sample state (None: unchanged)
  metrics: Mapping[str, jax.Array] = dataclasses.field(default_factory=dict)  # logged as rgrl/method_<name>


def _no_state(num_examples: int, num_classes: int, **hyperparameters) -> dict:
  del num_examples, num_classes, hyperparameters
  return {}


@dataclasses.dataclass(frozen=True)
class Method:
  """One noisy-label method. `hyperparameters` maps keyword arguments of `loss`, `init_state` and `epoch_hook`
  to keys of `config.method` (prefixed by the method's name so several methods' settings live side by side)."""

  name: str
  loss: Callable[..., LossOutputs]
  num_networks: int = 1
  hyperparameters: Mapping[str, str] = dataclasses.field(default_factory=dict)
  init_state: Callable[..., dict] = _no_state
  # epoch_hook(method_state, *, epoch, logits_fn, labels, **hyperparameters) -> new method_state or None (keep).
  # logits_fn() returns the train set's inference-mode logits [num_networks, N, C] (computed only when called).
  epoch_hook: Optional[Callable[..., Optional[dict]]] = None
  eval_networks: str = 'first'

  def bind(self, method_config) -> 'Method':
    """This method with its hyperparameters read from `config.method` and bound into every callable."""
    kwargs = {arg: method_config[key] for arg, key in self.hyperparameters.items()}
    unused = set(kwargs) - set().union(*(_keywords(f) for f in (self.loss, self.init_state, self.epoch_hook)))
    if unused:
      raise TypeError(f'Method {self.name!r} maps hyperparameters {sorted(unused)} that none of its functions take.')

    def bound(fn):
      # Each function gets the hyperparameters its signature names, so a loss need not accept the hook's.
      own = {k: v for k, v in kwargs.items() if k in _keywords(fn)}
      return functools.partial(fn, **own) if own else fn

    return dataclasses.replace(
        self,
        loss=bound(self.loss),
        init_state=bound(self.init_state),
        epoch_hook=bound(self.epoch_hook) if self.epoch_hook else None,
    )


def _keywords(fn: Optional[Callable]) -> set:
  if fn is None:
    return set()
  return {
      name
      for name, p in inspect.signature(fn).parameters.items()
      if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
  }


def from_mean_loss(name: str, loss_fn: Callable, hyperparameters: Optional[Mapping[str, str]] = None) -> Method:
  """A single-network method from `loss_fn(logits [b, C], labels [b], **hp) -> mean over the batch`."""

  def loss(inputs: LossInputs, **hp) -> LossOutputs:
    return LossOutputs(losses=(loss_fn(inputs.logits[0], inputs.labels, **hp),))

  # bind() reads the keyword arguments from the signature: give the wrapper loss_fn's.
  params = [inspect.Parameter('inputs', inspect.Parameter.POSITIONAL_OR_KEYWORD)] + [
      p for p in inspect.signature(loss_fn).parameters.values() if p.kind == p.KEYWORD_ONLY
  ]
  loss.__signature__ = inspect.Signature(params)
  loss.__doc__ = loss_fn.__doc__
  loss.mean_loss = loss_fn
  return Method(name=name, loss=loss, hyperparameters=dict(hyperparameters or {}))


# ---------------------------------------------------------------------------------------------------------------
# Per-example terms and cross-device reductions.


def float32(logits: jax.Array) -> jax.Array:
  """bfloat16 logits are promoted: losses and rankings need more than 8 mantissa bits."""
  return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


def per_example_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  log_p = jax.nn.log_softmax(float32(logits), axis=-1)
  return -jnp.take_along_axis(log_p, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def per_example_kl(p_logits: jax.Array, q_logits: jax.Array) -> jax.Array:
  """KL(softmax(p) || softmax(q)) per example, [b]."""
  log_p = jax.nn.log_softmax(float32(p_logits), axis=-1)
  log_q = jax.nn.log_softmax(float32(q_logits), axis=-1)
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def num_devices() -> int:
  """Devices in the step's mapped axis (a Python int at trace time)."""
  return lax.axis_size(parallel.AXIS)


def global_masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """This device's share of mean(values[mask]) over the global batch: its device average is that mean.

  The selected count differs between devices, so a local masked mean would weigh the devices' examples unequally.
  """
  mask = lax.stop_gradient(mask.astype(values.dtype))
  count = lax.psum(jnp.sum(mask), parallel.AXIS)
  return jnp.sum(values * mask) * num_devices() / jnp.maximum(count, 1.0)


def small_loss_mask(per_example_loss: jax.Array, num_keep: jax.Array) -> jax.Array:
  """True for this device's examples among the `num_keep` smallest losses of the global batch.

  Ties go to the earlier global position (stable sort), so the selection does not depend on the device count.
  """
  global_loss = parallel.all_gather(lax.stop_gradient(per_example_loss))
  rank = jnp.argsort(jnp.argsort(global_loss, stable=True), stable=True)
  return rank[parallel.global_example_index(per_example_loss.shape[0])] < num_keep


def forget_rate_schedule(epoch: jax.Array, *, forget_rate: float, gradual_epochs: int, exponent: float) -> jax.Array:
  """Co-teaching's drop rate: ramped from 0 to forget_rate**exponent over `gradual_epochs`, then forget_rate.

  Han et al. (2018): rate_schedule[:num_gradual] = linspace(0, forget_rate**exponent, num_gradual), so epoch
  e < num_gradual drops forget_rate**exponent * e / (num_gradual - 1).
  """
  epoch = jnp.asarray(epoch, jnp.float32)
  if gradual_epochs <= 1:
    ramp = jnp.where(epoch < gradual_epochs, 0.0, forget_rate)
    return jnp.asarray(ramp, jnp.float32)
  ramp = forget_rate**exponent * epoch / (gradual_epochs - 1)
  return jnp.where(epoch < gradual_epochs, ramp, forget_rate)


def num_to_keep(forget_rate: jax.Array, global_batch_size: int) -> jax.Array:
  """int((1 - forget_rate) * B), as the reference implementations round it."""
  return jnp.floor((1.0 - forget_rate) * global_batch_size + 1e-6).astype(jnp.int32)


def global_batch_size(local_batch_size: int) -> int:
  return local_batch_size * num_devices()
