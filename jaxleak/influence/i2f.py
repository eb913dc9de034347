"""I²F, the inversion influence function (Zhang, Hong, Deng, Mahdavi, Zhou 2023).

A gradient-inversion attacker who receives the gradient ``g = g0 + delta`` of
a private input ``x0`` (``g0 = grad_theta L(theta, x0)``) and solves
``min_x ||grad_theta L(theta, x) - g||^2`` moves away from ``x0`` by, to first
order,

    x_hat - x0 ≈ (J J^T)^{-1} J delta,     J = d/dx d/dtheta L(theta, x0)

(``J`` is ``d_x x d_theta``: implicit differentiation of the attack's
optimality condition ``J(x)(grad_theta L(x) - g) = 0`` at the perfect
solution). I²F is the norm of that displacement,

    I(delta; x0) = ||(J J^T)^{-1} J delta||,

computed here, as in the paper, with Tikhonov damping ``eps``:
``b = (J J^T + eps I)^{-1} J delta``, ``I = ||b||``. Everything works in
*input* space (``d_x << d_theta``) and is matrix-free: ``J J^T v`` costs one
``J^T`` and one ``J`` product (`jaxleak.influence.jacobian`), ``(J J^T + eps
I) b = J delta`` is solved with conjugate gradients (`jax.scipy.sparse.linalg
.cg`), and eigenvalues of ``J J^T`` come from Lanczos or power iteration.

Companions:

* lower bound ``I >= ||J delta|| / lambda_max(J J^T)`` (`i2f_lower_bound`);
* spectrum: with ``J = U S V^T`` and ``lambda_i = s_i^2`` the eigenvalues of
  ``J J^T``, ``I = ||U S^{-1} V^T delta||``; a perturbation along the right
  singular vector ``v_i`` (an eigenvector of ``J^T J``) gives
  ``I = ||delta|| / s_i = ||delta|| / sqrt(lambda_i)``, so the squared error
  (MSE) scales as ``1 / lambda_i`` (`jacobian_spectrum`);
* Gaussian noise ``delta ~ N(0, s^2 I)``: ``E[I^2] = s^2 tr((J J^T)^{-1})`` in
  the undamped limit, estimated with Hutchinson probes and one CG solve per
  probe (`i2f_expectation`).

Labels ``y`` are the private labels (the paper's attacker knows them); the
default loss is the batch-mean softmax cross-entropy with integer labels.
Only the trainable part of a Flax variables dict (``params["params"]``) is
differentiated, so ``delta`` has the shape of the shared gradient
(`jaxleak.attacks.inversion.trainable`).
"""

from __future__ import annotations

from collections.abc import Callable
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxleak._src import matmul_conv as matmul_conv_lib
from jaxleak._src import tree_util
from jaxleak._src import validate
from jaxleak.influence import jacobian

__all__ = (
    "i2f",
    "i2f_per_image",
    "i2f_lower_bound",
    "i2f_expectation",
    "jacobian_spectrum",
    "lanczos",
    "power_iteration",
    "SOLVERS",
)

Array = jax.Array
ApplyFn = Callable[[Any, Array], Array]
# loss_fn(logits, y) -> scalar
ClassifierLossFn = Callable[[Array, Any], Array]

SOLVERS = ("cg", "gd")
# CG stops at ||r|| <= tol ||J delta||. 1e-4 is at float32's noise floor for
# the norm: on sigmoid LeNet/28x28 (5 images, eps = 1, noise var 1e-5 and
# 1e-2) ||b|| agrees with tol = 1e-6 to <= 4e-7 relative, in ~25% less time.
DEFAULT_TOL = 1e-4
EIG_METHODS = ("lanczos", "power")


# ----------------------------------------------------------------------------
# Parameters and losses.


_trainable = tree_util.trainable
_with_trainable = tree_util.with_trainable


def _default_loss(logits: Array, y: Array) -> Array:
  from jaxleak.models import cross_entropy_loss  # pylint: disable=g-import-not-at-top
  return cross_entropy_loss(logits, y)


