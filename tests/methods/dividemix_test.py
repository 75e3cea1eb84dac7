"""rmdnet_jax/methods/dividemix.py: the MixMatch loss against a float64 numpy reference (on 1 and on 8 devices),
the warm-up loss, the co-divide epoch hook, the whole RGRL step on 8 devices equal to 1 device, and its settings'
checks. The pipeline with the ResNet student is tests/dividemix_pipeline_test.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmdnet_jax.methods import base, dividemix
from tests.methods import method_helpers

B, C = method_helpers.PROBLEM_BATCH, method_helpers.C
softmax, log_softmax = method_helpers.softmax, method_helpers.log_softmax

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
  l1, l2, y = method_helpers.problem(5)
  rng = np.random.default_rng(6)
  n = 24
  index = rng.permutation(n)[:B]
  probs_clean = rng.uniform(size=(2, n))
  view, view_2 = rng.normal(size=(B, 2, 2, 3)), rng.normal(size=(B, 2, 2, 3))
  hp = dict(p_threshold=0.5, temperature=0.5, alpha=4.0, lambda_u=25.0, warmup=2, rampup=16)
  method = method_helpers.method_for('dividemix', warmup_epochs=2, rampup_epochs=16, lambda_u=25.0)
  progress = 6.25
  losses, _, metrics = method_helpers.run_loss(
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
  l1, l2, y = method_helpers.problem(7)
  for penalty in (False, True):
    method = method_helpers.method_for('dividemix', warmup_epochs=10, confidence_penalty=penalty)
    losses, _, _ = method_helpers.run_loss(
        method,
        (l1, l2),
        y,
        num_devices=1,
        progress=9.9,
        method_state={'clean_probability': jnp.zeros((2, B))},
        forward=fake_forward,
    )
    want = [
        method_helpers.per_example_ce(l, y).mean()
        + (np.mean(np.sum(softmax(l) * log_softmax(l), -1)) if penalty else 0.0)
        for l in (l1, l2)
    ]
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


def test_step_8_devices_equals_1_device():
  def with_a_division(state):
    # A division as if made by the epoch hook: some examples labelled for each network.
    probs = np.random.default_rng(1).uniform(size=state.method_state['clean_probability'].shape)
    return state.replace(method_state={'clean_probability': probs.astype(np.float32)})

  method_helpers.assert_step_8_devices_equals_1_device('dividemix', dict(warmup_epochs=0), with_a_division)


@pytest.mark.parametrize(
    'key, value, message',
    [
        ('dividemix.warmup_epochs', -1, 'method.dividemix.warmup_epochs'),
        ('dividemix.rampup_epochs', 0, 'method.dividemix.rampup_epochs'),
        ('dividemix.p_threshold', 1.5, 'method.dividemix.p_threshold'),
        ('dividemix.temperature', 0.0, 'method.dividemix.temperature'),
        ('dividemix.lambda_u', float('inf'), 'method.dividemix.lambda_u'),
        ('dividemix.gmm_iterations', 0, 'method.dividemix.gmm_iterations'),
        ('dividemix.gmm_reg_covar', 0.0, 'method.dividemix.gmm_reg_covar'),
        ('dividemix.gmm_iterations', True, 'method.dividemix.gmm_iterations=True must be an integer'),
        ('dividemix.confidence_penalty', None, 'method.dividemix.confidence_penalty=None must be True or False'),
    ],
)
def test_config_checks_reject_bad_settings(key, value, message):
  method_helpers.assert_validation_refuses(key, value, message)
