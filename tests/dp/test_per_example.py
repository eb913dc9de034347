"""Per-example gradients: vmap, microbatched and two-pass paths agree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak import dp


def _loss_fn(params, batch):
  x, y = batch
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  logits = h @ params["w2"]
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def _setup(b=12):
  k = jax.random.split(jax.random.key(0), 4)
  params = {"w1": jax.random.normal(k[0], (6, 8)), "b1": jnp.zeros(8),
            "w2": jax.random.normal(k[1], (8, 3))}
  x = jax.random.normal(k[2], (b, 6)) * jnp.linspace(0.1, 5, b)[:, None]
  y = jax.random.randint(k[3], (b,), 0, 3)
  return params, (x, y)


def test_per_example_grads_match_a_python_loop():
  params, (x, y) = _setup()
  grads = jax.jit(lambda p: dp.per_example_grads(_loss_fn, p, (x, y)))(params)
  grad_fn = jax.jit(jax.grad(_loss_fn))
  for i in (0, 5, 11):
    gi = grad_fn(params, (x[i:i + 1], y[i:i + 1]))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(gi)):
      np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6)
  micro = jax.jit(lambda p: dp.per_example_grads(
      _loss_fn, p, (x, y), microbatch_size=4))(params)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(micro)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", [dp.clip(0.5), dp.psasc(1.0, 0.1, 2.0)])
def test_two_pass_equals_vmap_path(rule):
  params, batch = _setup()
  mask = jnp.arange(12) < 10
  a, na, wa, la, _ = jax.jit(lambda p: dp.weighted_grad_sum(
      _loss_fn, p, batch, rule, mask=mask, path="vmap"))(params)
  b, nb, _wb, lb, _ = jax.jit(lambda p: dp.weighted_grad_sum(
      _loss_fn, p, batch, rule, mask=mask, path="two_pass",
      microbatch_size=3))(params)
  np.testing.assert_allclose(na, nb, rtol=1e-5)
  # Losses of padded rows are unspecified (two-pass zeroes their inputs).
  np.testing.assert_allclose(la[:10], lb[:10], rtol=1e-5)
  np.testing.assert_allclose(la, dp.per_example_losses(_loss_fn, params, batch),
                             rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(wa[10:]), 0.0)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_nan_example_does_not_poison_either_path():
  params, (x, y) = _setup()
  x = x.at[2].set(jnp.nan)
  for path in ("auto", "vmap", "two_pass"):  # layerwise: tests/dp/test_layerwise.py
    total, norms, weights, *_ = dp.weighted_grad_sum(_loss_fn, params, (x, y),
                                                 dp.clip(1.0), path=path)
    assert not bool(jnp.isfinite(norms[2])) and float(weights[2]) == 0.0
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(total))


def test_bad_batches_and_paths():
  params, (x, y) = _setup()
  with pytest.raises(ValueError, match="same leading batch axis"):
    dp.per_example_grads(_loss_fn, params, (x, y[:5]))
  with pytest.raises(ValueError, match="'microbatch_size'=5 must divide"):
    dp.per_example_grads(_loss_fn, params, (x, y), microbatch_size=5)
  with pytest.raises(ValueError, match="'path' must be one of"):
    dp.weighted_grad_sum(_loss_fn, params, (x, y), dp.clip(1.0), path="ghosts")
