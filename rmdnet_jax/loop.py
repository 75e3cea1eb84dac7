"""One training loop for both stages: step, log, evaluate, checkpoint, stop on SIGTERM or divergence.

The host never waits for the device inside an interval: metrics stay on the device and are summed there; they are
read once per logging interval and before every checkpoint, together with a check that the updated parameters are
finite, so that a diverged state is never saved.

SIGTERM (a preempted TPU VM, a cluster scheduler) stops the run at a step that every process agrees on: all of
them checkpoint that step together and exit with `PREEMPTED_EXIT_CODE`. Rerunning the same command resumes.
"""

import dataclasses
import signal
import threading
import time
from typing import Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from rmdnet_jax import checkpoints, parallel, progress

# The exit status of a preempted run (EX_TEMPFAIL of sysexits.h): not a failure; rerun the same command to resume.
PREEMPTED_EXIT_CODE = 75
# A finite loss above this is divergence: every loss here (cross-entropy, GCE, SCE, SimSiam's, the relation terms,
# which are at most ~2 x batch x K) stays many orders of magnitude below it in any sensible configuration.
DIVERGED_LOSS = 1e15
# How long the processes of a multi-process run wait for each other to agree on the step at which they stop.
_AGREEMENT_TIMEOUT_MS = 10 * 60 * 1000


class NonFiniteLossError(FloatingPointError):
  """Training diverged (a NaN/Inf or absurd loss, or non-finite parameters); the last good checkpoint is kept."""


class Preempted(SystemExit):
  """SIGTERM received: a checkpoint was written and the run stopped; rerun the same command to resume.

  Exits with `PREEMPTED_EXIT_CODE` when not caught; `str()` is the message."""

  def __init__(self, message: str):
    super().__init__(message)
    self.code = PREEMPTED_EXIT_CODE


@dataclasses.dataclass
class StageSchedule:
  num_steps: int
  steps_per_epoch: int
  log_every_steps: int
  eval_every_steps: int  # 0: only at the end
  checkpoint_every_steps: int


_SIGTERM = {'received': False}


def _on_sigterm(signum, frame):
  del signum, frame
  if not _SIGTERM['received']:
    logging.warning('SIGTERM received: writing a checkpoint at the next step all processes reach, then stopping.')
  _SIGTERM['received'] = True


def install_sigterm_handler() -> None:
  """Records SIGTERM for the whole process (the CLI calls it at start-up), so that a signal that arrives outside a
  training loop (while data loads, say) stops the next one at its first step instead of killing the process."""
  signal.signal(signal.SIGTERM, _on_sigterm)


class _SigtermFlag:
  """Records SIGTERM during a training loop and decides the step after which the run stops.

  One process stops after the step during which the signal came. Several processes (`jax.distributed`) must stop
  at the same step, or the ones still training wait forever in a collective for the ones saving. The processes
  that got the signal post a notice in the JAX distributed service's key-value store; every process looks for it
  after each step (a local call while there is none), and once one sees it, posts the number of steps it has
  dispatched and waits at a barrier. All then stop after the largest posted step, which none has passed.
  """

  def __init__(self):
    self._previous = None
    self._stop_after = None
    self._posted_notice = False

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, _on_sigterm)
    return self

  def stop_after(self, steps_done: int) -> bool:
    """True when the run must checkpoint `steps_done` and stop; the same answer on every process."""
    client = _distributed_client()
    if client is None:
      return _SIGTERM['received']
    if self._stop_after is None:
      prefix = 'rmdnet/preemption'
      if _SIGTERM['received'] and not self._posted_notice:
        client.key_value_set(f'{prefix}/notice', str(jax.process_index()), allow_overwrite=True)
        self._posted_notice = True
      if self._posted_notice or _has_key(client, f'{prefix}/notice'):
        client.key_value_set(f'{prefix}/steps/{jax.process_index()}', str(steps_done), allow_overwrite=True)
        client.wait_at_barrier(f'{prefix}/barrier', _AGREEMENT_TIMEOUT_MS)
        self._stop_after = max(int(v) for _, v in client.key_value_dir_get(f'{prefix}/steps/'))
        logging.warning('Preemption: all %d processes stop after step %d.', jax.process_count(), self._stop_after)
    return self._stop_after is not None and steps_done >= self._stop_after

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _distributed_client():
  """The JAX distributed service's client when this is one of several processes, else None."""
  if jax.process_count() == 1:
    return None
  from jax._src import distributed  # noqa: PLC0415  (the client has no public accessor)

  return distributed.global_state.client


def _has_key(client, key: str) -> bool:
  try:
    client.key_value_try_get(key)
  except Exception:  # noqa: BLE001  NOT_FOUND is raised as a runtime error
    return False
  return True


@jax.jit
def _all_finite(leaves):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def state_is_finite(state: Any) -> bool:
  """Whether every floating-point leaf of the (replicated) state is finite; checks one device's copy."""
  leaves = [
      x.addressable_data(0) if isinstance(x, jax.Array) else x
      for x in jax.tree.leaves(state)
      if jnp.issubdtype(getattr(x, 'dtype', np.int32), jnp.floating)
  ]
  return not leaves or bool(_all_finite(leaves))


