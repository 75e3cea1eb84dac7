"""The interface every noisy-label method implements, and the cross-device reductions methods share.

A method is a `Method`: a `loss(inputs: LossInputs, settings) -> LossOutputs` run inside the pmapped RGRL step
(`distill.distill_step`), plus what some methods need around it:

  num_networks    1, or 2 for methods that train two networks together (Co-teaching, JoCoR, DivideMix);
  init_state      per-sample state kept in the train state and checkpointed with it (ELR's targets);
  epoch_hook      a host-side update before each epoch from the whole training set's logits (DivideMix's GMM);
  eval_networks   how a two-network student predicts: 'first' network, or the 'mean' of both;
  check           the rules its settings must obey, run by `config_checks.validate`.

`settings` is the method's own config block, `config.method.<name>` (configs/default.py), frozen. `bind` passes it
to `loss`, `init_state` and `epoch_hook` once, so the bound method's callables take only the step's arguments.

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
from typing import Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
from jax import lax

from rmdnet_jax.core import parallel

# A method's settings: its config block, frozen (attribute access, hashable, no later edits).
Settings = ml_collections.FrozenConfigDict


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


class SettingsError(ValueError):
  """A method's settings break one of its rules; the message names the key (method.<name>.<setting>)."""


def require(condition: bool, message: str) -> None:
  """For `Method.check`: raises SettingsError(message) unless `condition`."""
  if not condition:
    raise SettingsError(message)


def no_state(num_examples: int, num_classes: int, settings: Settings) -> dict:
  del num_examples, num_classes, settings
  return {}


@dataclasses.dataclass(frozen=True)
class Method:
  """One noisy-label method. Unbound (`settings` None) as registered in `methods.METHODS`; `bind` gives the
  method a run uses.

  Unbound, its callables take the settings as their `settings` argument:
    loss(inputs: LossInputs, settings) -> LossOutputs
    init_state(num_examples, num_classes, settings) -> dict
    epoch_hook(method_state, settings, *, epoch, logits_fn, labels) -> new method_state, or None to keep it;
      logits_fn() returns the train set's inference-mode logits [num_networks, N, C] (computed only when called)
    check(settings) -> None, raising SettingsError (via `require`) for a setting that cannot run
  """

  name: str
  loss: Callable[..., LossOutputs]
  num_networks: int = 1
  init_state: Callable[..., dict] = no_state
  epoch_hook: Optional[Callable[..., Optional[dict]]] = None
  eval_networks: str = 'first'
  check: Optional[Callable[[Settings], None]] = None
  settings: Optional[Settings] = None  # the bound settings (None: unbound)

  def bind(self, settings: Optional[Mapping] = None) -> 'Method':
    """This method with `settings` (its block `config.method.<name>`; None or {} for a method without settings)
    given to `loss`, `init_state` and `epoch_hook`."""
    if self.settings is not None:
      raise ValueError(f'Method {self.name!r} is already bound.')
    frozen = Settings(settings or {})
    return dataclasses.replace(
        self,
        settings=frozen,
        loss=functools.partial(self.loss, settings=frozen),
        init_state=functools.partial(self.init_state, settings=frozen),
        epoch_hook=functools.partial(self.epoch_hook, settings=frozen) if self.epoch_hook else None,
    )


def mean_loss_method(name: str, loss_fn: Callable, check: Optional[Callable[[Settings], None]] = None) -> Method:
  """A one-network method from `loss_fn(logits [b, C], labels [b], **settings) -> mean over the batch`: its
  settings are loss_fn's keyword arguments, named alike in `config.method.<name>`."""

  def loss(inputs: LossInputs, settings: Settings) -> LossOutputs:
    return LossOutputs(losses=(loss_fn(inputs.logits[0], inputs.labels, **settings),))

  return Method(name=name, loss=loss, check=check)


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


def check_forget_schedule(name: str, settings: Settings) -> None:
  """The rules of the drop-rate schedule settings shared by Co-teaching and JoCoR (in method `name`'s block)."""
  require(
      0 <= settings.forget_rate < 1,
      f'method.{name}.forget_rate={settings.forget_rate} must be in [0, 1) ({name} drops that fraction of each '
      'batch; set it to the noise rate).',
  )
  require(
      settings.forget_gradual_epochs >= 0 and settings.forget_exponent > 0,
      f'method.{name}.forget_gradual_epochs={settings.forget_gradual_epochs} must be >= 0 and '
      f'method.{name}.forget_exponent={settings.forget_exponent} must be > 0.',
  )


def scheduled_forget_rate(progress: jax.Array, settings: Settings) -> jax.Array:
  """`forget_rate_schedule` at the epoch `progress` is in, from a Co-teaching / JoCoR settings block."""
  return forget_rate_schedule(
      jnp.floor(progress),
      forget_rate=settings.forget_rate,
      gradual_epochs=settings.forget_gradual_epochs,
      exponent=settings.forget_exponent,
  )


def num_to_keep(forget_rate: jax.Array, global_batch_size: int) -> jax.Array:
  """int((1 - forget_rate) * B), as the reference implementations round it."""
  return jnp.floor((1.0 - forget_rate) * global_batch_size + 1e-6).astype(jnp.int32)


def global_batch_size(local_batch_size: int) -> int:
  return local_batch_size * num_devices()
