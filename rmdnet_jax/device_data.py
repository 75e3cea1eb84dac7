"""The training set resident on the devices, batches gathered there by index: the host ships only indices.

CIFAR's 50,000 uint8 images are 150 MiB, little next to an accelerator's memory. Kept on every device, they need
not cross the host-device link each step: the host sends the global batch's row numbers (int32, 4 bytes per
image instead of 3,072) and the step gathers the rows it needs on the device. The order of the examples is the
one `data.host_batches` gives (the same shuffle by index, drawn on the host), so a run trains on exactly the same
batches, and the steps compute exactly the same updates, with or without resident data.

Wiring into a stage (as `pipeline.rm_stage` would; the RGRL step takes `data_argnum=2` and the teacher first):

    resident = device_data.put_resident({'images': dataset.train_images})
    step_fn = parallel.pmap_step(
        device_data.with_resident_data(functools.partial(simsiam.simsiam_step, view_kwargs=...), data_argnum=1),
        sharded_argnums=(2,))                         # the batch moved one place right, behind `resident`
    batches = map(parallel.shard, device_data.index_batches(
        len(dataset.train_images), start_step=start, num_steps=sched.num_steps,
        global_batch_size=config.rm.batch_size, seed=config.seed, stream=STREAM_RM, host_slice=host_slice))
    loop.train(..., step_fn=step_fn, batches=batches, step_args=(resident,))

`loop.train` calls `step_fn(state, *step_args, batch, rng)`, so passing the resident arrays as the last of
`step_args` puts them just before the batch, where the wrapped step expects them.
"""

from typing import Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rmdnet_jax import data, parallel


def put_resident(arrays: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
  """Puts whole dataset arrays on every device, replicated as `parallel.pmap_step` takes broadcast arguments.

  Args:
    arrays: {name: host array [N, ...]}, e.g. {'images': uint8 [N, H, W, 3], 'labels': int [N]}. Every host
      passes the same arrays (each loads the whole training set).

  Returns:
    {name: jax.Array [N, ...]} with `parallel.replicated_sharding()`: one full copy per device, so the pmapped
    step reads it where it lies, without a transfer per call. Integer arrays wider than JAX's default become
    int32, as they would when passed to the step from the host.
  """
  return {name: jax.device_put(np.asarray(array), parallel.replicated_sharding()) for name, array in arrays.items()}


def with_resident_data(step_fn: Callable, data_argnum: int) -> Callable:
  """Turns a step that takes a batch of examples into one that takes their indices and the resident arrays.

  Args:
    step_fn: a train step whose argument `data_argnum` is this device's batch {'images', 'labels', ...}
      (`simsiam.simsiam_step`: 1; `distill.distill_step`: 2).
    data_argnum: that argument's position.

  Returns:
    step(*args) with the same arguments as `step_fn` except at `data_argnum`: there it takes `resident`
    (`put_resident(...)`, broadcast), then the batch {'index': int32 [b], ...}. Each resident array is gathered
    at `index` into the batch under its own name; the batch's other entries, 'index' included, pass through, so
    `step_fn` sees the batch `data.host_batches` would have given it. Pmap it with the batch, now at
    `data_argnum + 1`, sharded and `resident` broadcast.
  """

  def step(*args):
    args = list(args)
    resident = args.pop(data_argnum)
    batch = args[data_argnum]
    index = batch['index']
    # mode='clip' never triggers (indices come from a permutation of the rows); it spares the bounds check
    # that the default mode adds to every gather.
    gathered = {name: jnp.take(array, index, axis=0, mode='clip') for name, array in resident.items()}
    args[data_argnum] = {**batch, **gathered}
    return step_fn(*args)

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
