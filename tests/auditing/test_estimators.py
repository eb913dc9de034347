"""Tests of the epsilon lower bounds (hand computations, null scores, validation)."""

import importlib.metadata

import dp_accounting
from jax_privacy import auditing as jp_auditing
import numpy as np
import pytest
import scipy.stats

from jaxleak.auditing import estimators


def _gaussian_scores(mu, n, seed):
  rng = np.random.default_rng(seed)
  return rng.normal(mu, 1.0, n), rng.normal(0.0, 1.0, n)


def test_clopper_pearson_matches_hand_computation():
  ins, outs = _gaussian_scores(2.0, 300, seed=0)
  t, delta, alpha = 1.5, 1e-5, 0.05
  fn, fp = int(np.sum(ins < t)), int(np.sum(outs >= t))
  fnr_ub = scipy.stats.beta.ppf(1 - alpha / 2, fn + 1, ins.size - fn)
  fpr_ub = scipy.stats.beta.ppf(1 - alpha / 2, fp + 1, outs.size - fp)
  hand = np.log(1 - fnr_ub - delta) - np.log(fpr_ub)
  lib = jp_auditing.CanaryScoreAuditor(ins, outs).epsilon_clopper_pearson(
      alpha, delta, threshold_strategy=jp_auditing.Explicit(t))
  assert hand > 1.0  # a real, non-trivial bound is being compared
  np.testing.assert_allclose(lib, hand, rtol=1e-9)
  np.testing.assert_allclose(
      estimators.clopper_pearson_upper(np.array([fn, ins.size]), ins.size,
                                       alpha / 2), [fnr_ub, 1.0], rtol=1e-12)


def test_gdp_bound_matches_hand_computation_on_separated_scores():
  n, delta, alpha = 100, 1e-5, 0.05
  ins, outs = np.ones(n), np.zeros(n)
  # Thresholds {0, 1, inf}; only t = 1 has both rates below 1, with 0 errors:
  # the Clopper-Pearson upper bound for 0 of n is 1 - a^(1/n).
  a = alpha / (2 * 3)
  rate_ub = 1 - a ** (1 / n)
  mu = 2 * scipy.stats.norm.isf(rate_ub)
  assert estimators.gdp_mu_lower_bound(ins, outs, significance=alpha) == (
      pytest.approx(mu, rel=1e-9))
  hand = dp_accounting.get_epsilon_gaussian(1 / mu, delta)
  got = estimators.epsilon_lower_bound(ins, outs, method="gdp", delta=delta)
  assert got == pytest.approx(hand, rel=1e-9)
  assert 5.0 < got < 20.0


def test_gdp_is_zero_on_null_scores_where_jax_privacy_2_0_is_not():
  # A perfectly private mechanism: in and out scores from one distribution.
  ins, outs = _gaussian_scores(0.0, 500, seed=0)
  ours = estimators.epsilon_lower_bound(ins, outs, method="gdp", delta=1e-5)
  assert ours == 0.0
  # jax-privacy 2.0.0 takes max |mu|: a negative mu becomes a positive bound.
  if importlib.metadata.version("jax-privacy") == "2.0.0":
    upstream = jp_auditing.CanaryScoreAuditor(ins, outs).epsilon_from_gdp(
        0.05, 1e-5)
    assert upstream > 1.0


@pytest.mark.parametrize("method", estimators.METHODS)
def test_bounds_stay_below_a_known_gaussian_mechanism(method):
  # Scores of a Gaussian mechanism at epsilon 2 (delta 1e-5): mu = 0.5016.
  mu = 1 / dp_accounting.get_sigma_gaussian(2.0, 1e-5)
  ins, outs = _gaussian_scores(mu, 1000, seed=1)
  bound = estimators.epsilon_lower_bound(ins, outs, method=method, delta=1e-5)
  assert 0.05 < bound < 2.0
  # Twice the signal gives a larger bound.
  ins2, outs2 = _gaussian_scores(2 * mu, 1000, seed=1)
  assert estimators.epsilon_lower_bound(ins2, outs2, method=method,
                                        delta=1e-5) > bound


@pytest.mark.parametrize("kwargs, match", [
    ({"in_scores": [1.0, np.nan]}, "in_scores"),
    ({"out_scores": []}, "out_scores"),
    ({"in_scores": np.ones((2, 2))}, "in_scores"),
    ({"method": "gdp_abs"}, "method"),
    ({"confidence": 0.4}, "confidence"),
    ({"delta": 0.0}, "delta"),
])
def test_bad_input_names_the_argument(kwargs, match):
  args = {"in_scores": [1.0, 2.0], "out_scores": [0.0, 0.5],
          "method": "clopper_pearson", "delta": 1e-5, "confidence": 0.95}
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    estimators.epsilon_lower_bound(args.pop("in_scores"), args.pop("out_scores"),
                                   **args)