def _loss_on_trainable(apply_fn: ApplyFn, params: Any, y: Any,
                       loss_fn: ClassifierLossFn | None,
                       matmul_conv: bool = False) -> jacobian.LossFn:
  loss_fn = _default_loss if loss_fn is None else loss_fn

  def loss(p, x):
    if matmul_conv:
      # The rewrite of Flax convolutions whose kernel derivative is
      # a matrix product: same numbers, faster double-backprop on XLA:CPU.
      with matmul_conv_lib.intercept():
        logits = apply_fn(_with_trainable(params, p), x)
    else:
      logits = apply_fn(_with_trainable(params, p), x)
    return loss_fn(logits, y)

  return loss


def _flat_dot(a: Array, b: Array) -> Array:
  return jnp.vdot(a.ravel(), b.ravel())


def _norm(a: Array) -> Array:
  return jnp.sqrt(jnp.sum(jnp.square(a)))


# ----------------------------------------------------------------------------
# Input checks (host side; skipped for traced values).


def _check_inputs(fn: str, params: Any, x: Any, y: Any, delta: Any | None,
                  loss_fn: Any, *, batched: bool = False) -> tuple[Any, Any]:
  """Validates and returns ``(x, delta)``; delta is cut to the trainable tree."""
  x = jnp.asarray(x)
  validate.check_images(x, "x" if not batched else "images", fn=fn)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{fn}: argument 'x' must be floating point, got dtype "
                    f"{x.dtype}")
  validate.check_finite(x, "x", fn=fn)
  if not jax.tree.leaves(params):
    raise ValueError(f"{fn}: argument 'params' has no array leaves")
  if loss_fn is None:
    y_arr = np.asarray(y)
    validate.check_shape(y_arr, "y", (x.shape[0],), fn=fn)
    if y_arr.dtype.kind not in "iu":
      raise TypeError(f"{fn}: argument 'y' must hold integer class labels "
                      f"(default loss), got dtype {y_arr.dtype}")
  elif not callable(loss_fn):
    raise TypeError(f"{fn}: argument 'loss_fn' must be callable "
                    f"loss_fn(logits, y), got {type(loss_fn).__name__}")
  if delta is None:
    return x, None
  trainable = _trainable(params)
  # Accept the shared-gradient tree (trainable part) or the full variables.
  if (tree_util.is_flax_variables(params) and tree_util.is_flax_variables(delta)
      and jax.tree.structure(delta) == jax.tree.structure(params)):
    delta = delta["params"]
  lead = 1 if batched else 0
  validate.check_same_structure(
      delta, trainable, "delta" if not batched else "deltas",
      "the trainable params", fn=fn, leading_axes=lead)
  if batched:
    for leaf in jax.tree.leaves(delta):
      if np.shape(leaf)[0] != x.shape[0]:
        raise ValueError(
            f"{fn}: argument 'deltas' must have one perturbation per image "
            f"(leading axis {x.shape[0]}), got a leaf with leading axis "
            f"{np.shape(leaf)[0]}")
  validate.check_finite(delta, "delta" if not batched else "deltas", fn=fn)
  return x, delta


def _check_solver_args(fn: str, eps: Any, solver: str, tol: Any,
                       maxiter: Any) -> None:
  validate.check_positive(eps, "eps", fn=fn)
  validate.check_choice(solver, "solver", SOLVERS, fn=fn)
  validate.check_positive(tol, "tol", fn=fn)
  if maxiter is not None and (not isinstance(maxiter, (int, np.integer))
                              or isinstance(maxiter, bool) or maxiter < 1):
    raise ValueError(f"{fn}: argument 'maxiter' must be a positive int or "
                     f"None, got {maxiter!r}")


# ----------------------------------------------------------------------------
# Eigen-solvers on a symmetric PSD operator in input space.


