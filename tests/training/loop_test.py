"""The training loop's bookkeeping, with a fake step (no model): logging, checkpoints, NaN guard, SIGTERM, resume,
and what `train` does with a stage that is complete already."""

import dataclasses
import os
import signal

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rmdnet_jax.training import checkpoints, config_checks, loop, metrics


@flax.struct.dataclass
class FakeState:
  step: jax.Array  # a resume reads the step from the restored state, as from a TrainState
  w: jax.Array


class RecordingWriter:

  def __init__(self):
    self.rows = []

  def write_scalars(self, step, scalars):
    self.rows.append((step, dict(scalars)))

  def flush(self):
    pass


def _fake_step(nan_at=None, sigterm_at=None, inf_params_at=None, huge_loss_at=None):
  def step(state, batch, rng, ctx):
    del rng, ctx
    n = int(state.step)
    if sigterm_at is not None and n == sigterm_at:
      os.kill(os.getpid(), signal.SIGTERM)
    loss = jnp.float32(np.nan if n == nan_at else 1e20 if n == huge_loss_at else 1.0 / (n + 1))
    w = state.w + batch
    if n == inf_params_at:  # the update overflowed while the loss it came from was still finite
      w = w.at[0].set(jnp.inf)
    return FakeState(step=state.step + 1, w=w), {'loss': loss}

  return step


@pytest.fixture(autouse=True)
def unmapped_feed(monkeypatch):
  """`loop.feed` without the pmap: the fake steps read Python ints and send signals, which a traced step cannot."""

  def feed(stage, start_step, resident_on_device):
    del resident_on_device
    return stage.step, iter([jnp.ones(3)] * (stage.schedule.num_steps - start_step)), dict(stage.ctx)

  monkeypatch.setattr(loop, 'feed', feed)


def _stage(step_fn, num_steps=6, **schedule):
  return loop.Stage(
      name='s',
      step=step_fn,
      init_state=FakeState(step=jnp.int32(0), w=jnp.zeros(3)),
      arrays={'x': np.ones((8, 3), np.float32)},
      schedule=loop.Schedule(
          num_steps=num_steps,
          steps_per_epoch=2,
          **{'log_every_steps': 2, 'eval_every_steps': 0, 'checkpoint_every_steps': 2, **schedule},
      ),
      learning_rate_fn=lambda s: 0.1,
      global_batch_size=4,
      seed=0,
      stream=0,
      rng=jax.random.key(0),
      meta={'stage': 's'},
      evaluate=lambda st: {'acc': 0.5},
  )


def _train(tmp_path, step_fn, num_steps=6, **schedule):
  writer = RecordingWriter()
  final = loop.train(_stage(step_fn, num_steps, **schedule), workdir=str(tmp_path), writer=writer)
  return final, checkpoints.manager(str(tmp_path / 's')), writer


def test_logs_means_per_interval_and_checkpoints(tmp_path):
  final, mngr, writer = _train(tmp_path, _fake_step())
  assert int(final.step) == 6
  assert mngr.all_steps() == [2, 4, 6]
  logged = [(s, r['s/loss']) for s, r in writer.rows if 's/loss' in r]
  assert [s for s, _ in logged] == [2, 4, 6]
  np.testing.assert_allclose(logged[0][1], (1 + 1 / 2) / 2)  # mean of the interval's two losses
  assert any('s/acc' in r for _, r in writer.rows)  # eval at the end
  assert all(r['s/images_per_second'] > 0 for _, r in writer.rows if 's/images_per_second' in r)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  with pytest.raises(loop.NonFiniteLossError, match='last good checkpoint \\(step 2\\)'):
    _train(tmp_path, _fake_step(nan_at=2))
  mngr = checkpoints.manager(str(tmp_path / 's'))
  assert mngr.latest_step() == 2  # the step-4 state (after the NaN) was never saved


def test_non_finite_loss_is_caught_before_a_checkpoint_between_logs(tmp_path):
  # Logs every 4 steps but checkpoints every 2: the NaN at step 2 must not reach checkpoint 4.
  with pytest.raises(loop.NonFiniteLossError):
    _train(tmp_path, _fake_step(nan_at=2), log_every_steps=4)
  assert checkpoints.manager(str(tmp_path / 's')).latest_step() == 2


