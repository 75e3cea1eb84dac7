"""One training loop for both stages: step, log, evaluate, checkpoint, stop on SIGTERM or a non-finite loss.

The host never waits for the device inside an interval: metrics stay on the device and are summed there; they are
read once per logging interval (and before every checkpoint, so that a non-finite state is never saved).
"""
import dataclasses
import signal
import threading
import time
from typing import Any, Callable, Iterator, Optional

import jax
import numpy as np
from absl import logging
from clu import periodic_actions

from rmdnet_jax import checkpoints, parallel


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/Inf loss; the last good checkpoint is kept."""


class Preempted(SystemExit):
  """SIGTERM received: a checkpoint was written and the run stopped; rerun the same command to resume."""


@dataclasses.dataclass
class StageSchedule:
  num_steps: int
  steps_per_epoch: int
  log_every_steps: int
  eval_every_steps: int       # 0: only at the end
  checkpoint_every_steps: int


class _SigtermFlag:
  """Records SIGTERM (what a preempted TPU VM receives) so the loop can checkpoint and stop between steps."""

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: writing a checkpoint after this step, then stopping.')
    self.received = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _due(step: int, every: int, total: int) -> bool:
  """True after `step` (0-based) if `every` divides step+1, or at the last step."""
  return step + 1 == total or (every > 0 and (step + 1) % every == 0)


def train(*, stage: str, state: Any, step_fn: Callable, batches: Iterator, rng: jax.Array, start_step: int,
          schedule: StageSchedule, mngr, meta: dict, writer, learning_rate_fn: Callable,
          global_batch_size: int, eval_fn: Optional[Callable[[Any], dict]] = None,
          step_args: tuple = (), epoch_start_fn: Optional[Callable[[Any, int], Any]] = None) -> Any:
  """Runs `step_fn(state, *step_args, batch, rng_step)` from `start_step` to `schedule.num_steps`.

  Args:
    stage: 'rm' or 'rgrl' — prefix of every metric name.
    state: the (replicated) train state at `start_step`.
    step_fn: the pmapped step.
    batches: iterator of sharded host batches starting at `start_step`.
    rng: the stage's base key; step s uses fold_in(rng, s), so a resumed run draws the same keys.
    mngr: the stage's Orbax manager; meta: saved with each checkpoint.
    eval_fn: state -> dict of scalars, run every `eval_every_steps` and at the end.
    step_args: extra broadcast arguments between state and batch (the teacher, for RGRL).
    epoch_start_fn: (state, epoch) -> state, run before the first step of every epoch (also when a resume
      starts there); a method's per-epoch update such as DivideMix's division. Its result is checkpointed
      with the state, so a resume mid-epoch continues with that epoch's update.
  Returns:
    the final state.
  """
  report = periodic_actions.ReportProgress(num_train_steps=schedule.num_steps, writer=writer,
                                           every_steps=schedule.log_every_steps, every_secs=60.0)
  sums, count, interval_start = None, 0, time.perf_counter()
  last_saved = start_step

  def check_finite(step, summed):
    loss = float(summed['loss'])
    if not np.isfinite(loss):
      raise NonFiniteLossError(
          f'{stage}: non-finite loss between steps {last_saved} and {step + 1}; the last good checkpoint '
          f'(step {last_saved}) is kept in {mngr.directory}. Lower the learning rate or check the data.')

  with _SigtermFlag() as sigterm:
    for step in range(start_step, schedule.num_steps):
      if epoch_start_fn is not None and step % schedule.steps_per_epoch == 0:
        state = epoch_start_fn(state, step // schedule.steps_per_epoch)
        interval_start = time.perf_counter()
      batch = next(batches)
      state, metrics = step_fn(state, *step_args, batch, jax.random.fold_in(rng, step))
      sums = metrics if sums is None else jax.tree.map(lambda a, b: a + b, sums, metrics)
      count += 1
      report(step + 1)

      if _due(step, schedule.log_every_steps, schedule.num_steps):
        values = {k: float(v) / count for k, v in jax.device_get(sums).items()}
        check_finite(step, values)
        elapsed = time.perf_counter() - interval_start
        scalars = {f'{stage}/{k}': v for k, v in values.items()}
        scalars[f'{stage}/learning_rate'] = float(learning_rate_fn(step))
        scalars[f'{stage}/epoch'] = (step + 1) / schedule.steps_per_epoch
        scalars[f'{stage}/images_per_second'] = count * global_batch_size / elapsed
        scalars[f'{stage}/images_per_second_per_device'] = scalars[f'{stage}/images_per_second'] / \
            parallel.global_device_count()
        writer.write_scalars(step + 1, scalars)
        sums, count, interval_start = None, 0, time.perf_counter()

      if eval_fn is not None and (_due(step, schedule.eval_every_steps, schedule.num_steps)):
        writer.write_scalars(step + 1, {f'{stage}/{k}': v for k, v in eval_fn(state).items()})
        interval_start = time.perf_counter()

      if _due(step, schedule.checkpoint_every_steps, schedule.num_steps) or sigterm.received:
        if sums is not None:
          check_finite(step, jax.device_get(sums))
        checkpoints.save(mngr, step + 1, state, meta)
        last_saved = step + 1
        if sigterm.received:
          mngr.wait_until_finished()
          writer.flush()
          raise Preempted(f'{stage}: stopped by SIGTERM after step {step + 1}; checkpoint saved in '
                          f'{mngr.directory}. Rerun the same command to resume.')
  mngr.wait_until_finished()
  writer.flush()
  return state
