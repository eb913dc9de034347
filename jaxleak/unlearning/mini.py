"""Mini-Unlearning: contraction iterations on the retained data from w*.

**A contraction-mapping design reconstructed from the abstract, not the
paper's verified rule.** Huang et al., "Machine Unlearning with Minimal
Gradient Dependence for High Unlearning Ratios" (arXiv 2406.16986) state
that unlearned and retrained parameters are related by a contraction
mapping and that a minimal subset of historical gradients suffices; the
update rule itself could not be read (algorithms.md, section F.1). What is
implemented here is the design of the spec, behind the `Unlearner`
interface so the paper's rule can replace it:

Retained objective, with n = |D|, r = |R| and L2 strength lam:

  F_{-R}(w) = 1/(n-r) sum_{i not in R} l_i(w) + lam/2 ||w||^2.

Update map (Banach fixed-point iteration), anchored at the trained model:

  T_k(w) = w - eta H_k (grad F_{-R}(w) - a),   a = grad F_D(w*) + lam w*,
  w_0 = w*,   w_{k+1} = T_k(w_k).

Contraction. With H_k = I ("none") this is the gradient map of the spec
shifted by the constant a: for mu-strongly convex, L-smooth F_{-R} and
0 < eta < 2/L, ||T(u) - T(v)|| <= q ||u - v||, q = max(|1 - eta mu|,
|1 - eta L|) < 1 (the shift does not change the Jacobian), so the iterates
converge geometrically to the unique fixed point whatever the unlearning
ratio. An ill-conditioned F_{-R} has q close to 1, so by default ("lbfgs")
H_k is the L-BFGS inverse-Hessian estimate: a variable-metric map whose
contraction factor on a quadratic is ||I - eta H_k A|| (small when
H_k ~ A^{-1}), with no global guarantee.

Anchor (why a, a "minimal historical gradient"). Write grad F for the
regularised gradients. The fixed point solves grad F_{-R}(w) = grad F_D(w*):
it moves w* by the change of optimum caused by removing R. For quadratic
losses with Hessian A and minimisers b of F_{-R} and c of F_D,
w_fix = w* + (b - c) exactly. When the original run stopped short of c
(early stopping, SGD noise: w* = c + e), the retrained run (same init, same
batches minus R) carries a similar error e, and w_fix = b + e tracks it,
whereas the un-anchored map (a = 0, ``anchor=False``, ``prox=0``: the spec's
formulation) converges to the exact minimiser b and so undoes e. With R
empty, w* itself is the fixed point.

Proximal term (early stopping). The original and retrained runs stop after
a total step length tau = sum_t eta_t, so in directions of curvature
h << 1/tau neither moved far from w_0, whereas w_fix applies the full shift
A^{-1} (grad F_D(w*) - grad F_{-R}(w*)) there and overshoots; unchecked, the
iteration even runs away along those directions. Gradient descent stopped
at tau acts like ridge regression with strength 1/tau (filter
(1 - exp(-tau h)) / h ~ 1 / (h + 1/tau); Ali, Kolter & Tibshirani 2019), so
the map adds rho/2 ||w - w*||^2 with rho = 1/tau (``prox="auto"``): the
retained objective becomes (mu + rho)-strongly convex, w* stays the fixed
point for R empty, and the fixed point approximates w* + (I - E)(b - c),
E = prod_t (I - eta_t A), which is what retraining computes for quadratics.

Where the history enters ("minimal gradient dependence"): the training
history stores only grad F_D(w*) and m epoch-end snapshots (w_j, grad
F_D(w_j)), i.e. m + 1 gradients instead of DeltaGrad's T.

1. First step without the retained pass. By linearity of the mean,
   grad F_{-R}(w*) - a = r / (n - r) (grad F_D(w*) - grad F_R(w*)), so step
   0 needs only the r forget-set gradients and the cached grad F_D(w*).
2. Curvature from the history. The pairs s_j = w* - w_j,
   y_j = grad F_D(w*) - grad F_D(w_j) + lam s_j seed the L-BFGS memory
   (F_D and F_{-R} have close Hessians for a random R), so the first steps
   are already preconditioned.
3. Later steps compute grad F_{-R}(w_k) exactly as one full pass over the
   retained data, sharded over a ``("data",)`` mesh with `jax.shard_map`
   (a ``psum`` adds the device sums), and add (w_{k+1} - w_k,
   grad F_{-R}(w_{k+1}) - grad F_{-R}(w_k)) to the memory when it satisfies
   the curvature condition.

Cost: r + (k - 1)(n - r) example gradients for k steps (the last step needs
no gradient at its end point), against epochs * (n - r) for retraining, so
the speed-up is about epochs / (k - 1 + r / (n - r)); no
approximation error grows with the ratio, unlike DeltaGrad, because no
gradient is extrapolated away from where it was computed. On non-convex
models nothing guarantees a contraction; `max_step_norm` bounds each step.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxleak._src import validate
from jaxleak.unlearning import _grads
from jaxleak.unlearning import _sgd
from jaxleak.unlearning import base
from jaxleak.unlearning import lbfgs

Params = Any

PRECONDITIONERS = ("lbfgs", "none")


class ContractionTrace(NamedTuple):
  """The iterates of `contraction_unlearning`.

  Attributes:
    params: the final parameters w_k (pytree).
    grad_norms: float [k], ||grad F_{-R}(w_j) - a|| at w_0 = w*, ...,
      w_{k-1} (the gradients the steps used).
    step_norms: float [k], ||w_{j+1} - w_j||.
    iterates: float32 [k + 1, P] flat iterates if requested, else None.
    retained_passes: full passes over D \\ R that were computed.
    forget_passes: passes over R that were computed.
  """
  params: Params
  grad_norms: np.ndarray
  step_norms: np.ndarray
  iterates: np.ndarray | None
  retained_passes: int
  forget_passes: int


@jax.jit
def _push(memory, s, y):
  return lbfgs.push(memory, s, y, lbfgs.curvature_ok(s, y))


@functools.partial(jax.jit, static_argnames=(
    "apply_fn", "unravel", "chunk", "mesh", "steps", "precondition",
    "keep_iterates"))
def _contract(apply_fn, unravel, w, g, mem, x, y, m, count, lam, offset, eta,
              max_norm, *, chunk, mesh, steps, precondition, keep_iterates):
  """k contraction steps as one scan; returns (w_k, per-step outputs)."""
  grad_sum = _grads.grad_sum_fn(apply_fn, unravel, chunk, mesh)

  def direction(g, mem):
    d = -lbfgs.inverse_hessian_product(mem, g) if precondition == "lbfgs" else -g
    d = eta * d
    # Trust region (max_norm = inf disables it).
    return d * jnp.minimum(1.0, max_norm / jnp.maximum(jnp.linalg.norm(d),
                                                       1e-30))

  def body(carry, _):
    w, g, mem = carry
    d = direction(g, mem)
    w_next = w + d
    g_next = grad_sum(w_next, x, y, m) / count + lam * w_next - offset
    if precondition == "lbfgs":
      s, yv = w_next - w, g_next - g
      mem = lbfgs.push(mem, s, yv, lbfgs.curvature_ok(s, yv))
    out = (jnp.linalg.norm(g_next), jnp.linalg.norm(d),
           w_next if keep_iterates else None)
    return (w_next, g_next, mem), out

  # The last step needs no gradient at its end point: k steps cost k - 1
  # retained passes after the cached first gradient.
  (w, g, mem), (g_norms, d_norms, its) = jax.lax.scan(
      body, (w, g, mem), None, length=steps - 1)
  d = direction(g, mem)
  w_last = w + d
  d_norms = jnp.concatenate([d_norms, jnp.linalg.norm(d)[None]])
  if keep_iterates:
    its = jnp.concatenate([its, w_last[None]])
  return w_last, (g_norms, d_norms, its)


def learning_time(recipe: _sgd.SGDRecipe, n: int) -> float:
  """tau = sum_t eta_t, the total step length of the recipe on n examples."""
  return _sgd.steps_per_epoch(n, recipe.batch_size) * float(
      sum(recipe.learning_rates))


def contraction_unlearning(model: base.Model, history: Any,
                           forget_indices: Any, data: Any, *, steps: int = 5,
                           step_size: float | None = None,
                           precondition: str = "lbfgs", memory: int = 10,
                           cached_gradient: bool = True,
                           cached_curvature: bool = True,
                           max_step_norm: float | None = None,
                           mesh: jax.sharding.Mesh | None = None,
                           chunk_size: int = 128,
                           anchor: bool = True,
                           prox: float | str = "auto",
                           keep_iterates: bool = False) -> ContractionTrace:
  """Runs the Mini-Unlearning contraction and returns its trace.

  Args:
    model, history, forget_indices, data: see `Unlearner`.
    steps: k >= 1 contraction steps.
    step_size: eta > 0; default 1 with "lbfgs", the recipe's first learning
      rate with "none".
    precondition: "lbfgs" (H_k from the L-BFGS memory) or "none" (H_k = I,
      the plain gradient map).
    memory: L-BFGS memory size (>= 1).
    cached_gradient: compute step 0's gradient from the cached grad F_D(w*)
      and the forget set only (point 1 of the module docstring).
    cached_curvature: seed the memory with the history's snapshot pairs.
    max_step_norm: if set, steps longer than this are shortened to it (a
      trust region for non-convex models).
    mesh: optional ``("data",)`` mesh: gradients are sharded over it.
    chunk_size: examples per sequential chunk on each device.
    anchor: subtract a = grad F_D(w*) + lam w* (the cached full gradient) so
      that w* is the fixed point when R is empty; False iterates towards the
      exact minimiser of F_{-R} (see the module docstring).
    prox: strength rho >= 0 of the proximal term rho/2 ||w - w*||^2 that
      mimics the implicit regularisation of the original run's early
      stopping; "auto" uses rho = 1 / sum_t eta_t of the recipe (see the
      module docstring), 0 disables it.
    keep_iterates: also return every iterate (memory k P floats).

  Returns:
    A `ContractionTrace`.
  """
  fn = "mini_unlearning"
  prob = base.prepare(model, history, forget_indices, data, fn)
  steps = validate.check_int(steps, "steps", fn=fn)
  memory = validate.check_int(memory, "memory", fn=fn)
  validate.check_choice(precondition, "precondition", PRECONDITIONERS, fn=fn)
  if step_size is None:
    step_size = 1.0 if precondition == "lbfgs" else history.recipe.learning_rates[0]
  validate.check_positive(step_size, "step_size", fn=fn)
  if max_step_norm is not None:
    validate.check_positive(max_step_norm, "max_step_norm", fn=fn)
  if mesh is not None:
    from jaxleak import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
    if sharding_lib.DATA_AXIS not in mesh.shape:
      raise ValueError(
          f"{fn}: argument 'mesh' must have a {sharding_lib.DATA_AXIS!r} axis "
          f"(jaxleak.sharding.data_mesh), got axes {tuple(mesh.shape)}")

  n, r = prob.n, prob.r
  if prox == "auto":
    prox = 1.0 / learning_time(history.recipe, n)
  validate.check_positive(prox, "prox", fn=fn, allow_zero=True)
  # The proximal term rho/2 ||w - w*||^2 adds rho to the curvature and
  # rho w* to the constant of the gradient.
  rho = jnp.float32(prox)
  lam = jnp.float32(history.recipe.l2) + rho
  eta = jnp.float32(step_size)
  retained = _grads.SubsetGradient(
      prob.apply_fn, prob.unravel, prob.images[prob.keep],
      prob.labels[prob.keep], mesh=mesh, chunk_size=chunk_size)

  w = prob.w_star
  lam0 = jnp.float32(history.recipe.l2)
  offset = ((jnp.asarray(history.full_grad) + lam0 * w) if anchor
            else jnp.zeros_like(w)) + rho * w

  def retained_grad(w):
    return retained(w) / (n - r) + lam * w - offset

  forget_passes = retained_passes = 0
  if cached_gradient and r > 0:
    forget = _grads.SubsetGradient(
        prob.apply_fn, prob.unravel, prob.images[prob.forget],
        prob.labels[prob.forget], mesh=mesh, chunk_size=chunk_size)
    full_sum = n * jnp.asarray(history.full_grad)
    g = (full_sum - forget(w)) / (n - r) + lam * w - offset
    forget_passes += 1
  else:
    g = retained_grad(w)
    retained_passes += 1

  mem = lbfgs.init_memory(memory, w.size, w.dtype)
  if precondition == "lbfgs" and cached_curvature:
    full = jnp.asarray(history.full_grad)
    for w_j, g_j in zip(jnp.asarray(history.snapshot_params),
                        jnp.asarray(history.snapshot_grads)):
      s = w - w_j
      mem = _push(mem, s, full - g_j + lam * s)

  x, y, m = retained.arrays
  max_norm = jnp.inf if max_step_norm is None else float(max_step_norm)
  args = retained.replicate((w, g, mem, jnp.float32(n - r), lam, offset, eta,
                             jnp.float32(max_norm)))
  w_k, (g_norms, d_norms, its) = _contract(
      prob.apply_fn, prob.unravel, *args[:3], x, y, m, *args[3:],
      chunk=retained.chunk, mesh=mesh, steps=steps, precondition=precondition,
      keep_iterates=keep_iterates)
  # Off the mesh, onto the default device, like the model's own params.
  w_k = jnp.asarray(np.asarray(w_k))
  iterates = None
  if keep_iterates:
    iterates = np.concatenate([np.asarray(w)[None], np.asarray(its)])
  return ContractionTrace(
      params=prob.unravel(w_k),
      grad_norms=np.r_[float(jnp.linalg.norm(g)), np.asarray(g_norms)],
      step_norms=np.asarray(d_norms), iterates=iterates,
      retained_passes=retained_passes + steps - 1,
      forget_passes=forget_passes)


@base.register("mini_unlearning")
def mini_unlearning(model: base.Model, history: Any, forget_indices: Any,
                    data: Any, *, steps: int = 5,
                    step_size: float | None = None,
                    precondition: str = "lbfgs", memory: int = 10,
                    cached_gradient: bool = True, cached_curvature: bool = True,
                    max_step_norm: float | None = None,
                    mesh: jax.sharding.Mesh | None = None,
                    chunk_size: int = 128, anchor: bool = True,
                    prox: float | str = "auto") -> Params:
  """Mini-Unlearning (reconstructed contraction design; see the module doc).

  Args: as `contraction_unlearning`.

  Returns:
    The unlearned parameters.
  """
  return contraction_unlearning(
      model, history, forget_indices, data, steps=steps, step_size=step_size,
      precondition=precondition, memory=memory,
      cached_gradient=cached_gradient, cached_curvature=cached_curvature,
      max_step_norm=max_step_norm, mesh=mesh, chunk_size=chunk_size,
      anchor=anchor, prox=prox).params
