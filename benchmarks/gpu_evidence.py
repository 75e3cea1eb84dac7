"""One prepared command that turns ten minutes of one lent GPU into the speed figures and the evidence.

Here, on a machine with the data (CPU is enough), prepare the trip once:

  python -m benchmarks.gpu_evidence prepare --data_dir=../shared/data/tfds

It writes `.data/gpu_evidence/cifar10_subset.npz` (the first 15,000 training and 2,000 test images of CIFAR-10 in
id order, uint8, clean labels, read with `rmdnet_jax.datasets.data`; ~46 MiB) and `.whl/` (the wheels of the runtime
dependencies the device machine lacks), both git-ignored, and prints their sizes against the 64 MiB that travels.

There (one H200; carry `.data/gpu_evidence` and `.whl`), after installing the carried wheels:

  python -m benchmarks.gpu_evidence run --preset=h200 --out=$OUT

runs four steps, each with a printed time budget, inside ~540 s:
  1. throughput  `benchmarks.throughput --compare-torch`, batch 512, bfloat16 then float32 (one run each);
  2. simsiam     the RM stage (configs/default.py's SimSiam recipe) on the subset, as many epochs as the measured
                 SimSiam throughput fits in the step's budget, kNN every few epochs;
  3. train       CE against RMDNet (K in {0.1, 1} x relation.node_kind in {frobenius, cosine}) at 50% symmetric
                 noise, the step-2 SimSiam as the teacher, the runs side by side on the one GPU;
  4. results     `rmdnet_jax.report.results`' per-run table and accuracy-vs-K figure, the SimSiam kNN curve, the steps.
Every run goes through `rmdnet_jax.main` (configs/default.py + `--config.*` overrides, data.source=npz) in its own
process. A step that would not fit in what is left is skipped with a message; one that reaches its limit is stopped
(SIGTERM: a training run checkpoints and exits), and the later steps keep their time. OUT receives at most 8 files
(the device tool returns no more): evidence.md, evidence.json, throughput.md, throughput.json, accuracy_vs_k.png,
runs.tar.gz (each run's config.json, results.json, metrics.jsonl and log) and gpu_evidence.log. Work directories and
checkpoints stay in --scratch (default: a new temporary folder).

`--preset=tiny` runs the same code at configs/tiny.py's scale on a CPU in a minute or two (tests, CI).
"""

import argparse
import dataclasses
import datetime
import glob
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Callable, Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(REPO_ROOT, '.data', 'gpu_evidence')
NPZ_NAME = 'cifar10_subset.npz'
DEFAULT_NPZ = os.path.join(DATA_DIR, NPZ_NAME)
WHEEL_DIR = os.path.join(REPO_ROOT, '.whl')
# What travels to the device machine in one call: the working tree and the carried paths together.
TRAVEL_LIMIT_BYTES = 64 * 2**20
TRAIN_IMAGES, TEST_IMAGES = 15_000, 2_000
# Runtime dependencies (requirements.txt) that the device image lacks and a run from an .npz imports: ml-collections
# (the configs) and tensorboardX (the metrics writer). The image has the rest (jax, flax, optax, orbax-checkpoint,
# absl-py, numpy, etils, protobuf, PyYAML, packaging, matplotlib, tqdm, by the device notes); tfds,
# array-record and gcsfs are needed only for tfds data and gs:// paths.
DEVICE_MISSING = ('ml-collections', 'tensorboardX')
# The device notes' pip download platforms (pip matches each manylinux tag exactly).
WHEEL_PLATFORMS = (
    'manylinux_2_28_x86_64',
    'manylinux_2_27_x86_64',
    'manylinux_2_17_x86_64',
    'manylinux2014_x86_64',
    'manylinux1_x86_64',
)
DEVICE_PYTHON = '3.12'
INSTALL_COMMAND = (
    'python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site '
    '.whl/*.whl && export PYTHONPATH=/tmp/site || exit'
)
# At most this many files come back from the device's $OUT: OUT gets exactly OUTPUT_FILES.
OUTPUT_FILES = (
    'evidence.md',
    'evidence.json',
    'throughput.md',
    'throughput.json',
    'accuracy_vs_k.png',
    'runs.tar.gz',
    'gpu_evidence.log',
)
STEPS = ('throughput', 'simsiam', 'train', 'results')
# The files of a work directory that say what ran and what came out (no checkpoints).
RUN_FILES = ('config.json', 'results.json', 'metrics.jsonl')


class EvidenceError(RuntimeError):
  """A problem the user fixes (missing data, a bad option); the message is one sentence."""


class StepSkipped(Exception):
  """A step that would overrun its time; the message says why."""


# --------------------------------------------------------------------------------------------------------------
# Presets.
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Preset:
  """Everything that differs between the GPU run and its CPU rehearsal; the code path is the same."""

  name: str
  config: str  # the base config file of every run
  overrides: tuple  # --config.* overrides of every run (model, dtype, data subset, logging)
  rm_overrides: tuple  # the SimSiam run's own
  rgrl_overrides: tuple  # the CE and RMDNet runs' own
  grid: tuple  # (relation.K, relation.node_kind) of the RMDNet runs; CE runs beside them
  throughput_args: tuple  # benchmarks.throughput options (model, batch, timing), --dtype and --out added
  throughput_dtypes: tuple  # one benchmark process each, in this order (the first is the runs' dtype)
  budgets: dict  # planned seconds per step (STEPS); their sum is the total
  min_seconds: dict  # a step with less time left than this is skipped
  rm_epochs: tuple  # (least, without a measurement, most)
  rgrl_epochs: tuple
  evals: int  # evaluations (kNN / test accuracy) over a run
  startup_s: float  # one training process before its first step: interpreter, JAX, devices, data
  compile_factor: float  # a run's compile time / the benchmark's compile_s of its step (+ evaluation functions)
  efficiency: float  # a run's images/s / the benchmark's (evaluation, logging, the host)
  rgrl_rate_factor: float  # images/s at the runs' RGRL batch / at the benchmark's batch
  max_parallel: int  # training runs at once (they share the one accelerator)
  grace_s: float  # SIGTERM to SIGKILL: a training run's time to write its checkpoint
  gpu_memory_share: bool  # concurrent runs each take 1/max_parallel of the GPU memory (XLA preallocates 75%)
  rgrl_subset: int = 0  # > 0: CE and RMDNet train on the first N images of the .npz only (SimSiam on all)


