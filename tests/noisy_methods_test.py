"""Co-teaching, JoCoR, ELR and DivideMix: each loss against a float64 numpy reference on a small batch (run
through the pmapped interface on 1 and on 8 devices), their selection logic on constructed cases with a known
answer (small-loss ranking, forget-rate schedule, GMM split), and each method's whole RGRL step on 8 devices
equal to 1 device."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax import lax

from configs import default
from rmdnet_jax import data, distill, methods, parallel
from rmdnet_jax import train_state as train_state_lib
from rmdnet_jax.methods import base, dividemix, gmm
from tests import helpers

B, C = 16, 5


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def ce(logits, labels):
  return -log_softmax(logits)[np.arange(len(labels)), labels]


def kl(p_logits, q_logits):
  return np.sum(softmax(p_logits) * (log_softmax(p_logits) - log_softmax(q_logits)), -1)


def problem(seed=0, n=B, scale=2.0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, C)) * scale, rng.normal(size=(n, C)) * scale, rng.integers(0, C, n))


def method_for(name, **settings):
  """`name` bound to its default settings block with `settings` overridden."""
  config = default.get_config().method
  config.name = name
  for key, value in settings.items():
    config[name][key] = value
  return methods.make_method(config)


def run_loss(
    method,
    logits,
    labels,
    *,
    num_devices,
    index=None,
    method_state=None,
    progress=0.0,
    rng_seed=3,
    view=None,
    view_2=None,
    forward=None,
):
  """The method's global loss (device mean of the shares), new state and metrics on `num_devices` devices."""
  n = len(labels)
  index = np.arange(n) if index is None else index
  view = np.zeros((n, 2, 2, 3)) if view is None else view
  view_2 = np.zeros_like(view) if view_2 is None else view_2
  sharded = jax.tree.map(
      lambda x: jnp.asarray(x).reshape((num_devices, -1) + x.shape[1:]), (tuple(logits), labels, index, view, view_2)
  )

  def f(logits, labels, index, view, view_2):
    out = method.loss(
        base.LossInputs(
            logits=logits,
            labels=labels,
            index=index,
            method_state=method_state or {},
            progress=jnp.asarray(progress, jnp.float32),
            rng=jax.random.key(rng_seed),
            view=view,
            second_view=lambda: view_2,
            forward=forward,
        )
    )
    return (
        lax.pmean(jnp.stack(out.losses), parallel.AXIS),
        out.method_state,
        lax.pmean(dict(out.metrics), parallel.AXIS),
    )

  fn = jax.pmap(f, axis_name=parallel.AXIS, out_axes=None, devices=jax.devices()[:num_devices])
  return jax.device_get(fn(*sharded))


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


# --- selection logic on constructed cases ----------------------------------------------------------------------


@pytest.mark.parametrize('num_devices', [1, 8])
def test_small_loss_mask_keeps_the_smallest_of_the_global_batch(num_devices):
  losses = np.array([5.0, 1.0, 7.0, 1.0, 0.0, 9.0, 3.0, 2.0, 8.0, 6.0, 4.0, 1.0, 10.0, 11.0, 12.0, 13.0], np.float32)
  fn = jax.pmap(lambda x: base.small_loss_mask(x, 5), axis_name=parallel.AXIS, devices=jax.devices()[:num_devices])
  mask = np.asarray(fn(losses.reshape(num_devices, -1))).reshape(-1)
  # 0 (pos 4), the three 1s (pos 1, 3, 11) and 2 (pos 7): a tie-free cut; the ones at 1 are all kept.
  np.testing.assert_array_equal(np.flatnonzero(mask), [1, 3, 4, 7, 11])
  fn3 = jax.pmap(lambda x: base.small_loss_mask(x, 2), axis_name=parallel.AXIS, devices=jax.devices()[:num_devices])
  # Cut inside the tie at 1: the earlier global positions win, whatever the device split.
  np.testing.assert_array_equal(np.flatnonzero(np.asarray(fn3(losses.reshape(num_devices, -1))).reshape(-1)), [1, 4])


