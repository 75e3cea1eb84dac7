"""benchmarks/gpu_evidence.py: the trip's preparation (subset .npz, wheels) and the one command, at tiny size.

`prepare` reads tfds' mock CIFAR-10 (no files); `run --preset=tiny` runs every step end to end on the CPU through the
same code as `--preset=h200` (about 90 CPU-seconds: a benchmark process and three training runs, each compiling).
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import tarfile

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from benchmarks import gpu_evidence
from configs import default
from rmdnet_jax.datasets import data

ROOT = pathlib.Path(__file__).resolve().parents[1]
MOCK_EXAMPLES = 128
TRAIN, TEST = 96, 32


def _env(tmp_path) -> dict:
  """The children's environment: one CPU device (no 8-device flag), quick compiles and the session's compilation
  cache (tests/conftest.py; the children inherit its JAX_* variables)."""
  flags = re.sub(r'--xla_force_host_platform_device_count=\d+', '', os.environ.get('XLA_FLAGS', '')).strip()
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS='cpu')
  return env


def _evidence(args, env, timeout=600):
  return subprocess.run(
      [sys.executable, '-m', 'benchmarks.gpu_evidence', *args],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
  )


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """`prepare` on tfds' mock CIFAR-10 (random images), without the wheels: (npz path, its stdout)."""
  out = tmp_path_factory.mktemp('prepared')
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    code = gpu_evidence.main(
        ['prepare', f'--data_dir={out / "tfds"}', f'--out={out}', f'--train={TRAIN}', f'--test={TEST}', '--no-wheels']
    )
    expected = data.load(gpu_evidence._data_config('tfds', train_subset=TRAIN, test_subset=TEST))
  assert code == 0
  return out / gpu_evidence.NPZ_NAME, expected


# --------------------------------------------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------------------------------------------


def test_prepare_writes_the_first_images_of_each_split_as_the_runs_read_them(prepared, capsys):
  path, expected = prepared
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  assert sorted(arrays) == ['ids_train', 'x_test', 'x_train', 'y_test', 'y_train']
  assert arrays['x_train'].shape == (TRAIN, 32, 32, 3) and arrays['x_test'].shape == (TEST, 32, 32, 3)
  assert arrays['x_train'].dtype == arrays['x_test'].dtype == np.uint8
  np.testing.assert_array_equal(arrays['x_train'], expected.train_images)
  np.testing.assert_array_equal(arrays['y_train'], expected.train_labels)
  np.testing.assert_array_equal(arrays['x_test'], expected.test_images)
  np.testing.assert_array_equal(arrays['y_test'], expected.test_labels)
  np.testing.assert_array_equal(arrays['ids_train'], expected.train_ids)
  # data.source=npz reads it back as the same data.
  again = data.load(gpu_evidence._data_config('npz', npz_path=str(path)))
  np.testing.assert_array_equal(again.train_images, expected.train_images)
  assert again.name == 'cifar10' and again.num_classes == 10
  # Compressed random pixels stay about their raw size; the report counts what travels against 64 MiB.
  raw = (TRAIN + TEST) * 32 * 32 * 3
  assert 0.9 * raw < os.path.getsize(path) < 1.1 * raw + 10_000
  text, total = gpu_evidence.size_report([str(path)], 1_000_000)
  assert total == os.path.getsize(path) + 1_000_000
  assert 'travels, of the 64.0 MiB a device call takes' in text


def test_prepare_without_the_data_is_one_sentence(tmp_path, capsys):
  code = gpu_evidence.main(['prepare', f'--data_dir={tmp_path}', f'--out={tmp_path / "out"}', '--no-wheels'])
  err = capsys.readouterr().err.strip()
  assert code == 2 and err.startswith('error: Cannot read tfds dataset') and '\n' not in err
  assert not (tmp_path / 'out' / gpu_evidence.NPZ_NAME).exists()


