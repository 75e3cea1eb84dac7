"""Resident training data: a step fed indices and gathering on the device equals, bit for bit, the step fed the
host batches, on 8 (fake CPU) devices."""
import functools

import jax
import numpy as np

from rmdnet_jax import augment, data, device_data, distill, methods, parallel, simsiam
from rmdnet_jax import train_state as train_state_lib
from tests import helpers

NUM_EXAMPLES, GLOBAL_BATCH, STEPS = 48, 16, 2


def _batch_kwargs(num_steps=STEPS):
  return dict(start_step=0, num_steps=num_steps, global_batch_size=GLOBAL_BATCH, seed=3, stream=1,
              host_slice=slice(0, GLOBAL_BATCH))


def _dataset():
  return {'images': helpers.images(NUM_EXAMPLES, seed=4), 'labels': helpers.labels(NUM_EXAMPLES, seed=5)}


def _run(step_fn, state, step_args, batches, sharded_argnums):
  """`loop.train`'s calls: step_fn(state, *step_args, batch, fold_in(rng, step)) on sharded host batches."""
  fn = parallel.pmap_step(step_fn, sharded_argnums=sharded_argnums, donate_argnums=())
  rng = jax.random.key(9)
  metrics = []
  for step, batch in enumerate(batches):
    state, m = fn(state, *step_args, parallel.shard(batch), jax.random.fold_in(rng, step))
    metrics.append(m)
  return helpers.to_host(state), helpers.to_host(metrics)


def _assert_bitwise_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(x, y)


def _compare(step_fn, state, teacher_args, arrays, data_argnum):
  """Runs `step_fn` on host batches and its resident-data wrapper on index batches; returns both results."""
  host = _run(step_fn, state, teacher_args, data.host_batches(arrays, **_batch_kwargs()), (data_argnum,))
  resident = device_data.put_resident(arrays)
  wrapped = device_data.with_resident_data(step_fn, data_argnum=data_argnum)
  on_device = _run(wrapped, state, teacher_args + (resident,),
                   device_data.index_batches(NUM_EXAMPLES, **_batch_kwargs()), (data_argnum + 1,))
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


def test_distill_step_on_resident_data_is_bitwise_the_host_batch_step():
  config = helpers.tiny_config()
  lr_fn = train_state_lib.learning_rate_schedule(config.rgrl, steps_per_epoch=3)
  rm_state = simsiam.create_simsiam_state(jax.random.key(1), config, helpers.IMAGE_SHAPE, lr_fn)
  teacher = helpers.to_host(distill.teacher_variables({'params': rm_state.params,
                                                      'batch_stats': rm_state.batch_stats}))
  state = helpers.to_host(distill.create_distill_state(jax.random.key(0), config, helpers.IMAGE_SHAPE, lr_fn,
                                                       num_examples=NUM_EXAMPLES))
  step = functools.partial(
      distill.distill_step, teacher_apply=distill.teacher_apply_fn(config),
      method=methods.make_method(config.method), K=config.relation.K,
      relation_kwargs=distill.relation_kwargs(config),
      view_kwargs=distill.view_kwargs(config, augment.CIFAR10_MEAN, augment.CIFAR10_STD))
  (state_h, metrics_h), (state_d, metrics_d) = _compare(step, state, (teacher,), _dataset(), 2)
  _assert_bitwise_equal(state_d, state_h)
  _assert_bitwise_equal(metrics_d, metrics_h)
  assert float(metrics_d[-1]['edge']) > 0  # the relation terms ran
