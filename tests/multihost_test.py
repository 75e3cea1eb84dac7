"""Real multi-process runs: `python -m rmdnet_jax.main --multihost` as 2 JAX processes x 4 CPU devices (the JAX
distributed service on a free local port, gloo collectives), against the same run as 1 process x 8 devices.

  * the 2-process run finishes, and its losses, results and final parameters match the 1-process run's;
  * SIGTERM to one of the two processes stops both at the same step, with one checkpoint, exit status 75; rerunning
    both finishes the run;
  * a 2-process work directory is resumed, and read (teacher hand-off, analysis), by 1 process, and a 1-process
    checkpoint is resumed by 2 processes.

The runs are shared between the tests (module fixtures): 1 + 2 + 2 + 1 + 1 + 2 process launches in all.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rmdnet_jax.datasets import data
from rmdnet_jax.report import analysis
from rmdnet_jax.stages import simsiam
from rmdnet_jax.training import checkpoints, loop, metrics
from tests import conftest, helpers, xla_flags

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 600
# helpers.tiny_config's sizes (8x8 images, width 4, batches of 16: 2 per device) on 32 training images, RM 4 epochs
# (8 steps, long enough to be interrupted), RGRL 1 epoch (2 steps); a log row every step, checkpoints only at the
# end of a stage (and on SIGTERM), evaluation only at the end. Few steps, because a step of 2 processes costs ~2 s
# on a 2-core machine: every collective (cross-replica BatchNorm, gradient mean) is a gloo round trip of ~2.5 ms.
OVERRIDES = {
    'data.synthetic_train_size': 32,
    'rm.epochs': 4,
    'log_every_steps': 1,
    'rm.checkpoint_every_epochs': 0,
    'rgrl.checkpoint_every_epochs': 0,
    'rm.eval_every_epochs': 0,
    'rgrl.eval_every_epochs': 0,
    'rgrl.track_memorization': False,
}
RM_STEPS, RGRL_STEPS = 8, 2


def _config():
  """The config the processes run (helpers.tiny_config_flags(**OVERRIDES) on their command line)."""
  return helpers.tiny_config(**OVERRIDES)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


class Job:
  """`rmdnet_jax.main` as `num_processes` processes of `8 / num_processes` CPU devices each, on `workdir`."""

  def __init__(self, tmp, workdir, num_processes, name):
    self.workdir, self.logs, self.procs = str(workdir), [], []
    port = _free_port()
    for rank in range(num_processes):
      env = dict(os.environ)
      env.update(
          {
              'XLA_FLAGS': xla_flags.with_devices(8 // num_processes, xla_flags.CHILD_RUNS),
              'JAX_PLATFORMS': 'cpu',
              'JAX_CPU_COLLECTIVES_IMPLEMENTATION': 'gloo',
              # The session's compilation cache (tests/conftest.py), so that reruns compile nothing. JAX writes it
              # from process 0 only; process 1 reads it too, or it would compile while process 0 (a cache hit) waits
              # in the first collective, and gloo gives up on a peer after 30 s.
              **conftest.CACHE_ENV,
          }
      )
      argv = [
          sys.executable,
          '-m',
          'rmdnet_jax.main',
          *helpers.tiny_config_flags(**OVERRIDES),
          f'--workdir={self.workdir}',
      ]
      if num_processes > 1:
        argv += [
            '--multihost',
            f'--coordinator_address=localhost:{port}',
            f'--num_processes={num_processes}',
            f'--process_id={rank}',
        ]
      log = tmp / f'{name}_process{rank}.log'
      self.logs.append(log)
      with open(log, 'w') as f:
        self.procs.append(subprocess.Popen(argv, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT))

  def wait(self):
    """The exit statuses; a process still running TIMEOUT_S after the start, or 60 s after another one failed
    (it would wait for the failed one in a collective), is killed and reported with both logs."""
    deadline = time.monotonic() + TIMEOUT_S
    while any(p.poll() is None for p in self.procs):
      if any(p.poll() not in (None, 0, loop.PREEMPTED_EXIT_CODE) for p in self.procs):
        deadline = min(deadline, time.monotonic() + 60)
      if time.monotonic() > deadline:
        for p in self.procs:
          p.kill()
        pytest.fail(f'killed after a timeout: exit statuses {[p.wait() for p in self.procs]}\n{self.output()}')
      time.sleep(0.1)
    return [p.returncode for p in self.procs]

  def output(self) -> str:
    return '\n'.join(f'--- {log.name} (last 4000 characters) ---\n{log.read_text()[-4000:]}' for log in self.logs)

  def expect(self, *codes):
    got = self.wait()
    assert got == list(codes), f'exit statuses {got}, expected {list(codes)}\n{self.output()}'


def _rows(workdir, key):
  return {row['step']: row[key] for row in metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl')) if key in row}


def _steps(stage_dir):
  return sorted(int(n) for n in os.listdir(stage_dir) if n.isdigit()) if os.path.isdir(stage_dir) else []


def _final_state(workdir, stage):
  """The latest state of `stage` as numpy arrays, restored the way the pipeline restores (onto this process's
  devices, whatever topology saved it)."""
  directory = os.path.join(workdir, stage)
  step = max(_steps(directory))
  tree = ocp.StandardCheckpointer().metadata(os.path.join(directory, str(step), 'state')).item_metadata.tree
  target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree)
  state = checkpoints.restore(checkpoints.manager(directory, read_only=True), step, target)
  return jax.tree.map(np.asarray, state)


def _assert_same_run(workdir, reference):
  """Same losses and results, and final parameters equal to float tolerance: 2 processes sum gradients over gloo in
  another order than 8 devices of one process (differences ~1e-5 after 10 steps)."""
  for key, steps in (('rm/loss', RM_STEPS), ('rgrl/loss', RGRL_STEPS), ('rgrl/node', RGRL_STEPS)):
    got, want = _rows(workdir, key), _rows(reference, key)
    assert sorted(got) == sorted(want) == list(range(1, steps + 1)), key
    np.testing.assert_allclose(
        [got[s] for s in sorted(got)], [want[s] for s in sorted(want)], rtol=1e-4, atol=1e-5, err_msg=key
    )
  for stage in ('rm', 'rgrl'):
    a, b = _final_state(workdir, stage), _final_state(reference, stage)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4, err_msg=stage)
  got = json.loads(pathlib.Path(workdir, 'results.json').read_text())
  want = json.loads(pathlib.Path(reference, 'results.json').read_text())
  assert got['rgrl_steps'] == want['rgrl_steps'] == RGRL_STEPS
  for key in ('test_accuracy_last', 'train_accuracy_clean_subset', 'noise_realized_rate'):
    assert got[key] == pytest.approx(want[key], abs=1e-6), key


@pytest.fixture(scope='module')
def tmp(tmp_path_factory):
  return tmp_path_factory.mktemp('multihost')


@pytest.fixture(scope='module')
def reference(tmp):
  """The uninterrupted run as 1 process x 8 devices."""
  job = Job(tmp, tmp / 'reference', 1, 'reference')
  job.expect(0)
  return job.workdir


def _sigterm_after_first_rm_step(job, process):
  """Sends SIGTERM to one process of `job` once RM has logged its first step."""
  metrics = pathlib.Path(job.workdir, 'metrics.jsonl')
  deadline = time.monotonic() + TIMEOUT_S
  while not (metrics.exists() and 'rm/loss' in metrics.read_text()):
    if time.monotonic() > deadline or any(p.poll() is not None for p in job.procs):
      job.wait()
      pytest.fail(f'RM did not log a step\n{job.output()}')
    time.sleep(0.02)
  job.procs[process].send_signal(signal.SIGTERM)


@pytest.fixture(scope='module')
def preempted(tmp):
  """2 processes x 4 devices; SIGTERM to process 1 once RM has logged its first step. Returns the job, and a copy
  of its work directory as the preemption left it."""
  job = Job(tmp, tmp / 'two_processes', 2, 'preempted')
  _sigterm_after_first_rm_step(job, 1)
  job.expect(loop.PREEMPTED_EXIT_CODE, loop.PREEMPTED_EXIT_CODE)
  copy = tmp / 'preempted_copy'
  shutil.copytree(job.workdir, copy)
  return job, str(copy)


@pytest.fixture(scope='module')
def resumed(tmp, preempted):
  """The preempted 2-process run, rerun as 2 processes to the end."""
  job, _ = preempted
  rerun = Job(tmp, job.workdir, 2, 'resumed')
  rerun.expect(0, 0)
  return rerun.workdir


def test_sigterm_to_one_process_stops_both_at_the_same_step_with_one_checkpoint(preempted):
  job, copy = preempted
  stopped = [re.findall(r'rm: stopped by SIGTERM after step (\d+)', log.read_text()) for log in job.logs]
  assert stopped[0] and stopped[0] == stopped[1], job.output()
  step = int(stopped[0][0])
  assert 1 <= step < RM_STEPS
  assert _steps(os.path.join(copy, 'rm')) == [step]
  assert not [n for n in os.listdir(os.path.join(copy, 'rm')) if 'tmp' in n]
  assert not os.path.exists(os.path.join(copy, 'rgrl'))
  assert max(_rows(copy, 'rm/loss')) == step


def test_two_processes_resumed_after_preemption_match_one_process(resumed, reference):
  _assert_same_run(resumed, reference)


@pytest.mark.slow
def test_two_process_checkpoint_resumes_on_one_process(tmp, preempted, reference):
  _, copy = preempted
  Job(tmp, copy, 1, 'one_process_resume').expect(0)
  _assert_same_run(copy, reference)


@pytest.mark.slow
def test_one_process_checkpoint_resumes_on_two_processes(tmp, reference, resumed):
  # `resumed` first: the 2-process compile cache is then warm, so neither process waits on the other's compile.
  job = Job(tmp, tmp / 'one_then_two', 1, 'one_process_preempted')
  _sigterm_after_first_rm_step(job, 0)
  job.expect(loop.PREEMPTED_EXIT_CODE)
  assert len(_steps(os.path.join(job.workdir, 'rm'))) == 1
  Job(tmp, job.workdir, 2, 'two_process_resume').expect(0, 0)
  _assert_same_run(job.workdir, reference)


def test_one_process_reads_a_two_process_workdir(resumed, reference):
  """The teacher hand-off, the teacher_knn stage and the analysis restore, in this (1-process) test process."""
  config = _config()
  dataset = data.load(config.data)
  teacher = simsiam.load_teacher(config, dataset, resumed)
  want = simsiam.load_teacher(config, dataset, reference)
  for x, y in zip(jax.tree.leaves(teacher), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)
  writer = _NullWriter()
  accuracy = simsiam.teacher_knn(config, dataset, teacher, writer)['teacher_knn_accuracy']
  assert accuracy == pytest.approx(simsiam.teacher_knn(config, dataset, want, writer)['teacher_knn_accuracy'], abs=1e-6)
  variables, _, steps = analysis.restore_student(config, dataset, resumed)
  assert steps == RGRL_STEPS
  for x, y in zip(jax.tree.leaves(variables['params']), jax.tree.leaves(_final_state(resumed, 'rgrl')['params'])):
    np.testing.assert_array_equal(np.asarray(x), y)


class _NullWriter:

  def write_scalars(self, step, scalars):
    pass
