"""Test set-up: 8 fake CPU devices, so pmapped code runs as on an 8-chip TPU host.

The flag must be set before JAX initialises its backends, which is why it lives here, at import time of the
first module pytest loads.
"""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
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
