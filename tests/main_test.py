"""The command line as a user meets it (subprocesses of `python -m rmdnet_jax.main`): a bad --config flag is one
sentence, and a diverging run stops with one sentence once its pending checkpoint is written."""

import subprocess
import sys

import pytest

from tests import helpers

_main = helpers.run_main


def _assert_one_sentence(proc, *words):
  assert proc.returncode != 0
  error_lines = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
  assert len(error_lines) == 1, proc.stderr
  assert 'Traceback' not in proc.stderr and 'Traceback' not in proc.stdout, proc.stderr
  for word in words:
    assert word in error_lines[0], error_lines[0]
  return error_lines[0]


@pytest.mark.parametrize(
    'args, words',
    [
        (['--config=configs/tiny.py', '--config.no_such=1'], ['--config.no_such', "no key 'no_such'", 'default.py']),
        (['--config=configs/tiny.py', '--config.rgrl.no_such=1'], ['--config.rgrl.no_such', "no key 'no_such'"]),
        (
            ['--config=configs/tiny.py', '--config.rgrl.epochz=3'],
            ['--config.rgrl.epochz', "no key 'epochz' (did you mean 'epochs'?)", 'default.py'],
        ),
        (
            ['--config=configs/tiny.py', '--config.seed.bits=1'],
            ['--config.seed.bits: config.seed is a value (int), not a section', "'bits'"],
        ),
        (['--config=configs/nope.py'], ['--config=configs/nope.py names no config file', 'configs/tiny.py']),
    ],
)
def test_bad_config_flag_is_one_sentence(tmp_path, args, words):
  proc = _main(*args, f'--workdir={tmp_path}/w', timeout=120)
  helpers.assert_one_sentence(_assert_one_sentence(proc, *words)[len('error: ') :])
  assert len(proc.stderr.splitlines()) <= 5, proc.stderr
  assert not (tmp_path / 'w').exists()


def test_a_bad_flag_is_refused_before_jax_is_imported(tmp_path):
  # The flags and the config are read first; JAX, Orbax and the stages (~5 s of imports) only for a valid command.
  code = (
      'import runpy, sys\n'
      f'sys.argv = ["rmdnet_jax.main", "--config=configs/tiny.py", "--workdir={tmp_path}/w", "--config.rgrl.epochz=3"]\n'
      'try:\n'
      '  runpy.run_module("rmdnet_jax.main", run_name="__main__")\n'
      'except SystemExit as e:\n'
      '  print("exit:", e.code)\n'
      'print("imported:", sorted(m for m in ("jax", "orbax.checkpoint", "flax") if m in sys.modules))\n'
  )
  proc = subprocess.run([sys.executable, '-c', code], cwd=helpers.REPO_ROOT, capture_output=True, text=True, timeout=60)
  assert "exit: error: --config.rgrl.epochz: the config has no key 'epochz'" in proc.stdout, proc.stderr[-2000:]
  assert 'imported: []' in proc.stdout, proc.stdout


def test_diverging_run_stops_with_one_sentence_and_no_half_written_checkpoint(tmp_path):
  # An absurd learning rate: the first update overflows the parameters. RGRL alone (the CE baseline needs no
  # teacher) is the stage where this used to exit while Orbax was still writing step 1.
  workdir = tmp_path / 'w'
  proc = _main(
      '--config=configs/tiny.py',
      f'--workdir={workdir}',
      '--config.stages=rgrl',
      '--config.method.distill=False',
      '--config.rgrl.learning_rate=1.5e38',
      '--config.rgrl.batch_size=256',
  )
  line = _assert_one_sentence(proc, 'rgrl: non-finite', 'Lower the learning rate')
  assert 'step 0)' not in line
  assert 'cannot schedule new futures' not in proc.stderr
  leftovers = [str(p) for p in workdir.rglob('*') if 'orbax-checkpoint-tmp' in p.name]
  assert not leftovers, leftovers
  saved = sorted(p.name for p in (workdir / 'rgrl').iterdir()) if (workdir / 'rgrl').exists() else []
  if 'no checkpoint had been written yet' in line:
    assert saved == []
  else:  # a checkpoint before the divergence: the one the message names, and it is intact
    assert saved and f'(step {saved[-1]})' in line
