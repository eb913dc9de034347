"""Tests for the TFDS path of jaxleak.data.load (tfds.data_source, offline)."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxleak import data


class JaxleakTinyImages(tfds.core.GeneratorBasedBuilder):
  """A 3-class dataset of flat 6x6 greyscale images, prepared in a tmp dir."""

  VERSION = tfds.core.Version("1.0.0")
  # tfds derives a checksums file from the module path, which needs the
  # `importlib_resources` backport that this environment lacks; the builder
  # downloads nothing, so it needs no checksums.
  code_path = None

  def _info(self):
    # A Tensor feature, not Image: encoding PNGs would need TensorFlow.
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(6, 6), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=["cat", "dog", "eel"]),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(12, 0),
            "test": self._generate_examples(5, 12)}

  def _generate_examples(self, n, offset):
    for i in range(offset, offset + n):
      # The pixel value identifies the example, the label is value % 3.
      yield i, {"image": np.full((6, 6), 10 * i, np.uint8), "label": i % 3}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  builder = JaxleakTinyImages(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return data_dir


@pytest.fixture
def no_network(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("jaxleak.data tried to open a network connection")
  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_mock_mnist(no_network):
  with tfds.testing.mock_data(num_examples=20):
    ds = data.load("mnist", split="train")
  assert len(ds) == 20
  assert ds.images.shape == (20, 28, 28, 1)
  assert ds.images.dtype == np.float32
  assert ds.images.min() >= 0.0 and ds.images.max() <= 1.0
  assert ds.images.max() > 0.5  # scaled by 1/255 once, not twice
  assert ds.labels.dtype == np.int32
  assert ds.labels.min() >= 0 and ds.labels.max() < 10
  assert ds.class_names == tuple(str(i) for i in range(10))
  assert ds.name == "mnist"


def test_mock_matches_raw_data_source():
  with tfds.testing.mock_data(num_examples=7):
    raw = tfds.data_source("cifar10", split="test", download=False)
    expected = np.stack([raw[i]["image"] for i in range(7)])
    labels = [raw[i]["label"] for i in range(7)]
    ds = data.load("cifar10", "test")
  assert ds.images.shape == (7, 32, 32, 3)
  np.testing.assert_allclose(ds.images, expected / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(ds.labels, labels)
  # Real names ("airplane", ...) come from the prepared dataset_info, which
  # mock_data lacks; the ClassLabel still knows there are 10 classes.
  assert ds.class_names == tuple(str(i) for i in range(10))


def test_mock_all_split_and_resolution():
  with tfds.testing.mock_data(num_examples=10):
    full = data.load("mnist", "all")
    small = data.load("mnist", "test", resolution=8)
  assert len(full) == 10  # mock_data yields num_examples for any split
  assert small.images.shape == (10, 8, 8, 1)


def test_mock_text_labels_become_classes():
  # TFDS "lfw" has a Text label (the person's name) and 250x250x3 images.
  with tfds.testing.mock_data(num_examples=6):
    raw = tfds.data_source("lfw", split="train", download=False)
    names = [raw[i]["label"] for i in range(6)]
    ds = data.load("lfw", "train", resolution=16)
  names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
  assert ds.images.shape == (6, 16, 16, 3)
  assert ds.class_names == tuple(sorted(set(names)))
  assert [ds.class_names[i] for i in ds.labels] == names


def test_prepared_dataset(tiny_dir, no_network):
  train = data.load("jaxleak_tiny_images", "train", data_dir=tiny_dir)
  test = data.load("jaxleak_tiny_images", "test", data_dir=tiny_dir)
  full = data.load("jaxleak_tiny_images", "all", data_dir=tiny_dir)
  assert (len(train), len(test), len(full)) == (12, 5, 17)
  assert train.images.shape == (12, 6, 6, 1)  # channel axis added
  assert train.class_names == ("cat", "dog", "eel")
  # Recover each example's id from its pixel value and check its label.
  ids = np.rint(full.images[:, 0, 0, 0] * 255 / 10).astype(int)
  assert sorted(ids.tolist()) == list(range(17))
  np.testing.assert_array_equal(full.labels, ids % 3)
  assert np.all(full.images == full.images[:, :1, :1, :])  # flat images
  test_ids = np.rint(test.images[:, 0, 0, 0] * 25.5).astype(int)
  assert sorted(test_ids.tolist()) == list(range(12, 17))
  half = data.load("jaxleak_tiny_images", "train[:50%]", data_dir=tiny_dir)
  assert len(half) == 6


def test_prepared_dataset_from_env(tiny_dir, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", tiny_dir)
  assert data.default_data_dir() == tiny_dir
  assert len(data.load("jaxleak_tiny_images", "test")) == 5


def test_prepared_dataset_missing_split(tiny_dir):
  with pytest.raises(ValueError, match=r"'split'.*\['validation'\].*"
                     r"available: \['test', 'train'\]"):
    data.load("jaxleak_tiny_images", "validation", data_dir=tiny_dir)


def test_unknown_dataset_error(tmp_path, no_network):
  with pytest.raises(data.DatasetNotFoundError) as info:
    data.load("no_such_dataset_xyz", data_dir=tmp_path)
  err = info.value
  assert isinstance(err, FileNotFoundError)
  msg = str(err)
  assert "'no_such_dataset_xyz'" in msg
  assert str(tmp_path) in msg
  assert "mnist_subset" in msg and "digits" in msg
  assert err.dataset == "no_such_dataset_xyz"
  assert err.data_dir == str(tmp_path)


def test_unprepared_dataset_error(tmp_path, no_network):
  # "mnist" has a builder but nothing is prepared in tmp_path; without
  # download=False this would try to fetch it.
  with pytest.raises(data.DatasetNotFoundError,
                     match=r"'mnist' not found: it is not prepared there") as info:
    data.load("mnist", "train", data_dir=tmp_path)
  assert str(tmp_path) in str(info.value)
  assert "tfds build mnist" in str(info.value)
  assert not os.path.exists(tmp_path / "mnist" / "3.0.1" / "dataset_info.json")


@pytest.mark.parametrize("name", ["mnist:9.9.9", "mnist/no_such_config"])
def test_bad_version_or_config_error(name, tmp_path):
  with pytest.raises(data.DatasetNotFoundError, match="'mnist"):
    data.load(name, data_dir=tmp_path)


def test_community_dataset_refused(tmp_path, no_network):
  with pytest.raises(data.DatasetNotFoundError, match="need network access"):
    data.load("huggingface:some_dataset", data_dir=tmp_path)


def test_default_data_dir_resolution(monkeypatch, tmp_path):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env_dir"))
  assert data.default_data_dir() == str(tmp_path / "env_dir")
  assert data.default_data_dir(tmp_path / "arg") == str(tmp_path / "arg")
  with pytest.raises(data.DatasetNotFoundError, match="env_dir"):
    data.load("no_such_dataset_xyz")
  monkeypatch.delenv("TFDS_DATA_DIR")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  expected = str(tmp_path / "home" / "tensorflow_datasets")
  assert data.default_data_dir() == expected
  with pytest.raises(data.DatasetNotFoundError, match=expected):
    data.load("no_such_dataset_xyz")


_NO_TENSORFLOW_PROBE = """
import importlib.abc, importlib.util, sys

class Recorder(importlib.abc.MetaPathFinder):
  # Records every attempt to import TensorFlow, installed or not.
  attempts = []
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] == "tensorflow":
      self.attempts.append(name)
    return None

sys.meta_path.insert(0, Recorder())
spec = importlib.util.spec_from_file_location("tfds_tests", {path!r})
tests = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tests)
builder = tests.JaxleakTinyImages(data_dir={data_dir!r},
                                  file_format="array_record")
builder.download_and_prepare()
Recorder.attempts.clear()  # Preparing is the test's setup; loading is jaxleak.
from jaxleak import data
ds = data.load("jaxleak_tiny_images", "train", data_dir={data_dir!r})
assert len(ds) == 12, len(ds)
print("tensorflow" in sys.modules or Recorder.attempts)
"""


def test_tensorflow_is_never_imported(tmp_path):
  # A fresh interpreter: what other tests imported must not decide the answer.
  probe = _NO_TENSORFLOW_PROBE.format(path=os.path.abspath(__file__),
                                      data_dir=str(tmp_path))
  out = subprocess.run([sys.executable, "-c", probe], capture_output=True,
                       text=True, check=False, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] in ("False", "[]")
