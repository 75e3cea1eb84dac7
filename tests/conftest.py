"""Test set-up: 8 fake CPU devices, so pmapped code runs as on an 8-chip TPU host.

The flag must be set before JAX initialises its backends, which is why it lives here, at import time of the
first module pytest loads.
"""

import os

# Tests are dominated by XLA compile time, not run time: LLVM's optimisation level 0 halves it.
TEST_XLA_FLAGS = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8 ' + TEST_XLA_FLAGS
).strip()
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


# Many tests build the same steps (each pipeline.run makes new pmapped functions): a persistent compilation cache
# for the session turns their repeated XLA compiles into cache hits. It is this session's own, fresh folder:
# several pytest processes writing one shared folder at once can leave an entry that crashes the reader.
# RMDNET_TEST_COMPILATION_CACHE names a folder to keep between sessions instead (one session at a time).
import atexit  # noqa: E402
import gc  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402

_CACHE_DIR = os.environ.get('RMDNET_TEST_COMPILATION_CACHE')
if not _CACHE_DIR:
  _CACHE_DIR = tempfile.mkdtemp(prefix='rmdnet_jax_test_xla_cache_')
  atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
jax.config.update('jax_compilation_cache_dir', _CACHE_DIR)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.2)


@pytest.fixture(autouse=True, scope='module')
def _release_compiled_programs():
  """Frees each test module's compiled programs when it ends. Every loaded XLA:CPU executable holds memory
  mappings, and a whole session's worth exceeds the kernel's limit (vm.max_map_count, 65,530), at which point
  loading the next one crashes the process. Later modules reload what they need from the session's cache."""
  yield
  jax.clear_caches()
  gc.collect()


# The slowest files first: the parallel runner hands out whole files in collection order, so starting with the
# longest ones keeps one worker from running a long file alone at the end (longest-processing-time-first).
SLOWEST_FILES = (
    'multihost_test.py',
    'pipeline_test.py',
    'analysis_test.py',
    'distill_test.py',
    'study_test.py',
    'config_checks_test.py',
    'dividemix_pipeline_test.py',
    'simsiam_test.py',
    'benchmarks_test.py',
    'gpu_evidence_test.py',
    'dividemix_test.py',
    'notebook_test.py',
    'teacher_geometry_test.py',
    'cifar_n_test.py',
    'device_data_test.py',
    'data_test.py',
    'coteaching_test.py',
    'jocor_test.py',
    'elr_test.py',
)


def pytest_collection_modifyitems(items):
  def rank(item):
    name = item.path.name
    return SLOWEST_FILES.index(name) if name in SLOWEST_FILES else len(SLOWEST_FILES)

  items.sort(key=rank)  # stable: tests keep their order within a file
