"""Gradient-canary audits of jaxleak's DP aggregation (white-box simulation)."""

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak import data
from jaxleak import dp
from jaxleak import models
from jaxleak.auditing import estimators
from jaxleak.auditing import gradient_canaries as gc
from jaxleak.dp import accounting


@pytest.fixture(scope="module")
def background():
  train = data.load("digits", "train")
  apply_fn, params = models.create("lenet", train.num_classes,
                                   train.image_shape, jax.random.key(0))
  return gc.background_gradients(apply_fn, params, train.images[:8],
                                 train.labels[:8])


def _sigma(eps, steps):
  return accounting.calibrate_noise(eps, sample_rate=1.0, steps=steps,
                                    delta=1e-5)


def test_background_gradients_are_real_per_example_gradients(background):
  assert background.grads.shape == (8, 8026)
  norms = np.linalg.norm(np.asarray(background.grads), axis=1)
  assert np.all(norms > 0.1) and len(np.unique(np.round(norms, 4))) == 8
  tree = background.unravel(background.grads[0])
  assert len(jax.tree.leaves(tree)) == 8


def test_audit_flags_halved_noise_and_underestimated_sensitivity(background):
  # 300 independent runs, GDP bound: claimed epsilon 8 (mu = 1.67); a broken
  # mechanism has mu = 3.33, i.e. epsilon ~ 19.8. (At 300 runs the bound sits
  # about 0.6 below the true mu, too loose to flag a 2x error at epsilon 4.)
  steps, eps = 2, 8.0
  sigma = _sigma(eps, steps)
  bounds = {}
  for broken in gc.BROKEN:
    cfg = gc.GradientAuditConfig(steps=steps, broken=broken)
    ins, outs = gc.simulate_many_runs(dp.clip(1.0), sigma, background,
                                      num_canaries=300, key=3, config=cfg)
    bounds[broken] = estimators.epsilon_lower_bound(ins, outs, method="gdp",
                                                    delta=1e-5)
  assert 1.0 < bounds["none"] < eps, bounds
  assert bounds["half_noise"] > eps, bounds
  assert bounds["half_sensitivity"] > eps, bounds


# auto_s and psac are audited in experiments/dp_audit; two rules keep it fast.
@pytest.mark.parametrize("rule", [dp.clip(1.0), dp.psasc(1.0, 0.1, 2.0)],
                         ids=repr)
def test_one_run_bound_is_informative_and_below_theory(background, rule):
  steps, eps = 2, 8.0
  ins, outs = gc.simulate_one_run(
      rule, _sigma(eps, steps), background, num_canaries=400, key=0,
      config=gc.GradientAuditConfig(steps=steps))
  # In-canaries sit one sensitivity above the out-canaries in every step.
  mu = np.sqrt(steps) / _sigma(eps, steps)
  sum_in, sum_out = ins.mean(), outs.mean()
  assert sum_in - sum_out == pytest.approx(mu ** 2, rel=0.3)
  bound = estimators.epsilon_lower_bound(ins, outs, method="one_run",
                                         delta=1e-5)
  assert 1.0 < bound < eps


def test_likelihood_ratio_score_matches_hand_formula():
  s = jnp.array([[0.3, -1.0], [2.0, 0.5]])  # [T=2, m=2]
  sigma, q = 1.5, 0.2
  got = gc.step_scores_to_canary_scores(s, score="likelihood_ratio",
                                        noise_multiplier=sigma, sample_rate=q)
  lr = np.log(1 - q + q * np.exp((np.asarray(s) - 0.5) / sigma ** 2))
  np.testing.assert_allclose(got, lr.sum(0), rtol=1e-5)
  full = gc.step_scores_to_canary_scores(s, score="likelihood_ratio",
                                         noise_multiplier=sigma, sample_rate=1.0)
  np.testing.assert_allclose(full, (np.asarray(s).sum(0) - 1.0) / sigma ** 2,
                             rtol=1e-5)


@pytest.mark.parametrize("broken, factor", [("none", 1.0), ("half_noise", 0.5),
                                            ("half_sensitivity", 0.5)])
def test_privatizer_noise_std(broken, factor):
  rule, sigma = dp.psasc(1.0, 0.1, 2.0), 3.0
  tx = gc.privatizer(rule, sigma, 0, expected_batch_size=1, broken=broken)
  zeros = {"w": jnp.zeros((2, 20000))}
  out, _ = tx.update(zeros, tx.init(None))
  assert float(jnp.std(out["w"])) == pytest.approx(
      factor * sigma * rule.sensitivity, rel=0.03)


def test_bad_arguments_name_themselves(background):
  with pytest.raises(ValueError, match="num_canaries"):
    gc.simulate_one_run(dp.clip(1.0), 1.0, background, num_canaries=9000, key=0)
  with pytest.raises(ValueError, match="broken"):
    gc.GradientAuditConfig(broken="quarter_noise").validate()
  with pytest.raises(ValueError, match="sample_rate"):
    gc.GradientAuditConfig(sample_rate=0.0).validate()
  with pytest.raises(ValueError, match="noise_multiplier"):
    gc.simulate_many_runs(dp.clip(1.0), -1.0, background, num_canaries=10, key=0)


def test_gaussian_mu_of_the_claim():
  # Sanity of the figures quoted in the docs: mu of epsilon 4 at delta 1e-5.
  assert 1 / dp_accounting.get_sigma_gaussian(4.0, 1e-5) == pytest.approx(
      0.925, abs=0.002)