def test_the_wheels_are_the_pinned_missing_packages_for_the_device_python(tmp_path):
  pins = gpu_evidence.runtime_pins()
  assert pins['ml-collections'] and pins['tensorboardX']
  command = gpu_evidence.wheel_download_command(gpu_evidence.DEVICE_MISSING, str(tmp_path))
  assert command[1:4] == ['-m', 'pip', 'download'] and '--no-deps' in command and '--only-binary=:all:' in command
  assert command[command.index('--python-version') + 1] == '3.12'
  assert command[-2:] == [f'ml-collections=={pins["ml-collections"]}', f'tensorboardX=={pins["tensorboardX"]}']
  assert 'manylinux2014_x86_64' in command and command[command.index('-d') + 1] == str(tmp_path)

  # An older wheel of the same project goes (two versions stop the install there); others stay.
  (tmp_path / 'ml_collections-1.0.0-py3-none-any.whl').write_bytes(b'old')
  (tmp_path / 'other-1.0-py3-none-any.whl').write_bytes(b'other')

  def fake_pip(command, **kwargs):
    dest = command[command.index('-d') + 1]
    for name in ('ml_collections-1.1.0-py3-none-any.whl', 'tensorboardx-2.6.5-py3-none-any.whl'):
      pathlib.Path(dest, name).write_bytes(b'wheel')
    return subprocess.CompletedProcess(command, 0, '', '')

  wheels = gpu_evidence.download_wheels(str(tmp_path), runner=fake_pip)
  assert [os.path.basename(w) for w in wheels] == [
      'ml_collections-1.1.0-py3-none-any.whl',
      'other-1.0-py3-none-any.whl',
      'tensorboardx-2.6.5-py3-none-any.whl',
  ]

  def failing_pip(command, **kwargs):
    return subprocess.CompletedProcess(command, 1, '', 'ERROR: No matching distribution found for x\n')

  with pytest.raises(gpu_evidence.EvidenceError, match='No matching distribution'):
    gpu_evidence.download_wheels(str(tmp_path), runner=failing_pip)


def test_data_and_wheels_are_ignored_by_git():
  ignored = (ROOT / '.gitignore').read_text().split()
  assert '/.data/' in ignored and '/.whl/' in ignored


# --------------------------------------------------------------------------------------------------------------
# run: the plan
# --------------------------------------------------------------------------------------------------------------


def _default_keys() -> set:
  def walk(config, prefix=''):
    for key, value in config.items():
      if isinstance(value, ml_collections.ConfigDict):
        yield from walk(value, f'{prefix}{key}.')
      else:
        yield prefix + key

  return set(walk(default.get_config()))


@pytest.mark.parametrize('name', sorted(gpu_evidence.PRESETS))
def test_presets_fit_the_call_and_name_existing_keys(name, tmp_path):
  preset = gpu_evidence.PRESETS[name]
  assert set(preset.budgets) == set(preset.min_seconds) == set(gpu_evidence.STEPS)
  assert len(gpu_evidence.OUTPUT_FILES) <= 8  # the device returns at most 8 files
  if name == 'h200':
    assert sum(preset.budgets.values()) <= 540  # a 10-minute call, with the wheels' install and start-up
    assert sorted(preset.grid) == [(0.1, 'cosine'), (0.1, 'frobenius'), (1.0, 'cosine'), (1.0, 'frobenius')]
    assert '--batch_per_device=512' in preset.throughput_args
    assert preset.throughput_dtypes == ('bfloat16', 'float32') and '--config.model.dtype=bfloat16' in preset.overrides
  evidence = gpu_evidence.Evidence(preset, str(tmp_path), str(tmp_path), 'x.npz', gpu_evidence.Clock(1, {}), print)
  flags = evidence.run_flags('W', *preset.rm_overrides, *preset.rgrl_overrides)
  for _, overrides in evidence.cells('T'):
    flags += list(overrides)
  assert [name for name, _ in evidence.cells(None)] == ['ce']  # without a SimSiam checkpoint, CE alone
  keys = _default_keys()
  for flag in flags:
    match = re.fullmatch(r'--config\.([\w.]+)=.*', flag)
    if match:
      assert match.group(1) in keys, flag
  assert os.path.isfile(ROOT / preset.config)


def _row(images_per_s, compile_s=10.0):
  return {'images_per_s_total': images_per_s, 'compile_s': compile_s}