def _due(step: int, every: int, total: int) -> bool:
  """True after `step` (0-based) if `every` divides step+1, or at the last step."""
  return step + 1 == total or (every > 0 and (step + 1) % every == 0)


def train(
    *,
    stage: str,
    state: Any,
    step_fn: Callable,
    batches: Iterator,
    rng: jax.Array,
    start_step: int,
    schedule: StageSchedule,
    mngr,
    meta: dict,
    writer,
    learning_rate_fn: Callable,
    global_batch_size: int,
    eval_fn: Optional[Callable[[Any], dict]] = None,
    step_args: tuple = (),
    epoch_start_fn: Optional[Callable[[Any, int], Any]] = None,
    progress_options: Optional[dict] = None,
) -> Any:
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
    progress_options: keyword arguments of `progress.Progress` (`every_secs`, `bar`).
  Returns:
    the final state.
  """
  report = progress.Progress(
      stage=stage,
      start_step=start_step,
      num_steps=schedule.num_steps,
      steps_per_epoch=schedule.steps_per_epoch,
      global_batch_size=global_batch_size,
      enabled=jax.process_index() == 0,
      **(progress_options or {}),
  )
  sums, count, interval_start = None, 0, time.perf_counter()
  # A resumed stage starts from its checkpoint at start_step; a new one has none yet.
  last_saved = start_step if start_step > 0 else None

  def check_diverged(step, summed, state):
    """Raises NonFiniteLossError if the interval's mean loss is NaN, Inf or above DIVERGED_LOSS, or if the state
    after `step` holds a non-finite parameter (a loss can be finite while the update overflowed)."""
    problem = None
    if summed is not None:
      loss = float(summed['loss'])
      if not np.isfinite(loss):
        problem = f'non-finite loss ({loss})'
      elif abs(loss) > DIVERGED_LOSS:
        problem = f'a diverged loss ({loss:.3g}, above {DIVERGED_LOSS:.0e})'
    if problem is None and not state_is_finite(state):
      problem = 'non-finite parameters'
    if problem is None:
      return
    since = last_saved if last_saved is not None else start_step
    kept = (
        f'the last good checkpoint (step {last_saved}) is kept in {mngr.directory}'
        if last_saved is not None
        else f'no checkpoint had been written yet in {mngr.directory}'
    )
    raise NonFiniteLossError(
        f'{stage}: {problem} between steps {since} and {step + 1}; {kept}. Lower the learning rate or check '
        'the data.'
    )

  try:
    with _SigtermFlag() as sigterm:
      for step in range(start_step, schedule.num_steps):
        if epoch_start_fn is not None and step % schedule.steps_per_epoch == 0:
          state = epoch_start_fn(state, step // schedule.steps_per_epoch)
          interval_start = time.perf_counter()
        batch = next(batches)
        state, metrics = step_fn(state, *step_args, batch, jax.random.fold_in(rng, step))
        sums = metrics if sums is None else jax.tree.map(lambda a, b: a + b, sums, metrics)
        count += 1
        report.update(step + 1)
        stop = sigterm.stop_after(step + 1)

        if _due(step, schedule.log_every_steps, schedule.num_steps):
          values = {k: float(v) / count for k, v in jax.device_get(sums).items()}
          check_diverged(step, values, state)
          report.set_loss(values['loss'])
          elapsed = time.perf_counter() - interval_start
          scalars = {f'{stage}/{k}': v for k, v in values.items()}
          scalars[f'{stage}/learning_rate'] = float(learning_rate_fn(step))
          scalars[f'{stage}/epoch'] = (step + 1) / schedule.steps_per_epoch
          scalars[f'{stage}/images_per_second'] = count * global_batch_size / elapsed
          scalars[f'{stage}/images_per_second_per_device'] = (
              scalars[f'{stage}/images_per_second'] / parallel.global_device_count()
          )
          writer.write_scalars(step + 1, scalars)
          sums, count, interval_start = None, 0, time.perf_counter()

        if eval_fn is not None and (_due(step, schedule.eval_every_steps, schedule.num_steps)):
          writer.write_scalars(step + 1, {f'{stage}/{k}': v for k, v in eval_fn(state).items()})
          interval_start = time.perf_counter()

        if _due(step, schedule.checkpoint_every_steps, schedule.num_steps) or stop:
          check_diverged(
              step, None if sums is None else {k: float(v) / count for k, v in jax.device_get(sums).items()}, state
          )
          checkpoints.save(mngr, step + 1, state, meta)
          last_saved = step + 1
          if stop:
            mngr.wait_until_finished()
            _SIGTERM['received'] = False  # handled: a later run in this process starts afresh
            raise Preempted(
                f'{stage}: stopped by SIGTERM after step {step + 1}; checkpoint saved in '
                f'{mngr.directory}. Rerun the same command to resume.'
            )
  finally:
    # Also on an error: Orbax may still be writing a checkpoint in the background, and an exit now would leave
    # a half-written *.orbax-checkpoint-tmp directory (and a traceback from its stopped thread pool).
    report.close()
    mngr.wait_until_finished()
    writer.flush()
  return state
