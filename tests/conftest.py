"""Test set-up: 8 fake CPU devices, so pmapped code runs as on an 8-chip TPU host.

The flag must be set before JAX initialises its backends, which is why it lives here, at import time of the
first module pytest loads.
"""
import os

# Tests are dominated by XLA compile time, not run time: LLVM's optimisation level 0 halves it.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8 " + TEST_XLA_FLAGS
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# As rmdnet_jax.main sets it (see there); also keeps CPU compile times of random ops low.
os.environ["JAX_THREEFRY_PARTITIONABLE"] = "0"
# TensorFlow (pulled in by tfds/clu) must not be chatty or grab threads it does not need in tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def shared_dir():
    """The team's shared data folder (../shared); tests that need it skip when it is absent."""
    if not (SHARED / "data" / "tfds" / "cifar10").is_dir():
        pytest.skip("../shared/data/tfds is not present (only on the team's machines)")
    return SHARED

# Many tests build the same steps (each pipeline.run makes new pmapped functions): a persistent compilation cache
# shared by the whole session turns their repeated XLA compiles into cache hits.
import jax  # noqa: E402
import tempfile  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ.get(
    "RMDNET_TEST_COMPILATION_CACHE", os.path.join(tempfile.gettempdir(), "rmdnet_jax_test_xla_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