def test_forget_rate_schedule_matches_coteachings_linspace():
  forget_rate, gradual, exponent = 0.45, 10, 1.0
  reference = np.ones(30) * forget_rate
  reference[:gradual] = np.linspace(0, forget_rate**exponent, gradual)
  got = [
      float(base.forget_rate_schedule(e, forget_rate=forget_rate, gradual_epochs=gradual, exponent=exponent))
      for e in range(30)
  ]
  np.testing.assert_allclose(got, reference, rtol=1e-6, atol=1e-7)
  assert int(base.num_to_keep(jnp.float32(0.45), 128)) == int((1 - 0.45) * 128)
  assert int(base.num_to_keep(jnp.float32(0.2), 10)) == 8  # no float round-down to 7


def test_gmm_splits_a_known_mixture_and_agrees_with_sklearn():
  from sklearn import mixture

  rng = np.random.default_rng(0)
  clean = rng.normal(0.5, 0.2, 800).clip(0)
  noisy = rng.normal(4.0, 0.5, 200)
  losses = np.concatenate([clean, noisy])
  p = gmm.clean_probability(losses)
  assert np.all(p[:800] > 0.99) and np.all(p[800:] < 0.01)
  normalised = (losses - losses.min()) / (losses.max() - losses.min())
  reference = mixture.GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=0)
  reference.fit(normalised[:, None])
  want = reference.predict_proba(normalised[:, None])[:, reference.means_.argmin()]
  np.testing.assert_allclose(p, want, atol=1e-3)


def test_gmm_refuses_non_finite_losses():
  with pytest.raises(ValueError, match='non-finite'):
    gmm.fit(np.array([0.1, np.nan, 0.3]))


# --- losses against numpy references ---------------------------------------------------------------------------


@pytest.mark.parametrize('num_devices', [1, 8])
def test_coteaching_loss_matches_numpy(x64, num_devices):
  l1, l2, y = problem(1)
  method = method_for('coteaching', forget_rate=0.5, forget_gradual_epochs=10, forget_exponent=1.0)
  losses, _, metrics = run_loss(method, (l1, l2), y, num_devices=num_devices, progress=7.5)
  rate = 0.5 * 7 / 9
  keep = int((1 - rate) * B)
  c1, c2 = ce(l1, y), ce(l2, y)
  sel1, sel2 = np.argsort(c1, kind='stable')[:keep], np.argsort(c2, kind='stable')[:keep]
  np.testing.assert_allclose(losses, [c1[sel2].mean(), c2[sel1].mean()], rtol=1e-10)
  np.testing.assert_allclose(metrics['forget_rate'], rate, rtol=1e-6)


@pytest.mark.parametrize('num_devices', [1, 8])
def test_jocor_loss_matches_numpy(x64, num_devices):
  l1, l2, y = problem(2)
  method = method_for('jocor', co_lambda=0.7, forget_rate=0.25, forget_gradual_epochs=0)
  losses, _, _ = run_loss(method, (l1, l2), y, num_devices=num_devices, progress=3.0)
  joint = 0.3 * (ce(l1, y) + ce(l2, y)) + 0.7 * (kl(l2, l1) + kl(l1, l2))
  keep = int(0.75 * B)
  want = np.sort(joint)[:keep].mean()
  np.testing.assert_allclose(losses, [want / 2, want / 2], rtol=1e-10)


