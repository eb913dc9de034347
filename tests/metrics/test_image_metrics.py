"""MSE / PSNR / SSIM, batch matching and image_metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import data as skdata
from skimage.metrics import structural_similarity

from jaxleak import metrics


def _skimage_ssim(x, y, data_range=1.0):
  kwargs = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                data_range=data_range)
  if x.ndim == 3:
    kwargs["channel_axis"] = -1
  return structural_similarity(np.asarray(x, np.float64),
                               np.asarray(y, np.float64), **kwargs)


@pytest.fixture(scope="module")
def rng():
  return np.random.default_rng(0)


@pytest.fixture(scope="module")
def pair(rng):
  x = rng.uniform(size=(4, 32, 32, 3)).astype(np.float32)
  y = np.clip(x + 0.1 * rng.normal(size=x.shape), 0, 1).astype(np.float32)
  return x, y


def test_mse_and_psnr_hand_computed():
  x = np.zeros((2, 4, 4, 1), np.float32)
  y = np.full((2, 4, 4, 1), 0.1, np.float32)
  np.testing.assert_allclose(metrics.mse(x, y), [0.01, 0.01], rtol=1e-6)
  # A constant offset of 0.1 on [0, 1] images is exactly 20 dB.
  np.testing.assert_allclose(metrics.psnr(x, y), [20.0, 20.0], rtol=1e-6)
  # Offset 0.01 -> 40 dB; data_range 255 with offset 25.5 -> 20 dB.
  np.testing.assert_allclose(metrics.psnr(x, y / 10), [40.0, 40.0], rtol=1e-6)
  np.testing.assert_allclose(metrics.psnr(x, y * 255, data_range=255.0),
                             [20.0, 20.0], rtol=1e-6)
  # Per image, not pooled: one image off by 0.1 on half of its pixels.
  z = np.zeros((2, 2, 2, 1), np.float32)
  w = z.copy()
  w[1, 0] = 0.1
  np.testing.assert_allclose(metrics.mse(z, w), [0.0, 0.005], rtol=1e-6)


def test_psnr_of_identical_images_is_inf(pair):
  x, _ = pair
  values = np.asarray(metrics.psnr(x, x))
  assert np.all(np.isposinf(values))
  # Mixed batch: only the exact copy is inf.
  y = x.copy()
  y[0] += 0.1
  values = np.asarray(metrics.psnr(x, y))
  assert np.isfinite(values[0]) and np.all(np.isposinf(values[1:]))
  # Gradients stay finite at the inf point (the where-guard).
  g = jax.jit(jax.grad(lambda a: jnp.sum(jnp.where(
      jnp.isfinite(metrics.psnr(a, x)), metrics.psnr(a, x), 0.0))))(y)
  assert np.all(np.isfinite(g))


def test_single_image_gives_scalars(pair):
  x, y = pair
  assert metrics.mse(x[0], y[0]).shape == ()
  assert metrics.psnr(x[0], y[0]).shape == ()
  assert metrics.ssim(x[0], y[0]).shape == ()
  np.testing.assert_allclose(metrics.mse(x[0], y[0]), metrics.mse(x, y)[0],
                             rtol=1e-6)


def test_ssim_matches_skimage_on_random_images(pair):
  x, y = pair
  ours = np.asarray(metrics.ssim(x, y))
  assert ours.shape == (4,)
  reference = [_skimage_ssim(x[i], y[i]) for i in range(4)]
  np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_ssim_matches_skimage_on_camera_crop(rng):
  cam = skdata.camera()[150:246, 180:300].astype(np.float64) / 255.0
  noisy = np.clip(cam + 0.08 * rng.normal(size=cam.shape), 0, 1)
  blurred = (cam + np.roll(cam, 1, 0) + np.roll(cam, 1, 1)) / 3
  for other in (noisy, blurred):
    ours = float(metrics.ssim(cam[None, ..., None].astype(np.float32),
                              other[None, ..., None].astype(np.float32))[0])
    assert abs(ours - _skimage_ssim(cam, other)) < 1e-5


def test_ssim_of_identical_images_is_one(pair):
  x, _ = pair
  np.testing.assert_allclose(metrics.ssim(x, x), 1.0, atol=1e-6)


def test_ssim_small_images_need_smaller_window():
  x = np.zeros((1, 8, 8, 1), np.float32)
  with pytest.raises(ValueError, match="'x'.*filter_size"):
    metrics.ssim(x, x)
  np.testing.assert_allclose(metrics.ssim(x + 0.5, x + 0.5, filter_size=7), 1.0,
                             atol=1e-6)


def test_metrics_work_under_jit(pair):
  x, y = pair
  out = jax.jit(lambda a, b: (metrics.mse(a, b), metrics.psnr(a, b),
                              metrics.ssim(a, b)))(x, y)
  np.testing.assert_allclose(out[0], metrics.mse(x, y), rtol=1e-6)
  np.testing.assert_allclose(out[1], metrics.psnr(x, y), rtol=1e-5)
  np.testing.assert_allclose(out[2], metrics.ssim(x, y), atol=1e-6)


@pytest.mark.parametrize("fn", [metrics.mse, metrics.psnr, metrics.ssim])
def test_shape_errors_name_the_argument(fn):
  good = np.zeros((2, 16, 16, 3), np.float32)
  with pytest.raises(ValueError, match="'x'"):
    fn(np.zeros((16, 16)), np.zeros((16, 16)))
  with pytest.raises(ValueError, match="'y'"):
    fn(good, np.zeros((2, 16, 16)))
  with pytest.raises(ValueError, match="'y'.*same shape"):
    fn(good, np.zeros((2, 16, 16, 1), np.float32))


def test_data_range_must_be_positive(pair):
  x, y = pair
  with pytest.raises(ValueError, match="'data_range'"):
    metrics.psnr(x, y, data_range=0.0)


def test_match_batch_recovers_known_permutation(pair):
  x, y = pair
  perm = np.array([2, 0, 3, 1])
  shuffled = y[perm]  # Noisy versions in a different order.
  for metric in ("mse", "psnr", "ssim"):
    found = metrics.match_batch(shuffled, x, metric=metric)
    np.testing.assert_array_equal(shuffled[found], y)
    np.testing.assert_array_equal(found, np.argsort(perm))


def test_match_batch_is_optimal_not_greedy():
  # Squared-error costs: gt0-rec0 0.81, gt0-rec1 1, gt1-rec0 1.21, gt1-rec1 9.
  # Greedy (cheapest pair first) takes gt0-rec0 and ends at 9.81; the optimal
  # assignment crosses over for 2.21.
  gt = np.array([0.0, 2.0], np.float32).reshape(2, 1, 1, 1)
  rec = np.array([0.9, -1.0], np.float32).reshape(2, 1, 1, 1)
  np.testing.assert_array_equal(metrics.match_batch(rec, gt), [1, 0])


def test_match_batch_errors():
  x = np.zeros((2, 16, 16, 3), np.float32)
  with pytest.raises(ValueError, match="'metric'"):
    metrics.match_batch(x, x, metric="lpips")
  with pytest.raises(ValueError, match="'ground_truth'"):
    metrics.match_batch(x, x[:1])
  with pytest.raises(ValueError, match="'reconstructions'"):
    metrics.match_batch(x[0], x[0])


def test_image_metrics_after_matching(pair):
  x, y = pair
  perm = np.array([3, 2, 1, 0])
  out = metrics.image_metrics(y[perm], x)
  expected = {"mse": np.asarray(metrics.mse(y, x)),
              "psnr": np.asarray(metrics.psnr(y, x)),
              "ssim": np.asarray(metrics.ssim(y, x))}
  for key, values in expected.items():
    np.testing.assert_allclose(out["per_image"][key], values, rtol=1e-5)
    np.testing.assert_allclose(out[key], values.mean(), rtol=1e-5)
    assert isinstance(out[key], float)
  assert out["permutation"] == [3, 2, 1, 0]
  assert out["ssim_filter_size"] == 11

  unmatched = metrics.image_metrics(y[perm], x, match=False)
  assert unmatched["permutation"] == [0, 1, 2, 3]
  assert unmatched["mse"] > out["mse"]


def test_image_metrics_small_images_and_exact_copies():
  x = np.random.default_rng(1).uniform(size=(2, 8, 8, 1)).astype(np.float32)
  out = metrics.image_metrics(x, x)
  assert out["ssim_filter_size"] == 7
  np.testing.assert_allclose(out["ssim"], 1.0, atol=1e-6)
  assert out["psnr"] == float("inf") and out["mse"] == 0.0


def test_label_accuracy_is_a_multiset_overlap():
  assert metrics.label_accuracy([1, 1, 2], [1, 2, 2]) == pytest.approx(2 / 3)
  assert metrics.label_accuracy([3, 2, 1], [1, 2, 3]) == 1.0  # Order-free.
  assert metrics.label_accuracy(jnp.array([0, 0, 0, 0]),
                                np.array([0, 1, 0, 2])) == 0.5
  assert metrics.label_accuracy([], [4, 5]) == 0.0
  assert metrics.label_accuracy([5, 4, 4, 4], [4, 5]) == 1.0  # Extra ignored.
  assert metrics.label_accuracy(np.array([1.0, 2.0]), [2, 1]) == 1.0


def test_label_accuracy_errors():
  with pytest.raises(ValueError, match="'recovered'"):
    metrics.label_accuracy([[1, 2]], [1, 2])
  with pytest.raises(ValueError, match="'true'"):
    metrics.label_accuracy([1], [])
  with pytest.raises(ValueError, match="'recovered'.*integer"):
    metrics.label_accuracy([0.5], [1])
