"""Limited-memory BFGS products on flat vectors with a fixed-size memory.

The memory is an optax-style NamedTuple of fixed shape, so it can live in a
`jax.lax.scan` carry: `m` slots of curvature pairs (s_i, y_i), oldest first,
and a validity mask (a short history has invalid leading slots).

* `hessian_product` gives B v, the compact representation of the L-BFGS
  Hessian approximation (Byrd, Nocedal & Schnabel 1994), used by DeltaGrad.
* `inverse_hessian_product` gives H v with H ~ B^{-1}, the two-loop
  recursion (Nocedal 1980), used to precondition Mini-Unlearning.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LBFGSMemory(NamedTuple):
  """Curvature pairs, oldest first.

  Attributes:
    s: [m, P] parameter differences.
    y: [m, P] gradient differences.
    valid: bool [m]; invalid slots hold zeros.
  """
  s: jax.Array
  y: jax.Array
  valid: jax.Array


def init_memory(m: int, p: int, dtype=jnp.float32) -> LBFGSMemory:
  """An empty memory with `m` slots for `p`-dimensional vectors."""
  return LBFGSMemory(jnp.zeros((m, p), dtype), jnp.zeros((m, p), dtype),
                     jnp.zeros((m,), bool))


def push(memory: LBFGSMemory, s: jax.Array, y: jax.Array,
         accept: jax.Array | bool = True) -> LBFGSMemory:
  """Appends (s, y) as the newest pair, dropping the oldest, if `accept`."""
  new = LBFGSMemory(
      jnp.concatenate([memory.s[1:], s[None]]),
      jnp.concatenate([memory.y[1:], y[None]]),
      jnp.concatenate([memory.valid[1:], jnp.ones((1,), bool)]))
  return jax.tree.map(lambda a, b: jnp.where(accept, a, b), new, memory)


def curvature_ok(s: jax.Array, y: jax.Array, eps: float = 1e-8) -> jax.Array:
  """The curvature condition s^T y > eps ||s|| ||y|| (keeps B positive)."""
  return jnp.vdot(s, y) > eps * jnp.linalg.norm(s) * jnp.linalg.norm(y)


def _newest_sigma(memory: LBFGSMemory, sigma_min: float) -> jax.Array:
  # The newest valid pair sits in the last slot whenever any pair is valid.
  s, y = memory.s[-1], memory.y[-1]
  sigma = jnp.vdot(y, s) / jnp.maximum(jnp.vdot(s, s), 1e-30)
  return jnp.where(memory.valid[-1], jnp.maximum(sigma, sigma_min), 1.0)


def hessian_product(memory: LBFGSMemory, v: jax.Array, *,
                    sigma_min: float = 1e-3) -> jax.Array:
  """B v with the compact L-BFGS representation.

  With S, Y the [P, k] matrices of valid pairs (oldest first),
  D = diag(S^T Y), L the strictly lower triangle of S^T Y and
  sigma = y_{k-1}^T s_{k-1} / s_{k-1}^T s_{k-1} (clamped to >= sigma_min, as
  DeltaGrad's ``mini_sigma``):

    B v = sigma v - [Y, sigma S] M^{-1} [Y^T v ; sigma S^T v],
    M = [[-D, L^T], [L, sigma S^T S]].

  M (2m x 2m) is solved directly; invalid slots get unit diagonal entries and
  zero couplings, so they drop out exactly. With no valid pair, B v = v.

  Args:
    memory: the pairs.
    v: [P] vector.
    sigma_min: lower clamp of sigma.

  Returns:
    [P] vector B v.
  """
  s, y, valid = memory
  m = s.shape[0]
  sigma = _newest_sigma(memory, sigma_min)
  sy = s @ y.T                                    # (S^T Y)_{ij} = s_i . y_j
  lower = jnp.tril(sy, k=-1)
  d = jnp.diagonal(sy)
  pair = valid[:, None] & valid[None, :]
  # Invalid slots: unit diagonal, no coupling, zero right-hand side.
  top_left = jnp.where(pair, -jnp.diag(d), 0.0) + jnp.diag(
      jnp.where(valid, 0.0, 1.0))
  ss = sigma * (s @ s.T)
  bottom_right = jnp.where(pair, ss, 0.0) + jnp.diag(jnp.where(valid, 0.0, 1.0))
  lower = jnp.where(pair, lower, 0.0)
  big_m = jnp.block([[top_left, lower.T], [lower, bottom_right]])
  rhs = jnp.concatenate([y @ v, sigma * (s @ v)])
  rhs = jnp.where(jnp.concatenate([valid, valid]), rhs, 0.0)
  sol = jnp.linalg.solve(big_m, rhs)
  return sigma * v - (y.T @ sol[:m] + sigma * (s.T @ sol[m:]))


def inverse_hessian_product(memory: LBFGSMemory, g: jax.Array) -> jax.Array:
  """H g by the L-BFGS two-loop recursion over the valid pairs.

  The initial matrix is gamma I with gamma = s^T y / y^T y of the newest
  valid pair (1 with no pair, so H g = g).

  Args:
    memory: the pairs.
    g: [P] vector.

  Returns:
    [P] vector H g.
  """
  s, y, valid = memory
  m = s.shape[0]
  rho = jnp.where(valid, 1.0 / jnp.where(valid, jnp.sum(s * y, -1), 1.0), 0.0)
  q = g
  alphas = []
  for i in reversed(range(m)):
    a = rho[i] * jnp.vdot(s[i], q)
    q = q - a * y[i]
    alphas.append(a)
  alphas = alphas[::-1]
  s_new, y_new = s[-1], y[-1]
  gamma = jnp.where(valid[-1],
                    jnp.vdot(s_new, y_new)
                    / jnp.maximum(jnp.vdot(y_new, y_new), 1e-30), 1.0)
  r = gamma * q
  for i in range(m):
    b = rho[i] * jnp.vdot(y[i], r)
    r = r + s[i] * (alphas[i] - b)
  return r
