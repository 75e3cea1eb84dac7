"""Resident training data: a step fed indices and gathering on the device sees, bit for bit, the batches the host
would have fed it, on 8 (fake CPU) devices."""

import jax
import numpy as np

from rmdnet_jax.core import parallel
from rmdnet_jax.datasets import data, device_data
from tests import helpers

NUM_EXAMPLES, GLOBAL_BATCH, STEPS = 48, 16, 2


def _batch_kwargs(num_steps=STEPS):
  return dict(
      start_step=0,
      num_steps=num_steps,
      global_batch_size=GLOBAL_BATCH,
      seed=3,
      stream=1,
      host_slice=slice(0, GLOBAL_BATCH),
  )


def _dataset():
  return {'images': helpers.images(NUM_EXAMPLES, seed=4), 'labels': helpers.labels(NUM_EXAMPLES, seed=5)}


def _run(step_fn, state, ctx, batches):
  """`loop.train`'s calls: step_fn(state, batch, fold_in(rng, step), ctx) on sharded host batches."""
  fn = parallel.pmap_step(step_fn, donate_state=False)
  rng = jax.random.key(9)
  metrics = []
  for step, batch in enumerate(batches):
    state, m = fn(state, parallel.shard(batch), jax.random.fold_in(rng, step), ctx)
    metrics.append(m)
  return helpers.to_host(state), helpers.to_host(metrics)


def _assert_bitwise_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(x, y)


def _compare(step_fn, state, ctx, arrays):
  """Runs `step_fn` on host batches and its resident-data wrapper on index batches; returns both results."""
  host = _run(step_fn, state, ctx, data.host_batches(arrays, **_batch_kwargs()))
  resident = {**ctx, device_data.CTX_KEY: device_data.put_resident(arrays)}
  wrapped = device_data.with_resident_data(step_fn)
  on_device = _run(wrapped, state, resident, device_data.index_batches(NUM_EXAMPLES, **_batch_kwargs()))
  return host, on_device


def test_index_batches_are_the_rows_of_host_batches():
  arrays = _dataset()
  host = list(data.host_batches(arrays, **_batch_kwargs(num_steps=5)))  # crosses an epoch boundary (3 steps)
  indices = list(device_data.index_batches(NUM_EXAMPLES, **_batch_kwargs(num_steps=5)))
  assert [set(b) for b in indices] == [{'index'}] * 5
  for h, i in zip(host, indices):
    assert i['index'].dtype == np.int32
    np.testing.assert_array_equal(h['index'], i['index'])
    np.testing.assert_array_equal(h['images'], arrays['images'][i['index']])


def test_put_resident_replicates_on_every_device():
  resident = device_data.put_resident(_dataset())
  for name, array in resident.items():
    assert array.sharding.is_fully_replicated, name
    assert len(array.sharding.device_set) == jax.device_count() == 8
    assert array.shape[0] == NUM_EXAMPLES
  assert resident['images'].dtype == np.uint8 and resident['labels'].dtype == np.int32
  np.testing.assert_array_equal(np.asarray(resident['images']), _dataset()['images'])


def test_wrapped_step_sees_exactly_the_host_batch():
  # A step that reports what it was given: the resident wrapper must hand it the host batch, bit for bit.
  # (tests/run/pipeline_test.py runs whole stages both ways and compares the final states.)
  def step(state, batch, rng, ctx):
    del rng
    seen = {k: parallel.all_gather(v) for k, v in batch.items()}
    return state + 1, {'teacher': ctx['teacher'], **seen}

  host, on_device = _compare(step, np.zeros((), np.int32), {'teacher': np.float32(2.5)}, _dataset())
  _assert_bitwise_equal(on_device, host)
  assert int(host[0]) == STEPS
  expected = list(data.host_batches(_dataset(), **_batch_kwargs()))
  for metrics, batch in zip(host[1], expected):
    np.testing.assert_array_equal(metrics['images'], batch['images'])
    np.testing.assert_array_equal(metrics['labels'], batch['labels'])