# The h200 step 3 runs RGRL at the default recipe's batch 128 (lr 0.02): K means what it meant in the CPU study and
# docs/reconstruction.md (the relation terms grow with the batch; "What is a reconstruction"), and CE gets 4x the updates of
# batch 512 for memorising. Its five runs share ~185 s of the GPU: at 30,000 / 20,000 images/s (CE / RGRL at batch
# 512) `plan_train` gives them 8 epochs of all 15,000 images, too few for CE to memorise, and 24 of the first 5,000,
# which they train on (--rgrl_subset=0: all); the teacher learns from all 15,000. SimSiam and the throughput table
# use batch 512.
H200 = Preset(
    name='h200',
    config='configs/default.py',
    overrides=('--config.model.dtype=bfloat16',),
    rm_overrides=(),
    rgrl_overrides=(),
    grid=((0.1, 'frobenius'), (0.1, 'cosine'), (1.0, 'frobenius'), (1.0, 'cosine')),
    throughput_args=(
        '--model=resnet18',
        '--width=64',
        '--batch_per_device=512',
        '--steps=20',
        '--repeats=3',
        '--warmup=3',
        # torch.compile would spend about a minute per step and dtype: the peer runs eager.
        '--torch_compile=off',
        # NVIDIA's dense H100/H200 SXM peaks (TF32 for float32, as XLA uses by default).
        '--peak_tflops=float32=495,bfloat16=989',
    ),
    throughput_dtypes=('bfloat16', 'float32'),
    budgets={'throughput': 190, 'simsiam': 150, 'train': 185, 'results': 15},
    min_seconds={'throughput': 60, 'simsiam': 60, 'train': 60, 'results': 5},
    rm_epochs=(2, 30, 400),
    rgrl_epochs=(2, 20, 200),
    evals=10,
    startup_s=25.0,
    compile_factor=1.5,
    efficiency=0.6,
    rgrl_rate_factor=0.5,
    max_parallel=5,
    grace_s=20.0,
    gpu_memory_share=True,
    rgrl_subset=5000,
)

TINY = Preset(
    name='tiny',
    config='configs/tiny.py',
    overrides=('--config.data.train_subset=256', '--config.data.test_subset=128'),
    rm_overrides=(),
    rgrl_overrides=(),
    grid=((1.0, 'cosine'),),
    throughput_args=(
        '--model=resnet_tiny',
        '--width=4',
        '--image_size=8',
        '--projector_dim=16',
        '--batch_per_device=2',
        '--train_size=64',
        '--bench=ce',
        '--steps=1',
        '--repeats=1',
        '--warmup=1',
    ),
    throughput_dtypes=('float32',),
    budgets={'throughput': 120, 'simsiam': 150, 'train': 300, 'results': 30},
    min_seconds={'throughput': 10, 'simsiam': 10, 'train': 10, 'results': 1},
    rm_epochs=(1, 2, 2),
    rgrl_epochs=(1, 2, 2),
    evals=2,
    startup_s=5.0,
    compile_factor=1.5,
    efficiency=0.6,
    rgrl_rate_factor=1.0,
    max_parallel=1,
    grace_s=15.0,
    gpu_memory_share=False,
)

PRESETS = {p.name: p for p in (H200, TINY)}


# --------------------------------------------------------------------------------------------------------------
# prepare: the data subset and the wheels (here).
# --------------------------------------------------------------------------------------------------------------


def write_subset(data_dir: str, out_dir: str, train: int = TRAIN_IMAGES, test: int = TEST_IMAGES) -> str:
  """Reads CIFAR-10 from the tfds `data_dir` with `rmdnet_jax.datasets.data` and writes its first `train` training and
  `test` test images (id order, as data.train_subset / data.test_subset take them) to OUT/cifar10_subset.npz.

  The file holds x_train, y_train, x_test, y_test and ids_train (the original CIFAR indices), is read back by
  `data.load` with data.source=npz, and is returned.
  """
  from rmdnet_jax.datasets import data  # noqa: PLC0415  (numpy, ml_collections and tfds; no JAX)
  import numpy as np  # noqa: PLC0415

  try:
    dataset = data.load(_data_config('tfds', data_dir=data_dir, train_subset=train, test_subset=test))
  except data.DataUnavailableError as e:
    raise EvidenceError(str(e)) from e
  if len(dataset.train_images) < train or len(dataset.test_images) < test:
    raise EvidenceError(
        f'{data_dir} holds only {len(dataset.train_images)} training and {len(dataset.test_images)} test images of '
        f'cifar10, fewer than the {train} and {test} asked for; lower --train / --test.'
    )
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, NPZ_NAME)
  partial = path + '.partial.npz'
  np.savez_compressed(
      partial,
      x_train=dataset.train_images,
      y_train=dataset.train_labels,
      x_test=dataset.test_images,
      y_test=dataset.test_labels,
      ids_train=dataset.train_ids,
  )
  os.replace(partial, path)
  again = data.load(_data_config('npz', npz_path=path))
  assert again.train_images.shape == dataset.train_images.shape and again.test_images.shape == dataset.test_images.shape
  return path


def _data_config(source: str, **values):
  from configs import default  # noqa: PLC0415

  config = default.get_config().data
  config.source = source
  for key, value in values.items():
    config[key] = value
  return config


def runtime_pins(requirements: str = os.path.join(REPO_ROOT, 'requirements.txt')) -> dict:
  """{name: version} of the pinned runtime set."""
  pins = {}
  with open(requirements) as f:
    for line in f:
      match = re.match(r'^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s#;]+)', line.strip())
      if match:
        pins[match.group(1)] = match.group(2)
  return pins


def _normalise(name: str) -> str:
  return re.sub(r'[-_.]+', '_', name).lower()


def wheel_download_command(names: Sequence[str], dest: str, pins: Optional[dict] = None) -> list:
  """The device notes' `pip download` of `names` at their requirements.txt pins, for CPython 3.12 on x86-64."""
  pins = runtime_pins() if pins is None else pins
  command = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:']
  command += ['--python-version', DEVICE_PYTHON, '--implementation', 'cp']
  for tag in WHEEL_PLATFORMS:
    command += ['--platform', tag]
  return command + ['-d', dest] + [f'{name}=={pins[name]}' for name in names]