def power_iteration(matvec: Callable[[Array], Array], v0: Array,
                    num_iters: int = 100) -> tuple[Array, Array]:
  """Largest eigenpair of a symmetric PSD operator: `optax.power_iteration`.

  ``v <- A v / ||A v||`` for exactly `num_iters` steps (optax's relative-error
  early exit is switched off, so every run takes the same steps); the
  eigenvalue is the Rayleigh quotient. Converges at rate
  ``lambda_2 / lambda_1``.

  Args:
    matvec: ``v -> A v`` (any array shape).
    v0: starting vector (not orthogonal to the top eigenvector).
    num_iters: iterations.

  Returns:
    ``(lambda_max, v)`` with ``||v|| = 1``. A zero operator (e.g. a network
    whose gradient map vanishes) gives ``lambda_max = 0``, where optax
    divides zero by zero.
  """
  lam, v = optax.power_iteration(matvec, v0=v0, num_iters=int(num_iters),
                                 error_tolerance=0.0)
  return jnp.where(jnp.isnan(lam), jnp.zeros_like(lam), lam), v


def lanczos(matvec: Callable[[Array], Array], v0: Array,
            num_iters: int) -> tuple[Array, Array]:
  """Ritz pairs of a symmetric operator from Lanczos with full reorthogonalisation.

  Builds an orthonormal Krylov basis ``V = [v_1 .. v_m]`` with
  ``V^T A V = T`` tridiagonal (``alpha`` on, ``beta`` off the diagonal),
  re-orthogonalising every new vector against the whole basis (twice, "twice
  is enough"), then diagonalises ``T``. The extreme Ritz values converge first.

  Args:
    matvec: ``v -> A v``.
    v0: starting vector (its shape is the operator's).
    num_iters: Krylov dimension m (clamped to ``v0.size``).

  Returns:
    ``(theta, vectors)``: the m Ritz values in descending order and the Ritz
    vectors, shape ``[m, *v0.shape]``.
  """
  shape, n = v0.shape, v0.size
  m = min(int(num_iters), n)
  dtype = v0.dtype
  flat_mv = lambda v: matvec(v.reshape(shape)).ravel()
  basis = jnp.zeros((m + 1, n), dtype).at[0].set(v0.ravel() / _norm(v0))
  tiny = jnp.finfo(dtype).eps * 10

  def body(j, carry):
    basis, alpha, beta = carry
    v = basis[j]
    w = flat_mv(v)
    a = jnp.vdot(v, w)
    for _ in range(2):  # Full reorthogonalisation (rows > j are zero).
      w = w - basis.T @ (basis @ w)
    b = _norm(w)
    ok = b > tiny * jnp.maximum(jnp.abs(a), 1.0)
    basis = basis.at[j + 1].set(jnp.where(ok, w / jnp.where(ok, b, 1.0), 0.0))
    return basis, alpha.at[j].set(a), beta.at[j].set(jnp.where(ok, b, 0.0))

  basis, alpha, beta = jax.lax.fori_loop(
      0, m, body, (basis, jnp.zeros(m, dtype), jnp.zeros(m, dtype)))
  t = jnp.diag(alpha) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1)
  theta, s = jnp.linalg.eigh(t)
  order = jnp.argsort(-theta)
  vectors = (basis[:m].T @ s[:, order]).T
  return theta[order], vectors.reshape((m,) + shape)


# ----------------------------------------------------------------------------
# Jitted cores (apply_fn and loss_fn are static: hashed by identity).


def _gram_operator(loss, p, x):
  return lambda v: jacobian.gram_vp(loss, p, x, v)


def _solve(loss, p, x, rhs, eps, solver, tol, maxiter, gd_lr):
  """Solves ``(J J^T + eps I) b = rhs``."""
  gram = _gram_operator(loss, p, x)
  op = lambda v: gram(v) + eps * v
  if solver == "cg":
    b, _ = jax.scipy.sparse.linalg.cg(op, rhs, tol=tol, maxiter=maxiter)
    return b
  # Gradient descent on 1/2 ||J^T b - delta||^2 + eps/2 ||b||^2, whose
  # gradient is (J J^T + eps I) b - J delta (the reference code's solver).
  if gd_lr is None:
    lam, _ = power_iteration(gram, jnp.ones_like(rhs), 30)
    lr = 1.0 / (lam + eps)
  else:
    lr = jnp.asarray(gd_lr, rhs.dtype)
  steps = 2000 if maxiter is None else maxiter
  stop = tol * _norm(rhs)

  def cond(c):
    i, _, g = c
    return (i < steps) & (_norm(g) > stop)

  def body(c):
    i, b, g = c
    b = b - lr * g
    return i + 1, b, op(b) - rhs

  b0 = jnp.zeros_like(rhs)
  _, b, _ = jax.lax.while_loop(cond, body, (0, b0, op(b0) - rhs))
  return b


