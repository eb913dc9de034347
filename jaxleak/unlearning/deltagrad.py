"""DeltaGrad (Wu, Dobriban & Davidson, ICML 2020), per algorithms.md F.2.

DeltaGrad reproduces the retraining trajectory

  w^U_{t+1} = w^U_t - eta_t (grad F_{B_t \\ R}(w^U_t) + lam w^U_t)

from w_0 using the cached training trajectory (w_t, grad F_{B_t}(w_t)). On
"explicit" iterations (t < j0, or (t - j0) mod T0 = 0) it computes the
retained and forgotten batch gradients at w^I_t and stores the curvature pair

  s = w^I_t - w_t,   y = g_full(w^I_t) - grad F_{B_t}(w_t) + lam s,

with g_full = (|B_t \\ R| g_rem + |B_t cap R| g_del) / |B_t|. On the other
("approximate") iterations it only computes the forgotten part g_del and
extrapolates the full batch gradient with the L-BFGS Hessian B_t:

  g~_full = grad F_{B_t}(w_t) + lam w_t + B_t (w^I_t - w_t),
  g~_rem = (|B_t| g~_full - |B_t cap R| (g_del + lam w^I_t)) / |B_t \\ R|,
  w^I_{t+1} = w^I_t - eta_t g~_rem.

B_t is the compact L-BFGS representation over the last m pairs with sigma
clamped below at 1e-3 (`lbfgs.hessian_product`). Steps missing from a
strided cache (`train_with_history(on_budget="stride")`) run explicitly
without storing a pair. A batch that is entirely forgotten applies only the
L2 term, as in retraining. The whole replay is one `lax.scan` with a
`lax.cond` per step, so an approximate step really only evaluates the
forgotten examples of its batch.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np

from jaxleak._src import validate
from jaxleak.unlearning import _sgd
from jaxleak.unlearning import base
from jaxleak.unlearning import lbfgs

Params = Any


def _batch_split(history: Any, keep: np.ndarray, forget_mask: np.ndarray):
  """Per-step packed retained / forgotten index matrices and counts."""
  recipe, n = history.recipe, history.num_examples
  idx = np.concatenate([
      _sgd.epoch_batches(n, recipe.batch_size, seed=recipe.seed, epoch=e)
      for e in range(recipe.epochs)])
  rem_idx, rem_mask = _sgd.compact_batches(idx, keep)
  del_idx, del_mask = _sgd.compact_batches(idx, forget_mask)
  return rem_idx, rem_mask, del_idx, del_mask


@functools.partial(jax.jit, static_argnames=("apply_fn", "unravel"))
def _replay(apply_fn, unravel, w0, images, labels, xs, step_params,
            step_grads, l2, memory0, sigma_min):
  grad_fn = _sgd.flat_loss_grad(apply_fn, unravel)

  def mean_grad(w, i, m):
    count = jnp.sum(m)
    return grad_fn(w, images[i], labels[i], m) / jnp.maximum(count, 1.0)

  def step(carry, x):
    w, mem = carry
    (rem_i, rem_m, del_i, del_m, lr, explicit, cached, row) = x
    n_rem, n_del = jnp.sum(rem_m), jnp.sum(del_m)
    n_b = n_rem + n_del
    w_t, g_t = step_params[row], step_grads[row]

    def exact(mem):
      g_rem = mean_grad(w, rem_i, rem_m)
      g_del = mean_grad(w, del_i, del_m)
      g_full = (n_rem * g_rem + n_del * g_del) / jnp.maximum(n_b, 1.0)
      s = w - w_t
      y = g_full - g_t + l2 * s
      mem = lbfgs.push(mem, s, y, cached & lbfgs.curvature_ok(s, y))
      return w - lr * (g_rem + l2 * w), mem

    def approx(mem):
      hv = lbfgs.hessian_product(mem, w - w_t, sigma_min=sigma_min)
      g_full = g_t + l2 * w_t + hv
      g_del = mean_grad(w, del_i, del_m)
      g_rem = (n_b * g_full - n_del * (g_del + l2 * w)) / jnp.maximum(n_rem, 1.0)
      # An all-forgotten batch keeps only the L2 term, as in retraining.
      g_rem = jnp.where(n_rem > 0, g_rem, l2 * w)
      return w - lr * g_rem, mem

    w_next, mem = jax.lax.cond(explicit, exact, approx, mem)
    return (w_next, mem), None

  (w, _), _ = jax.lax.scan(step, (w0, memory0), xs)
  return w


@base.register("deltagrad")
def deltagrad(model: base.Model, history: Any, forget_indices: Any, data: Any,
              *, period: int = 5, burn_in: int = 20, memory: int = 2,
              sigma_min: float = 1e-3) -> Params:
  """DeltaGrad unlearning over the cached per-step history.

  Args:
    model, history, forget_indices, data: see `Unlearner`; the history must
      hold the per-step cache (`train_with_history(cache_steps=True)`).
    period: T0 >= 1, an explicit iteration every T0 steps after burn-in.
    burn_in: j0 >= 0 initial explicit iterations.
    memory: m >= 1 L-BFGS pairs.
    sigma_min: lower clamp of the L-BFGS scaling sigma.

  Returns:
    The unlearned parameters (approximately the retrained ones).

  Raises:
    ValueError: the history has no per-step cache.
  """
  fn = "deltagrad"
  prob = base.prepare(model, history, forget_indices, data, fn)
  period = validate.check_int(period, "period", fn=fn)
  burn_in = validate.check_int(burn_in, "burn_in", fn=fn, low=0)
  memory = validate.check_int(memory, "memory", fn=fn)
  validate.check_positive(sigma_min, "sigma_min", fn=fn)
  if history.cache_stride == 0:
    raise ValueError(
        f"{fn}: argument 'history' has no per-step cache; record it with "
        "train_with_history(..., cache_steps=True)")
  forget_mask = ~prob.keep
  rem_idx, rem_mask, del_idx, del_mask = _batch_split(history, prob.keep,
                                                      forget_mask)
  num_steps = rem_idx.shape[0]
  t = np.arange(num_steps)
  cached = (t % history.cache_stride) == 0
  explicit = (t < burn_in) | ((t - burn_in) % period == 0) | ~cached
  row = np.where(cached, t // history.cache_stride, 0).astype(np.int32)
  lrs = _sgd.step_learning_rates(history.recipe, prob.n)
  xs = (jnp.asarray(rem_idx), jnp.asarray(rem_mask), jnp.asarray(del_idx),
        jnp.asarray(del_mask), jnp.asarray(lrs), jnp.asarray(explicit),
        jnp.asarray(cached), jnp.asarray(row))
  w0, _ = ravel_pytree(history.init_params)
  mem0 = lbfgs.init_memory(memory, w0.size, w0.dtype)
  w = _replay(prob.apply_fn, prob.unravel, w0, jnp.asarray(prob.images),
              jnp.asarray(prob.labels), xs, jnp.asarray(history.step_params),
              jnp.asarray(history.step_grads), jnp.float32(history.recipe.l2),
              mem0, jnp.float32(sigma_min))
  return prob.unravel(w)
