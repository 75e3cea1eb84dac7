"""Fixtures of the tests of rmdnet_jax/methods/ (their shared functions are in method_helpers.py)."""

import jax
import jax.numpy as jnp
import pytest


@pytest.fixture
def x64():
  """float64 inside one test only, so the references can be compared at tight tolerance."""
  with jax.enable_x64(True):
    yield
  assert jnp.zeros(()).dtype == jnp.float32, 'x64 leaked out of the test'