def _i2f_impl(apply_fn, params, x, y, delta, eps, tol, gd_lr, *, loss_fn,
              solver, maxiter, matmul_conv):
  loss = _loss_on_trainable(apply_fn, params, y, loss_fn, matmul_conv)
  p = _trainable(params)
  rhs = jacobian.jacobian_vp(loss, p, x, delta)
  b = _solve(loss, p, x, rhs, eps, solver, tol, maxiter, gd_lr)
  return _norm(b), b


_i2f_core = jax.jit(_i2f_impl, static_argnames=(
    "apply_fn", "loss_fn", "solver", "maxiter", "matmul_conv"))


@functools.partial(jax.jit, static_argnames=(
    "apply_fn", "loss_fn", "solver", "maxiter", "matmul_conv"))
def _i2f_batched(apply_fn, params, images, labels, deltas, eps, tol, gd_lr, *,
                 loss_fn, solver, maxiter, matmul_conv):
  def one(x, y, d):
    return _i2f_impl(apply_fn, params, x[None], y[None], d, eps, tol, gd_lr,
                     loss_fn=loss_fn, solver=solver, maxiter=maxiter,
                     matmul_conv=matmul_conv)

  norms, bs = jax.vmap(one)(images, labels, deltas)
  return norms, bs[:, 0]


def _top_eig(gram, x, method, num_iters):
  v0 = jnp.ones_like(x) + 0.01 * jnp.cos(
      jnp.arange(x.size, dtype=x.dtype)).reshape(x.shape)
  if method == "power":
    lam, _ = power_iteration(gram, v0, num_iters)
    return lam
  theta, _ = lanczos(gram, v0, num_iters)
  return theta[0]


@functools.partial(jax.jit, static_argnames=(
    "apply_fn", "loss_fn", "method", "num_iters", "matmul_conv"))
def _lower_bound_core(apply_fn, params, x, y, delta, *, loss_fn, method,
                      num_iters, matmul_conv):
  loss = _loss_on_trainable(apply_fn, params, y, loss_fn, matmul_conv)
  p = _trainable(params)
  jd = jacobian.jacobian_vp(loss, p, x, delta)
  lam = _top_eig(_gram_operator(loss, p, x), x, method, num_iters)
  return _norm(jd) / lam, _norm(jd), lam


@functools.partial(jax.jit, static_argnames=(
    "apply_fn", "loss_fn", "num_iters", "matmul_conv"))
def _spectrum_core(apply_fn, params, x, y, v0, *, loss_fn, num_iters,
                   matmul_conv):
  loss = _loss_on_trainable(apply_fn, params, y, loss_fn, matmul_conv)
  return lanczos(_gram_operator(loss, _trainable(params), x), v0, num_iters)


@functools.partial(jax.jit, static_argnames=(
    "apply_fn", "loss_fn", "form", "maxiter", "matmul_conv"))
def _expectation_core(apply_fn, params, x, y, probes, eps, tol, *, loss_fn,
                      form, maxiter, matmul_conv):
  loss = _loss_on_trainable(apply_fn, params, y, loss_fn, matmul_conv)
  p = _trainable(params)

  def one(z):
    w = _solve(loss, p, x, z, eps, "cg", tol, maxiter, None)
    if form == "trace":
      return _flat_dot(z, w)
    jtw = jacobian.jacobian_tvp(loss, p, x, w)
    return optax.tree_utils.tree_norm(jtw, squared=True)

  samples = jax.lax.map(one, probes)
  return samples


# ----------------------------------------------------------------------------
# Public API.


