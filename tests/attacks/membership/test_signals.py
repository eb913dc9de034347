"""Membership signals: stable formulas from logits."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak.attacks import membership as mia


def _logits(seed=0, n=32, c=5, scale=3.0):
  rng = np.random.default_rng(seed)
  return (scale * rng.normal(size=(n, c))).astype(np.float32), rng.integers(
      0, c, n)


def test_signals_match_their_definitions():
  z, y = _logits()
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  py = p[np.arange(len(y)), y]
  np.testing.assert_allclose(mia.loss(z, y), -np.log(py), rtol=1e-5)
  np.testing.assert_allclose(mia.confidence(z), p.max(1), rtol=1e-5)
  np.testing.assert_allclose(mia.entropy(z), -(p * np.log(p)).sum(1),
                             rtol=1e-4)
  np.testing.assert_allclose(mia.logit_scaled_confidence(z, y),
                             np.log(py / (1 - py)), rtol=1e-4, atol=1e-4)
  others = np.where(np.eye(z.shape[1], dtype=bool)[y], 0.0,
                    p * np.log(1 - p)).sum(1)
  mentr = -(1 - py) * np.log(py) - others
  np.testing.assert_allclose(mia.modified_entropy(z, y), mentr, rtol=1e-4,
                             atol=1e-6)


def test_signals_are_finite_for_saturated_logits():
  z = jnp.array([[60.0, 0.0, -5.0], [0.0, 60.0, 1.0]])
  y = jnp.array([0, 0])
  phi = np.asarray(mia.logit_scaled_confidence(z, y))
  # p_y rounds to 1 (first row) and to 0 (second): phi stays exact.
  np.testing.assert_allclose(phi, [60.0 - np.log(1 + np.exp(-5.0)),
                                   -60.0 - np.log1p(np.exp(-59.0))], rtol=1e-5)
  assert np.all(np.isfinite(mia.modified_entropy(z, y)))
  assert float(mia.modified_entropy(z, y)[1]) > 50  # confidently wrong


def test_membership_score_orientation():
  z, y = _logits(1)
  np.testing.assert_allclose(mia.membership_score("loss", z, y),
                             -np.asarray(mia.loss(z, y)), rtol=1e-6)
  with pytest.raises(ValueError, match="argument 'name'"):
    mia.membership_score("gradient_norm", z, y)
  with pytest.raises(ValueError, match="argument 'labels' must have shape"):
    mia.loss(z, y[:3])
