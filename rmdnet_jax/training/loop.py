"""One training loop for every stage: `train(stage, ...)` steps, logs, evaluates, checkpoints and stops.

A stage is a value (`Stage`), built by the module that owns it (`simsiam.stage`, `distill.stage`): its pure step
`step(state, batch, rng, ctx) -> (state, metrics)`, initial state, schedule, examples, evaluation and checkpoint
metadata. `train` resumes it from its latest checkpoint in WORKDIR/<name>, feeds it (resident data or host
batches), pmaps the step (`parallel.pmap_step`) and runs it to the end; a finished stage is not run again.

The host never waits for the device inside an interval: metrics stay on the device and are summed there; they are
read once per logging interval and before every checkpoint, together with a check that the updated parameters are
finite, so that a diverged state is never saved.

SIGTERM (a preempted TPU VM, a cluster scheduler) stops the run at a step that every process agrees on: all of
them checkpoint that step together and exit with `PREEMPTED_EXIT_CODE`. Rerunning the same command resumes.
"""

import dataclasses
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from rmdnet_jax.core import parallel
from rmdnet_jax.datasets import data, device_data
from rmdnet_jax.training import checkpoints, config_checks, progress

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


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When a stage steps, logs, evaluates and checkpoints (in steps; an `every` of 0 means only at the end)."""

  num_steps: int
  steps_per_epoch: int
  log_every_steps: int
  eval_every_steps: int
  checkpoint_every_steps: int

  @classmethod
  def for_stage(cls, stage_config, num_examples: int, log_every_steps: int = 0) -> 'Schedule':
    """The schedule of a stage block (config.rm, config.rgrl) over `num_examples` training examples."""
    steps_per_epoch = num_examples // stage_config.batch_size
    if steps_per_epoch == 0:
      raise config_checks.ConfigError(
          f'The batch size {stage_config.batch_size} exceeds the {num_examples} training examples; lower it.'
      )
    return cls(
        num_steps=stage_config.epochs * steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        log_every_steps=log_every_steps or steps_per_epoch,
        eval_every_steps=stage_config.eval_every_epochs * steps_per_epoch,
        checkpoint_every_steps=stage_config.checkpoint_every_epochs * steps_per_epoch,
    )


def stage_keys(seed: int, stream: int) -> tuple[jax.Array, jax.Array]:
  """(init key, step base key) of a stage: independent streams of config.seed, one per stage."""
  init_rng, step_rng = jax.random.split(jax.random.fold_in(jax.random.key(seed), stream))
  return init_rng, step_rng


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage of a run, everything `train` needs; `simsiam.stage` and `distill.stage` build theirs.

  The step's batch is {name: this device's rows of `arrays[name]`} plus 'index' (the rows' dataset indices); data
  order and step keys depend only on (seed, stream, step), so a resumed or re-sharded run replays them.
  """

  name: str  # 'rm' | 'rgrl': the checkpoints' directory WORKDIR/<name> and the metrics' prefix
  step: Callable  # step(state, batch, rng, ctx) -> (state, metrics), unmapped
  init_state: Any  # the (replicated) state at step 0; a resume restores into its structure
  arrays: Mapping[str, np.ndarray]  # {name: host array [N, ...]} the batches are made of
  schedule: Schedule
  learning_rate_fn: Callable[[int], float]
  global_batch_size: int
  seed: int  # with `stream`: data order; `rng` is the step keys' base, fold_in(rng, step)
  stream: int
  rng: jax.Array
  meta: dict  # saved with every checkpoint and checked on resume (`checkpoints.stage_meta`)
  ctx: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # broadcast step inputs (the teacher)
  evaluate: Optional[Callable[[Any], dict]] = None  # state -> scalars, every eval_every_steps and at the end
  # (state, epoch) -> state before an epoch's first step (DivideMix's co-divide); checkpointed with the state.
  epoch_start: Optional[Callable[[Any, int], Any]] = None
  before_training: Optional[Callable[[], None]] = None  # once, when there are steps left to run
  # (final state, workdir) -> results of the finished stage, run by `train` (also when it was complete already).
  summarize: Optional[Callable[[Any, str], dict]] = None
  report: dict = dataclasses.field(default_factory=dict)  # what the stage adds to results.json, filled by `train`