def i2f(apply_fn: ApplyFn, params: Any, x: Any, y: Any, delta: Any, *,
        eps: float = 1.0, solver: str = "cg",
        loss_fn: ClassifierLossFn | None = None, tol: float = DEFAULT_TOL,
        maxiter: int | None = None, gd_lr: float | None = None,
        matmul_conv: bool = True) -> tuple[Array, Array]:
  """The inversion influence ``I(delta; x) = ||(J J^T + eps I)^{-1} J delta||``.

  Solves ``(J J^T + eps I) b = J delta`` in input space, where
  ``J = d/dx d/dtheta L(theta, x)`` is the mixed Jacobian of the loss of the
  batch `x` (whose gradient was shared), and returns ``(||b||, b)``: the
  predicted displacement of a gradient-matching attacker's reconstruction
  when the shared gradient is perturbed by `delta`. As ``eps -> 0`` this is
  the paper's ``||(J J^T)^{-1} J delta||`` (Eq. 4); ``eps`` (default 1, the
  reference code's value) damps the directions with eigenvalues below it.

  Args:
    apply_fn: ``logits = apply_fn(params, x)``.
    params: the model parameters (pytree; for a Flax variables dict only
      ``params["params"]`` is differentiated).
    x: the private batch, NHWC floating point ``[B, H, W, C]``.
    y: its labels, ``[B]`` ints for the default loss (any value a custom
      `loss_fn` accepts otherwise).
    delta: the gradient perturbation, shaped like the shared gradient (the
      trainable params; the full variables dict is accepted too).
    eps: Tikhonov damping ``eps > 0``.
    solver: "cg" (conjugate gradients, `jax.scipy.sparse.linalg.cg`) or "gd"
      (plain gradient descent on ``1/2 ||J^T b - delta||^2 + eps/2 ||b||^2``,
      the reference code's solver, kept for parity tests).
    loss_fn: ``loss_fn(logits, y) -> scalar``; default: batch-mean softmax
      cross-entropy with integer labels.
    tol: relative residual tolerance of the solve (default `DEFAULT_TOL`).
    maxiter: iteration cap (CG: JAX's default ``10 d_x``; GD: 2000).
    gd_lr: GD step size; default ``1 / (lambda_max + eps)`` from 30 power
      iterations.
    matmul_conv: trace Flax convolutions with the attacks' matrix-product
      kernel derivative (`jaxleak.attacks.inversion`, ``matmul_conv``): same
      numbers up to rounding, about 1.2-1.4x faster on XLA:CPU (LeNet, 28x28).

  Returns:
    ``(norm, b)``: the scalar I²F and the displacement ``b`` shaped like `x`.

  Raises:
    ValueError: bad shapes, mismatched `delta` pytree, ``eps <= 0``, unknown
      solver. FloatingPointError: NaN/Inf in `x` or `delta`. TypeError:
      non-integer labels for the default loss.
  """
  fn = "i2f"
  _check_solver_args(fn, eps, solver, tol, maxiter)
  x, delta = _check_inputs(fn, params, x, y, delta, loss_fn)
  gd = None if gd_lr is None else float(gd_lr)
  if gd is not None:
    validate.check_positive(gd, "gd_lr", fn=fn)
  y = y if loss_fn is not None else jnp.asarray(y, jnp.int32)
  return _i2f_core(apply_fn, params, x, y, delta, eps, tol, gd,
                   loss_fn=loss_fn, solver=solver,
                   maxiter=None if maxiter is None else int(maxiter),
                   matmul_conv=bool(matmul_conv))


