"""CompileThenTrim: one compilation for a carried state, same results as jit."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxleak._src import host_memory


def _step(state, x):
  key, total = state
  key, sub = jax.random.split(key)
  return (key, total + jnp.sum(x) + jax.random.normal(sub)), jnp.mean(x)


def test_carried_state_compiles_once_and_matches_plain_jit():
  jitted = jax.jit(_step)
  # A distinct function: jit caches are shared by jits of the same function.
  wrapped = host_memory.CompileThenTrim(jax.jit(lambda s, x: _step(s, x)),
                                        carried_argnums=(0,))
  # A fresh key is uncommitted and a step's outputs may not be: the carried
  # state is committed on every call, so the wrapper compiles once.
  state_a = state_b = (jax.random.key(0), jnp.zeros(()))
  for i in range(3):
    x = jnp.arange(4.0) + i  # fresh (uncommitted) data every call
    state_a, out_a = jitted(state_a, x)
    state_b, out_b = wrapped(state_b, x)
    np.testing.assert_array_equal(out_a, out_b)
    np.testing.assert_array_equal(state_a[1], state_b[1])
  assert wrapped._cache_size() == 1


def test_traced_calls_and_attributes_pass_through():
  wrapped = host_memory.CompileThenTrim(jax.jit(_step), carried_argnums=(0,))
  state = (jax.random.key(1), jnp.zeros(()))
  outer = jax.jit(lambda s, x: wrapped(s, x)[1] * 2)
  assert float(outer(state, jnp.ones(3))) == 2.0
  assert wrapped.lower(state, jnp.ones(3)) is not None
  assert isinstance(host_memory.release_freed_heap(), bool)