def test_epochs_are_what_the_measured_throughput_fits():
  preset = gpu_evidence.H200
  # 15,000 images at 10,000 images/s x 0.6 efficiency: 2.5 s an epoch after 25 + 1.5 x 10 + 20 s fixed.
  epochs, how = gpu_evidence.plan_simsiam(_row(10_000), 150, 15_000, preset)
  assert epochs == (150 - 60) // 2.5 == 36 and 'estimated' in how
  assert gpu_evidence.plan_simsiam(None, 150, 15_000, preset)[0] == preset.rm_epochs[1]
  assert gpu_evidence.plan_simsiam(_row(1e9), 150, 15_000, preset)[0] == preset.rm_epochs[2]
  with pytest.raises(gpu_evidence.StepSkipped, match='not even 2 epochs'):
    gpu_evidence.plan_simsiam(_row(100), 150, 15_000, preset)
  # CE and four RMDNet runs share the GPU: an epoch of all five is the sum of theirs, at half the images/s (batch).
  rows = {'ce': _row(30_000, 20.0), 'rgrl': _row(20_000, 30.0)}
  names = ['ce', 'rmdnet_a', 'rmdnet_b', 'rmdnet_c', 'rmdnet_d']
  per_epoch = 15_000 / (30_000 * 0.3) + 4 * 15_000 / (20_000 * 0.3)
  epochs, _ = gpu_evidence.plan_train(rows, names, 185, 15_000, preset)
  assert epochs == int((185 - (25 + 1.5 * 30) - 20) // per_epoch)
  assert epochs == 8  # too few for CE to memorise (the preset's comment): h200 trains CE and RMDNet on 5,000
  assert gpu_evidence.plan_train(rows, names, 185, preset.rgrl_subset, preset)[0] == 24
  assert gpu_evidence.plan_train({'ce': rows['ce']}, names, 185, 15_000, preset)[0] == preset.rgrl_epochs[1]
  assert gpu_evidence.every(36, 10) == 4 and gpu_evidence.every(1, 10) == 1


def test_each_step_gets_its_budget_and_what_earlier_steps_saved():
  now = [0.0]
  clock = gpu_evidence.Clock(540, {'throughput': 190, 'simsiam': 150, 'train': 185, 'results': 15}, lambda: now[0])
  assert clock.allowed('throughput') == 190
  now[0] = 100.0  # throughput took 100 s of its 190
  assert clock.allowed('simsiam') == 440 - 200
  now[0] = 530.0
  assert clock.allowed('results') == 10


def test_a_process_at_its_limit_is_stopped(tmp_path):
  proc = gpu_evidence.Proc(
      'sleeper', [sys.executable, '-c', 'import time; time.sleep(60)'], str(tmp_path / 'sleeper.log'), dict(os.environ)
  )
  never = gpu_evidence.Proc('never', [sys.executable, '-c', 'pass'], str(tmp_path / 'never.log'), dict(os.environ))
  lines = []
  gpu_evidence.run_processes([proc, never], deadline_s=1.0, grace_s=1.0, max_parallel=1, log=lines.append)
  assert proc.stopped and proc.popen.returncode < 0 and proc.seconds < 10
  assert gpu_evidence.describe(proc).startswith('stopped at the limit after')
  assert gpu_evidence.describe(never) == 'not started (no time left)'
  assert 'stopping sleeper (SIGTERM)' in lines[0]


def test_two_benchmark_processes_make_one_table(tmp_path):
  evidence = gpu_evidence.Evidence(
      gpu_evidence.H200, str(tmp_path), str(tmp_path), 'x.npz', gpu_evidence.Clock(1, {}), print
  )
  for dtype in ('bfloat16', 'float32'):
    folder = tmp_path / 'throughput' / dtype
    folder.mkdir(parents=True)
    row = {'step': 'ce', 'dtype': dtype, 'images_per_s_total': 1.0, 'compile_s': 1.0}
    (folder / 'throughput.json').write_text(json.dumps({'results': [row]}))
    (folder / 'throughput.md').write_text(f'# Train-step throughput\n\n| ce | {dtype} |\n')
  evidence.write_throughput()
  text = (tmp_path / 'throughput.md').read_text()
  assert text.index('## bfloat16') < text.index('| ce | bfloat16 |') < text.index('## float32')
  assert [r['results'][0]['dtype'] for r in json.loads((tmp_path / 'throughput.json').read_text())['records']] == [
      'bfloat16',
      'float32',
  ]
  assert list(evidence.rates()) == ['ce']  # the runs' dtype: bfloat16


# --------------------------------------------------------------------------------------------------------------
# run: end to end
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_tiny_produces_every_output_through_the_real_runs(prepared, tmp_path):
  npz, _ = prepared
  out, scratch = tmp_path / 'out', tmp_path / 'scratch'
  result = _evidence(
      ['run', '--preset=tiny', f'--npz={npz}', f'--out={out}', f'--scratch={scratch}', '--rgrl_subset=64'],
      _env(tmp_path),
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert sorted(os.listdir(out)) == sorted(gpu_evidence.OUTPUT_FILES)
  for index, step in enumerate(gpu_evidence.STEPS, 1):
    assert re.search(rf'step {index}/4 {step}: budget \d+ s, allowed \d+ s', result.stdout), step
  record = json.loads((out / 'evidence.json').read_text())
  assert [(s['step'], s['status']) for s in record['steps']] == [(s, 'done') for s in gpu_evidence.STEPS]
  assert record['simsiam']['epochs'] == 2 and len(record['simsiam']['knn_by_epoch']) == 2
  assert record['simsiam']['teacher'] == str(scratch / 'runs' / 'simsiam' / 'rm')
  runs = {r['name']: r for r in record['runs']}
  assert sorted(runs) == ['ce', 'rmdnet_K1_cosine']
  for run in runs.values():
    assert run['outcome'].startswith('done') and 0 <= run['results']['test_accuracy_best'] <= 1
    assert [p[0] for p in run['curve']] == [1.0, 2.0]
  assert runs['rmdnet_K1_cosine']['results']['teacher_knn_accuracy'] >= 0
  config = json.loads((scratch / 'runs' / 'rmdnet_K1_cosine' / 'config.json').read_text())
  assert config['data']['source'] == 'npz' and config['noise']['rate'] == 0.5
  assert config['data']['train_subset'] == 64  # --rgrl_subset; SimSiam had all 96
  assert json.loads((scratch / 'runs' / 'simsiam' / 'config.json').read_text())['data']['train_subset'] == 256
  assert config['relation']['node_kind'] == 'cosine' and config['relation']['K'] == 1.0
  assert config['relation']['teacher_checkpoint'] == str(scratch / 'runs' / 'simsiam' / 'rm')
  assert [r['results'][0]['step'] for r in json.loads((out / 'throughput.json').read_text())['records']] == ['ce']
  assert (out / 'accuracy_vs_k.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  report = (out / 'evidence.md').read_text()
  assert '| results | 30 |' in report  # rewritten after the results step
  assert 'Planned: 2 epochs of 64 images each (no CE/RGRL measurement from step 1' in report
  assert re.search(r'\| rmdnet_K1_cosine \| True \| cosine \| simsiam/rm \| \d+\.\d\d \|', report)
  with tarfile.open(out / 'runs.tar.gz') as tar:
    names = set(tar.getnames())
  for run in ('simsiam', 'ce', 'rmdnet_K1_cosine'):
    assert {f'runs/{run}/{n}' for n in gpu_evidence.RUN_FILES} <= names and f'logs/{run}.log' in names
  assert 'step 4/4 results: done' in (out / 'gpu_evidence.log').read_text()


def test_run_skips_what_would_overrun_and_still_reports(prepared, tmp_path, capsys):
  npz, _ = prepared
  out = tmp_path / 'out'
  code = gpu_evidence.main(['run', '--preset=tiny', f'--npz={npz}', f'--out={out}', '--total_s=5'])
  stdout = capsys.readouterr().out
  assert code == 0
  for step in ('throughput', 'simsiam', 'train'):
    assert re.search(rf'{step}: skipped: it would overrun: 0 s are left for it after keeping \d+ s for', stdout)
  record = json.loads((out / 'evidence.json').read_text())
  assert [s['status'] for s in record['steps']] == ['skipped', 'skipped', 'skipped', 'done']
  assert sorted(os.listdir(out)) == ['evidence.json', 'evidence.md', 'gpu_evidence.log', 'runs.tar.gz']
  assert 'No measurement (see Steps).' in (out / 'evidence.md').read_text()


@pytest.mark.parametrize('damage', ['missing', 'not_a_zip'])
def test_missing_data_is_one_sentence(damage, tmp_path):
  npz = tmp_path / 'data.npz'
  if damage == 'not_a_zip':
    npz.write_text('not an npz')
  result = _evidence(['run', '--preset=tiny', f'--npz={npz}', f'--out={tmp_path / "out"}'], _env(tmp_path), 120)
  err = result.stderr.strip()
  assert result.returncode == 2 and err.startswith('error: ') and '\n' not in err and 'Traceback' not in err
  assert ('does not exist; prepare it' if damage == 'missing' else 'is not an .npz') in err
  assert not (tmp_path / 'out').exists()