def i2f_per_image(apply_fn: ApplyFn, params: Any, images: Any, labels: Any,
                  deltas: Any, *, eps: float = 1.0, solver: str = "cg",
                  loss_fn: ClassifierLossFn | None = None,
                  tol: float = DEFAULT_TOL, maxiter: int | None = None,
                  gd_lr: float | None = None,
                  matmul_conv: bool = True) -> tuple[Array, Array]:
  """`i2f` for N single-image victims at once (`jax.vmap` over images).

  Image ``i`` is its own batch of one, with its own perturbation
  ``deltas[i]`` (every leaf of `deltas` carries a leading axis N).

  Returns:
    ``(norms [N], b [N, H, W, C])``.
  """
  fn = "i2f_per_image"
  _check_solver_args(fn, eps, solver, tol, maxiter)
  images, deltas = _check_inputs(fn, params, images, labels, deltas, loss_fn,
                                 batched=True)
  labels = labels if loss_fn is not None else jnp.asarray(labels, jnp.int32)
  gd = None if gd_lr is None else float(gd_lr)
  return _i2f_batched(apply_fn, params, images, labels, deltas, eps, tol, gd,
                      loss_fn=loss_fn, solver=solver,
                      maxiter=None if maxiter is None else int(maxiter),
                      matmul_conv=bool(matmul_conv))


def i2f_lower_bound(apply_fn: ApplyFn, params: Any, x: Any, y: Any,
                    delta: Any, *, method: str = "lanczos",
                    num_iters: int | None = None,
                    loss_fn: ClassifierLossFn | None = None,
                    return_parts: bool = False,
                    matmul_conv: bool = True) -> Any:
  """The lower bound ``||J delta|| / lambda_max(J J^T) <= I(delta; x)`` (Eq. 5).

  Holds because ``(J J^T)^{-1}`` has smallest eigenvalue
  ``1 / lambda_max``. ``lambda_max`` comes from Lanczos (default, 30 Krylov
  vectors) or power iteration (default 100 steps) on ``b -> J J^T b`` in
  input space.

  Args:
    apply_fn, params, x, y, delta, loss_fn: as in `i2f`.
    method: "lanczos" or "power".
    num_iters: Krylov dimension / power steps.
    return_parts: also return ``||J delta||`` and ``lambda_max``.

  Returns:
    The bound (scalar), or ``(bound, ||J delta||, lambda_max)``.
  """
  fn = "i2f_lower_bound"
  validate.check_choice(method, "method", EIG_METHODS, fn=fn)
  if num_iters is None:
    num_iters = 30 if method == "lanczos" else 100
  num_iters = validate.check_int(num_iters, "num_iters", fn=fn)
  x, delta = _check_inputs(fn, params, x, y, delta, loss_fn)
  y = y if loss_fn is not None else jnp.asarray(y, jnp.int32)
  bound, jd, lam = _lower_bound_core(apply_fn, params, x, y, delta,
                                     loss_fn=loss_fn, method=method,
                                     num_iters=num_iters,
                                     matmul_conv=bool(matmul_conv))
  return (bound, jd, lam) if return_parts else bound


def jacobian_spectrum(apply_fn: ApplyFn, params: Any, x: Any, y: Any, k: int,
                      *, num_iters: int | None = None,
                      loss_fn: ClassifierLossFn | None = None,
                      key: Any = None,
                      matmul_conv: bool = True) -> tuple[Array, Array]:
  """Top-k eigenpairs of ``J J^T`` (input space) by Lanczos.

  The right singular vectors of ``J`` follow as ``v_i = J^T u_i / sqrt(lambda_i)``
  (`jaxleak.influence.jacobian_tvp`): a perturbation ``delta = c v_i`` has
  ``I(delta) = |c| / sqrt(lambda_i)`` in the undamped limit.

  Args:
    apply_fn, params, x, y, loss_fn: as in `i2f`.
    k: number of eigenpairs (<= x.size).
    num_iters: Krylov dimension, default ``min(x.size, max(2k + 20, 40))``;
      use ``x.size`` for the full spectrum.
    key: PRNG key (or int seed) for the start vector; default a fixed vector.

  Returns:
    ``(eigenvalues [k] descending, eigenvectors [k, *x.shape])``, orthonormal.
  """
  fn = "jacobian_spectrum"
  x, _ = _check_inputs(fn, params, x, y, None, loss_fn)
  k = validate.check_int(k, "k", fn=fn)
  if k > x.size:
    raise ValueError(f"{fn}: argument 'k' must be at most x.size = {x.size}, "
                     f"got {k}")
  if num_iters is None:
    num_iters = min(x.size, max(2 * k + 20, 40))
  num_iters = validate.check_int(num_iters, "num_iters", fn=fn)
  if num_iters < k:
    raise ValueError(f"{fn}: argument 'num_iters' must be >= k = {k}, got "
                     f"{num_iters}")
  if key is None:
    v0 = jnp.ones_like(x) + 0.01 * jnp.cos(
        jnp.arange(x.size, dtype=x.dtype)).reshape(x.shape)
  else:
    v0 = jax.random.normal(validate.canonical_key(key, fn), x.shape, x.dtype)
  y = y if loss_fn is not None else jnp.asarray(y, jnp.int32)
  theta, vecs = _spectrum_core(apply_fn, params, x, y, v0, loss_fn=loss_fn,
                               num_iters=num_iters,
                               matmul_conv=bool(matmul_conv))
  return theta[:k], vecs[:k]