@pytest.mark.parametrize('num_devices', [1, 8])
def test_elr_loss_and_target_update_match_numpy(x64, num_devices):
  l1, _, y = problem(3)
  n = 40
  rng = np.random.default_rng(4)
  index = rng.permutation(n)[:B]
  targets = softmax(rng.normal(size=(n, C)))
  method = method_for('elr', reg_lambda=3.0, beta=0.7)
  losses, state, metrics = run_loss(
      method, (l1,), y, num_devices=num_devices, index=index, method_state={'targets': jnp.asarray(targets)}
  )
  p = softmax(l1).clip(1e-4, 1 - 1e-4)
  want_targets = targets.copy()
  want_targets[index] = 0.7 * targets[index] + 0.3 * p / p.sum(-1, keepdims=True)
  np.testing.assert_allclose(state['targets'], want_targets, rtol=1e-12)
  regulariser = np.mean(np.log(1 - np.sum(want_targets[index] * p, -1)))
  np.testing.assert_allclose(losses, [ce(l1, y).mean() + 3.0 * regulariser], rtol=1e-10)
  np.testing.assert_allclose(metrics['elr_regulariser'], regulariser, rtol=1e-10)
  untouched = np.setdiff1d(np.arange(n), index)
  np.testing.assert_array_equal(state['targets'][untouched], targets[untouched])


def test_elr_state_starts_at_zero_and_is_sized_by_the_dataset():
  state = method_for('elr').init_state(50, 10)
  assert state['targets'].shape == (50, 10) and not np.any(state['targets'])


W = np.random.default_rng(9).normal(size=(2, 12, C))


def fake_forward(i, x):
  """A linear 'network' of the 2x2x3 images, so the numpy reference can run the same forward passes."""
  return jnp.reshape(x, (x.shape[0], -1)) @ jnp.asarray(W)[i]


def sharpen(p, t):
  p = p ** (1 / t)
  return p / p.sum(-1, keepdims=True)


def dividemix_reference(l1, l2, y, index, probs_clean, view, view_2, rng_seed, progress, hp):
  logits_v1 = (l1, l2)
  p = [[softmax(logits_v1[k]), softmax(view_2.reshape(B, -1) @ W[k])] for k in range(2)]
  losses = []
  for i in range(2):
    j = 1 - i
    w = probs_clean[j][index][:, None]
    labelled = probs_clean[j][index] > hp['p_threshold']
    refined = sharpen(w * np.eye(C)[y] + (1 - w) * 0.5 * (p[i][0] + p[i][1]), hp['temperature'])
    guessed = sharpen(0.25 * (p[0][0] + p[0][1] + p[1][0] + p[1][1]), hp['temperature'])
    t = np.where(labelled[:, None], refined, guessed)
    x, tt, lab = np.concatenate([view, view_2]), np.concatenate([t, t]), np.concatenate([labelled, labelled])
    beta_key, perm_key = jax.random.split(jax.random.fold_in(jax.random.key(rng_seed), i))
    lam = float(jax.random.beta(beta_key, hp['alpha'], hp['alpha']))
    lam = max(lam, 1 - lam)
    perm = np.asarray(jax.random.permutation(perm_key, 2 * B))
    mx, mt = lam * x + (1 - lam) * x[perm], lam * tt + (1 - lam) * tt[perm]
    logits = mx.reshape(2 * B, -1) @ W[i]
    pm = softmax(logits)
    lx = np.mean(-np.sum(mt * log_softmax(logits), -1)[lab])
    lu = np.mean(np.mean((pm - mt) ** 2, -1)[~lab])
    weight = hp['lambda_u'] * np.clip((progress - hp['warmup']) / hp['rampup'], 0, 1)
    prior = np.full(C, 1 / C)
    penalty = np.sum(prior * np.log(prior / pm.mean(0)))
    losses.append(lx + weight * lu + penalty)
  return losses


