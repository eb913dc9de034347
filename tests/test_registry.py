"""The one Registry type behind models, datasets, attacks, cases, defences, priors, unlearners."""

import pytest

from jaxleak._src.registry import Registry


def test_register_get_available_and_dict_behaviour():
  reg = Registry("widget", {"b": len})
  assert reg.register("a", abs) is abs
  assert reg.available() == ["a", "b"] and reg.get("a") is abs
  assert reg["b"] is len and "a" in reg and reg.get("zz", None) is None

  @reg.register("c")
  def c():
    return 3

  assert reg.get("c") is c and c() == 3
  with pytest.raises(ValueError, match="argument 'widget' must be one of 'a', "
                     "'b', 'c'; got 'zz'"):
    reg.get("zz")
  with pytest.raises(ValueError, match="already registered"):
    reg.register("a", len)
  assert reg.register("a", len, overwrite=True) is len and reg["a"] is len
  with pytest.raises(TypeError, match="must be callable"):
    reg.register("d", 3)
  with pytest.raises(ValueError, match="argument 'name'"):
    reg.register("", len)
  del reg["a"]
  assert reg.available() == ["b", "c"]


def test_every_registry_is_one_type():
  from jaxleak import data  # pylint: disable=g-import-not-at-top
  from jaxleak import diffusion  # pylint: disable=g-import-not-at-top
  from jaxleak import models  # pylint: disable=g-import-not-at-top
  from jaxleak import unlearning  # pylint: disable=g-import-not-at-top
  from jaxleak.attacks import inversion  # pylint: disable=g-import-not-at-top
  for reg in (models.MODELS, data.DATASETS, inversion.ATTACKS,
              inversion.CASES, inversion.DEFENCES, diffusion.PRIORS,
              unlearning.UNLEARNERS):
    assert type(reg) is Registry, reg  # pylint: disable=unidiomatic-typecheck
    assert reg.available() == sorted(reg) and reg.available()


def test_a_registered_prior_name_resolves_to_its_folder(tmp_path):
  from jaxleak import diffusion  # pylint: disable=g-import-not-at-top
  assert diffusion.available_priors() == ("lfw_faces", "mnist_subset")
  assert diffusion.PRIORS.get("mnist_subset") == (
      diffusion.assets_dir() / "mnist_subset")
  diffusion.PRIORS.register("my_prior", str(tmp_path))  # an empty folder
  try:
    assert "my_prior" in diffusion.available_priors()
    # The name reaches the folder: loading it reports what the folder lacks.
    with pytest.raises(diffusion.PriorError, match="is not a prior"):
      diffusion.load_prior("my_prior")
    with pytest.raises(TypeError, match="prior folder path"):
      diffusion.PRIORS.register("bad", 3)
    with pytest.raises(FileNotFoundError, match="'my_prior'"):
      diffusion.load_prior("no_such_prior")  # the message lists it
  finally:
    del diffusion.PRIORS["my_prior"]
  assert "my_prior" not in diffusion.available_priors()


def test_a_registered_dataset_loads_with_splits():
  import numpy as np  # pylint: disable=g-import-not-at-top

  from jaxleak import data  # pylint: disable=g-import-not-at-top
  images = np.linspace(0, 1, 20 * 4 * 4, dtype=np.float32).reshape(20, 4, 4, 1)
  labels = np.arange(20, dtype=np.int32) % 2
  data.DATASETS.register("two_class_toy",
                         lambda resolution: (images, labels, ("a", "b")))
  try:
    assert data.available()[-1] == "two_class_toy"
    full = data.load("two_class_toy", "all")
    np.testing.assert_array_equal(full.images, images)
    train, test = data.load("two_class_toy"), data.load("two_class_toy", "test")
    assert len(train) + len(test) == 20 and len(test) > 0
    assert data.load("two_class_toy", "all", resolution=8).images.shape == (
        20, 8, 8, 1)
  finally:
    del data.DATASETS["two_class_toy"]
  assert data.available() == data.EMBEDDED


def test_unlearning_register_takes_a_function_or_decorates():
  from jaxleak import unlearning  # pylint: disable=g-import-not-at-top

  def keep(model, history, forget_indices, data, *, scale=1.0):
    del history, forget_indices, data
    return model.params * scale

  try:
    assert unlearning.register("keep_params", keep) is keep
    assert unlearning.get("keep_params", scale=2.0)(
        unlearning.Model(None, 3.0), None, None, None) == 6.0
    with pytest.raises(ValueError, match="already registered"):
      unlearning.register("keep_params", keep)
    deco = unlearning.register("keep_params", overwrite=True)
    assert deco(keep) is keep
  finally:
    del unlearning.UNLEARNERS["keep_params"]