def i2f_expectation(apply_fn: ApplyFn, params: Any, x: Any, y: Any,
                    noise_std: float, *, key: Any, eps: float = 1.0,
                    num_probes: int = 16, form: str = "damped",
                    loss_fn: ClassifierLossFn | None = None,
                    tol: float = DEFAULT_TOL, maxiter: int | None = None,
                    return_stderr: bool = False,
                    matmul_conv: bool = True) -> Any:
  """``E[I^2]`` under Gaussian noise ``delta ~ N(0, s^2 I)``, without sampling noise.

  With ``A = J J^T + eps I`` and ``b = A^{-1} J delta``,
  ``E||b||^2 = s^2 tr(J^T A^{-2} J) = s^2 sum_i lambda_i / (lambda_i + eps)^2``
  (``form="damped"``, the exact mean of `i2f`'s square), which tends to the
  paper's ``s^2 tr((J J^T)^{-1}) = s^2 sum_i 1 / lambda_i`` as ``eps -> 0``.
  ``form="trace"`` returns ``s^2 tr(A^{-1}) = s^2 sum_i 1 / (lambda_i + eps)``
  (that limit's damped form; an upper bound on the "damped" value).

  Both traces are Hutchinson estimates over Rademacher probes ``z`` in input
  space (``E[z z^T] = I``), one CG solve ``w = A^{-1} z`` per probe:
  ``tr(J^T A^{-2} J) = E ||J^T w||^2`` and ``tr(A^{-1}) = E z^T w``.

  Args:
    apply_fn, params, x, y, loss_fn, eps, tol, maxiter: as in `i2f`.
    noise_std: s, the noise standard deviation (``sqrt(variance)``), >= 0.
    key: PRNG key or int seed for the probes.
    num_probes: Hutchinson probes.
    form: "damped" or "trace".
    return_stderr: also return the standard error of the estimate.

  Returns:
    The estimate of ``E[I^2]`` (scalar), or ``(estimate, stderr)``.
  """
  fn = "i2f_expectation"
  validate.check_positive(noise_std, "noise_std", fn=fn, allow_zero=True)
  _check_solver_args(fn, eps, "cg", tol, maxiter)
  validate.check_choice(form, "form", ("damped", "trace"), fn=fn)
  num_probes = validate.check_int(num_probes, "num_probes", fn=fn)
  key = validate.canonical_key(key, fn)
  x, _ = _check_inputs(fn, params, x, y, None, loss_fn)
  y = y if loss_fn is not None else jnp.asarray(y, jnp.int32)
  probes = jax.random.rademacher(key, (num_probes,) + x.shape, x.dtype)
  samples = _expectation_core(
      apply_fn, params, x, y, probes, eps, tol, loss_fn=loss_fn, form=form,
      maxiter=None if maxiter is None else int(maxiter),
      matmul_conv=bool(matmul_conv))
  s2 = jnp.asarray(noise_std, samples.dtype) ** 2
  est = s2 * jnp.mean(samples)
  if not return_stderr:
    return est
  se = s2 * jnp.std(samples, ddof=1) / np.sqrt(num_probes) if (
      num_probes > 1) else jnp.asarray(jnp.inf, samples.dtype)
  return est, se