@pytest.mark.parametrize('num_devices', [1, 8])
def test_dividemix_mixmatch_loss_matches_numpy(x64, num_devices):
  l1, l2, y = problem(5)
  rng = np.random.default_rng(6)
  n = 24
  index = rng.permutation(n)[:B]
  probs_clean = rng.uniform(size=(2, n))
  view, view_2 = rng.normal(size=(B, 2, 2, 3)), rng.normal(size=(B, 2, 2, 3))
  hp = dict(p_threshold=0.5, temperature=0.5, alpha=4.0, lambda_u=25.0, warmup=2, rampup=16)
  method = method_for('dividemix', warmup_epochs=2, rampup_epochs=16, lambda_u=25.0)
  progress = 6.25
  losses, _, metrics = run_loss(
      method,
      (l1, l2),
      y,
      num_devices=num_devices,
      index=index,
      method_state={'clean_probability': jnp.asarray(probs_clean)},
      progress=progress,
      view=view,
      view_2=view_2,
      forward=fake_forward,
  )
  want = dividemix_reference(l1, l2, y, index, probs_clean, view, view_2, 3, progress, hp)
  np.testing.assert_allclose(losses, want, rtol=1e-9)
  np.testing.assert_allclose(metrics['lambda_u'], 25.0 * (progress - 2) / 16, rtol=1e-9)
  labelled = [(probs_clean[j][index] > 0.5).mean() for j in (1, 0)]
  np.testing.assert_allclose(metrics['labelled_fraction'], np.mean(labelled), rtol=1e-9)


def test_dividemix_warmup_is_cross_entropy_with_optional_penalty(x64):
  l1, l2, y = problem(7)
  for penalty in (False, True):
    method = method_for('dividemix', warmup_epochs=10, confidence_penalty=penalty)
    losses, _, _ = run_loss(
        method,
        (l1, l2),
        y,
        num_devices=1,
        progress=9.9,
        method_state={'clean_probability': jnp.zeros((2, B))},
        forward=fake_forward,
    )
    want = [ce(l, y).mean() + (np.mean(np.sum(softmax(l) * log_softmax(l), -1)) if penalty else 0.0) for l in (l1, l2)]
    np.testing.assert_allclose(losses, want, rtol=1e-10)


def test_dividemix_divide_is_skipped_in_warmup_and_splits_after():
  rng = np.random.default_rng(8)
  labels = rng.integers(0, C, 200)
  logits = rng.normal(size=(2, 200, C))
  # Make the first 150 examples confidently right (clean) and the rest confidently wrong.
  logits[:, np.arange(150), labels[:150]] += 8.0
  logits[:, np.arange(150, 200), (labels[150:] + 1) % C] += 8.0
  calls = []

  def logits_fn():
    calls.append(1)
    return logits

  settings = base.Settings(dict(warmup_epochs=3, gmm_iterations=10, gmm_tol=1e-2, gmm_reg_covar=5e-4))
  assert dividemix.divide({}, settings, epoch=2, logits_fn=logits_fn, labels=labels) is None
  assert not calls, 'warm-up epochs must not predict the training set'
  state = dividemix.divide({}, settings, epoch=3, logits_fn=logits_fn, labels=labels)
  p = state['clean_probability']
  assert p.shape == (2, 200) and p.dtype == np.float32
  assert np.all(p[:, :150] > 0.9) and np.all(p[:, 150:] < 0.1)


# --- whole steps: 8 devices = 1 device -------------------------------------------------------------------------


class MlpStudent(nn.Module):
  """A student small enough that compiling every method's step twice (8 devices, 1 device) stays cheap: the step
  code is the same whatever the network (`state.apply_fn`); the ResNet student runs in distill_test and the
  DivideMix pipeline test. BatchNorm syncs over the device axis, as the ResNet's does."""

  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = True):
    h = nn.Dense(16)(x.reshape(x.shape[0], -1))
    h = nn.relu(nn.BatchNorm(use_running_average=not train, axis_name=parallel.AXIS if train else None)(h))
    return {'features': h, 'logits': nn.Dense(self.num_classes)(h), 'embedding': nn.Dense(8)(h)}


