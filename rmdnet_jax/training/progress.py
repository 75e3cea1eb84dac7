"""Progress a person can watch: epoch, step, images/s, loss, accuracy and ETA of a training stage.

On an interactive terminal (stderr is a TTY) this is a tqdm bar; otherwise (TPU VM logs, tmux, a file) the same
facts are one log line every `every_secs` seconds and at the end of the stage. Each evaluation is one short line
either way. Only process 0 reports. Every scalar goes to the metric writers (TensorBoard, metrics.jsonl, W&B);
the console gets only these lines (`logging.verbose` adds the writers' full `[step] name=value` lines).

While a bar is drawn, the console's log lines (this run's and every library's) are written above it through
`tqdm.write`, so they do not break it into pieces.

The loss is read from the device only at the loop's logging intervals (the loop never waits for the device in
between), so the loss shown is that of the last interval; images/s and the ETA come from the host's step clock.
"""

import sys
import time
from typing import Optional

from absl import logging

# The evaluation scalar the bar shows, the first of these an evaluation has (else the first "*accuracy*" one).
HEADLINE_ACCURACY = ('test_accuracy', 'knn_accuracy')


def format_duration(seconds: float) -> str:
  seconds = int(round(max(seconds, 0.0)))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f'{hours}:{minutes:02d}:{seconds:02d}' if hours else f'{minutes}:{seconds:02d}'


