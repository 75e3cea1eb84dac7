"""The console a person watches (issue 21): `python -m rmdnet_jax.main` on a pseudo-terminal, as in a shell.

On a terminal each stage is a tqdm bar, each evaluation one short line, and the full scalars of each logging
interval go to the writers only; `--config.logging.verbose=True` brings the long `[step] name=value` lines back.
The pseudo-terminal has a window size, as a real one has (tqdm draws nothing in a 0-column terminal).
"""

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

from tests import helpers

# A scalar on the console: `name=value` with a number (the long lines are `rgrl/edge=10.3186, ...`).
SCALAR = re.compile(r'[\w/]+=-?(\d|nan|inf)')
# An absl log line's prefix, e.g. `I1203 05:01:51.155548 139966371662720 metrics.py:124] `.
LOG_PREFIX = re.compile(r'[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.]+:\d+\] ')
MAX_SCALARS_PER_LINE = 6


def run_main_on_a_terminal(*args, timeout=300) -> tuple:
  """(exit status, everything the command wrote) for `python -m rmdnet_jax.main ARGS` with a pseudo-terminal of
  120 x 40 as its stdin, stdout and stderr (the environment of `helpers.run_main`)."""
  env = helpers.child_env(TERM='xterm')
  main, terminal = pty.openpty()
  fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack('HHHH', 40, 120, 0, 0))
  process = subprocess.Popen(
      [sys.executable, '-m', 'rmdnet_jax.main', *args],
      cwd=helpers.REPO_ROOT,
      env=env,
      stdin=terminal,
      stdout=terminal,
      stderr=terminal,
      start_new_session=True,
  )
  os.close(terminal)
  output, deadline = b'', time.monotonic() + timeout
  try:
    while time.monotonic() < deadline:
      if select.select([main], [], [], 1.0)[0]:
        try:
          chunk = os.read(main, 1 << 16)
        except OSError:  # EIO: every process holding the terminal has ended
          break
        if not chunk:
          break
        output += chunk
      elif process.poll() is not None:
        break
    else:
      os.killpg(process.pid, signal.SIGKILL)
  finally:
    os.close(main)
  return process.wait(timeout=60), output.decode(errors='replace')


def screen_lines(output: str) -> list:
  """What the terminal shows as lines: a carriage return (tqdm redrawing its bar) starts a new one."""
  return [line for line in re.split(r'[\r\n]', re.sub(r'\x1b\[[0-9;]*[A-Za-z]', '', output)) if line.strip()]


def scalars(line: str) -> int:
  return len(SCALAR.findall(line))


def test_a_run_on_a_terminal_shows_the_bar_and_short_lines(tmp_path):
  workdir = tmp_path / 'tiny'
  # The tiny config with 2 epochs per stage: two evaluation lines each.
  status, output = run_main_on_a_terminal(*helpers.tiny_config_flags(**helpers.SHARED_EPOCHS), f'--workdir={workdir}')
  assert status == 0, output[-3000:]
  assert (workdir / 'results.json').exists()
  lines = screen_lines(output)
  busiest = max(lines, key=scalars)
  assert scalars(busiest) <= MAX_SCALARS_PER_LINE, busiest
  # The bar, with the facts a person watches; each evaluation as one line; the Orbax read-only warnings gone.
  bars = [line for line in lines if line.startswith('rgrl:') and '|' in line]
  assert any('img/s' in line and 'loss' in line and 'test acc' in line and '<' in line for line in bars), bars[-3:]
  assert sum('rm: epoch' in line and 'knn_accuracy' in line for line in lines) == 2  # rm: 2 epochs, 1 eval each
  assert sum('rgrl: epoch' in line and 'test_accuracy' in line for line in lines) == 2
  assert 'read only' not in output and 'read_only' not in output
  # Log lines are written above the bar, never glued to it.
  glued = [line for line in lines if LOG_PREFIX.search(line) and not LOG_PREFIX.match(line)]
  assert not glued, glued
  # The writers still have every scalar.
  assert '"rgrl/edge_offdiag_rms"' in (workdir / 'metrics.jsonl').read_text()


@pytest.mark.slow
def test_verbose_brings_back_every_scalar_on_the_console(tmp_path):
  workdir = tmp_path / 'ce'
  status, output = run_main_on_a_terminal(
      '--config=configs/tiny.py',
      f'--workdir={workdir}',
      '--config.stages=rgrl',
      '--config.method.distill=False',
      '--config.rgrl.epochs=1',
      '--config.logging.verbose=True',
  )
  assert status == 0, output[-3000:]
  assert (workdir / 'results.json').exists()
  long_lines = [line for line in screen_lines(output) if scalars(line) > MAX_SCALARS_PER_LINE]
  assert long_lines and all(LOG_PREFIX.match(line) for line in long_lines), long_lines
  assert any('rgrl/learning_rate=' in line and 'rgrl/images_per_second=' in line for line in long_lines)
