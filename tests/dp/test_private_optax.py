"""The optax transform on the fast path: loss and batch as extra arguments,
and virtual batches by gradient accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxleak import dp
from jaxleak import models


def _setup(b=12, seed=0):
  apply_fn, params = models.create("mlp", 10, (8, 8, 1), jax.random.key(1),
                                  hidden=(16,))
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.random((b, 8, 8, 1), np.float32)).at[5].set(jnp.nan)
  y = jnp.asarray(rng.integers(0, 10, b), jnp.int32)
  mask = jnp.asarray(rng.random(b) < 0.8).at[0].set(True)  # Poisson padding.

  def loss_fn(p, batch):
    return models.cross_entropy_loss(apply_fn(p, batch[0]), batch[1])
  return loss_fn, params, (x, y), mask


def test_loss_and_batch_extra_args_equal_per_example_contract():
  loss_fn, params, batch, mask = _setup()
  tx = dp.dp_psasc(0.5, noise_multiplier=0.7, key=3, expected_batch_size=10)
  state = tx.init(params)
  fast, fast_state = jax.jit(lambda p, s: tx.update(
      None, s, p, loss_fn=loss_fn, batch=batch, mask=mask))(params, state)
  grads = dp.per_example_grads(loss_fn, params, batch)
  slow, slow_state = jax.jit(lambda p, s, g: tx.update(g, s, p, mask=mask))(
      params, state, grads)
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(slow)):
    np.testing.assert_allclose(a, b, atol=2e-6 * float(jnp.max(jnp.abs(b))))
  assert int(fast_state[0].num_skipped) == int(slow_state[0].num_skipped) == int(
      mask[5])
  with pytest.raises(ValueError, match="either per-example gradients"):
    tx.update(grads, state, params, loss_fn=loss_fn, batch=batch)


def test_accumulation_equals_one_logical_step_with_noise_once():
  loss_fn, params, batch, mask = _setup(b=12)
  k, phys = 3, 4
  kw = {"noise_multiplier": 0.7, "key": 3, "expected_batch_size": 10,
        "momentum": 0.9}
  one = dp.dp_psasc(0.5, **kw)
  acc = dp.dp_psasc(0.5, accumulation_steps=k, **kw)

  @jax.jit
  def big_step(p, s):
    u, s = one.update(None, s, p, loss_fn=loss_fn, batch=batch, mask=mask)
    return optax.apply_updates(p, u), s

  @jax.jit
  def micro_step(p, s, micro, micro_mask):
    u, s = acc.update(None, s, p, loss_fn=loss_fn, batch=micro, mask=micro_mask)
    return optax.apply_updates(p, u), s, u

  p1, s1, p2, s2 = params, one.init(params), params, acc.init(params)
  for _ in range(2):  # Two logical steps: momentum sees released steps only.
    p1, s1 = big_step(p1, s1)
    for i in range(k):
      part = jax.tree.map(lambda a, i=i: a[i * phys:(i + 1) * phys], batch)
      p2, s2, u = micro_step(p2, s2, part, mask[i * phys:(i + 1) * phys])
      if i < k - 1:  # Held micro-batches change nothing.
        assert all(float(jnp.max(jnp.abs(v))) == 0 for v in jax.tree.leaves(u))
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
  assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(params),
                                                    jax.tree.leaves(p2)))
  # The noise key advanced once per logical step, as in the big-step run.
  np.testing.assert_array_equal(jax.random.key_data(s1[0].key),
                                jax.random.key_data(s2[0].key))
