"""The in-memory image classification dataset used throughout jaxleak."""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from typing import Any

import numpy as np

from jaxleak._src import validate

_FN = "Dataset"


def _read_only(x: np.ndarray) -> np.ndarray:
  # A read-only *view*: the Dataset cannot be changed in place (it is frozen,
  # and loaders share cached arrays), while the caller's own array keeps its
  # flags.
  view = x.view()
  view.flags.writeable = False
  return view


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """An immutable, fully in-memory labelled image dataset.

  Attributes:
    images: float32 array [N, H, W, C] (NHWC) with values in [0, 1].
    labels: int32 array [N] with values in [0, num_classes).
    class_names: one name per class; `labels` index into it.
    name: a short identifier, e.g. "mnist_subset".

  Both arrays are stored as read-only views so that a Dataset (which may share
  memory with the loader cache) cannot be modified in place; copy first
  (`np.array(ds.images)`) to get a writable array.
  """

  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]
  name: str

  def __post_init__(self):
    images = np.asarray(self.images)
    labels = np.asarray(self.labels)
    validate.check_images(images, "images", fn=_FN)
    if images.dtype.kind not in "fiu":
      raise TypeError(
          f"{_FN}: argument 'images' must hold numbers, got dtype {images.dtype}")
    images = images.astype(np.float32, copy=False)
    n = images.shape[0]
    if images.size:
      lo, hi = float(np.min(images)), float(np.max(images))
      # `not (lo >= 0)` is also true for NaN, which min/max propagate.
      if not (lo >= 0.0 and hi <= 1.0):
        raise ValueError(
            f"{_FN}: argument 'images' must have values in [0, 1], got min "
            f"{lo} and max {hi} (scale uint8 images by 1/255)")

    validate.check_rank(labels, "labels", 1, fn=_FN)
    if labels.dtype.kind not in "iu" and labels.size:
      raise TypeError(
          f"{_FN}: argument 'labels' must be integers, got dtype {labels.dtype}")
    if labels.shape[0] != n:
      raise ValueError(
          f"{_FN}: argument 'labels' must have one entry per image (N={n}), "
          f"got shape {labels.shape}")

    if isinstance(self.class_names, str):
      # A bare string would otherwise be split into one class per character.
      raise TypeError(
          f"{_FN}: argument 'class_names' must be a sequence of str, got the "
          f"str {self.class_names!r}")
    class_names = tuple(self.class_names)
    if not class_names or not all(isinstance(c, str) for c in class_names):
      raise TypeError(
          f"{_FN}: argument 'class_names' must be a non-empty sequence of str, "
          f"got {self.class_names!r}")
    if labels.size:
      lmin, lmax = int(labels.min()), int(labels.max())
      if lmin < 0 or lmax >= len(class_names):
        raise ValueError(
            f"{_FN}: argument 'labels' must be in [0, {len(class_names)}) to "
            f"index class_names, got min {lmin} and max {lmax}")
    if not isinstance(self.name, str):
      raise TypeError(f"{_FN}: argument 'name' must be a str, got {self.name!r}")

    object.__setattr__(self, "images", _read_only(images))
    object.__setattr__(self, "labels",
                       _read_only(labels.astype(np.int32, copy=False)))
    object.__setattr__(self, "class_names", class_names)

  def __len__(self) -> int:
    return int(self.images.shape[0])

  def __repr__(self) -> str:
    # The default dataclass repr would print every pixel.
    return (f"Dataset(name={self.name!r}, n={len(self)}, "
            f"image_shape={self.image_shape}, num_classes={self.num_classes})")

  @property
  def num_classes(self) -> int:
    """Number of classes, i.e. `len(class_names)`."""
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """The per-example shape (H, W, C)."""
    h, w, c = self.images.shape[1:]
    return int(h), int(w), int(c)

  def subset(self, indices: Sequence[int] | np.ndarray) -> Dataset:
    """Returns the examples at `indices` (in that order) as a new Dataset.

    Args:
      indices: integer indices in [0, len(self)) (repeats allowed), or a
        boolean mask of length len(self).

    Returns:
      A Dataset with the same class_names and name.

    Raises:
      ValueError: if an index is out of range or a mask has the wrong length.
      TypeError: if `indices` is neither integer nor boolean.
    """
    idx = np.asarray(indices)
    n = len(self)
    if idx.dtype == bool:
      validate.check_shape(idx, "indices", (n,), fn="Dataset.subset")
      idx = np.flatnonzero(idx)
    elif idx.size == 0:
      idx = np.zeros((0,), np.int64)
    elif idx.dtype.kind not in "iu":
      raise TypeError(
          "Dataset.subset: argument 'indices' must be integers or a boolean "
          f"mask, got dtype {idx.dtype}")
    validate.check_rank(idx, "indices", 1, fn="Dataset.subset")
    if idx.size and (idx.min() < 0 or idx.max() >= n):
      raise ValueError(
          f"Dataset.subset: argument 'indices' must be in [0, {n}), got min "
          f"{int(idx.min())} and max {int(idx.max())}")
    return Dataset(images=self.images[idx], labels=self.labels[idx],
                   class_names=self.class_names, name=self.name)

  def arrays(self) -> tuple[np.ndarray, np.ndarray]:
    """Returns `(images, labels)`."""
    return self.images, self.labels


def as_arrays(data: Any, *, fn: str, name: str = "data"
              ) -> tuple[np.ndarray, ...]:
  """Returns a tuple of arrays with a shared leading axis from `data`.

  Args:
    data: a Dataset, or a tuple/list of arrays (e.g. `(images, labels)`).
    fn: the public function name, used in error messages.
    name: the argument name, used in error messages.

  Returns:
    `(images, labels)` for a Dataset, else the arrays of `data`.

  Raises:
    TypeError: if `data` is neither a Dataset nor a sequence of arrays.
    ValueError: if the arrays disagree on the leading (example) axis.
  """
  if isinstance(data, Dataset):
    return data.images, data.labels
  if not isinstance(data, (tuple, list)) or not data:
    raise TypeError(
        f"{fn}: argument '{name}' must be a Dataset or a non-empty tuple of "
        f"arrays such as (images, labels), got {type(data).__name__}")
  arrays = tuple(np.asarray(a) for a in data)
  sizes = [a.shape[0] if a.ndim else None for a in arrays]
  if None in sizes or len(set(sizes)) != 1:
    shapes = [a.shape for a in arrays]
    raise ValueError(
        f"{fn}: argument '{name}' arrays must share the leading (example) "
        f"axis, got shapes {shapes}")
  return arrays