def download_wheels(dest: str = WHEEL_DIR, names: Sequence[str] = DEVICE_MISSING, runner: Callable = subprocess.run):
  """Downloads the wheels into `dest`, leaving one version of each (two would stop the install there)."""
  os.makedirs(dest, exist_ok=True)
  wanted = {_normalise(n) for n in names}
  for path in glob.glob(os.path.join(dest, '*.whl')):
    if _normalise(os.path.basename(path).split('-')[0]) in wanted:
      os.remove(path)
  result = runner(wheel_download_command(names, dest), capture_output=True, text=True, check=False)
  if result.returncode != 0:
    raise EvidenceError(
        f'pip could not download {", ".join(names)} ({_last_line(result.stderr)}); check the network to PyPI '
        'and run prepare again.'
    )
  wheels = sorted(glob.glob(os.path.join(dest, '*.whl')))
  projects = [_normalise(os.path.basename(w).split('-')[0]) for w in wheels]
  duplicated = sorted({p for p in projects if projects.count(p) > 1})
  if duplicated:
    raise EvidenceError(f'{dest} holds several versions of {", ".join(duplicated)}; delete the extra wheels.')
  return wheels


def _last_line(text: str) -> str:
  lines = [line.strip() for line in (text or '').splitlines() if line.strip()]
  return lines[-1] if lines else 'no message'


