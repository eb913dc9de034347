"""A classifier needs at least two classes."""

import jax
import pytest

from jaxleak import models


@pytest.mark.parametrize("num_classes", [0, 1])
def test_create_refuses_fewer_than_two_classes(num_classes):
  with pytest.raises(ValueError, match="'num_classes' must be an int >= 2"):
    models.create("mlp", num_classes, (8, 8, 1), jax.random.key(0))
