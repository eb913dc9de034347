"""Checks shared by the classifier commands (in-process)."""

import numpy as np
import pytest

from jaxleak import data
from jaxleak.cli import main as cli


@pytest.fixture
def one_class_dataset(monkeypatch):
  """Makes every `data.load` return digits of a single class (like lfw_faces
  before it gained a second class)."""
  load = data.load

  def load_one_class(name, split="train", *args, **kwargs):
    ds = load("digits", split, *args, **kwargs)
    keep = np.flatnonzero(np.asarray(ds.labels) == 0)
    return data.Dataset(ds.images[keep], np.zeros(keep.size, np.int32),
                        ("zero",), name)

  monkeypatch.setattr(data, "load", load_one_class)
  return "one_class"


@pytest.mark.parametrize("command", ["train", "attack"])
def test_classifier_commands_refuse_a_dataset_with_one_class(
    command, one_class_dataset, tmp_path, capsys):
  workdir = tmp_path / "run"
  code = cli.main([command, "--dataset", one_class_dataset, "--model", "mlp",
                   "--workdir", str(workdir), "--no-progress"])
  assert code == 2
  err = capsys.readouterr().err
  assert "argument --dataset: 'one_class' has 1 class(es)" in err, err
