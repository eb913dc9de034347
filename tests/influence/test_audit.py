"""Helpers of the I²F audit: correlations, image choice, noise draws."""

import jax
import numpy as np
import pytest
from scipy import stats

from jaxleak import models
from jaxleak.influence import audit


def test_correlation_matches_scipy_including_ties():
  rng = np.random.default_rng(0)
  a = rng.lognormal(size=30)
  b = a * rng.lognormal(sigma=0.5, size=30)
  b[3] = b[7]  # a tie in the ranks
  c = audit.correlation(a, b)
  assert c["n"] == 30
  np.testing.assert_allclose(c["pearson"], stats.pearsonr(a, b)[0], rtol=1e-10)
  np.testing.assert_allclose(c["spearman"], stats.spearmanr(a, b)[0],
                             rtol=1e-10)
  np.testing.assert_allclose(c["pearson_log"],
                             stats.pearsonr(np.log10(a), np.log10(b))[0],
                             rtol=1e-10)
  assert audit.correlation(a, -a)["pearson"] == pytest.approx(-1.0)
  with pytest.raises(ValueError, match="'predicted' and 'actual'"):
    audit.correlation(a, b[:5])


def test_stratified_indices_cycle_classes_and_are_prefix_stable():
  labels = np.repeat(np.arange(4), 5)
  idx = audit.stratified_indices(labels, 10, seed=1)
  assert list(labels[idx][:8]) == [0, 1, 2, 3] * 2
  assert len(set(idx.tolist())) == 10
  np.testing.assert_array_equal(audit.stratified_indices(labels, 6, seed=1),
                                idx[:6])
  with pytest.raises(ValueError, match="'n'"):
    audit.stratified_indices(labels, 21)


def test_gaussian_perturbation_shape_and_scale():
  _, params = models.create("mlp", 3, (4, 4, 1), jax.random.key(0),
                            hidden=(64,))
  d = audit.gaussian_perturbation(params, 0.1, 0)
  assert jax.tree.structure(d) == jax.tree.structure(params["params"])
  flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(d)])
  assert flat.size > 1000
  np.testing.assert_allclose(flat.std(), 0.1, rtol=0.1)
  same = audit.gaussian_perturbation(params, 0.1, 0)
  for x, y in zip(jax.tree.leaves(d), jax.tree.leaves(same)):
    np.testing.assert_array_equal(x, y)
  np.testing.assert_allclose(audit.predicted_rmse(28.0, (28, 28, 1)), 1.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_audit_rejects_non_finite_noise_and_damping(bad):
  """Item 2: the I²F audit helpers name the NaN/Inf noise std or damping."""
  apply_fn, params = models.create("mlp", 3, (3, 3, 1), jax.random.key(0),
                                   hidden=(4,))
  x = np.full((1, 3, 3, 1), 0.5, np.float32)
  y = np.array([2])
  with pytest.raises(ValueError, match="gaussian_perturbation: argument "
                     "'std' must be finite"):
    audit.gaussian_perturbation(params, bad, 0)
  delta = audit.gaussian_perturbation(params, 1e-2, 0)
  # Before any solve (this used to compile and run I²F and its lower bound
  # first, and name i2f_expectation's argument).
  with pytest.raises(ValueError, match="predict: argument 'eps_values' must "
                     "be finite"):
    audit.predict(apply_fn, params, x, y, delta, eps_values=(1.0, bad))
  with pytest.raises(ValueError, match="predict: argument 'noise_std' must be "
                     "finite"):
    audit.predict(apply_fn, params, x, y, delta, noise_std=bad)
