"""Tests for the shared input checks (jaxleak._src.validate)."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak._src import validate


def test_scalar_checks_name_the_argument():
  with pytest.raises(ValueError, match="f: argument 'lr' must be finite and > 0"):
    validate.check_positive(-1.0, "lr", fn="f")
  with pytest.raises(ValueError, match="'lr'"):
    validate.check_positive(float("nan"), "lr")
  validate.check_positive(0.0, "noise", allow_zero=True)
  with pytest.raises(ValueError, match=r"'q' must be in \(0, 1\]"):
    validate.check_in_range(0.0, "q", 0, 1, inclusive=(False, True))
  with pytest.raises(ValueError, match="'mode' must be one of 'a', 'b'"):
    validate.check_choice("c", "mode", ("a", "b"))


def test_array_checks():
  with pytest.raises(ValueError, match=r"'images' must have rank 4 .*got shape \(3, 3\)"):
    validate.check_images(np.zeros((3, 3)))
  with pytest.raises(ValueError, match="1 channel"):
    validate.check_images(np.zeros((1, 4, 4, 3)), channels=1)
  with pytest.raises(ValueError, match=r"shape \(\*, 3\), got \(2, 4\)"):
    validate.check_shape(np.zeros((2, 4)), "x", (None, 3))


def test_finite_and_structure_checks():
  tree = {"a": jnp.ones(3), "b": jnp.array([1.0, jnp.nan, jnp.inf])}
  with pytest.raises(FloatingPointError, match=r"'grads' has 2 non-finite .*\['b'\]"):
    validate.check_finite(tree, "grads")
  ref = {"a": jnp.ones((2,)), "b": jnp.ones((3, 4))}
  with pytest.raises(ValueError, match="different pytree structure"):
    validate.check_same_structure({"a": jnp.ones(2)}, ref, "g", "params")
  with pytest.raises(ValueError, match=r"leaf \['b'\] has shape \(3, 5\)"):
    validate.check_same_structure({"a": jnp.ones(2), "b": jnp.ones((3, 5))}, ref,
                                  "g", "params")
  validate.check_same_structure({"a": jnp.ones((7, 2)), "b": jnp.ones((7, 3, 4))},
                                ref, "g", "params", leading_axes=1)


def test_check_keywords_lists_what_the_entry_accepts():
  def builder(num_classes, *, hidden=(8,), act="relu"):
    return num_classes, hidden, act

  assert validate.check_keywords(builder, {"act": "tanh"}, "model 'm'",
                                 fn="create") == ["hidden", "act"]
  with pytest.raises(TypeError, match=r"^create: model 'm' got unexpected "
                     r"keyword argument\(s\) 'depth', 'width'; accepted: "
                     r"hidden, act$"):
    validate.check_keywords(builder, ["width", "depth", "act"], "model 'm'",
                            fn="create")
  with pytest.raises(TypeError, match="accepted: none$"):
    validate.check_keywords(lambda x: x, ["a"], "model 'n'")


def test_registries_reject_unknown_hyper_parameters_by_name():
  from jaxleak import models  # pylint: disable=g-import-not-at-top
  from jaxleak import unlearning  # pylint: disable=g-import-not-at-top
  with pytest.raises(TypeError, match="^create: model 'mlp' got unexpected "
                     "keyword argument.s. 'depth'; accepted: hidden"):
    models.create("mlp", 10, (8, 8, 1), 0, depth=3)
  with pytest.raises(TypeError, match="^unlearning.get: unlearner 'finetune' "
                     "got unexpected keyword argument.s. 'momentum'; accepted: "
                     ".*epochs"):
    unlearning.get("finetune", momentum=0.9)


def test_check_int_is_the_one_integer_check():
  assert validate.check_int(np.int64(3), "n") == 3
  assert type(validate.check_int(np.int64(3), "n")) is int
  assert validate.check_int(0, "seed", low=0) == 0
  assert validate.check_int(-5, "offset", low=None) == -5
  with pytest.raises(ValueError, match=r"^f: argument 'n' must be a positive "
                     r"int, got 0$"):
    validate.check_int(0, "n", fn="f")
  with pytest.raises(ValueError, match=r"'k' must be an int in \[2, 4\], got 5"):
    validate.check_int(5, "k", low=2, high=4)
  with pytest.raises(ValueError, match="'k' must be an int <= 4"):
    validate.check_int(5, "k", low=None, high=4)
  for bad in (True, 2.0, "3", None):
    # A non-integer is both a TypeError and a ValueError.
    with pytest.raises(TypeError, match="'n' must be an int >= 0"):
      validate.check_int(bad, "n", low=0)
    with pytest.raises(ValueError, match="'n' must be an int >= 0"):
      validate.check_int(bad, "n", low=0)
