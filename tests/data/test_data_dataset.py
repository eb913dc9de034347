"""Tests for jaxleak.data.Dataset."""

import numpy as np
import pytest

from jaxleak.data import Dataset


def _make(n=6, h=4, w=5, c=3, num_classes=3):
  images = np.linspace(0.0, 1.0, n * h * w * c, dtype=np.float32)
  return Dataset(images=images.reshape(n, h, w, c),
                 labels=np.arange(n) % num_classes,
                 class_names=tuple(f"c{i}" for i in range(num_classes)),
                 name="toy")


def test_properties_and_dtypes():
  ds = _make()
  assert len(ds) == 6
  assert ds.image_shape == (4, 5, 3)
  assert ds.num_classes == 3
  assert ds.images.dtype == np.float32
  assert ds.labels.dtype == np.int32
  assert ds.class_names == ("c0", "c1", "c2")
  assert repr(ds) == ("Dataset(name='toy', n=6, image_shape=(4, 5, 3), "
                      "num_classes=3)")


def test_converts_integer_labels_and_list_class_names():
  ds = Dataset(images=np.zeros((2, 2, 2, 1)), labels=[1, 0],
               class_names=["a", "b"], name="x")
  assert ds.images.dtype == np.float32
  np.testing.assert_array_equal(ds.labels, [1, 0])
  assert ds.class_names == ("a", "b")


def test_arrays_are_read_only_but_caller_array_is_not():
  images = np.zeros((2, 2, 2, 1), np.float32)
  ds = Dataset(images=images, labels=[0, 0], class_names=("a",), name="x")
  with pytest.raises(ValueError, match="read-only"):
    ds.images[0, 0, 0, 0] = 1.0
  with pytest.raises(ValueError, match="read-only"):
    ds.labels[0] = 1
  images[0, 0, 0, 0] = 0.5  # the caller's own array stays writable
  assert images.flags.writeable


def test_frozen():
  ds = _make()
  with pytest.raises(AttributeError):
    ds.name = "other"


@pytest.mark.parametrize("images, match", [
    (np.zeros((2, 4, 4)), "'images' must have rank 4"),
    (np.full((2, 2, 2, 1), 1.5), r"'images' must have values in \[0, 1\]"),
    (np.full((2, 2, 2, 1), -0.1), r"'images' must have values in \[0, 1\]"),
    (np.full((2, 2, 2, 1), np.nan), r"'images' must have values in \[0, 1\]"),
])
def test_rejects_bad_images(images, match):
  with pytest.raises(ValueError, match=match):
    Dataset(images=images, labels=[0, 0], class_names=("a",), name="x")


def test_rejects_bad_labels():
  images = np.zeros((3, 2, 2, 1))
  with pytest.raises(ValueError, match="'labels' must have one entry per image"):
    Dataset(images=images, labels=[0, 1], class_names=("a", "b"), name="x")
  with pytest.raises(ValueError, match=r"'labels' must be in \[0, 2\)"):
    Dataset(images=images, labels=[0, 1, 2], class_names=("a", "b"), name="x")
  with pytest.raises(ValueError, match=r"'labels' must be in \[0, 2\)"):
    Dataset(images=images, labels=[0, -1, 1], class_names=("a", "b"),
            name="x")
  with pytest.raises(TypeError, match="'labels' must be integers"):
    Dataset(images=images, labels=[0.0, 1.0, 0.5], class_names=("a", "b"),
            name="x")
  with pytest.raises(ValueError, match="'labels' must have rank 1"):
    Dataset(images=images, labels=[[0], [1], [0]], class_names=("a", "b"),
            name="x")


def test_rejects_bad_class_names():
  images = np.zeros((1, 2, 2, 1))
  with pytest.raises(TypeError, match="'class_names'"):
    Dataset(images=images, labels=[0], class_names="ab", name="x")
  with pytest.raises(TypeError, match="'class_names'"):
    Dataset(images=images, labels=[0], class_names=(), name="x")
  with pytest.raises(TypeError, match="'class_names'"):
    Dataset(images=images, labels=[0], class_names=(0, 1), name="x")


def test_subset_by_indices_and_mask():
  ds = _make()
  sub = ds.subset([4, 1, 1])
  assert len(sub) == 3
  np.testing.assert_array_equal(sub.labels, [1, 1, 1])
  np.testing.assert_array_equal(sub.images[0], ds.images[4])
  np.testing.assert_array_equal(sub.images[2], ds.images[1])
  assert sub.class_names == ds.class_names and sub.name == "toy"

  mask = np.array([True, False, False, True, False, True])
  by_mask = ds.subset(mask)
  np.testing.assert_array_equal(by_mask.images, ds.images[[0, 3, 5]])
  assert len(ds.subset([])) == 0


def test_subset_errors():
  ds = _make()
  with pytest.raises(ValueError, match=r"'indices' must be in \[0, 6\)"):
    ds.subset([0, 6])
  with pytest.raises(ValueError, match=r"'indices' must be in \[0, 6\)"):
    ds.subset([-1])
  with pytest.raises(ValueError, match="'indices' must have shape"):
    ds.subset(np.ones(5, bool))
  with pytest.raises(TypeError, match="'indices' must be integers"):
    ds.subset([0.5])
