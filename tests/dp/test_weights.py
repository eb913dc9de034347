"""Property tests: every weight rule respects its declared sensitivity."""

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak import dp

RULES = {
    "clip": dp.clip(1.3),
    "auto_s": dp.auto_s(1.0, 0.01),
    "nsgd": dp.nsgd(2.0, 0.1),
    "psac_0.1": dp.psac(1.0, 0.1),
    "psac_0.01": dp.psac(0.5, 0.01),
    "psasc": dp.psasc(1.0, 0.1, 1.0),
    "psasc_s3": dp.psasc(2.0, 0.05, 3.0),
}

_JITTED = {}


def _jitted(name):
  if name not in _JITTED:
    _JITTED[name] = jax.jit(RULES[name])
  return _JITTED[name]


# Norms from 0 to 1e6, with zeros, float32 denormals and huge values forced in.
norm_values = st.one_of(
    st.just(0.0), st.just(1e-45), st.just(1e-40), st.just(1e6),
    st.floats(0.0, 1e6, allow_nan=False, allow_infinity=False, width=32,
              allow_subnormal=True),
)


@pytest.mark.parametrize("name", sorted(RULES))
@hypothesis.settings(max_examples=200, deadline=None, derandomize=True)
@hypothesis.given(norms=st.lists(norm_values, min_size=1, max_size=64))
def test_scaled_norm_never_exceeds_sensitivity(name, norms):
  rule = RULES[name]
  # Pad to a fixed length so every example reuses one compiled function.
  x = np.resize(np.asarray(norms, np.float32), 64)
  w = _jitted(name)(x)
  assert bool(jnp.all(jnp.isfinite(w)))
  assert bool(jnp.all(w >= 0))
  assert float(jnp.max(x * w)) <= rule.sensitivity * (1 + 1e-6)


@pytest.mark.parametrize("name", sorted(RULES))
@hypothesis.settings(max_examples=50, deadline=None, derandomize=True)
@hypothesis.given(scale=st.floats(1e-30, 1e6), seed=st.integers(0, 2**16))
def test_weighted_vector_norm_is_bounded(name, scale, seed):
  """The bound holds for actual gradient vectors, not just scalar norms."""
  rule = RULES[name]
  g = jax.random.normal(jax.random.key(seed), (3, 50)) * scale
  norms = dp.global_norms({"g": g})
  scaled = rule(norms)[:, None] * g
  assert float(jnp.max(jnp.linalg.norm(scaled, axis=1))) <= rule.sensitivity * (1 + 1e-5)


def test_known_values_and_shapes():
  x = jnp.array([0.0, 0.5, 1.0, 4.0])
  np.testing.assert_allclose(dp.clip(1.0)(x), [1.0, 1.0, 1.0, 0.25])
  np.testing.assert_allclose(dp.auto_s(1.0, 0.01)(x), 1.0 / (x + 0.01), rtol=1e-6)
  r = 0.1
  np.testing.assert_allclose(dp.psac(1.0, r)(x), 1.0 / (x + r / (x + r)), rtol=1e-6)
  # DP-PSAC is non-monotonic: w(0) = C, peak near sqrt(r) - r with w ~ 1.88 C.
  peak = jnp.sqrt(r) - r
  assert float(dp.psac(1.0, r)(jnp.array(0.0))) == pytest.approx(1.0)
  assert float(dp.psac(1.0, r)(peak)) == pytest.approx(1.88, abs=0.01)
  # psasc with s = 1 coincides with psac; larger s lowers the sensitivity.
  np.testing.assert_allclose(dp.psasc(1.0, r, 1.0)(x), dp.psac(1.0, r)(x), rtol=1e-6)
  assert dp.psasc(1.0, r, 4.0).sensitivity == 0.25


def test_non_finite_norms_get_zero_weight():
  x = jnp.array([jnp.nan, jnp.inf, -jnp.inf, 1.0])
  for rule in RULES.values():
    w = rule(x)
    np.testing.assert_array_equal(np.asarray(w[:3]), 0.0)
    assert float(w[3]) > 0


def test_impossible_hyper_parameters_name_the_argument():
  with pytest.raises(ValueError, match="clip: argument 'l2_norm_clip'"):
    dp.clip(-1.0)
  with pytest.raises(ValueError, match="'gamma'"):
    dp.auto_s(1.0, 0.0)
  with pytest.raises(ValueError, match="psac: argument 'r'"):
    dp.psac(1.0, -0.1)
  with pytest.raises(ValueError, match="'s' must be >= 1"):
    dp.psasc(1.0, 0.1, 0.5)
  with pytest.raises(ValueError, match="violates its declared sensitivity"):
    dp.check_sensitivity(dp.custom(lambda x: jnp.ones_like(x), 1.0))
