"""Tests of the DP optax transforms against optax.contrib and the noise law."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxleak import dp


def _per_example(key, b=32):
  k1, k2, k3 = jax.random.split(key, 3)
  # Norms spread over several decades so clipping is active for some rows.
  scale = jnp.exp(jax.random.uniform(k3, (b, 1, 1), minval=-3, maxval=3))
  return {"dense": {"kernel": jax.random.normal(k1, (b, 7, 5)) * scale,
                    "bias": jax.random.normal(k2, (b, 5)) * scale[:, 0]}}


def test_noiseless_clip_equals_optax_contrib():
  key = jax.random.key(0)
  grads = _per_example(key)
  ours = dp.dp_aggregate(dp.clip(1.0), 0.0, key)
  ref = optax.contrib.differentially_private_aggregate(1.0, 0.0, key=key)
  a, _ = jax.jit(ours.update)(grads, ours.init(None))
  b, _ = jax.jit(ref.update)(grads, ref.init(None))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)
  # And it is not a trivially small update: clipping changed something.
  assert float(jnp.abs(a["dense"]["bias"]).max()) > 1e-3


@pytest.mark.parametrize("rule", [dp.clip(2.0), dp.psasc(1.0, 0.1, 2.0)])
def test_noise_std_is_sigma_times_sensitivity_over_expected_batch(rule):
  sigma, expected_b = 1.7, 64
  zero = {"w": jnp.zeros((5, 100_000))}  # 5 examples, 1e5 coordinates
  tx = dp.dp_aggregate(rule, sigma, jax.random.key(3),
                       expected_batch_size=expected_b)
  out, _ = jax.jit(tx.update)(zero, tx.init(None))
  want = sigma * rule.sensitivity / expected_b
  got = float(jnp.std(out["w"]))
  assert abs(got / want - 1) < 0.02, (got, want)
  assert abs(float(jnp.mean(out["w"]))) < 4 * want / np.sqrt(1e5)


def test_key_is_split_every_step_and_required():
  tx = dp.dp_aggregate(dp.clip(1.0), 1.0, 0)
  state = tx.init(None)
  g = {"w": jnp.zeros((2, 8))}
  a, state = tx.update(g, state)
  b, state = tx.update(g, state)
  assert not np.allclose(a["w"], b["w"])
  with pytest.raises(ValueError, match="argument 'key' is required"):
    dp.dp_aggregate(dp.clip(1.0), 1.0, None)
  with pytest.raises(ValueError, match="argument 'key' is required"):
    dp.gaussian_privatizer(1.0, 1.0, None)


def test_mask_and_expected_batch_size():
  g = {"w": jnp.ones((4, 3)) * jnp.array([1.0, 2.0, 3.0, 4.0])[:, None]}
  tx = dp.dp_aggregate(dp.clip(100.0), 0.0, 0, expected_batch_size=10)
  mask = jnp.array([True, False, True, False])
  out, _ = tx.update(g, tx.init(None), mask=mask)
  np.testing.assert_allclose(out["w"], jnp.full((3,), (1 + 3) / 10), rtol=1e-6)
  with pytest.raises(ValueError, match="argument 'mask' must have shape"):
    tx.update(g, tx.init(None), mask=jnp.ones(5, bool))
  no_expected = dp.dp_aggregate(dp.clip(1.0), 0.0, 0)
  with pytest.raises(ValueError, match="expected_batch_size"):
    no_expected.update(g, no_expected.init(None), mask=mask)


def test_non_finite_example_is_skipped_and_counted():
  g = {"w": jnp.array([[1.0, 0.0], [jnp.nan, 1.0], [0.0, jnp.inf], [0.0, 1.0]])}
  tx = dp.dp_aggregate(dp.clip(10.0), 0.0, 0, expected_batch_size=4)
  out, state = jax.jit(tx.update)(g, tx.init(None))
  np.testing.assert_allclose(out["w"], [0.25, 0.25])
  assert int(state.num_skipped) == 2
  _, state = jax.jit(tx.update)(g, state)
  assert int(state.num_skipped) == 4


def test_bad_inputs_name_the_argument():
  tx = dp.dp_aggregate(dp.clip(1.0), 1.0, 0)
  with pytest.raises(ValueError, match="batch axis first.*scalar"):
    tx.update({"w": jnp.array(1.0)}, tx.init(None))
  with pytest.raises(ValueError, match="leading sizes differ"):
    tx.update({"a": jnp.ones((3, 2)), "b": jnp.ones((4, 2))}, tx.init(None))
  with pytest.raises(ValueError, match="'noise_multiplier'"):
    dp.dp_aggregate(dp.clip(1.0), -0.5, 0)
  with pytest.raises(TypeError, match="'weight_rule'"):
    dp.dp_aggregate(lambda n: n, 1.0, 0)
  with pytest.raises(ValueError, match="'expected_batch_size'"):
    dp.dp_aggregate(dp.clip(1.0), 1.0, 0, expected_batch_size=0)


def test_privatizer_matches_aggregate_on_presummed_input():
  key = jax.random.key(5)
  grads = _per_example(key, b=16)
  rule = dp.psac(1.0, 0.1)
  agg = dp.dp_aggregate(rule, 0.8, key, expected_batch_size=20)
  a, _ = agg.update(grads, agg.init(None))
  weights = rule(dp.global_norms(grads))
  summed = dp.weighted_sum(grads, weights)
  priv = dp.gaussian_privatizer(rule.sensitivity, 0.8, key, expected_batch_size=20)
  b, _ = priv.update(summed, priv.init(None))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_named_optimizers_chain_and_momentum_is_post_processing():
  params = {"w": jnp.zeros(3)}
  g = {"w": jnp.ones((2, 3))}
  for tx in (dp.dp_sgd(0.1, 1.0, 0.0, 0), dp.dp_auto_s(0.1, 0.0, 0),
             dp.dp_psac(0.1, 0.0, 0), dp.dp_psasc(0.1, 0.0, 0, momentum=None)):
    state = tx.init(params)
    u, state = tx.update(g, state, params)
    assert u["w"].shape == (3,) and bool(jnp.all(u["w"] < 0))
  # With momentum 0.9 and a constant privatised gradient, the second update
  # is 1.9x the first (heavy-ball trace), and the noise draw is unchanged.
  tx = dp.dp_psasc(0.1, 0.5, 7, momentum=0.9)
  plain = dp.dp_psasc(0.1, 0.5, 7, momentum=None)
  s, sp = tx.init(params), plain.init(params)
  u1, s = tx.update(g, s, params)
  p1, sp = plain.update(g, sp, params)
  np.testing.assert_allclose(u1["w"], p1["w"], rtol=1e-6)
  u2, s = tx.update(g, s, params)
  p2, sp = plain.update(g, sp, params)
  np.testing.assert_allclose(u2["w"], 0.9 * u1["w"] + p2["w"], rtol=1e-5)
  with pytest.raises(ValueError, match="'momentum'"):
    dp.dp_psasc(0.1, 1.0, 0, momentum=1.5)
