"""Shared checks of the DP tests (fixtures: tests/ is no package)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest


def _assert_same_weighted_sums(got, ref, rtol=2e-5):
  """`got` and `ref` (`WeightedGradSum`s) agree: norms, weights, zero pattern
  of the weights and every leaf of the weighted gradient sum (absolute
  tolerance relative to the reference leaf's largest entry)."""
  np.testing.assert_allclose(got.norms, ref.norms, rtol=rtol)
  np.testing.assert_array_equal(np.asarray(got.weights) == 0,
                                np.asarray(ref.weights) == 0)
  np.testing.assert_allclose(got.weights, ref.weights, rtol=rtol)
  for x, y in zip(jax.tree.leaves(got.grad_sum),
                  jax.tree.leaves(ref.grad_sum)):
    scale = float(jnp.max(jnp.abs(y)))
    assert scale > 0
    np.testing.assert_allclose(x, y, rtol=0, atol=2e-5 * scale)


@pytest.fixture(scope="session")
def assert_same_sums():
  return _assert_same_weighted_sums
