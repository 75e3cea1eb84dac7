"""Progress reporting (rmdnet_jax.training.progress): log lines without a terminal, a tqdm bar on one; a fake clock."""

import io

import pytest
from absl import logging as absl_logging

from rmdnet_jax.training import progress


class Clock:

  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


@pytest.fixture
def lines(monkeypatch):
  """The lines progress.py logs (absl's INFO), whatever absl's verbosity and handlers are in this process."""
  logged = []
  monkeypatch.setattr(progress.logging, 'info', lambda fmt, *args: logged.append(fmt % args))
  return lambda: list(logged)


def test_log_lines_after_the_first_step_every_interval_and_at_the_end(lines):
  clock = Clock()
  p = progress.Progress(
      stage='rm',
      start_step=0,
      num_steps=100,
      steps_per_epoch=10,
      global_batch_size=64,
      every_secs=60.0,
      bar=False,
      clock=clock,
  )
  clock.t = 30.0  # the first step: the compile
  p.update(1)
  assert lines() == ['rm: epoch 0.1/10, step 1/100 (1.0%), images/s n/a, loss n/a, ETA n/a']
  for step in range(2, 51):
    clock.t = 30.0 + (step - 1)  # 1 step/s = 64 images/s after the compile
    p.update(step)
    if step == 10:
      p.set_loss(-0.25)
  assert len(lines()) == 1  # 49 s since the first line: not yet
  for step in range(51, 101):
    clock.t = 30.0 + (step - 1)
    p.update(step)
  assert len(lines()) == 2  # 60 s passed once (at step 61)
  assert lines()[1].startswith('rm: epoch 6.1/10, step 61/100 (61.0%), 64 images/s, loss -0.2500, ETA 0:39')
  p.set_loss(-0.5)
  facts = p.facts()
  assert facts['images_per_second'] == pytest.approx(64.0) and facts['eta_seconds'] == 0.0
  p.close()
  assert lines()[-1] == 'rm: epoch 10.0/10, step 100/100 (100.0%), 64 images/s, loss -0.5000, ETA 0:00'


def test_eta_and_a_resumed_stage(lines):
  clock = Clock()
  p = progress.Progress(
      stage='rgrl', start_step=500, num_steps=1000, steps_per_epoch=100, global_batch_size=128, bar=False, clock=clock
  )
  p.update(501)
  clock.t = 10.0
  p.update(601)  # 100 steps in 10 s: 1280 images/s, 399 steps left
  assert p.facts()['eta_seconds'] == pytest.approx(39.9)
  assert 'ETA 0:40' in p.line() and 'epoch 6.0/10' in p.line()
  assert progress.format_duration(3725) == '1:02:05'


def test_bar_on_a_terminal_shows_epoch_images_per_second_loss_and_eta(monkeypatch, lines):
  stream = io.StringIO()
  monkeypatch.setattr(progress.sys, 'stderr', stream)
  clock = Clock()
  p = progress.Progress(
      stage='rm', start_step=0, num_steps=20, steps_per_epoch=10, global_batch_size=32, bar=True, clock=clock
  )
  for step in range(1, 21):
    clock.t = step * 0.25
    p.update(step)
  p.set_loss(1.5)
  p.close()
  text = stream.getvalue()
  assert 'rm' in text and '20/20' in text and 'epoch 2.0/2' in text and 'img/s' in text and 'loss 1.5000' in text
  assert '<' in text  # tqdm's elapsed<remaining, the ETA
  assert lines() == []  # a bar, no log lines


def test_other_processes_report_nothing(lines, monkeypatch):
  stream = io.StringIO()
  monkeypatch.setattr(progress.sys, 'stderr', stream)
  p = progress.Progress(
      stage='rm', start_step=0, num_steps=5, steps_per_epoch=5, global_batch_size=8, bar=True, enabled=False
  )
  for step in range(1, 6):
    p.update(step)
  p.close()
  assert stream.getvalue() == '' and lines() == []


def test_each_evaluation_is_one_short_line_and_the_bar_shows_its_accuracy(monkeypatch, lines):
  stream = io.StringIO()
  monkeypatch.setattr(progress.sys, 'stderr', stream)
  clock = Clock()
  p = progress.Progress(
      stage='rgrl', start_step=0, num_steps=20, steps_per_epoch=10, global_batch_size=32, bar=True, clock=clock
  )
  for step in range(1, 11):
    clock.t = step * 0.25
    p.update(step)
  p.evaluated({'test_accuracy': 0.4123, 'train_accuracy_noisy_labels': 0.5})
  assert lines() == ['rgrl: epoch 1/2, test_accuracy 0.4123, train_accuracy_noisy_labels 0.5000']
  p.close()
  assert 'test acc 41.2%' in stream.getvalue()


def test_without_a_bar_an_evaluation_is_one_line_and_other_processes_say_nothing(lines):
  p = progress.Progress(stage='rm', start_step=0, num_steps=8, steps_per_epoch=4, global_batch_size=8, bar=False)
  p.update(4)
  p.evaluated({'knn_accuracy': 0.25})
  assert lines()[-1] == 'rm: epoch 1/2, knn_accuracy 0.2500'
  quiet = progress.Progress(
      stage='rm', start_step=0, num_steps=8, steps_per_epoch=4, global_batch_size=8, bar=False, enabled=False
  )
  quiet.evaluated({'knn_accuracy': 0.25})
  assert len(lines()) == 2  # the first step's progress line and the evaluation, nothing from process 1
  assert progress.headline_accuracy({'train_accuracy_clean_labels': 1.0, 'test_accuracy': 0.5}) == 'test_accuracy'
  assert progress.headline_accuracy({'teacher_linear_probe_accuracy': 0.5}) == 'teacher_linear_probe_accuracy'
  assert progress.headline_accuracy({'loss': 0.5}) is None


class Terminal(io.StringIO):

  def isatty(self):
    return True


def test_log_lines_go_above_the_bar_on_a_terminal_only():
  handler = absl_logging.get_absl_handler().python_handler
  original = handler.stream
  try:
    terminal = Terminal()
    handler.setStream(terminal)
    undo = progress._log_above_bars()  # pylint: disable=protected-access
    assert handler.stream is not terminal  # tqdm's writer, which clears the bar around each line
    handler.stream.write('I0101 a log line\n')
    assert 'I0101 a log line\n' in terminal.getvalue()
    undo()
    assert handler.stream is terminal
    handler.setStream(io.StringIO())  # a log file or a pipe: left as it is
    progress._log_above_bars()()  # pylint: disable=protected-access
    assert not isinstance(handler.stream, Terminal)
  finally:
    handler.setStream(original)
