"""Tests for rmdnet_jax.core.parallel: the one pmap of a step, batch sharding, per-example keys, host slices, mapping a
function over a whole array (8 fake CPU devices, tests/conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmdnet_jax.core import parallel

NUM_DEVICES = 8


def _step(state, batch, rng, ctx):
  """A stage step as the loop calls it: the mean over the global batch, keys from global positions."""
  keys = parallel.per_example_keys(rng, batch['x'].shape[0])
  noise = jax.vmap(lambda k: jax.random.uniform(k))(keys)
  mean = parallel.global_mean(jnp.mean(batch['x'] + noise))
  new_state = {'w': state['w'] + ctx['scale'] * mean, 'count': state['count'] + 1}
  return new_state, {'mean': mean, 'gathered': parallel.all_gather(batch['x'])}


def test_eight_fake_devices():
  assert parallel.local_device_count() == parallel.global_device_count() == NUM_DEVICES


def test_pmap_step_broadcasts_state_and_returns_unmapped_outputs():
  fn = parallel.pmap_step(_step, donate_state=False)
  assert isinstance(fn, type(jax.pmap(lambda x: x)))
  state = {'w': jnp.zeros(3), 'count': jnp.int32(0)}
  x = np.arange(16, dtype=np.float32)
  new_state, metrics = fn(state, parallel.shard({'x': x}), jax.random.key(0), {'scale': jnp.float32(2.0)})
  # Unmapped: no device axis on the state or the metrics, one value the same on every device.
  assert new_state['w'].shape == (3,) and new_state['count'].shape == ()
  assert metrics['mean'].shape == () and metrics['gathered'].shape == (16,)
  np.testing.assert_array_equal(metrics['gathered'], x)  # all_gather keeps the global example order
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(16))
  expected_mean = np.mean(x + np.asarray(jax.vmap(jax.random.uniform)(keys)))
  np.testing.assert_allclose(metrics['mean'], expected_mean, rtol=1e-6)
  np.testing.assert_allclose(new_state['w'], np.full(3, 2 * expected_mean), rtol=1e-6)
  assert int(new_state['count']) == 1
  assert new_state['w'].sharding.is_fully_replicated


def test_pmap_step_can_be_lowered_for_cost_analysis():
  fn = parallel.pmap_step(_step)
  args = (
      {'w': jnp.zeros(3), 'count': jnp.int32(0)},
      parallel.shard({'x': np.zeros(16, np.float32)}),
      jax.random.key(0),
      {'scale': jnp.float32(1.0)},
  )
  lowered = fn.lower(*args)
  text = lowered.as_text()
  assert 'all-reduce' in text or 'all_reduce' in text  # the pmean over the batch axis is in the program
  compiled = lowered.compile()
  assert compiled.cost_analysis() is not None


def test_pmap_step_on_a_subset_of_devices():
  fn = parallel.pmap_step(_step, donate_state=False, devices=jax.devices()[:2])
  x = np.arange(8, dtype=np.float32)
  _, metrics = fn(
      {'w': jnp.zeros(1), 'count': jnp.int32(0)},
      {'x': x.reshape(2, 4)},
      jax.random.key(1),
      {'scale': jnp.float32(1.0)},
  )
  np.testing.assert_array_equal(metrics['gathered'], x)


def test_shard_splits_the_leading_axis_over_local_devices():
  batch = {'x': np.arange(32).reshape(16, 2), 'y': np.arange(16)}
  sharded = parallel.shard(batch)
  assert sharded['x'].shape == (NUM_DEVICES, 2, 2) and sharded['y'].shape == (NUM_DEVICES, 2)
  np.testing.assert_array_equal(sharded['y'][3], [6, 7])  # device d holds examples 2d, 2d + 1


def test_shard_refuses_a_batch_that_does_not_split():
  with pytest.raises(ValueError) as info:
    parallel.shard({'x': np.zeros((12, 3))})
  assert str(info.value) == (
      "This host's batch of 12 examples does not split over 8 local devices; choose a batch size divisible by the "
      'total number of devices.'
  )


def test_host_batch_slice_is_contiguous_per_host():
  assert parallel.host_batch_slice(32, 0, 1) == slice(0, 32)
  assert [parallel.host_batch_slice(32, p, 4) for p in range(4)] == [
      slice(0, 8),
      slice(8, 16),
      slice(16, 24),
      slice(24, 32),
  ]


def test_host_slice_rejects_uneven_split():
  with pytest.raises(ValueError, match='hosts'):
    parallel.host_batch_slice(30, 0, 4)


def _apply(variables, images):
  x = images.astype(jnp.float32)
  return {'sum': jnp.sum(x, axis=(1, 2)) * variables['scale'], 'first': x[:, 0, 0]}


@pytest.mark.parametrize('n, batch_size', [(21, 10), (16, 16), (3, 2), (1, 64)])
def test_map_batches_pads_the_last_batch_and_returns_n_rows(n, batch_size):
  images = np.random.default_rng(n).integers(0, 256, (n, 2, 2, 3), dtype=np.uint8)
  variables = {'scale': jnp.float32(0.5)}
  out = parallel.map_batches(_apply, variables, images, batch_size)
  direct = jax.device_get(_apply(variables, images))
  assert out['sum'].shape == (n, 3) and out['first'].shape == (n, 3)
  assert isinstance(out['sum'], np.ndarray)
  np.testing.assert_allclose(out['sum'], direct['sum'], rtol=1e-6)
  np.testing.assert_array_equal(out['first'], direct['first'])


def test_to_global_and_to_local_are_identities_with_one_process():
  assert jax.process_count() == 1
  tree = {'a': parallel.replicate(jnp.arange(4)), 'b': np.ones(2), 'c': 3}
  assert parallel.to_global(tree) is tree
  assert parallel.to_local(tree) is tree


def test_replicate_puts_a_full_copy_on_every_device():
  x = parallel.replicate({'w': np.arange(6.0).reshape(2, 3)})['w']
  assert x.sharding.is_fully_replicated and len(x.addressable_shards) == NUM_DEVICES
  for shard in x.addressable_shards:
    np.testing.assert_array_equal(shard.data, np.arange(6.0).reshape(2, 3))


def test_per_example_keys_are_the_same_on_one_and_eight_devices():
  global_batch = 16
  rng = jax.random.key(3)

  def keys_on(num_devices):
    local = global_batch // num_devices
    fn = jax.pmap(
        lambda x: jax.random.key_data(parallel.per_example_keys(rng, local)),
        axis_name=parallel.AXIS,
        devices=jax.devices()[:num_devices],
    )
    out = fn(np.zeros((num_devices, local)))
    return np.asarray(out).reshape((global_batch,) + out.shape[2:])

  one, eight = keys_on(1), keys_on(NUM_DEVICES)
  np.testing.assert_array_equal(one, eight)
  assert len({k.tobytes() for k in one}) == global_batch  # every example its own key
  expected = jax.random.key_data(jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(global_batch)))
  np.testing.assert_array_equal(one, np.asarray(expected))
