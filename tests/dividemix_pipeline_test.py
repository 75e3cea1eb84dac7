"""DivideMix through the pipeline: warm-up, then the per-epoch GMM division (an epoch hook on the host) stored in the
train state, and a preemption after the division resumed bit-exactly (the division comes back from the checkpoint).

Its own file so that the parallel test runner can put it beside the other heavy files."""
import json
import os
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rmdnet_jax import loop, parallel, pipeline
from tests import helpers


def _dividemix_config():
  return helpers.tiny_config(**{
      'stages': 'rgrl', 'method.name': 'dividemix', 'method.distill': False, 'rgrl.epochs': 2,
      'method.dividemix_warmup_epochs': 1, 'method.dividemix_rampup_epochs': 1,
      'data.synthetic_train_size': 64, 'rgrl.track_memorization': False})


def test_dividemix_run_divides_after_warmup_and_resumes_exactly(tmp_path, monkeypatch):
  def restore(workdir):
    mngr = ocp.CheckpointManager(os.path.join(workdir, 'rgrl'), item_names=('state', 'meta'))
    step = mngr.latest_step()
    return step, mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']

  reference_dir = str(tmp_path / 'reference')
  reference = pipeline.run(_dividemix_config(), reference_dir)
  step, state = restore(reference_dir)
  assert step == 8
  p = np.asarray(state['method_state']['clean_probability'])
  assert p.shape == (2, 64) and np.all((p >= 0) & (p <= 1)) and np.ptp(p) > 0, 'the division never ran'
  rows = [json.loads(line) for line in open(os.path.join(reference_dir, 'metrics.jsonl'))]
  fractions = [r['rgrl/method_labelled_fraction'] for r in rows if 'rgrl/method_labelled_fraction' in r]
  assert fractions[0] == 0.0 and fractions[-1] > 0.0  # warm-up epoch, then MixMatch on the division

  # SIGTERM during step 6 (mid second epoch, after the division): the resumed run must equal the reference.
  original = parallel.pmap_step
  calls = {'n': 0}

  def preempting_pmap_step(*args, **kwargs):
    fn = original(*args, **kwargs)

    def wrapped(*a):
      calls['n'] += 1
      if calls['n'] == 6:
        os.kill(os.getpid(), signal.SIGTERM)
      return fn(*a)

    return wrapped

  workdir = str(tmp_path / 'preempted')
  monkeypatch.setattr(parallel, 'pmap_step', preempting_pmap_step)
  with pytest.raises(loop.Preempted):
    pipeline.run(_dividemix_config(), workdir)
  monkeypatch.undo()
  assert restore(workdir)[0] == 6
  resumed = pipeline.run(_dividemix_config(), workdir)
  for a, b in zip(jax.tree.leaves(restore(reference_dir)[1]), jax.tree.leaves(restore(workdir)[1])):
    np.testing.assert_array_equal(a, b)
  assert resumed['test_accuracy_last'] == reference['test_accuracy_last']