class Progress:
  """Reports one stage's progress; call `update(step)` after every step, `set_loss` at each logging interval."""

  def __init__(
      self,
      *,
      stage: str,
      start_step: int,
      num_steps: int,
      steps_per_epoch: int,
      global_batch_size: int,
      every_secs: float = 60.0,
      bar: Optional[bool] = None,
      enabled: bool = True,
      clock=time.perf_counter,
  ):
    """Args:
    bar: True: a tqdm bar; False: log lines; None: a bar when stderr is an interactive terminal.
    enabled: False (processes other than 0) reports nothing.
    clock: seconds, monotonic (tests pass a fake one).
    """
    self.stage = stage
    self.num_steps = num_steps
    self.steps_per_epoch = steps_per_epoch
    self.global_batch_size = global_batch_size
    self.every_secs = every_secs
    self.enabled = enabled
    self._clock = clock
    self._start_step = start_step
    self._step = start_step
    self._loss = None
    self._accuracy = None  # (name, value): the headline accuracy of the last evaluation
    # The rate is measured from the end of the first step of this process: that step includes the compile.
    self._rate_origin = None  # (time, step)
    self._last_line = clock()
    self._bar = None
    self._restore_log_stream = None
    use_bar = sys.stderr.isatty() if bar is None else bar
    if enabled and use_bar:
      import tqdm  # noqa: PLC0415  (only an interactive terminal needs it)

      self._bar = tqdm.tqdm(
          total=num_steps,
          initial=start_step,
          desc=stage,
          unit='step',
          dynamic_ncols=True,
          file=sys.stderr,
          smoothing=0.1,
      )
      self._restore_log_stream = _log_above_bars()

  def set_loss(self, loss: float) -> None:
    self._loss = float(loss)
    if self._bar is not None:
      self._bar.set_postfix_str(self._postfix(), refresh=False)

  def evaluated(self, scalars) -> None:
    """After an evaluation: one short line, and its headline accuracy on the bar from now on."""
    if not self.enabled:
      return
    name = headline_accuracy(scalars)
    if name is not None:
      self._accuracy = (name, float(scalars[name]))
    if self._bar is not None:  # drawn again below the line
      self._bar.set_postfix_str(self._postfix(), refresh=False)
    logging.info('%s', self.evaluation_line(scalars))

  def evaluation_line(self, scalars) -> str:
    """e.g. `rgrl: epoch 2/200, test_accuracy 0.4123, train_accuracy_noisy_labels 0.5012` (names as the writers
    have them, under `<stage>/`)."""
    epochs = self.num_steps / self.steps_per_epoch
    values = ', '.join(f'{k} {float(v):.4f}' for k, v in scalars.items())
    return f'{self.stage}: epoch {self._step / self.steps_per_epoch:g}/{epochs:g}, {values}'

  def images_per_second(self) -> Optional[float]:
    if self._rate_origin is None:
      return None
    t0, s0 = self._rate_origin
    elapsed = self._clock() - t0
    return (self._step - s0) * self.global_batch_size / elapsed if elapsed > 0 and self._step > s0 else None

  def eta_seconds(self) -> Optional[float]:
    rate = self.images_per_second()
    return None if not rate else (self.num_steps - self._step) * self.global_batch_size / rate

  def facts(self) -> dict:
    """What the bar and the log lines show, as numbers (None where not known yet)."""
    return {
        'epoch': self._step / self.steps_per_epoch,
        'step': self._step,
        'num_steps': self.num_steps,
        'images_per_second': self.images_per_second(),
        'loss': self._loss,
        'eta_seconds': self.eta_seconds(),
    }

  def line(self) -> str:
    """One progress line, e.g. `rm: epoch 3.0/800, step 291/77600 (0.4%), 1234 images/s, loss -0.5120, ETA 2:03:10`."""
    f = self.facts()
    epochs = self.num_steps / self.steps_per_epoch
    parts = [
        f'{self.stage}: epoch {f["epoch"]:.1f}/{epochs:g}',
        f'step {f["step"]}/{self.num_steps} ({100.0 * f["step"] / max(self.num_steps, 1):.1f}%)',
    ]
    parts.append('images/s n/a' if f['images_per_second'] is None else f'{f["images_per_second"]:.0f} images/s')
    parts.append('loss n/a' if f['loss'] is None else f'loss {f["loss"]:.4f}')
    parts.append('ETA n/a' if f['eta_seconds'] is None else f'ETA {format_duration(f["eta_seconds"])}')
    return ', '.join(parts)

  def _postfix(self) -> str:
    f = self.facts()
    accuracy = ''
    if self._accuracy is not None:
      name, value = self._accuracy
      accuracy = f', {name.removesuffix("_accuracy").replace("_", " ")} acc {100 * value:.1f}%'
    return (
        f'epoch {f["epoch"]:.1f}/{self.num_steps / self.steps_per_epoch:g}'
        + ('' if f['images_per_second'] is None else f', {f["images_per_second"]:.0f} img/s')
        + ('' if f['loss'] is None else f', loss {f["loss"]:.4f}')
        + accuracy
    )

  def update(self, step: int) -> None:
    """After step `step` (the number of steps done so far in the stage)."""
    if not self.enabled:
      return
    now = self._clock()
    first = self._rate_origin is None
    if first:
      self._rate_origin = (now, step)
    done, self._step = step - self._step, step
    if self._bar is not None:
      self._bar.update(done)
      if now - self._last_line >= 1.0:  # the postfix at most once a second
        self._bar.set_postfix_str(self._postfix(), refresh=False)
        self._last_line = now
    elif first or now - self._last_line >= self.every_secs:
      logging.info('%s', self.line())
      self._last_line = now

  def close(self) -> None:
    """Ends the report: the bar closes; without one, a last line with the final loss (if any step ran here)."""
    stepped = self.enabled and self._rate_origin is not None
    if self._bar is not None:
      if stepped:
        self._bar.set_postfix_str(self._postfix(), refresh=False)
      self._bar.close()
      self._restore_log_stream()
    elif stepped:
      logging.info('%s', self.line())
    self._bar = None
    self._restore_log_stream = None
    self._rate_origin = None


def headline_accuracy(scalars) -> Optional[str]:
  """The name of the accuracy a person watches among an evaluation's `scalars`, or None."""
  for name in HEADLINE_ACCURACY:
    if name in scalars:
      return name
  return next((name for name in scalars if 'accuracy' in name), None)


def _log_above_bars():
  """Routes absl's console stream (every Python logger's, libraries' included) through `tqdm.write`, which clears
  the bar, writes the line and draws the bar again below it. Only a terminal stream is routed (a log file or a
  pipe has no bar to break). Returns the function that undoes it."""
  handler = logging.get_absl_handler().python_handler
  stream = getattr(handler, 'stream', None)
  try:
    is_terminal = stream is not None and stream.isatty()
  except (AttributeError, ValueError):  # not a file, or a closed one
    is_terminal = False
  if not is_terminal:
    return lambda: None
  from tqdm import contrib  # noqa: PLC0415

  handler.setStream(contrib.DummyTqdmFile(stream))
  return lambda: handler.setStream(stream)