@dataclasses.dataclass(frozen=True)
class Options:
  """How stages run, whatever the stage: none of it changes the results."""

  resident_on_device: bool = True  # the training set on every device, batches sent as indices (device_data)
  max_to_keep: int = 3  # checkpoints kept per stage
  progress: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # `progress.Progress` keyword arguments

  @classmethod
  def from_config(cls, config) -> 'Options':
    logging_config = config.get('logging')  # absent from configs saved before it existed
    progress_options = {}
    if logging_config is not None:
      progress_options = {
          'every_secs': float(logging_config.progress_every_secs),
          'bar': None if logging_config.progress_bar else False,
      }
    return cls(
        resident_on_device=bool(config.data.resident_on_device),
        max_to_keep=int(config.max_to_keep),
        progress=progress_options,
    )


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


def resume(stage: Stage, mngr) -> tuple[Any, int]:
  """The stage's state at its latest intact checkpoint (or its initial state) and that step."""
  restored = checkpoints.restore_latest(mngr, stage.init_state, stage.meta)
  if restored is None:
    return stage.init_state, 0
  start = int(restored.step)
  logging.info('%s: resuming from step %d of %d (%s).', stage.name, start, stage.schedule.num_steps, mngr.directory)
  return restored, start


def feed(stage: Stage, start_step: int, resident_on_device: bool) -> tuple[Callable, Iterator, dict]:
  """(pmapped step, sharded batches from `start_step`, ctx) for the stage.

  With `resident_on_device` the arrays are put on every device once (into ctx) and each batch is the global
  batch's row numbers only (`device_data`); otherwise this host slices the arrays and ships the examples. Both
  give the step exactly the same examples in the same order.
  """
  order = dict(
      start_step=start_step,
      num_steps=stage.schedule.num_steps,
      global_batch_size=stage.global_batch_size,
      seed=stage.seed,
      stream=stage.stream,
      host_slice=parallel.host_batch_slice(stage.global_batch_size, jax.process_index(), jax.process_count()),
  )
  if resident_on_device:
    ctx = {**stage.ctx, device_data.CTX_KEY: device_data.put_resident(stage.arrays)}
    num_examples = len(next(iter(stage.arrays.values())))
    batches = device_data.index_batches(num_examples, **order)
    return parallel.pmap_step(device_data.with_resident_data(stage.step)), map(parallel.shard, batches), ctx
  batches = data.host_batches(dict(stage.arrays), **order)
  return parallel.pmap_step(stage.step), map(parallel.shard, batches), dict(stage.ctx)


def train(stage: Stage, *, workdir: str, writer, options: Options = Options()) -> Any:
  """Runs `stage` in WORKDIR/<stage.name> from its latest checkpoint to the end; returns the final state.

  A stage that is complete already is not run again (only summarised). `stage.report` holds what the stage
  reports (its `before_training` and `summarize` results).
  """
  mngr = checkpoints.manager(os.path.join(workdir, stage.name), max_to_keep=options.max_to_keep)
  try:
    state, start = resume(stage, mngr)
    if start >= stage.schedule.num_steps:
      logging.info('%s: already complete (%d steps).', stage.name, start)
    else:
      if stage.before_training is not None:
        stage.before_training()
      step_fn, batches, ctx = feed(stage, start, options.resident_on_device)
      state = _run_steps(stage, state, start, step_fn, batches, ctx, mngr, writer, options)
  finally:
    mngr.close()
  if stage.summarize is not None:
    stage.report.update(stage.summarize(state, workdir))
  return state


class _Interval:
  """Metrics summed on the device over one logging interval, read once at its end."""

  def __init__(self):
    self.sums, self.count, self.start = None, 0, time.perf_counter()

  def add(self, metrics) -> None:
    self.sums = metrics if self.sums is None else jax.tree.map(lambda a, b: a + b, self.sums, metrics)
    self.count += 1

  def means(self) -> Optional[dict]:
    if self.sums is None:
      return None
    return {k: float(v) / self.count for k, v in jax.device_get(self.sums).items()}

  def restart(self) -> None:
    self.sums, self.count, self.start = None, 0, time.perf_counter()