def test_non_finite_parameters_with_a_finite_loss_are_never_checkpointed(tmp_path):
  with pytest.raises(
      loop.NonFiniteLossError,
      match='non-finite parameters between steps 2 and 4; the last good checkpoint \\(step 2\\)',
  ):
    _train(tmp_path, _fake_step(inf_params_at=2), log_every_steps=4)
  assert checkpoints.manager(str(tmp_path / 's')).all_steps() == [2]


def test_divergence_before_any_checkpoint_says_there_is_none(tmp_path):
  with pytest.raises(loop.NonFiniteLossError) as error:
    _train(tmp_path, _fake_step(inf_params_at=0))
  assert 'no checkpoint had been written yet' in str(error.value) and 'step 0' not in str(error.value)
  assert checkpoints.manager(str(tmp_path / 's')).all_steps() == []


def test_an_absurd_finite_loss_is_divergence(tmp_path):
  with pytest.raises(loop.NonFiniteLossError, match='diverged loss .* above 1e\\+15'):
    _train(tmp_path, _fake_step(huge_loss_at=3))
  assert checkpoints.manager(str(tmp_path / 's')).all_steps() == [2]


def test_sigterm_checkpoints_after_the_current_step_and_exits(tmp_path):
  with pytest.raises(loop.Preempted, match='after step 4') as stopped:
    _train(tmp_path, _fake_step(sigterm_at=3), checkpoint_every_steps=0)
  assert stopped.value.code == loop.PREEMPTED_EXIT_CODE == 75  # EX_TEMPFAIL: not a failure
  mngr = checkpoints.manager(str(tmp_path / 's'))
  assert mngr.latest_step() == 4
  assert signal.getsignal(signal.SIGTERM) is not None  # handler restored


def test_jsonl_writer_round_trip(tmp_path):
  writer = metrics.JsonlWriter(str(tmp_path / 'm.jsonl'))
  writer.write_scalars(3, {'a': np.float32(0.5), 'b': 2})
  assert metrics.read_jsonl(str(tmp_path / 'm.jsonl')) == [{'step': 3, 'a': 0.5, 'b': 2.0}]


def test_resume_continues_from_the_latest_checkpoint_and_a_complete_stage_only_summarises(tmp_path):
  with pytest.raises(loop.Preempted):
    _train(tmp_path, _fake_step(sigterm_at=1), checkpoint_every_steps=0)
  started, summaries = [], []
  stage = dataclasses.replace(
      _stage(_fake_step()),
      before_training=lambda: started.append(True),
      summarize=lambda state, workdir: summaries.append(int(state.step)) or {'count': int(state.step)},
  )
  writer = RecordingWriter()
  final = loop.train(stage, workdir=str(tmp_path), writer=writer)
  assert int(final.step) == 6 and started == [True]
  assert [s for s, r in writer.rows if 's/loss' in r] == [4, 6]  # resumed after step 2, not from 0
  assert stage.report == {'count': 6}
  # Complete: nothing is run again (no before_training, no steps), only the summary.
  again = dataclasses.replace(stage, report={})
  writer = RecordingWriter()
  assert int(loop.train(again, workdir=str(tmp_path), writer=writer).step) == 6
  assert started == [True] and writer.rows == [] and again.report == {'count': 6}
  assert summaries == [6, 6]


def test_schedule_for_stage_and_a_batch_larger_than_the_data():
  stage_config = ml_collections.ConfigDict(
      {'epochs': 3, 'batch_size': 64, 'eval_every_epochs': 1, 'checkpoint_every_epochs': 2}
  )
  schedule = loop.Schedule.for_stage(stage_config, num_examples=200)
  assert schedule == loop.Schedule(
      num_steps=9, steps_per_epoch=3, log_every_steps=3, eval_every_steps=3, checkpoint_every_steps=6
  )
  with pytest.raises(config_checks.ConfigError, match='batch size 64 exceeds the 50 training examples'):
    loop.Schedule.for_stage(stage_config, num_examples=50)
