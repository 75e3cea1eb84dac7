"""Test set-up: 8 fake CPU devices, so pmapped code runs as on an 8-chip TPU host.

The flag must be set before JAX initialises its backends, which is why it lives here, at import time of the
first module pytest loads.
"""

import os

from tests import xla_flags  # noqa: E402  (no JAX import)

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + xla_flags.with_devices(8)).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# As rmdnet_jax.main sets it (see there); also keeps CPU compile times of random ops low.
os.environ['JAX_THREEFRY_PARTITIONABLE'] = '0'
# TensorFlow (pulled in by tfds/clu) must not be chatty or grab threads it does not need in tests.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / 'shared'


@pytest.fixture
def shared_dir():
  """The team's shared data folder (../shared); tests that need it skip when it is absent."""
  if not (SHARED / 'data' / 'tfds' / 'cifar10').is_dir():
    pytest.skip("../shared/data/tfds is not present (only on the team's machines)")
  return SHARED


# Many tests build the same steps (each pipeline.run makes new pmapped functions), and many start
# `python -m rmdnet_jax.main` as a child: one persistent compilation cache for the whole session, shared by the
# parallel workers and every child they start (through the JAX_* variables below, which children inherit), turns
# their repeated XLA compiles into cache hits. A size limit makes JAX lock the folder (the `filelock` package)
# around every read and write: without the lock, a process can read an entry another one is still writing, and
# crash. The first process of the session (pytest's controller, before it starts the workers) makes the folder and
# removes it at exit; RMDNET_TEST_COMPILATION_CACHE names a folder to keep between sessions instead.
import atexit  # noqa: E402
import gc  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402

if not os.environ.get('RMDNET_TEST_COMPILATION_CACHE'):
  os.environ['RMDNET_TEST_COMPILATION_CACHE'] = tempfile.mkdtemp(prefix='rmdnet_jax_test_xla_cache_')
  atexit.register(shutil.rmtree, os.environ['RMDNET_TEST_COMPILATION_CACHE'], ignore_errors=True)
CACHE_ENV = {
    'JAX_COMPILATION_CACHE_DIR': os.environ['RMDNET_TEST_COMPILATION_CACHE'],
    'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
    'JAX_COMPILATION_CACHE_MAX_SIZE': str(16 << 30),  # bytes; any limit turns the lock on
}
os.environ.update(CACHE_ENV)
jax.config.update('jax_compilation_cache_dir', CACHE_ENV['JAX_COMPILATION_CACHE_DIR'])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_compilation_cache_max_size', 16 << 30)


@pytest.fixture(autouse=True, scope='module')
def _release_compiled_programs():
  """Frees each test module's compiled programs when it ends. Every loaded XLA:CPU executable holds memory
  mappings, and a whole session's worth exceeds the kernel's limit (vm.max_map_count, 65,530), at which point
  loading the next one crashes the process. Later modules reload what they need from the session's cache."""
  yield
  jax.clear_caches()
  gc.collect()


# pytest-xdist hands out whole files, those with the most tests first; files with as many tests go in this order,
# the slowest first, so that no worker runs a long file alone at the end (longest-processing-time-first). (Handing
# out the files in this order alone, --no-loadscope-reorder, was slower: multihost_test's processes and
# pipeline_test's 8-device runs at the same time took 1,250 CPU-seconds for the suite instead of 1,010.) Files
# that share tests/run/pipeline_test.py's config (helpers.SHARED_EPOCHS) have fewer tests than it, so they are handed
# out after it and find its programs in the session's compilation cache when it has got that far.
SLOWEST_FILES = (
    'multihost_test.py',
    'pipeline_test.py',
    'simsiam_test.py',
    'distill_test.py',
    'dividemix_test.py',
    'main_test.py',
    'benchmarks_test.py',
    'data_test.py',
    'console_test.py',
    'study_test.py',
    'teacher_checkpoint_test.py',
    'analysis_test.py',
    'config_checks_test.py',
    'relation_test.py',
    'augment_test.py',
    'bad_input_test.py',
    'teacher_geometry_test.py',
    'models_test.py',
    'dividemix_pipeline_test.py',
    'gpu_evidence_test.py',
    'notebook_test.py',
    'cifar_n_test.py',
    'device_data_test.py',
    'coteaching_test.py',
    'jocor_test.py',
    'elr_test.py',
    'config_fuzz_test.py',
)


def pytest_addoption(parser):
  parser.addoption(
      '--slow',
      action='store_true',
      help='also run the tests marked slow: whole runs whose parts the other tests cover (CONTRIBUTING: docs/contributing.md)',
  )


def pytest_collection_modifyitems(config, items):
  # The default suite is what CI runs in its 10 minutes on 2 cores; `--slow` (or RMDNET_SLOW_TESTS=1) adds the
  # whole-run tests marked slow, each of which repeats, end to end, what faster tests check in parts.
  if not (config.getoption('--slow') or os.environ.get('RMDNET_SLOW_TESTS') == '1'):
    skip = pytest.mark.skip(reason='slow: a whole run the faster tests cover in parts; run with --slow')
    for item in items:
      if 'slow' in item.keywords:
        item.add_marker(skip)

  def rank(item):
    name = item.path.name
    return SLOWEST_FILES.index(name) if name in SLOWEST_FILES else len(SLOWEST_FILES)

  items.sort(key=rank)  # stable: tests keep their order within a file
