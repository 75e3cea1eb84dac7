"""Shared test fixtures: a tiny config, random uint8 batches, one-sentence errors and run.lock files."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from configs import default, tiny
from rmdnet_jax.core import parallel
from rmdnet_jax.datasets import data, noise
from rmdnet_jax.run import workdir as workdir_lib
from tests import xla_flags

IMAGE_SHAPE = (8, 8, 3)


# configs/tiny.py shrunk further: width 4, 8x8 images, 64 training images, 16-d projector, one epoch per stage.
TINY_OVERRIDES = {
    'data.synthetic_image_size': 8,
    'data.synthetic_train_size': 64,
    'data.synthetic_test_size': 32,
    'model.width': 4,
    'student.width': 4,
    'model.projector_dim': 16,
    'model.predictor_dim': 32,
    'rm.batch_size': 16,
    'rgrl.batch_size': 16,
    'rm.epochs': 1,
    'rgrl.epochs': 1,
    'rm.knn_k': 5,
    'eval_batch_size': 32,
}

# The epochs of tests/run/pipeline_test.py's runs. Test files whose runs can share that config use them too: the
# learning-rate schedule, so the number of steps, is compiled into each step, and with the same config their programs
# come from the session's compilation cache (tests/conftest.py) once pipeline_test has compiled them.
SHARED_EPOCHS = {'rm.epochs': 2, 'rgrl.epochs': 2}


def tiny_config(**overrides):
  """configs/tiny.py with TINY_OVERRIDES, then `overrides` ({'rgrl.epochs': 2, ...})."""
  config = tiny.get_config()
  for key, value in {**TINY_OVERRIDES, **overrides}.items():
    target = config
    *path, leaf = key.split('.')
    for p in path:
      target = target[p]
    target[leaf] = value
  return config


def images(n, seed=0, shape=IMAGE_SHAPE):
  return np.random.default_rng(seed).integers(0, 256, (n,) + shape, dtype=np.uint8)


def labels(n, num_classes=10, seed=1):
  return np.random.default_rng(seed).integers(0, num_classes, (n,)).astype(np.int32)


def to_host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  a, b = to_host(a), to_host(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def assert_same_dataset(a, b):
  """Two `data.Dataset`s hold the same arrays (dtypes included), CIFAR-N columns and metadata."""
  for field in ('train_images', 'train_labels', 'test_images', 'test_labels', 'train_ids', 'train_coarse_labels'):
    x, y = getattr(a, field), getattr(b, field)
    if x is None or y is None:
      assert x is None and y is None, field
      continue
    assert x.dtype == y.dtype, field
    np.testing.assert_array_equal(x, y, err_msg=field)
  assert a.train_human_labels.keys() == b.train_human_labels.keys()
  for key in a.train_human_labels:
    assert a.train_human_labels[key].dtype == b.train_human_labels[key].dtype == np.int64
    np.testing.assert_array_equal(a.train_human_labels[key], b.train_human_labels[key], err_msg=key)
  assert (a.name, a.num_classes, a.mean, a.std, a.train_ids_are_cifar_indices) == (
      b.name,
      b.num_classes,
      b.mean,
      b.std,
      b.train_ids_are_cifar_indices,
  )


def run_rgrl_steps(step, state, teacher, batch, num_devices, steps=2):
  """`steps` pmapped RGRL steps on the first `num_devices` devices with the global `batch` split over them."""
  fn = parallel.pmap_step(step, donate_state=False, devices=jax.devices()[:num_devices])
  sharded = jax.tree.map(lambda x: x.reshape((num_devices, -1) + x.shape[1:]), batch)
  for i in range(steps):
    state, metrics = fn(state, sharded, jax.random.fold_in(jax.random.key(5), i), {'teacher': teacher})
  return state, metrics


def noisy_labels_for_run(config, dataset, workdir):
  """The run's noisy labels as `pipeline.run` makes them: made (and saved) or reloaded from WORKDIR."""
  noisy, save = noise.labels_for_run(config.noise, dataset, str(workdir))
  save()
  return noisy


