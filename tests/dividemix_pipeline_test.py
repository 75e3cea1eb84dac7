"""DivideMix through the pipeline: warm-up, then the per-epoch GMM division (an epoch hook on the host) stored in the
train state and so in its checkpoint (which resume restores with the rest of the state, tests/run/pipeline_test.py)."""

import json
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from rmdnet_jax.run import pipeline
from tests import helpers


@pytest.mark.slow
def test_dividemix_run_divides_after_warmup_into_the_checkpointed_state(tmp_path):
  config = helpers.tiny_config(
      **{
          'stages': 'rgrl',
          'method.name': 'dividemix',
          'method.distill': False,
          'rgrl.epochs': 2,
          'method.dividemix.warmup_epochs': 1,
          'method.dividemix.rampup_epochs': 1,
          'data.synthetic_train_size': 64,
          'rgrl.track_memorization': False,
      }
  )
  workdir = str(tmp_path)
  results = pipeline.run(config, workdir)
  assert results['rgrl_steps'] == 8 and 0.0 <= results['test_accuracy_last'] <= 1.0
  mngr = ocp.CheckpointManager(os.path.join(workdir, 'rgrl'), item_names=('state', 'meta'))
  state = mngr.restore(8, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']
  p = np.asarray(state['method_state']['clean_probability'])
  assert p.shape == (2, 64) and np.all((p >= 0) & (p <= 1)) and np.ptp(p) > 0, 'the division never ran'
  leaves = state['params']['classifier']['kernel']
  assert leaves.shape[0] == 2 and not np.allclose(leaves[0], leaves[1])  # two networks, checkpointed together
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  fractions = [r['rgrl/method_labelled_fraction'] for r in rows if 'rgrl/method_labelled_fraction' in r]
  assert fractions[0] == 0.0 and fractions[-1] > 0.0  # warm-up epoch, then MixMatch on the division
