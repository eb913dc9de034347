"""The one Registry type behind models, datasets, attacks, cases, defences, unlearners."""

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
  from jaxleak import models  # pylint: disable=g-import-not-at-top
  from jaxleak import unlearning  # pylint: disable=g-import-not-at-top
  from jaxleak.attacks import inversion  # pylint: disable=g-import-not-at-top
  from jaxleak.data import loaders  # pylint: disable=g-import-not-at-top
  for reg in (models.MODELS, loaders.DATASETS, inversion.ATTACKS,
              inversion.CASES, inversion.DEFENCES, unlearning.UNLEARNERS):
    assert type(reg) is Registry, reg  # pylint: disable=unidiomatic-typecheck
    assert reg.available() == sorted(reg) and reg.available()