def _check_finite(stage: Stage, step: int, means: Optional[dict], state, last_saved: Optional[int], start: int, mngr):
  """Raises NonFiniteLossError if the interval's mean loss is NaN, Inf or above DIVERGED_LOSS, or if the state
  after `step` holds a non-finite parameter (a loss can be finite while the update overflowed)."""
  problem = None
  if means is not None:
    loss = means['loss']
    if not np.isfinite(loss):
      problem = f'non-finite loss ({loss})'
    elif abs(loss) > DIVERGED_LOSS:
      problem = f'a diverged loss ({loss:.3g}, above {DIVERGED_LOSS:.0e})'
  if problem is None and not state_is_finite(state):
    problem = 'non-finite parameters'
  if problem is None:
    return
  kept = (
      f'the last good checkpoint (step {last_saved}) is kept in {mngr.directory}'
      if last_saved is not None
      else f'no checkpoint had been written yet in {mngr.directory}'
  )
  raise NonFiniteLossError(
      f'{stage.name}: {problem} between steps {last_saved if last_saved is not None else start} and {step + 1}; '
      f'{kept}. Lower the learning rate or check the data.'
  )


def _log_scalars(stage: Stage, step: int, means: dict, interval: _Interval) -> dict:
  elapsed = time.perf_counter() - interval.start
  scalars = {f'{stage.name}/{k}': v for k, v in means.items()}
  images_per_second = interval.count * stage.global_batch_size / elapsed
  scalars.update(
      {
          f'{stage.name}/learning_rate': float(stage.learning_rate_fn(step)),
          f'{stage.name}/epoch': (step + 1) / stage.schedule.steps_per_epoch,
          f'{stage.name}/images_per_second': images_per_second,
          f'{stage.name}/images_per_second_per_device': images_per_second / parallel.global_device_count(),
      }
  )
  return scalars


def _run_steps(stage: Stage, state, start: int, step_fn, batches, ctx, mngr, writer, options: Options):
  """Steps `stage` from `start` to its end: see `train`."""
  sched = stage.schedule
  report = progress.Progress(
      stage=stage.name,
      start_step=start,
      num_steps=sched.num_steps,
      steps_per_epoch=sched.steps_per_epoch,
      global_batch_size=stage.global_batch_size,
      enabled=jax.process_index() == 0,
      **options.progress,
  )
  interval = _Interval()
  last_saved = start if start > 0 else None  # a resumed stage starts from its checkpoint at `start`
  try:
    with _SigtermFlag() as sigterm:
      for step in range(start, sched.num_steps):
        if stage.epoch_start is not None and step % sched.steps_per_epoch == 0:
          state = stage.epoch_start(state, step // sched.steps_per_epoch)
          interval.start = time.perf_counter()
        state, metrics = step_fn(state, next(batches), jax.random.fold_in(stage.rng, step), ctx)
        interval.add(metrics)
        report.update(step + 1)
        stop = sigterm.stop_after(step + 1)
        if _due(step, sched.log_every_steps, sched.num_steps):
          means = interval.means()
          _check_finite(stage, step, means, state, last_saved, start, mngr)
          report.set_loss(means['loss'])
          writer.write_scalars(step + 1, _log_scalars(stage, step, means, interval))
          interval.restart()
        if stage.evaluate is not None and _due(step, sched.eval_every_steps, sched.num_steps):
          evaluation = stage.evaluate(state)
          writer.write_scalars(step + 1, {f'{stage.name}/{k}': v for k, v in evaluation.items()})
          report.evaluated(evaluation)
          interval.start = time.perf_counter()
        if _due(step, sched.checkpoint_every_steps, sched.num_steps) or stop:
          _check_finite(stage, step, interval.means(), state, last_saved, start, mngr)
          checkpoints.save(mngr, step + 1, state, stage.meta)
          last_saved = step + 1
          if stop:
            mngr.wait_until_finished()
            _SIGTERM['received'] = False  # handled: a later run in this process starts afresh
            raise Preempted(
                f'{stage.name}: stopped by SIGTERM after step {step + 1}; checkpoint saved in '
                f'{mngr.directory}. Rerun the same command to resume.'
            )
  finally:
    # Also on an error: Orbax may still be writing a checkpoint in the background, and an exit now would leave
    # a half-written *.orbax-checkpoint-tmp directory (and a traceback from its stopped thread pool).
    report.close()
    mngr.wait_until_finished()
    writer.flush()
  return state
