"""Everything that knows about devices: the one `jax.pmap`, batch sharding, per-example keys.

The train steps are plain functions `step(state, batch, rng, ctx) -> (state, metrics)` that only use the
collectives below with `AXIS`; this module maps them over devices. The design card asks for `pmap` (in maintenance mode since JAX 0.8 and
implemented on `jit` + `shard_map`); a move to `jit` + `jax.shard_map` over a `Mesh` touches only this file.

State is *broadcast*, not replicated by hand (flax `examples/imagenet` style): `in_axes=None` for the state and
`out_axes=None` for the new state, so the state lives as one fully replicated array per leaf and no
replicate/unreplicate round trips exist anywhere else.
"""

import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = 'batch'


def local_device_count() -> int:
  return jax.local_device_count()


def global_device_count() -> int:
  return jax.device_count()


def pmap_step(step_fn: Callable, *, donate_state: bool = True, devices: Optional[Sequence[jax.Device]] = None):
  """The pmapped `step_fn(state, batch, rng, ctx) -> (state, metrics)`, the one step contract of every stage.

  `batch` is split on its leading (device) axis; `state`, `rng` and `ctx` (broadcast extras: the frozen teacher,
  the resident training set) are broadcast; every output is returned unmapped, so outputs must be identical across
  devices (the new state after `pmean`ed gradients, and `pmean`ed metrics). The result is a `jax.pmap` object:
  call it, or `.lower(...)` it for cost analysis. Donating the state lets XLA update it in place.
  """
  return jax.pmap(
      step_fn,
      axis_name=AXIS,
      in_axes=(None, 0, None, None),
      out_axes=None,
      donate_argnums=(0,) if donate_state else (),
      devices=devices,
  )


def replicated_sharding() -> NamedSharding:
  """The sharding `pmap_step` gives its unmapped outputs: one full copy on every device."""
  return NamedSharding(Mesh(np.array(jax.devices()), (AXIS,)), PartitionSpec())


def replicate(tree: Any) -> Any:
  """Puts a host/single-device pytree on all devices as `pmap_step` outputs would be."""
  return jax.device_put(tree, replicated_sharding())


def local_replicated_sharding() -> NamedSharding:
  """One full copy on every device of this process: the host-local layout of `pmap_step`'s unmapped outputs."""
  return NamedSharding(Mesh(np.array(jax.local_devices()), (AXIS,)), PartitionSpec())


def to_global(tree: Any) -> Any:
  """Replicated host-local arrays (what `pmap_step` returns on every host) as global jax.Arrays replicated over
  the devices of all processes, which is what Orbax saves with several processes (one copy is written).

  With one process the arrays are returned as they are: they already span all devices.
  """
  if jax.process_count() == 1:
    return tree
  sharding = replicated_sharding()

  def convert(x):
    if not isinstance(x, jax.Array) or not x.is_fully_addressable:
      return x
    if len(x.addressable_shards) != jax.local_device_count():
      x = jax.device_put(x, local_replicated_sharding())
    by_device = {shard.device: shard.data for shard in x.addressable_shards}
    return jax.make_array_from_single_device_arrays(
        x.shape, sharding, [by_device[d] for d in sharding.addressable_devices_indices_map(x.shape)]
    )

  return jax.tree.map(convert, tree)


def to_local(tree: Any) -> Any:
  """The inverse of `to_global`: global replicated arrays (restored by Orbax) as this process's replicated copies,
  the layout `pmap_step` takes and returns, which every host can read (`jax.device_get`) on its own."""
  if jax.process_count() == 1:
    return tree
  sharding = local_replicated_sharding()

  def convert(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return x
    by_device = {shard.device: shard.data for shard in x.addressable_shards}
    return jax.make_array_from_single_device_arrays(
        x.shape, sharding, [by_device[d] for d in sharding.addressable_devices_indices_map(x.shape)]
    )

  return jax.tree.map(convert, tree)


def shard(batch: Any) -> Any:
  """Reshapes this host's batch [b, ...] to [local_devices, b / local_devices, ...]."""
  n = local_device_count()

  def split(x):
    if x.shape[0] % n:
      raise ValueError(
          f"This host's batch of {x.shape[0]} examples does not split over {n} local devices; "
          'choose a batch size divisible by the total number of devices.'
      )
    return x.reshape((n, x.shape[0] // n) + x.shape[1:])

  return jax.tree.map(split, batch)


def global_mean(x: Any) -> Any:
  """Mean over all devices (gradients, metrics, BatchNorm statistics use the same axis)."""
  return lax.pmean(x, AXIS)


def all_gather(x: jax.Array) -> jax.Array:
  """Concatenates every device's [b, ...] into the global batch [B, ...], in global example order.

  Gradients flow back through the gather (its transpose is a reduce-scatter); with the loss computed identically
  on every device and gradients `pmean`ed afterwards, the update equals that of one device on the whole batch.
  """
  return lax.all_gather(x, AXIS, tiled=True)


def global_example_index(local_batch_size: int) -> jax.Array:
  """Index of each of this device's examples within the global batch: [b] ints."""
  return lax.axis_index(AXIS) * local_batch_size + jnp.arange(local_batch_size)


def per_example_keys(rng: jax.Array, local_batch_size: int) -> jax.Array:
  """One key per example, derived from its position in the global batch, not from the device that holds it:
  the same global batch gets the same augmentations on 1 or on N devices."""
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(global_example_index(local_batch_size))


def host_batch_slice(global_batch_size: int, process_index: int, process_count: int) -> slice:
  """The part of every global batch that one host loads: contiguous, so that the pmap device order
  (devices of host 0 first) reproduces the global example order."""
  if global_batch_size % process_count:
    raise ValueError(f'Global batch {global_batch_size} does not split over {process_count} hosts.')
  per_host = global_batch_size // process_count
  return slice(process_index * per_host, (process_index + 1) * per_host)


@functools.lru_cache(maxsize=None)
def pmap_apply(apply_fn: Callable) -> Callable:
  """`apply_fn(broadcast, sharded)` pmapped: the first argument (variables, a key) broadcast, the second split on
  its leading (device) axis, outputs per device. Cached per function, so a function built once compiles once."""
  return jax.pmap(apply_fn, axis_name=AXIS, in_axes=(None, 0))


def map_batches(apply_fn: Callable, variables: Any, images: np.ndarray, batch_size: int) -> Any:
  """Runs `apply_fn(variables, images_batch)` over all of `images` [N, ...] on all local devices.

  The last batch is padded (and the padding dropped), so every N works. Returns host numpy arrays [N, ...].
  Used for evaluation and feature extraction on this host's data (every host evaluates the full set).
  """
  n_dev = local_device_count()
  batch_size = max(n_dev, batch_size - batch_size % n_dev)
  fn = pmap_apply(apply_fn)
  outputs = []
  for start in range(0, len(images), batch_size):
    chunk = images[start : start + batch_size]
    valid = len(chunk)
    if valid < batch_size:
      pad = np.zeros((batch_size - valid,) + chunk.shape[1:], chunk.dtype)
      chunk = np.concatenate([chunk, pad])
    out = fn(variables, shard(chunk))
    outputs.append(jax.tree.map(lambda x, v=valid: np.asarray(x).reshape((-1,) + x.shape[2:])[:v], out))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)
