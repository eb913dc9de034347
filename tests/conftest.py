"""Test configuration: 8 virtual CPU devices, no network, quiet libraries.

XLA_FLAGS must be set before jax is imported anywhere, which is why this
happens at the top of conftest.py (pytest imports it before any test module).
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(__file__), "_no_tfds_data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import pytest


def pytest_configure(config):
  del config
  assert jax.device_count() == 8, (
      "tests expect 8 virtual CPU devices; XLA_FLAGS was set too late "
      f"(got {jax.device_count()} devices)"
  )


@pytest.fixture
def workdir(tmp_path):
  return tmp_path


@pytest.fixture(scope="session")
def digits():
  """(train, test) `Dataset`s of sklearn's 8x8 digits (overridden where a
  test folder needs another form)."""
  from jaxleak import data  # pylint: disable=g-import-not-at-top
  return data.load("digits", "train"), data.load("digits", "test")