def tree_bytes(root: str = REPO_ROOT) -> Optional[int]:
  """Bytes of what travels besides the carried paths: tracked and untracked-not-ignored files (None without git)."""
  try:
    listed = subprocess.run(
        ['git', '-C', root, 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
        capture_output=True,
        check=True,
    ).stdout
  except (OSError, subprocess.CalledProcessError):
    return None
  total = 0
  for name in listed.decode().split('\0'):
    path = os.path.join(root, name)
    if name and os.path.isfile(path) and not os.path.islink(path):
      total += os.path.getsize(path)
  return total


def mib(n: int) -> str:
  return f'{n / 2**20:.1f} MiB'


def size_report(paths: Sequence[str], tree: Optional[int]) -> tuple[str, int]:
  """Lines naming each carried file's size, their total and what travels in all; returns (text, total bytes)."""
  sizes = [(p, os.path.getsize(p)) for p in paths]
  carried = sum(s for _, s in sizes)
  lines = [f'  {mib(s):>10}  {os.path.relpath(p, REPO_ROOT)}' for p, s in sizes]
  lines.append(f'  {mib(carried):>10}  carried in all (.data/gpu_evidence and .whl)')
  total = carried + (tree or 0)
  if tree is not None:
    lines.append(f'  {mib(tree):>10}  the working tree (tracked and untracked-not-ignored files)')
  lines.append(f'  {mib(total):>10}  travels, of the {mib(TRAVEL_LIMIT_BYTES)} a device call takes')
  return '\n'.join(lines), total


def prepare(args) -> int:
  start = time.perf_counter()
  print(f'Reading cifar10 from {args.data_dir} (rmdnet_jax.datasets.data; decoding takes ~20 s)...', flush=True)
  npz = write_subset(args.data_dir, args.out, args.train, args.test)
  print(f'Wrote {npz}: the first {args.train} training and {args.test} test images.', flush=True)
  paths = [npz]
  if args.wheels:
    paths += download_wheels(args.wheels_dir)
    print(f'Downloaded {", ".join(DEVICE_MISSING)} (requirements.txt pins) into {args.wheels_dir}.', flush=True)
  text, total = size_report(paths, tree_bytes())
  print(text, flush=True)
  print(f'Prepared in {time.perf_counter() - start:.0f} s.', flush=True)
  if total > TRAVEL_LIMIT_BYTES:
    raise EvidenceError(
        f'{mib(total)} would travel, more than the {mib(TRAVEL_LIMIT_BYTES)} a device call takes; lower --train.'
    )
  return 0


# --------------------------------------------------------------------------------------------------------------
# run: the steps (there).
# --------------------------------------------------------------------------------------------------------------


class Clock:
  """The run's time: elapsed seconds and what each step may still use."""

  def __init__(self, total_s: float, budgets: dict, now: Callable[[], float] = time.monotonic):
    self.total_s, self.budgets, self._now = float(total_s), dict(budgets), now
    self.start = now()

  def elapsed(self) -> float:
    return self._now() - self.start

  def left(self) -> float:
    return self.total_s - self.elapsed()

  def allowed(self, step: str) -> float:
    """What is left once every later step keeps its planned budget: a step also gets what earlier ones saved."""
    later = STEPS[STEPS.index(step) + 1 :]
    return self.left() - sum(self.budgets[s] for s in later)


class Log:
  """Prints with the run's elapsed time and keeps every line for OUT/gpu_evidence.log."""

  def __init__(self, clock: Clock, path: str):
    self.clock, self.path = clock, path

  def __call__(self, message: str) -> None:
    line = f'[{self.clock.elapsed():6.1f} s] {message}'
    print(line, flush=True)
    with open(self.path, 'a') as f:
      f.write(line + '\n')


@dataclasses.dataclass
class Proc:
  """A child process in its own process group (so a stop reaches its children), its output in a log file."""

  name: str
  command: list
  log_path: str
  env: dict
  popen: Optional[subprocess.Popen] = None
  start: float = 0.0
  seconds: Optional[float] = None
  stopped: bool = False

  def launch(self) -> None:
    with open(self.log_path, 'w') as log:
      log.write('$ ' + ' '.join(self.command) + '\n')
    log = open(self.log_path, 'a')  # noqa: SIM115  (the child holds it; closed by the Popen's exit)
    self.start = time.monotonic()
    self.popen = subprocess.Popen(
        self.command, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()

  def poll(self) -> Optional[int]:
    code = self.popen.poll()
    if code is not None and self.seconds is None:
      self.seconds = time.monotonic() - self.start
    return code

  def signal(self, sig) -> None:
    try:
      os.killpg(self.popen.pid, sig)
    except ProcessLookupError:
      pass


def run_processes(procs: Sequence[Proc], *, deadline_s: float, grace_s: float, max_parallel: int, log) -> None:
  """Runs `procs`, `max_parallel` at a time, until all end or `deadline_s` seconds pass; then each running one gets
  SIGTERM (a training run checkpoints and exits) and, `grace_s` later, SIGKILL. Those not started by then never
  start (returncode None)."""
  start, pending, running = time.monotonic(), list(procs), []
  while pending or running:
    while pending and len(running) < max_parallel and time.monotonic() - start < deadline_s:
      proc = pending.pop(0)
      proc.launch()
      running.append(proc)
    running = [p for p in running if p.poll() is None]
    if time.monotonic() - start >= deadline_s:
      break
    if not pending and not running:
      break
    time.sleep(0.2)
  if running:
    log(f'  limit of {deadline_s:.0f} s reached: stopping {", ".join(p.name for p in running)} (SIGTERM)')
    for proc in running:
      proc.stopped = True
      proc.signal(signal.SIGTERM)
    end = time.monotonic() + grace_s
    while any(p.poll() is None for p in running) and time.monotonic() < end:
      time.sleep(0.2)
    for proc in running:
      if proc.poll() is None:
        proc.signal(signal.SIGKILL)
        proc.popen.wait()
        proc.poll()


def describe(proc: Proc) -> str:
  """What became of a process, in words."""
  if proc.popen is None:
    return 'not started (no time left)'
  code = proc.popen.returncode
  took = f'{proc.seconds:.1f} s'
  if proc.stopped:
    return f'stopped at the limit after {took} (exit {code})'
  if code == 0:
    return f'done in {took}'
  return f'failed (exit {code}) after {took}: {_last_line(_read(proc.log_path))}'


def _read(path: str) -> str:
  try:
    with open(path, errors='replace') as f:
      return f.read()
  except OSError:
    return ''


def python_command(module: str, *args) -> list:
  return [sys.executable, '-m', module, *args]


def child_env(preset: Preset, share: int = 1) -> dict:
  env = dict(os.environ, PYTHONUNBUFFERED='1', TF_CPP_MIN_LOG_LEVEL='2')
  if preset.gpu_memory_share and share > 1:
    env['XLA_PYTHON_CLIENT_MEM_FRACTION'] = f'{0.9 / share:.2f}'
  return env


def fit_epochs(seconds: float, seconds_per_epoch: float, fixed_s: float, bounds: tuple) -> Optional[int]:
  """The most epochs, within bounds (least, _, most), whose estimated time fits in `seconds`; None when not even
  the least does."""
  least, _, most = bounds
  epochs = math.floor((seconds - fixed_s) / seconds_per_epoch) if seconds_per_epoch > 0 else most
  if epochs < least:
    return None
  return min(epochs, most)


def plan_simsiam(row: Optional[dict], allowed: float, num_train: int, preset: Preset) -> tuple[int, str]:
  """(epochs, how they were chosen) of the SimSiam run: as many as its step-1 throughput `row` fits in `allowed`
  seconds, else the preset's fallback.

  Raises:
    StepSkipped: not even the preset's least number of epochs fits.
  """
  if row is None:
    return preset.rm_epochs[1], "no SimSiam measurement from step 1: the preset's fallback"
  per_epoch = num_train / (row['images_per_s_total'] * preset.efficiency)
  fixed = preset.startup_s + preset.compile_factor * row['compile_s'] + preset.grace_s
  epochs = fit_epochs(allowed, per_epoch, fixed, preset.rm_epochs)
  if epochs is None:
    raise StepSkipped(f'not even {preset.rm_epochs[0]} epochs fit in {allowed:.0f} s (estimate)')
  return epochs, f'{per_epoch:.2f} s/epoch estimated from {row["images_per_s_total"]:.0f} images/s in step 1'


def plan_train(rows: dict, names: Sequence[str], allowed: float, num_train: int, preset: Preset) -> tuple[int, str]:
  """(epochs, how they were chosen) of every CE and RMDNet run (`names`): the runs share the accelerator, so an
  epoch of all of them costs the sum of their epochs at the step-1 images/s ('ce' rows for CE, 'rgrl' for RMDNet),
  and each wave of `preset.max_parallel` runs starts up and compiles once; without those rows, the preset's
  fallback.

  Raises:
    StepSkipped: not even the preset's least number of epochs fits.
  """
  kinds = ['ce' if name == 'ce' else 'rgrl' for name in names]
  if not all(k in rows for k in kinds):
    return preset.rgrl_epochs[1], "no CE/RGRL measurement from step 1: the preset's fallback"
  per_epoch = sum(
      num_train / (rows[k]['images_per_s_total'] * preset.rgrl_rate_factor * preset.efficiency) for k in kinds
  )
  waves = math.ceil(len(names) / preset.max_parallel)
  compile_s = max(rows[k]['compile_s'] for k in kinds)
  fixed = waves * (preset.startup_s + preset.compile_factor * compile_s) + preset.grace_s
  epochs = fit_epochs(allowed, per_epoch, fixed, preset.rgrl_epochs)
  if epochs is None:
    raise StepSkipped(f'not even {preset.rgrl_epochs[0]} epochs of {len(names)} runs fit in {allowed:.0f} s (estimate)')
  return epochs, f'{per_epoch:.2f} s per epoch of all {len(names)} runs, estimated from step 1'


def every(epochs: int, evals: int) -> int:
  """Epochs between evaluations, so that a run of `epochs` evaluates about `evals` times (and at its end)."""
  return max(1, math.ceil(epochs / max(1, evals)))


def throughput_rows(scratch: str) -> dict:
  """{(step, dtype): row} of the step-1 measurements, {} without any."""
  rows = {}
  for path in sorted(glob.glob(os.path.join(scratch, 'throughput', '*', 'throughput.json'))):
    with open(path) as f:
      for row in json.load(f)['results']:
        rows[(row['step'], row['dtype'])] = row
  return rows


class Evidence:
  """The run: its options, its record (OUT/evidence.json, rewritten after each step) and its steps."""

  def __init__(self, preset: Preset, out: str, scratch: str, npz: str, clock: Clock, log, rgrl_subset: int = 0):
    self.preset, self.out, self.scratch, self.npz, self.clock, self.log = preset, out, scratch, npz, clock, log
    self.rgrl_subset = rgrl_subset  # > 0: the CE and RMDNet runs train on the first N images only
    self.record = {
        'preset': preset.name,
        'npz': npz,
        'scratch': scratch,
        'total_s': clock.total_s,
        'budgets_s': clock.budgets,
        'environment': environment(),
        'steps': [],
        'simsiam': {},
        'runs': [],
    }
    self.report = None  # (per-run table, figure) once the results step has made them

  # --- shared -------------------------------------------------------------------------------------------------

  def save(self) -> None:
    with open(os.path.join(self.out, 'evidence.json'), 'w') as f:
      json.dump(self.record, f, indent=2)
      f.write('\n')

  def run_flags(self, workdir: str, *extra) -> list:
    """rmdnet_jax.main's flags: the preset's config and overrides, then `extra` (which replace the preset's)."""
    replaced = {flag.split('=', 1)[0] for flag in extra}
    overrides = [flag for flag in self.preset.overrides if flag.split('=', 1)[0] not in replaced]
    return [
        f'--config={self.preset.config}',
        f'--workdir={workdir}',
        '--config.data.source=npz',
        f'--config.data.npz_path={self.npz}',
        '--config.logging.progress_bar=False',
        '--config.logging.progress_every_secs=30',
        *overrides,
        *extra,
    ]

  def rates(self) -> dict:
    """The step-1 images/s and compile seconds of each train step at the runs' dtype."""
    dtype = self.preset.throughput_dtypes[0]
    return {k: r for (k, d), r in throughput_rows(self.scratch).items() if d == dtype}

  # --- 1. throughput --------------------------------------------------------------------------------------------

  def throughput(self, allowed: float) -> str:
    p, args = self.preset, list(self.preset.throughput_args)
    if importlib.util.find_spec('torch') is not None:  # find_spec: this process never loads torch
      args.append('--compare-torch')
      note = ''
    else:
      self.log('  PyTorch is not installed here: the table has no PyTorch column')
      note = 'no PyTorch here; '
    end = time.monotonic() + allowed
    outcomes = []
    for dtype in p.throughput_dtypes:
      left = end - time.monotonic()
      if left < p.min_seconds['throughput'] / len(p.throughput_dtypes):
        self.log(f'  {dtype}: skipped, {left:.0f} s left of the step')
        outcomes.append(f'{dtype} skipped')
        continue
      out = os.path.join(self.scratch, 'throughput', dtype)
      proc = Proc(
          f'throughput {dtype}',
          python_command('benchmarks.throughput', *args, f'--dtype={dtype}', f'--out={out}'),
          os.path.join(self.scratch, 'logs', f'throughput_{dtype}.log'),
          child_env(p),
      )
      self.log(f'  {dtype}: up to {left:.0f} s: python -m benchmarks.throughput {" ".join(args)} --dtype={dtype}')
      run_processes([proc], deadline_s=left, grace_s=0.0, max_parallel=1, log=self.log)
      self.log(f'  {dtype}: {describe(proc)}')
      outcomes.append(f'{dtype} {describe(proc).split(" ")[0]}')
    self.write_throughput()
    return note + ', '.join(outcomes)

  def write_throughput(self) -> None:
    records, texts = [], []
    for dtype in self.preset.throughput_dtypes:
      path = os.path.join(self.scratch, 'throughput', dtype)
      if os.path.isfile(os.path.join(path, 'throughput.json')):
        with open(os.path.join(path, 'throughput.json')) as f:
          records.append(json.load(f))
        texts.append(_read(os.path.join(path, 'throughput.md')).replace('# Train-step throughput', f'## {dtype}', 1))
    if records:
      with open(os.path.join(self.out, 'throughput.json'), 'w') as f:
        json.dump({'benchmark': 'throughput', 'records': records}, f, indent=2)
        f.write('\n')
      with open(os.path.join(self.out, 'throughput.md'), 'w') as f:
        f.write('# Train-step throughput\n\n' + '\n'.join(texts))

  # --- 2. SimSiam -------------------------------------------------------------------------------------------------

  def simsiam(self, allowed: float, num_train: int) -> str:
    p = self.preset
    epochs, how = plan_simsiam(self.rates().get('simsiam'), allowed, num_train, p)
    eval_every = every(epochs, p.evals)
    self.log(f'  {epochs} epochs of {num_train} images ({how}), kNN every {eval_every} epochs')
    workdir = os.path.join(self.scratch, 'runs', 'simsiam')
    flags = self.run_flags(
        workdir,
        '--config.stages=rm',
        f'--config.rm.epochs={epochs}',
        f'--config.rm.eval_every_epochs={eval_every}',
        '--config.rm.checkpoint_every_epochs=0',
        *p.rm_overrides,
    )
    proc = Proc('simsiam', python_command('rmdnet_jax.main', *flags), self._log_path('simsiam'), child_env(p))
    run_processes([proc], deadline_s=allowed - p.grace_s, grace_s=p.grace_s, max_parallel=1, log=self.log)
    self.log(f'  simsiam: {describe(proc)}')
    knn = [
        [row['step'], row['rm/knn_accuracy']]
        for row in _read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
        if 'rm/knn_accuracy' in row
    ]
    steps_per_epoch = num_train // max(1, _batch_size(workdir, 'rm'))
    self.record['simsiam'] = {
        'workdir': workdir,
        'epochs': epochs,
        'eval_every_epochs': eval_every,
        'plan': how,
        'knn_by_epoch': [[s / max(1, steps_per_epoch), a] for s, a in knn],
        'outcome': describe(proc),
        'teacher': self.teacher(),
    }
    last = f', last kNN {100 * knn[-1][1]:.1f}%' if knn else ''
    return f'{epochs} epochs planned, {describe(proc)}{last}'

  def teacher(self) -> Optional[str]:
    """The SimSiam checkpoint directory when it holds a checkpoint (also one written at a stop), else None."""
    directory = os.path.join(self.scratch, 'runs', 'simsiam', 'rm')
    has_step = os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))
    return directory if has_step else None

  # --- 3. CE against RMDNet --------------------------------------------------------------------------------------

  def cells(self, teacher: Optional[str]) -> list:
    """(name, overrides) of the training runs: CE, and RMDNet for each grid cell when there is a teacher."""
    cells = [('ce', ('--config.method.distill=False',))]
    for k, node_kind in self.preset.grid if teacher else ():
      cells.append(
          (
              f'rmdnet_K{k:g}_{node_kind}',
              (
                  '--config.method.distill=True',
                  f'--config.relation.K={k}',
                  f'--config.relation.node_kind={node_kind}',
                  f'--config.relation.teacher_checkpoint={teacher}',
              ),
          )
      )
    return cells

  def train(self, allowed: float, num_train: int) -> str:
    p = self.preset
    teacher = self.teacher()
    if teacher is None:
      self.log('  no SimSiam checkpoint (step 2 skipped or failed): CE runs alone, without RMDNet')
    cells = self.cells(teacher)
    subset = ()
    if self.rgrl_subset:
      num_train = min(num_train, self.rgrl_subset)
      subset = (f'--config.data.train_subset={num_train}',)
    epochs, how = plan_train(self.rates(), [n for n, _ in cells], allowed, num_train, p)
    eval_every = every(epochs, p.evals)
    self.log(
        f'  {len(cells)} runs ({", ".join(n for n, _ in cells)}), {min(len(cells), p.max_parallel)} at a time, '
        f'{epochs} epochs of {num_train} images each ({how}), test accuracy every {eval_every} epochs'
    )
    procs = []
    for name, overrides in cells:
      flags = self.run_flags(
          os.path.join(self.scratch, 'runs', name),
          '--config.stages=rgrl',
          '--config.noise.kind=symmetric',
          '--config.noise.rate=0.5',
          f'--config.rgrl.epochs={epochs}',
          f'--config.rgrl.eval_every_epochs={eval_every}',
          '--config.rgrl.checkpoint_every_epochs=0',
          *subset,
          *p.rgrl_overrides,
          *overrides,
      )
      env = child_env(p, share=min(len(cells), p.max_parallel))
      procs.append(Proc(name, python_command('rmdnet_jax.main', *flags), self._log_path(name), env))
    self.record['train_plan'] = f'{epochs} epochs of {num_train} images each ({how})'
    run_processes(procs, deadline_s=allowed - p.grace_s, grace_s=p.grace_s, max_parallel=p.max_parallel, log=self.log)
    self.record['runs'] = []
    for proc in procs:
      workdir = os.path.join(self.scratch, 'runs', proc.name)
      tests = [
          r['rgrl/test_accuracy']
          for r in _read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
          if 'rgrl/test_accuracy' in r
      ]
      self.record['runs'].append(
          {
              'name': proc.name,
              'workdir': workdir,
              'epochs': epochs,
              'outcome': describe(proc),
              'results': _read_json(os.path.join(workdir, 'results.json')),
              'curve': curve(workdir, num_train // max(1, _batch_size(workdir, 'rgrl'))),
          }
      )
      best = f', best test {100 * max(tests):.1f}%' if tests else ''
      self.log(f'  {proc.name}: {describe(proc)}{best}')
    finished = sum(1 for r in self.record['runs'] if r['results'])
    return f'{epochs} epochs planned, {finished} of {len(procs)} runs finished'

  # --- 4. results --------------------------------------------------------------------------------------------------

  def results(self, allowed: float) -> str:
    del allowed  # seconds of work: the table, the figure, the archive
    from rmdnet_jax.report import results as results_lib  # noqa: PLC0415  (imports no JAX)

    workdirs = [r['workdir'] for r in self.record['runs'] if os.path.isfile(os.path.join(r['workdir'], 'config.json'))]
    keys, rows = results_lib.run_rows(workdirs) if workdirs else ([], [])
    table = (
        results_lib.per_run_markdown(keys, rows, all_columns=True) if rows else 'No CE or RMDNet run wrote its config.'
    )
    figure = 'no figure: no run finished'
    if any(r['results'].get('test_accuracy_best') is not None for r in rows):
      try:
        results_lib.k_figure(rows, os.path.join(self.out, 'accuracy_vs_k.png'))
        figure = 'accuracy_vs_k.png'
      except Exception as e:  # noqa: BLE001  the table and the archive still matter without the figure
        figure = f'no figure ({type(e).__name__}: {e})'
    self.archive()
    self.report = (table, figure)
    self.write_markdown()
    return f'evidence.md, {figure}, runs.tar.gz'

  def write_markdown(self) -> None:
    if self.report is not None:
      with open(os.path.join(self.out, 'evidence.md'), 'w') as f:
        f.write(self.markdown(*self.report))

  def archive(self) -> None:
    """OUT/runs.tar.gz: each run's RUN_FILES, every process's log and the step-1 records."""
    with tarfile.open(os.path.join(self.out, 'runs.tar.gz'), 'w:gz') as tar:
      for workdir in sorted(glob.glob(os.path.join(self.scratch, 'runs', '*'))):
        for name in RUN_FILES:
          path = os.path.join(workdir, name)
          if os.path.isfile(path):
            tar.add(path, arcname=f'runs/{os.path.basename(workdir)}/{name}')
      for path in sorted(glob.glob(os.path.join(self.scratch, 'logs', '*.log'))):
        tar.add(path, arcname=f'logs/{os.path.basename(path)}')
      for path in sorted(glob.glob(os.path.join(self.scratch, 'throughput', '*', 'torch_peer*'))):
        tar.add(path, arcname=os.path.relpath(path, self.scratch))

  def markdown(self, table: str, figure: str) -> str:
    r, env = self.record, self.record['environment']
    lines = [f'# GPU evidence (preset {r["preset"]})', '']
    lines += [f'- {k}: {v}' for k, v in env.items()]
    lines += [f'- data: {r.get("data", r["npz"])}', f'- total budget: {r["total_s"]:.0f} s', '']
    lines += ['## Steps', '', '| step | budget s | allowed s | took s | outcome |', '|---|---|---|---|---|']
    for s in r['steps']:
      allowed = f'{s["allowed_s"]:.0f}' if s.get('allowed_s') is not None else '—'
      took = f'{s["seconds"]:.1f}' if s.get('seconds') is not None else '—'
      lines.append(f'| {s["step"]} | {s["budget_s"]:.0f} | {allowed} | {took} | {s["status"]}: {s["message"]} |')
    lines += ['', '## 1. Throughput', '']
    throughput_md = _read(os.path.join(self.out, 'throughput.md'))
    lines.append(throughput_md.split('\n', 2)[-1].strip() if throughput_md else 'No measurement (see Steps).')
    lines += ['', '## 2. SimSiam (RM stage): kNN accuracy of the encoder (clean labels, a monitor)', '']
    sim = r['simsiam']
    if sim.get('knn_by_epoch'):
      lines += [f'{sim["epochs"]} epochs planned ({sim["plan"]}); {sim["outcome"]}.', '']
      lines += ['| epoch | kNN % |', '|---|---|']
      lines += [f'| {e:g} | {100 * a:.2f} |' for e, a in sim['knn_by_epoch']]
    else:
      lines.append('No kNN measurement (see Steps).')
    lines += ['', '## 3. CE against RMDNet, 50% symmetric noise', '']
    lines += [f'Planned: {r["train_plan"]}.', ''] if r.get('train_plan') else []
    lines += [table, '']
    if r['runs']:
      lines += ['Curves: test accuracy % / agreement of the training predictions with the noisy labels %.', '']
      lines += curves_markdown(r['runs'])
      lines += ['', 'Runs: ' + '; '.join(f'{x["name"]} {x["outcome"]}' for x in r['runs']) + '.', '']
    if figure.endswith('.png'):
      lines += [f'![best test accuracy against K]({figure})', '']
    return '\n'.join(lines) + '\n'

  # --- steps ---------------------------------------------------------------------------------------------------

  def _log_path(self, name: str) -> str:
    return os.path.join(self.scratch, 'logs', f'{name}.log')

  def step(self, index: int, name: str, fn: Callable[[float], str]) -> None:
    """Runs one step within its time, or skips it with a message; a failure is recorded and the run goes on."""
    allowed = self.clock.allowed(name)
    budget = self.clock.budgets[name]
    entry = {'step': name, 'budget_s': budget, 'allowed_s': allowed, 'seconds': None}
    prefix = f'step {index}/{len(STEPS)} {name}'
    if allowed < self.preset.min_seconds[name]:
      entry.update(status='skipped', message=self._overrun(name, allowed))
      self.log(f'{prefix}: skipped: {entry["message"]}')
    else:
      self.log(
          f'{prefix}: budget {budget:.0f} s, allowed {allowed:.0f} s ({self.clock.left():.0f} s left of '
          f'{self.clock.total_s:.0f} s)'
      )
      start = time.monotonic()
      try:
        entry.update(status='done', message=fn(allowed))
      except StepSkipped as e:
        entry.update(status='skipped', message=str(e))
      except Exception as e:  # noqa: BLE001  one step's failure must not lose the others' outputs
        entry.update(status='failed', message=f'{type(e).__name__}: {e}')
      entry['seconds'] = time.monotonic() - start
      self.log(f'{prefix}: {entry["status"]} in {entry["seconds"]:.1f} s: {entry["message"]}')
    self.record['steps'].append(entry)
    self.save()

  def _overrun(self, name: str, allowed: float) -> str:
    later = STEPS[STEPS.index(name) + 1 :]
    kept = f' after keeping {sum(self.clock.budgets[s] for s in later):.0f} s for {", ".join(later)}' if later else ''
    return (
        f'it would overrun: {max(0.0, allowed):.0f} s are left for it{kept}, and it needs at least '
        f'{self.preset.min_seconds[name]:.0f} s'
    )


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def _read_jsonl(path: str) -> list:
  rows = []
  for line in _read(path).splitlines():
    try:
      rows.append(json.loads(line))
    except ValueError:
      pass  # a torn last line of a stopped run
  return rows


def _batch_size(workdir: str, stage: str) -> int:
  return int(_read_json(os.path.join(workdir, 'config.json')).get(stage, {}).get('batch_size', 0) or 0)


def curve(workdir: str, steps_per_epoch: int) -> list:
  """[[epoch, test accuracy, agreement with the noisy labels or None]] of an RGRL run's evaluations."""
  points = {}
  for row in _read_jsonl(os.path.join(workdir, 'metrics.jsonl')):
    if 'rgrl/test_accuracy' in row:
      points.setdefault(row['step'], [None, None])[0] = row['rgrl/test_accuracy']
    if 'rgrl/train_accuracy_noisy_labels' in row:
      points.setdefault(row['step'], [None, None])[1] = row['rgrl/train_accuracy_noisy_labels']
  return [[s / steps_per_epoch if steps_per_epoch else s, t, n] for s, (t, n) in sorted(points.items())]


def curves_markdown(runs: Sequence[dict]) -> list:
  epochs = sorted({round(p[0], 3) for r in runs for p in r['curve']})
  lines = ['| epoch | ' + ' | '.join(r['name'] for r in runs) + ' |', '|---|' + '---|' * len(runs)]

  def cell(run, epoch):
    for e, test, noisy in run['curve']:
      if round(e, 3) == epoch:
        return (
            (f'{100 * test:.1f}' if test is not None else '—')
            + ' / '
            + (f'{100 * noisy:.1f}' if noisy is not None else '—')
        )
    return ''

  for epoch in epochs:
    lines.append(f'| {epoch:g} | ' + ' | '.join(cell(r, epoch) for r in runs) + ' |')
  return lines


def environment() -> dict:
  """Date, machine, accelerator and library versions, read without importing JAX or PyTorch."""
  versions = {}
  for name in ('jax', 'jaxlib', 'jax-cuda13-plugin', 'jax-cuda12-plugin', 'flax', 'optax', 'orbax-checkpoint',
               'numpy', 'ml-collections', 'tensorboardX', 'torch'):  # fmt: skip
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  env = {
      'date (UTC)': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'python': f'{platform.python_version()} ({sys.executable})',
      'host': f'{platform.machine()}, {os.cpu_count()} cores',
      'libraries': ', '.join(f'{k} {v}' for k, v in versions.items()),
  }
  if shutil.which('nvidia-smi'):
    query = ['nvidia-smi', '--query-gpu=name,driver_version,memory.total', '--format=csv,noheader']
    try:
      gpus = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
      gpus = ''
    env['gpus'] = '; '.join(gpus.splitlines()) or 'nvidia-smi gave no answer'
  try:
    commit = subprocess.run(['git', '-C', REPO_ROOT, 'rev-parse', 'HEAD'], capture_output=True, text=True, check=False)
    env['git'] = commit.stdout.strip() or 'unknown'
  except OSError:
    env['git'] = 'unknown'
  return env


def parse_budgets(text: str) -> dict:
  budgets = {}
  for item in filter(None, (t.strip() for t in text.split(','))):
    name, _, value = item.partition('=')
    if name not in STEPS or not re.fullmatch(r'\d+(\.\d+)?', value):
      raise EvidenceError(f'--budgets={text!r}: use STEP=SECONDS items with STEP one of {", ".join(STEPS)}.')
    budgets[name] = float(value)
  return budgets


def load_subset(npz: str, preset: Preset):
  """The npz as the runs will read it (rmdnet_jax.datasets.data, with the preset's subsets); a one-sentence error else."""
  from rmdnet_jax.datasets import data  # noqa: PLC0415  (no JAX)

  if not os.path.isfile(npz):
    raise EvidenceError(
        f'{npz} does not exist; prepare it on a machine with the data with `python -m benchmarks.gpu_evidence '
        'prepare --data_dir=DIR` and carry .data/gpu_evidence (or pass --npz=FILE).'
    )
  subsets = {}
  for flag in preset.overrides:
    match = re.fullmatch(r'--config\.data\.(train_subset|test_subset)=(\d+)', flag)
    if match:
      subsets[match.group(1)] = int(match.group(2))
  try:
    return data.load(_data_config('npz', npz_path=npz, **subsets))
  except data.DataUnavailableError as e:
    raise EvidenceError(str(e)) from e


def run(args) -> int:
  preset = PRESETS[args.preset]
  budgets = {**preset.budgets, **parse_budgets(args.budgets or '')}
  total_s = args.total_s if args.total_s is not None else sum(budgets.values())
  npz = os.path.abspath(args.npz)
  dataset = load_subset(npz, preset)
  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  for name in OUTPUT_FILES:  # a rerun into the same folder must not mix old files in
    if os.path.exists(os.path.join(out, name)):
      os.remove(os.path.join(out, name))
  scratch = os.path.abspath(args.scratch or tempfile.mkdtemp(prefix=f'gpu_evidence_{preset.name}_'))
  if os.path.exists(os.path.join(scratch, 'runs')) or os.path.exists(os.path.join(scratch, 'throughput')):
    raise EvidenceError(f'--scratch={scratch} holds an earlier run; pass an empty or new folder.')
  os.makedirs(os.path.join(scratch, 'logs'), exist_ok=True)
  clock = Clock(total_s, budgets)
  log = Log(clock, os.path.join(out, 'gpu_evidence.log'))
  rgrl_subset = preset.rgrl_subset if args.rgrl_subset is None else args.rgrl_subset
  evidence = Evidence(preset, out, scratch, npz, clock, log, rgrl_subset)
  n_train, n_test = len(dataset.train_images), len(dataset.test_images)
  evidence.record['data'] = f'{npz}: {n_train} training and {n_test} test images {dataset.image_shape}'
  log(
      f'gpu_evidence, preset {preset.name}: {total_s:.0f} s in all ('
      + ', '.join(f'{s} {budgets[s]:.0f} s' for s in STEPS)
      + f'); data {evidence.record["data"]}; work directories in {scratch}'
  )
  evidence.step(1, 'throughput', evidence.throughput)
  evidence.step(2, 'simsiam', lambda allowed: evidence.simsiam(allowed, n_train))
  evidence.step(3, 'train', lambda allowed: evidence.train(allowed, n_train))
  evidence.step(4, 'results', evidence.results)
  evidence.write_markdown()  # again, with the results step in its table of steps
  if os.path.isfile(os.path.join(out, 'evidence.md')):
    print('\n' + _read(os.path.join(out, 'evidence.md')), flush=True)
  log(f'Wrote {", ".join(n for n in OUTPUT_FILES if os.path.exists(os.path.join(out, n)))} to {out}.')
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m benchmarks.gpu_evidence', description=__doc__.split('\n')[0])
  commands = parser.add_subparsers(dest='command', required=True)
  p = commands.add_parser('prepare', help='here: the CIFAR-10 subset (.npz) and the missing wheels')
  p.add_argument(
      '--data_dir', required=True, help='tfds data_dir with cifar10 prepared (rmdnet_jax.datasets.prepare_data)'
  )
  p.add_argument('--out', default=DATA_DIR, help='folder of the .npz (default .data/gpu_evidence)')
  p.add_argument('--train', type=int, default=TRAIN_IMAGES, help='training images (the first, in id order)')
  p.add_argument('--test', type=int, default=TEST_IMAGES, help='test images (the first, in id order)')
  p.add_argument('--wheels_dir', default=WHEEL_DIR, help='folder of the wheels (default .whl)')
  p.add_argument(
      '--wheels', default=True, action=argparse.BooleanOptionalAction, help='download the wheels (--no-wheels: not)'
  )
  r = commands.add_parser('run', help='there: every step, into --out')
  r.add_argument('--preset', choices=sorted(PRESETS), required=True)
  r.add_argument('--out', required=True, help='folder of the outputs (at most 8 files)')
  r.add_argument('--npz', default=DEFAULT_NPZ, help='the data (default .data/gpu_evidence/cifar10_subset.npz)')
  r.add_argument('--scratch', default=None, help='work directories and logs (default: a new temporary folder)')
  r.add_argument('--total_s', type=float, default=None, help="the whole run's seconds (default: the budgets' sum)")
  r.add_argument('--budgets', default='', help="STEP=SECONDS,... to replace the preset's (e.g. simsiam=200)")
  r.add_argument(
      '--rgrl_subset',
      type=int,
      default=None,
      help='CE and RMDNet train on the first N images only (more epochs in the same time); 0 = all; default: the '
      "preset's (h200: 5000, tiny: 0)",
  )
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return prepare(args) if args.command == 'prepare' else run(args)
  except EvidenceError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    return 2


if __name__ == '__main__':
  sys.exit(main())
