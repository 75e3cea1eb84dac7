"""RGRL stage: the distillation step on 8 devices equals 1 device, K=0 equals the plain method step, and the
objective equals CE + K * (w_node * node + w_edge * edge) computed by hand on the global batch."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rmdnet_jax import methods
from rmdnet_jax.core import augment, parallel, relation
from rmdnet_jax.datasets import data
from rmdnet_jax.stages import distill, simsiam
from rmdnet_jax.core import train_state as train_state_lib
from tests import helpers


def _config(**overrides):
  # Shared by the tests so that most of them reuse one compiled step (K and the schedule are baked into it).
  return helpers.tiny_config(**{'rgrl.learning_rate': 0.05, **overrides})


def _teacher(config):
  lr_fn = train_state_lib.learning_rate_schedule(config.rm, 4)
  rm_state = simsiam.create_simsiam_state(jax.random.key(11), config, helpers.IMAGE_SHAPE, lr_fn)
  return helpers.to_host(simsiam.teacher_variables(rm_state.variables))


def _setup(config, distill_on=True):
  teacher = _teacher(config)
  lr_fn = train_state_lib.learning_rate_schedule(config.rgrl, 4)
  state = helpers.to_host(distill.create_distill_state(jax.random.key(0), config, helpers.IMAGE_SHAPE, lr_fn, teacher))
  step = functools.partial(
      distill.distill_step,
      teacher_apply=simsiam.encoder_apply_fn(config.model, config.relation.teacher_layer) if distill_on else None,
      method=methods.make_method(config.method),
      K=config.relation.K,
      relation_kwargs=distill.relation_kwargs(config),
      view_kwargs=distill.view_kwargs(config.rgrl.augment, data.CIFAR10_MEAN, data.CIFAR10_STD),
  )
  return state, teacher, step


def _batch(n=16):
  return {'images': helpers.images(n), 'labels': helpers.labels(n)}


@pytest.mark.parametrize('edge_kind', ['frobenius', pytest.param('kl', marks=pytest.mark.slow)])
def test_distill_step_8_devices_equals_1_device(edge_kind):
  config = _config(**{'relation.edge_kind': edge_kind, 'relation.edge_topk': 3 if edge_kind == 'kl' else 0})
  state, teacher, step = _setup(config)
  batch = _batch()
  s8, m8 = helpers.run_rgrl_steps(step, state, teacher, batch, 8)
  s1, m1 = helpers.run_rgrl_steps(step, state, teacher, batch, 1)
  # The relation graph spans the global batch (all_gather), so the loss and update do not depend on devices.
  for key in ('loss', 'method', 'node', 'edge'):
    np.testing.assert_allclose(m8[key], m1[key], rtol=1e-4, err_msg=key)
  helpers.assert_trees_close(s8.params, s1.params, rtol=2e-4, atol=2e-5)
  helpers.assert_trees_close(s8.batch_stats, s1.batch_stats, rtol=2e-4, atol=2e-5)
  assert float(m8['node']) > 0 and float(m8['edge']) > 0


def test_k_zero_equals_plain_method_step():
  config = _config(**{'relation.K': 0.0})
  state, teacher, step_k0 = _setup(config)
  _, _, step_ce = _setup(config, distill_on=False)
  batch = _batch()
  s_k0, m_k0 = helpers.run_rgrl_steps(step_k0, state, teacher, batch, 8)
  s_ce, m_ce = helpers.run_rgrl_steps(step_ce, state, None, batch, 8)
  for part in ('backbone', 'classifier'):
    helpers.assert_trees_close(s_k0.params[part], s_ce.params[part], rtol=1e-6, atol=1e-7)
  helpers.assert_trees_close(s_k0.batch_stats, s_ce.batch_stats, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(m_k0['method'], m_ce['method'], rtol=1e-6)
  assert 'edge' not in m_ce and 'edge' in m_k0


def test_distill_loss_equals_hand_computed_objective():
  """One device, the step's loss against CE + K(w_n node + w_e edge) assembled from the public pieces."""
  config = _config()
  state, teacher, step = _setup(config)
  batch = _batch()
  _, metrics = helpers.run_rgrl_steps(step, state, teacher, batch, 1, steps=1)
  # Rebuild the same view: keys from global positions, as parallel.per_example_keys does on one device.
  rng = jax.random.fold_in(jax.random.key(5), 0)
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(16))
  # Jitted, each piece one compile rather than one per operation; the same functions as the step's.
  views = jax.jit(
      functools.partial(
          augment.pad_crop_flip, **distill.view_kwargs(config.rgrl.augment, data.CIFAR10_MEAN, data.CIFAR10_STD)
      )
  )(keys, batch['images'])
  t = jax.jit(simsiam.encoder_apply_fn(config.model, config.relation.teacher_layer))(teacher, views)
  out = jax.jit(
      lambda variables, x: distill.student_net(config).apply(variables, x, train=True, mutable=['batch_stats'])[0]
  )({'params': state.params, 'batch_stats': state.batch_stats}, views)
  ce = optax.softmax_cross_entropy_with_integer_labels(out['logits'], batch['labels']).mean()
  node = relation.node_matching_loss(t, out['embedding'], kind=config.relation.node_kind)
  edge = relation.edge_matching_loss(t, out['embedding'])
  expected = ce + config.relation.K * (1.0 * node + 0.3 * edge)
  np.testing.assert_allclose(metrics['loss'], expected, rtol=1e-4)
  np.testing.assert_allclose(metrics['node'], node, rtol=1e-4)
  np.testing.assert_allclose(metrics['edge'], edge, rtol=1e-4)