def assert_one_sentence(text: str):
  """An error message for a user: one line, one sentence (an 'e.g. ' does not end it), ending with a full stop."""
  assert '\n' not in text and text.endswith('.'), text
  assert text.count('. ') <= text.count('e.g. '), text


def lock_of(pid: int, host: str = None, **extra) -> str:
  """The text of a WORKDIR/run.lock held by process `pid` on `host` (this host by default)."""
  return json.dumps(
      {
          'pid': pid,
          'host': host or socket.gethostname(),
          'started': '2026-01-01 00:00:00 UTC',
          'process_start': workdir_lib._process_start_time(pid),
          **extra,
      }
  )


def dead_pid() -> int:
  """The pid of a process that has ended."""
  process = subprocess.Popen(['true'])
  process.wait()
  return process.pid


# The method keys of a config.json saved before method settings were nested (commit ea084db; configs/default.py's
# values then), as dotted keys.
FLAT_METHOD_DEFAULTS = {
    'method.name': 'ce',
    'method.distill': True,
    'method.gce_q': 0.7,
    'method.sce_alpha': 0.1,
    'method.sce_beta': 1.0,
    'method.sce_log_zero': -4.0,
    'method.forget_rate': 0.5,
    'method.forget_gradual_epochs': 10,
    'method.forget_exponent': 1.0,
    'method.jocor_lambda': 0.9,
    'method.elr_lambda': 3.0,
    'method.elr_beta': 0.7,
    'method.dividemix_warmup_epochs': 10,
    'method.dividemix_p_threshold': 0.5,
    'method.dividemix_temperature': 0.5,
    'method.dividemix_alpha': 4.0,
    'method.dividemix_lambda_u': 25.0,
    'method.dividemix_rampup_epochs': 16,
    'method.dividemix_confidence_penalty': False,
    'method.dividemix_gmm_iterations': 10,
    'method.dividemix_gmm_tol': 1e-2,
    'method.dividemix_gmm_reg_covar': 5e-4,
}


def data_config(**overrides):
  """`configs/default.py`'s data config with `overrides` applied."""
  cfg = default.get_config().data
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


def tfds_config(name: str, **overrides):
  return data_config(source='tfds', name=name, num_classes=data.DATASETS[name]['num_classes'], **overrides)


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config_flags(**overrides) -> list[str]:
  """The command-line form of tiny_config(**overrides): --config=configs/tiny.py and one --config.KEY=VALUE each."""
  return ['--config=configs/tiny.py'] + [f'--config.{k}={v}' for k, v in {**TINY_OVERRIDES, **overrides}.items()]


def child_env(**extra) -> dict:
  """The environment of a `python -m rmdnet_jax.main` the tests start: one CPU device and the child runs'
  fast-compile flags (tests/xla_flags.CHILD_RUNS), and `extra`."""
  return dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3', XLA_FLAGS=xla_flags.CHILD_RUNS, **extra)


def run_main(*args, timeout=300):
  """`python -m rmdnet_jax.main ARGS` as a user types it, from the repository root, in child_env()."""
  return subprocess.run(
      [sys.executable, '-m', 'rmdnet_jax.main', *args],
      cwd=REPO_ROOT,
      env=child_env(),
      capture_output=True,
      text=True,
      timeout=timeout,
  )


def assert_user_error(result, *needles) -> str:
  """The command failed with one `error: ...` sentence containing every needle, and no traceback; returns the
  sentence."""
  assert result.returncode != 0, result.stdout[-2000:]
  assert 'Traceback' not in result.stderr and 'Traceback' not in result.stdout, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert len(lines) == 1, result.stderr[-3000:]
  sentence = lines[0][len('error: ') :]
  assert_one_sentence(sentence)
  for needle in needles:
    assert needle in sentence, sentence
  return sentence
