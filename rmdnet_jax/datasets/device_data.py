"""The training set resident on the devices, batches gathered there by index: the host ships only indices.

CIFAR's 50,000 uint8 images are 150 MiB, little next to an accelerator's memory. Kept on every device, they need
not cross the host-device link each step: the host sends the global batch's row numbers (int32, 4 bytes per
image instead of 3,072) and the step gathers the rows it needs on the device. The order of the examples is the
one `data.host_batches` gives (the same shuffle by index, drawn on the host), so a run trains on exactly the same
batches, and the steps compute exactly the same updates, with or without resident data.
"""

from typing import Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rmdnet_jax.core import parallel
from rmdnet_jax.datasets import data

# The key of the step context (`ctx`) that holds the resident arrays.
CTX_KEY = 'resident'


def put_resident(arrays: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
  """Whole dataset arrays {name: [N, ...]} on every device, replicated as `parallel.pmap_step` broadcasts `ctx`.

  Every host passes the same arrays (each loads the whole training set). Integer arrays wider than JAX's default
  become int32, as they would when passed to the step from the host.
  """
  return {name: jax.device_put(np.asarray(array), parallel.replicated_sharding()) for name, array in arrays.items()}


def with_resident_data(step_fn: Callable) -> Callable:
  """`step_fn(state, batch, rng, ctx)` as a step whose batch is {'index': int32 [b], ...} and whose
  `ctx[CTX_KEY]` holds the resident arrays: each is gathered at `index` into the batch under its own name, so
  `step_fn` sees the batch `data.host_batches` would have given it ('index' included)."""

  def step(state, batch, rng, ctx):
    # mode='clip' never triggers (indices come from a permutation of the rows); it spares the bounds check
    # that the default mode adds to every gather.
    gathered = {name: jnp.take(array, batch['index'], axis=0, mode='clip') for name, array in ctx[CTX_KEY].items()}
    return step_fn(state, {**batch, **gathered}, rng, ctx)

  return step


def index_batches(num_examples: int, **host_batches_kwargs) -> Iterator[dict]:
  """This host's part of each global batch as {'index': int32 [b_host]}: the rows `data.host_batches` yields.

  Args:
    num_examples: rows of the resident arrays.
    **host_batches_kwargs: `data.host_batches`'s keyword arguments (start_step, num_steps, global_batch_size,
      seed, stream, host_slice).
  """
  # data.host_batches over the row numbers alone yields exactly its 'index' field, in the same order.
  return data.host_batches({'index': np.arange(num_examples, dtype=np.int32)}, **host_batches_kwargs)