def test_teacher_is_never_updated_and_gets_no_gradient():
  config = _config()
  state, teacher, step = _setup(config)
  before = jax.tree.map(np.copy, teacher)
  helpers.run_rgrl_steps(step, state, teacher, _batch(), 8)
  helpers.assert_trees_close(teacher, before, rtol=0, atol=0)
  assert 'predictor' not in teacher['params']


def test_student_init_from_teacher_copies_backbone():
  config = _config(**{'relation.student_init': 'teacher'})
  state, teacher, _ = _setup(config)
  helpers.assert_trees_close(state.params['backbone'], teacher['params']['backbone'], rtol=0, atol=0)
  helpers.assert_trees_close(state.batch_stats['backbone'], teacher['batch_stats']['backbone'], rtol=0, atol=0)


def test_distillation_pulls_student_graph_towards_teacher():
  """With fixed views, the relation loss falls: the regulariser does what it says."""
  config = _config()
  state, teacher, step = _setup(config)
  fn = parallel.pmap_step(step, donate_state=False, devices=jax.devices()[:8])
  sharded = jax.tree.map(lambda x: x.reshape((8, -1) + x.shape[1:]), _batch())
  relation_losses = []
  for _ in range(12):
    state, metrics = fn(state, sharded, jax.random.key(9), {'teacher': teacher})
    relation_losses.append(float(metrics['relation']))
  assert relation_losses[-1] < 0.8 * relation_losses[0], relation_losses


@pytest.mark.slow
def test_bfloat16_distillation_trains_with_float32_master_weights():
  # bf16 compute, float32 params and optimizer state: the loss (CE + relation terms) must still fall on a tiny
  # problem, and the donated state stays float32 step after step.
  config = _config(**{'model.dtype': 'bfloat16', 'rgrl.learning_rate': 0.1})
  state, teacher, step = _setup(config)
  fn = parallel.pmap_step(step, devices=jax.devices()[:1])  # donates the state
  batch = jax.tree.map(lambda x: x[None], _batch())
  losses = []
  state = parallel.replicate(state)
  for _ in range(15):
    # One key: the same views every step, so the tiny network can fit them.
    state, metrics = fn(state, batch, jax.random.key(5), {'teacher': teacher})
    losses.append(float(metrics['loss']))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
  floats = [x for x in jax.tree.leaves((state.params, state.opt_state)) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(x.dtype == jnp.float32 for x in floats)


@pytest.mark.slow
def test_term_gradient_norms_log_each_term_and_leave_the_update_unchanged():
  """The diagnostic's update is the sum of its per-term gradients, i.e. the plain step's; each norm is that of the
  gradient of its term alone (node_weight=0 gives a zero node gradient); 8 devices log what 1 device does."""
  config = _config()
  state, teacher, step = _setup(config)
  diag_step = functools.partial(step.func, **{**step.keywords, 'term_gradient_norms': True})
  batch = _batch()
  s_plain, m_plain = helpers.run_rgrl_steps(step, state, teacher, batch, 8)
  s_diag, m_diag = helpers.run_rgrl_steps(diag_step, state, teacher, batch, 8)
  helpers.assert_trees_close(s_diag.params, s_plain.params, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(m_diag['loss'], m_plain['loss'], rtol=1e-6)
  assert 'grad_norm_node' not in m_plain
  for key in ('grad_norm_method', 'grad_norm_node', 'grad_norm_edge'):
    assert float(m_diag[key]) > 0, key
  assert -1.0 <= float(m_diag['grad_cos_method_relation']) <= 1.0
  _, m_diag1 = helpers.run_rgrl_steps(diag_step, state, teacher, batch, 1)
  for key in ('grad_norm_method', 'grad_norm_node', 'grad_norm_edge', 'grad_cos_method_relation'):
    np.testing.assert_allclose(m_diag1[key], m_diag[key], rtol=2e-4, err_msg=key)

  # The method's gradient norm is that of the method's loss alone: the K=0 step's gradient.
  kwargs = {**step.keywords, 'term_gradient_norms': True, 'K': 0.0}
  _, m_k0 = helpers.run_rgrl_steps(functools.partial(step.func, **kwargs), state, teacher, batch, 1, steps=1)
  _, m_k1 = helpers.run_rgrl_steps(diag_step, state, teacher, batch, 1, steps=1)
  np.testing.assert_allclose(m_k0['grad_norm_method'], m_k1['grad_norm_method'], rtol=1e-4)
  assert float(m_k0['grad_norm_node']) == 0 and float(m_k0['grad_norm_edge']) == 0


def test_graph_corr_is_one_for_the_teachers_own_graph_and_drops_for_noise():
  t = jax.random.normal(jax.random.key(0), (16, 8))
  same = relation.relation_diagnostics(t, t)
  np.testing.assert_allclose(same['graph_corr'], 1.0, rtol=1e-5)
  other = relation.relation_diagnostics(t, jax.random.normal(jax.random.key(1), (16, 8)))
  assert abs(float(other['graph_corr'])) < 0.5
  # numpy reference on the off-diagonal entries
  a = np.asarray(relation.relation_graph(t))
  s = jax.random.normal(jax.random.key(1), (16, 8))
  b = np.asarray(relation.relation_graph(s))
  off = ~np.eye(16, dtype=bool)
  np.testing.assert_allclose(other['graph_corr'], np.corrcoef(a[off], b[off])[0, 1], rtol=1e-4)