def _step_setup(name, **settings):
  config = helpers.tiny_config(
      **{'method.name': name, 'rgrl.learning_rate': 0.05, **{f'method.{name}.{k}': v for k, v in settings.items()}}
  )
  method = methods.make_method(config.method)
  num_examples = 32
  model = MlpStudent()
  nets = [
      model.init(k, jnp.zeros((2,) + helpers.IMAGE_SHAPE), train=False)
      for k in jax.random.split(jax.random.key(0), method.num_networks)
  ]
  tx = train_state_lib.make_optimizer(config.rgrl, train_state_lib.learning_rate_schedule(config.rgrl, 4))
  state = helpers.to_host(
      train_state_lib.StudentTrainState.create(
          apply_fn=model.apply,
          params=distill.stack_networks([v['params'] for v in nets]),
          batch_stats=distill.stack_networks([v['batch_stats'] for v in nets]),
          tx=tx,
          method_state=method.init_state(num_examples, config.data.num_classes),
      )
  )
  # A fixed random projection as the frozen teacher's features.
  teacher = {'w': np.random.default_rng(11).normal(size=(int(np.prod(helpers.IMAGE_SHAPE)), 8)).astype(np.float32)}
  step = functools.partial(
      distill.distill_step,
      teacher_apply=lambda t, x: x.reshape(x.shape[0], -1) @ t['w'],
      method=method,
      K=config.relation.K,
      relation_kwargs=distill.relation_kwargs(config),
      view_kwargs=distill.view_kwargs(config.rgrl.augment, data.CIFAR10_MEAN, data.CIFAR10_STD),
      steps_per_epoch=2,
  )
  rng = np.random.default_rng(0)
  batch = {
      'images': helpers.images(16),
      'labels': helpers.labels(16),
      'index': rng.permutation(num_examples)[:16].astype(np.int32),
  }
  return state, teacher, step, batch


# Every method with RMDNet's relation terms on (one set per network for the two-network methods).
STEP_CASES = {
    'coteaching': dict(forget_rate=0.5, forget_gradual_epochs=0),
    'jocor': dict(forget_rate=0.25, forget_gradual_epochs=0),
    'elr': {},
    'dividemix': dict(warmup_epochs=0),
}


@pytest.mark.parametrize('name', sorted(STEP_CASES))
def test_method_step_8_devices_equals_1_device(name):
  state, teacher, step, batch = _step_setup(name, **STEP_CASES[name])
  if name == 'dividemix':
    # A division as if made by the epoch hook: some examples labelled for each network.
    probs = np.random.default_rng(1).uniform(size=state.method_state['clean_probability'].shape)
    state = state.replace(method_state={'clean_probability': probs.astype(np.float32)})
  s8, m8 = helpers.run_rgrl_steps(step, state, teacher, batch, 8)
  s1, m1 = helpers.run_rgrl_steps(step, state, teacher, batch, 1)
  for key in m1:
    np.testing.assert_allclose(m8[key], m1[key], rtol=2e-4, atol=1e-6, err_msg=key)
  helpers.assert_trees_close(s8.params, s1.params, rtol=2e-4, atol=2e-5)
  helpers.assert_trees_close(s8.batch_stats, s1.batch_stats, rtol=2e-4, atol=2e-5)
  helpers.assert_trees_close(s8.method_state, s1.method_state, rtol=2e-4, atol=1e-6)
  num_networks = methods.get_method(name).num_networks
  if num_networks == 2:
    # Two networks from different keys, each with its own relation terms: they stay different.
    first = jax.tree.leaves(s1.params)[0]
    assert first.shape[0] == 2 and not np.allclose(first[0], first[1])
  assert float(m1['node']) > 0 and float(m1['edge']) > 0
  before = jax.tree.leaves(helpers.to_host(state.params))
  assert any(not np.allclose(a, b) for a, b in zip(before, jax.tree.leaves(helpers.to_host(s1.params))))
  if name == 'elr':
    targets = np.asarray(s1.method_state['targets'])
    assert np.all(targets[batch['index']].sum(-1) > 0)
    assert not np.any(np.delete(targets, batch['index'], axis=0))
