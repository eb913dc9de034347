"""L-BFGS products against the dense BFGS recursions they represent."""

import jax.numpy as jnp
import numpy as np

from jaxleak.unlearning import lbfgs


def _pairs(seed, p=7, k=3):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(p, p))
  hess = a @ a.T + 0.5 * np.eye(p)          # SPD, so y^T s > 0
  s = rng.normal(size=(k, p))
  return hess, s, s @ hess.T


def _memory(s, y, m):
  mem = lbfgs.init_memory(m, s.shape[1])
  for si, yi in zip(s, y):
    mem = lbfgs.push(mem, jnp.asarray(si, jnp.float32),
                     jnp.asarray(yi, jnp.float32))
  return mem


def _dense_b(s, y, sigma):
  b = sigma * np.eye(s.shape[1])
  for si, yi in zip(s, y):
    bs = b @ si
    b = b - np.outer(bs, bs) / (si @ bs) + np.outer(yi, yi) / (yi @ si)
  return b


def _dense_h(s, y):
  gamma = (s[-1] @ y[-1]) / (y[-1] @ y[-1])
  h = gamma * np.eye(s.shape[1])
  for si, yi in zip(s, y):
    rho = 1.0 / (yi @ si)
    v = np.eye(s.shape[1]) - rho * np.outer(yi, si)
    h = v.T @ h @ v + rho * np.outer(si, si)
  return h


def test_compact_hessian_product_matches_bfgs_recursion():
  _, s, y = _pairs(0)
  v = np.random.default_rng(1).normal(size=s.shape[1])
  # Short history: 3 valid pairs in 5 slots.
  mem = _memory(s, y, m=5)
  assert mem.valid.tolist() == [False, False, True, True, True]
  sigma = (y[-1] @ s[-1]) / (s[-1] @ s[-1])
  np.testing.assert_allclose(lbfgs.hessian_product(mem, jnp.asarray(v)),
                             _dense_b(s, y, sigma) @ v, rtol=2e-3, atol=2e-3)


def test_sigma_clamp_and_empty_memory():
  _, s, y = _pairs(2)
  v = jnp.ones(s.shape[1])
  empty = lbfgs.init_memory(3, s.shape[1])
  np.testing.assert_allclose(lbfgs.hessian_product(empty, v), v)
  np.testing.assert_allclose(lbfgs.inverse_hessian_product(empty, v), v)
  tiny = _memory(s[:1], 1e-6 * y[:1], m=2)     # sigma far below 1e-3
  b = _dense_b(s[:1], 1e-6 * y[:1], 1e-3)
  np.testing.assert_allclose(lbfgs.hessian_product(tiny, v), b @ np.ones(7),
                             rtol=1e-3, atol=1e-5)


def test_two_loop_matches_inverse_bfgs_recursion():
  _, s, y = _pairs(3)
  g = np.random.default_rng(4).normal(size=s.shape[1])
  mem = _memory(s, y, m=3)
  np.testing.assert_allclose(lbfgs.inverse_hessian_product(mem, jnp.asarray(g)),
                             _dense_h(s, y) @ g, rtol=2e-3, atol=2e-3)


def test_push_respects_accept_and_curvature():
  mem = lbfgs.init_memory(2, 3)
  s = jnp.array([1.0, 0.0, 0.0])
  assert not bool(lbfgs.curvature_ok(s, -s))
  mem = lbfgs.push(mem, s, -s, lbfgs.curvature_ok(s, -s))
  assert not mem.valid.any()
  mem = lbfgs.push(mem, s, 2 * s, lbfgs.curvature_ok(s, 2 * s))
  assert mem.valid.tolist() == [False, True]
