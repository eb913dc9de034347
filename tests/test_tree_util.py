"""One copy of each small primitive: tree helpers, int and key checks."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak._src import tree_util
from jaxleak._src import validate


def test_trainable_and_param_count_skip_batch_stats():
  variables = {"params": {"w": jnp.ones((3, 4)), "b": jnp.ones(4)},
               "batch_stats": {"mean": jnp.ones(4)}}
  assert tree_util.trainable(variables) is variables["params"]
  assert tree_util.param_count(variables) == 16
  # Abstract trees are counted without allocation.
  assert tree_util.param_count(jax.eval_shape(lambda: variables)) == 16
  new = tree_util.with_trainable(variables, {"w": 0})
  assert new["params"] == {"w": 0} and new["batch_stats"] is variables[
      "batch_stats"]
  assert tree_util.with_trainable([1], [2]) == [2]


def test_gaussian_like_is_one_key_per_leaf_in_leaf_order():
  tree = {"a": jnp.zeros((2, 3)), "b": jnp.zeros((5,), jnp.float16)}
  key = jax.random.key(7)
  noise = tree_util.gaussian_like(tree, key, 0.5)
  ka, kb = jax.random.split(key, 2)
  expected = {"a": 0.5 * jax.random.normal(ka, (2, 3)),
              "b": 0.5 * jax.random.normal(kb, (5,), jnp.float16)}
  chex.assert_trees_all_equal(noise, expected)
  chex.assert_trees_all_equal_dtypes(noise, tree)
  # Leaves sharing one padded draw (all of these: MIN_DRAW_WIDTH) get their
  # own keys' values; so do a scalar and an empty leaf.
  tree = [jnp.zeros((2, 3)), jnp.zeros(7), jnp.zeros(()), jnp.zeros((0, 4)),
          jnp.zeros(8), jnp.zeros(())]
  keys = jax.random.split(key, len(tree))
  noise = jax.jit(lambda t: tree_util.gaussian_like(t, key, 2.0))(tree)
  for got, k, x in zip(noise, keys, tree):
    np.testing.assert_array_equal(got, 2.0 * jax.random.normal(k, x.shape))
  assert len({float(n[0]) for n in (noise[0].ravel(), noise[1], noise[4])}) == 3


def test_check_int_and_canonical_key():
  assert validate.check_int(np.int64(3), "n") == 3
  assert validate.check_int(0, "n", low=0) == 0
  for bad in (0, -1, 2.0, True, "3"):
    with pytest.raises(ValueError, match="f: argument 'n' must be a positive "
                       "int"):
      validate.check_int(bad, "n", fn="f")
  with pytest.raises(ValueError, match="an int >= 0"):
    validate.check_int(-1, "n", low=0)
  k = validate.canonical_key(3, "f")
  assert jax.dtypes.issubdtype(k.dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.key_data(k),
                                jax.random.key_data(jax.random.key(3)))
  assert validate.canonical_key(k, "f") is k
  legacy = jax.random.PRNGKey(3)
  np.testing.assert_array_equal(
      jax.random.key_data(validate.canonical_key(legacy, "f")), legacy)
  with pytest.raises(ValueError, match="f: argument 'key' is required"):
    validate.canonical_key(None, "f")
  with pytest.raises(TypeError, match="argument 'key' must be"):
    validate.canonical_key(True, "f")
