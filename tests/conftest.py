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


@pytest.fixture
def grey_attack():
  """Registers a stand-in inversion attack and yields its name.

  The stand-in compiles nothing, so CLI tests exercise the command's own
  work (parsing, observation, figures, reports): it answers every trial with
  a flat grey image and iDLG's labels. ``grey_attack(lpips=False)`` skips the
  LPIPS network in its metrics, which keeps a test fast.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top

  from jaxleak.attacks import inversion  # pylint: disable=g-import-not-at-top
  names = []

  def register(*, lpips: bool = True) -> str:
    def attack(observation, *, key, ground_truth=None, callback=None,
               steps=10, restarts=1):
      del key
      for r in range(restarts):
        callback(r, steps, 1.0)
      images = np.full(observation.batch_shape, 0.3, np.float32)
      labels = inversion.recover_labels(observation, "idlg").labels
      metrics = inversion.evaluate(images, labels, *ground_truth, lpips=lpips)
      return inversion.InversionResult("grey", images, labels,
                                       np.linspace(1, 0.1, steps), 0.1, metrics)
    name = f"grey_test_{len(names)}"
    inversion.register_attack(name, attack)
    names.append(name)
    return name

  yield register
  for name in names:
    del inversion.ATTACKS[name]
