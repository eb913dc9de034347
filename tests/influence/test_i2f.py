"""I²F against explicit Jacobians on a tiny model (float64 inside blocks)."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak import influence
from jaxleak import models

LABELS = np.array([1])


@pytest.fixture(scope="module")
def tiny():
  # One 2x2x1 image (d_x = 4) through a 5-unit sigmoid MLP (d_theta = 43):
  # J J^T is 4x4 and full rank, so every quantity has a closed form.
  apply_fn, params = models.create("mlp", 3, (2, 2, 1), jax.random.key(3),
                                   hidden=(5,), init="uniform")
  x = np.random.default_rng(0).uniform(size=(1, 2, 2, 1))
  return apply_fn, params, x


def _f64(params, x):
  return (jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params),
          jnp.asarray(x, jnp.float64))


def _explicit(apply_fn, params, x, labels=LABELS):
  """J [d_x, d_theta] of the trainable params, and the unravel function."""
  trainable = params["params"]
  flat, unravel = jax.flatten_util.ravel_pytree(trainable)

  @jax.jit
  def jac(flat, x):
    def grad_theta(x_):
      loss = lambda p: models.cross_entropy_loss(
          apply_fn({"params": unravel(p)}, x_), jnp.asarray(labels))
      return jax.grad(loss)(flat)
    return jax.jacfwd(grad_theta)(x)  # [d_theta, *x.shape]

  return jac(flat, x).reshape(flat.size, -1).T, unravel


def test_i2f_matches_closed_form(tiny):
  apply_fn, params, x = tiny
  with jax.enable_x64(True):
    params, x = _f64(params, x)
    J, unravel = _explicit(apply_fn, params, x)
    d = jnp.asarray(np.random.default_rng(1).normal(size=J.shape[1]) * 1e-2)
    gram = J @ J.T
    for eps in (1.0, 1e-3):
      b_exact = jnp.linalg.solve(gram + eps * jnp.eye(gram.shape[0]), J @ d)
      norm, b = influence.i2f(apply_fn, params, x, LABELS, unravel(d),
                              eps=eps, tol=1e-12)
      np.testing.assert_allclose(b.ravel(), b_exact, rtol=1e-8, atol=1e-14)
      np.testing.assert_allclose(norm, jnp.linalg.norm(b_exact), rtol=1e-8)
    # eps matters here (eigenvalues are O(1e-2..1)), so the two differ.
    n1 = influence.i2f(apply_fn, params, x, LABELS, unravel(d), eps=1.0)[0]
    n2 = influence.i2f(apply_fn, params, x, LABELS, unravel(d), eps=1e-3)[0]
    assert n2 > 1.5 * n1


def test_cg_and_gradient_descent_agree(tiny):
  apply_fn, params, x = tiny
  with jax.enable_x64(True):
    params, x = _f64(params, x)
    _, unravel = _explicit(apply_fn, params, x)
    d = unravel(jnp.asarray(np.random.default_rng(2).normal(size=43)))
    for eps in (1.0, 0.1):
      n_cg, b_cg = influence.i2f(apply_fn, params, x, LABELS, d, eps=eps,
                                 solver="cg", tol=1e-12)
      n_gd, b_gd = influence.i2f(apply_fn, params, x, LABELS, d, eps=eps,
                                 solver="gd", tol=1e-10, maxiter=20000)
      np.testing.assert_allclose(n_gd, n_cg, rtol=1e-7)
      np.testing.assert_allclose(b_gd, b_cg, rtol=1e-6, atol=1e-12)
    # An explicit (too small) GD step size with too few steps does not agree:
    # the comparison can fail.
    n_bad, _ = influence.i2f(apply_fn, params, x, LABELS, d, eps=1.0,
                             solver="gd", gd_lr=1e-3, maxiter=5)
    assert abs(float(n_bad) - float(n_cg)) > 1e-3 * float(n_cg)


def test_eigen_direction_gives_norm_over_singular_value(tiny):
  # delta = c v_i, v_i the i-th right singular vector of J (an eigenvector
  # of J^T J; J J^T has eigenvalue lambda_i = s_i^2 with eigenvector u_i):
  # (J J^T)^{-1} J delta = c u_i / s_i, so I = ||delta|| / sqrt(lambda_i).
  apply_fn, params, x = tiny
  with jax.enable_x64(True):
    params, x = _f64(params, x)
    J, unravel = _explicit(apply_fn, params, x)
    u, s, vt = jnp.linalg.svd(J, full_matrices=False)
    lam = s**2
    assert lam.max() / lam.min() > 2  # distinct eigenvalues
    c = 3e-3
    for i in range(J.shape[0]):
      norm, b = influence.i2f(apply_fn, params, x, LABELS, unravel(c * vt[i]),
                              eps=1e-9, tol=1e-13)
      np.testing.assert_allclose(norm, c / jnp.sqrt(lam[i]), rtol=1e-5)
      cos = jnp.abs(jnp.vdot(b.ravel(), u[:, i])) / jnp.linalg.norm(b)
      np.testing.assert_allclose(cos, 1.0, atol=1e-8)
    # With the default eps = 1 the damped value is c s_i / (lambda_i + 1).
    norm, _ = influence.i2f(apply_fn, params, x, LABELS, unravel(c * vt[0]),
                            eps=1.0, tol=1e-13)
    np.testing.assert_allclose(norm, c * s[0] / (lam[0] + 1.0), rtol=1e-8)


def test_lower_bound_and_spectrum(tiny):
  apply_fn, params, x = tiny
  with jax.enable_x64(True):
    params, x = _f64(params, x)
    J, unravel = _explicit(apply_fn, params, x)
    lam_exact = jnp.sort(jnp.linalg.eigvalsh(J @ J.T))[::-1]
    d = jnp.asarray(np.random.default_rng(4).normal(size=43))
    for method in ("lanczos", "power"):
      bound, jd, lam = influence.i2f_lower_bound(
          apply_fn, params, x, LABELS, unravel(d), method=method,
          num_iters=4 if method == "lanczos" else 500, return_parts=True)
      np.testing.assert_allclose(lam, lam_exact[0], rtol=1e-6)
      np.testing.assert_allclose(jd, jnp.linalg.norm(J @ d), rtol=1e-10)
      np.testing.assert_allclose(bound, jnp.linalg.norm(J @ d) / lam_exact[0],
                                 rtol=1e-6)
    exact = influence.i2f(apply_fn, params, x, LABELS, unravel(d), eps=1e-9,
                          tol=1e-13)[0]
    assert bound <= exact
    vals, vecs = influence.jacobian_spectrum(apply_fn, params, x, LABELS, 3,
                                             num_iters=4)
    np.testing.assert_allclose(vals, lam_exact[:3], rtol=1e-8)
    for val, vec in zip(vals, vecs):
      gv = (J @ (J.T @ vec.ravel()))
      np.testing.assert_allclose(gv, val * vec.ravel(), atol=1e-9)


def test_hutchinson_expectation_matches_exact_trace(tiny):
  apply_fn, params, x = tiny
  with jax.enable_x64(True):
    params, x = _f64(params, x)
    J, _ = _explicit(apply_fn, params, x)
    lam = jnp.linalg.eigvalsh(J @ J.T)
    s, eps = 0.05, 0.1
    exact = {"damped": s**2 * jnp.sum(lam / (lam + eps) ** 2),
             "trace": s**2 * jnp.sum(1.0 / (lam + eps))}
    for form, want in exact.items():
      est, se = influence.i2f_expectation(
          apply_fn, params, x, LABELS, s, key=0, eps=eps, num_probes=400,
          form=form, return_stderr=True)
      assert abs(est - want) < 4 * se + 1e-12, (form, est, want, se)
      np.testing.assert_allclose(est, want, rtol=0.1)
    # The damped form is the mean of I²F^2 over actual Gaussian noise.
    n = 200
    deltas = jax.tree.map(
        lambda p: jnp.asarray(s * np.random.default_rng(p.size).normal(
            size=(n,) + p.shape)), params["params"])
    norms, _ = influence.i2f_per_image(apply_fn, params, jnp.repeat(x, n, 0),
                                       np.repeat(LABELS, n), deltas, eps=eps)
    np.testing.assert_allclose(np.mean(norms**2), exact["damped"], rtol=0.25)


def test_per_image_matches_loop_and_full_variables_delta():
  apply_fn, params = models.create("mlp", 4, (3, 3, 1), jax.random.key(0),
                                   hidden=(6,))
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(3, 3, 3, 1)).astype(np.float32)
  labels = np.array([0, 3, 1])
  deltas = jax.tree.map(
      lambda p: jnp.asarray(1e-2 * rng.normal(size=(3,) + p.shape),
                            jnp.float32), params["params"])
  norms, bs = influence.i2f_per_image(apply_fn, params, images, labels,
                                      deltas)
  assert norms.shape == (3,) and bs.shape == images.shape
  for i in range(3):
    d_i = jax.tree.map(lambda d: d[i], deltas)
    n_i, b_i = influence.i2f(apply_fn, params, images[i:i + 1],
                             labels[i:i + 1], {"params": d_i})
    np.testing.assert_allclose(norms[i], n_i, rtol=1e-4)
    np.testing.assert_allclose(bs[i], b_i[0], rtol=1e-3, atol=1e-6)
  assert float(norms.max() - norms.min()) > 0  # images differ


@pytest.fixture(scope="module")
def small():
  apply_fn, params = models.create("mlp", 4, (3, 3, 1), jax.random.key(1),
                                   hidden=(6,))
  x = np.random.default_rng(0).uniform(size=(1, 3, 3, 1)).astype(np.float32)
  delta = jax.tree.map(jnp.zeros_like, params["params"])
  return apply_fn, params, x, delta


def test_bad_inputs_raise_naming_the_argument(small):
  apply_fn, params, x, delta = small
  y = np.array([2])
  call = lambda **kw: influence.i2f(apply_fn, params, **{
      "x": x, "y": y, "delta": delta, **kw})
  with pytest.raises(ValueError, match="'eps'"):
    call(eps=0.0)
  with pytest.raises(ValueError, match="'eps'"):
    call(eps=-1.0)
  with pytest.raises(ValueError, match="'solver'"):
    call(solver="lsqr")
  with pytest.raises(ValueError, match="'x'.*rank 4"):
    call(x=x[0])
  with pytest.raises(ValueError, match="'y'"):
    call(y=np.array([1, 2]))
  with pytest.raises(TypeError, match="'y'"):
    call(y=np.array([0.5]))
  bad = jax.tree.map(lambda d: d, delta)
  bad["head"]["bias"] = jnp.full_like(bad["head"]["bias"], jnp.nan)
  with pytest.raises(FloatingPointError, match="'delta'.*head"):
    call(delta=bad)
  with pytest.raises(FloatingPointError, match="'x'"):
    call(x=np.full_like(x, np.nan))
  missing = {k: v for k, v in delta.items() if k != "head"}
  with pytest.raises(ValueError, match="'delta'.*structure"):
    call(delta=missing)
  wrong = {**delta, "head": {"bias": jnp.zeros(5),
                             "kernel": delta["head"]["kernel"]}}
  with pytest.raises(ValueError, match="'delta' leaf .*bias.* shape"):
    call(delta=wrong)
  with pytest.raises(ValueError, match="'maxiter'"):
    call(maxiter=0)
  with pytest.raises(ValueError, match="'deltas'.*leading axis"):
    influence.i2f_per_image(
        apply_fn, params, np.concatenate([x, x]), np.array([0, 1]),
        jax.tree.map(lambda d: jnp.stack([d] * 3), delta))
  with pytest.raises(ValueError, match="'method'"):
    influence.i2f_lower_bound(apply_fn, params, x, y, delta, method="qr")
  with pytest.raises(ValueError, match="'k'"):
    influence.jacobian_spectrum(apply_fn, params, x, y, 10)
  with pytest.raises(ValueError, match="'noise_std'"):
    influence.i2f_expectation(apply_fn, params, x, y, -1.0, key=0)
  with pytest.raises(ValueError, match="'key'"):
    influence.i2f_expectation(apply_fn, params, x, y, 1.0, key=None)


def test_custom_loss_and_zero_delta(small):
  apply_fn, params, x, delta = small
  norm, b = influence.i2f(apply_fn, params, x, np.array([2]), delta)
  assert float(norm) == 0.0 and not np.any(np.asarray(b))
  # A custom loss (squared logits) changes J, hence I²F.
  d = jax.tree.map(lambda p: jnp.full_like(p, 1e-2), delta)
  sq = lambda logits, y: jnp.mean(jnp.square(logits - y))
  n_ce = influence.i2f(apply_fn, params, x, np.array([2]), d)[0]
  n_sq = influence.i2f(apply_fn, params, x, jnp.zeros((1, 4)), d,
                       loss_fn=sq)[0]
  assert np.isfinite(n_sq) and abs(float(n_sq) - float(n_ce)) > 1e-3 * float(
      n_ce)


def test_lanczos_and_power_iteration_on_a_diagonal_operator():
  diag = jnp.asarray([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
  mv = lambda v: diag * v
  v0 = jnp.ones(6)
  theta, vecs = influence.lanczos(mv, v0, 6)
  np.testing.assert_allclose(theta, diag, rtol=1e-5)
  np.testing.assert_allclose(jnp.abs(vecs), jnp.eye(6), atol=1e-4)
  lam, v = influence.power_iteration(mv, v0, 200)
  np.testing.assert_allclose(lam, 5.0, rtol=1e-6)
  np.testing.assert_allclose(jnp.abs(v[0]), 1.0, atol=1e-5)


def test_matmul_conv_path_matches_plain_convolutions():
  # The default (matmul_conv=True) rewrites conv kernel derivatives; a conv
  # model must give the same I²F and lower bound either way.
  apply_fn, params = models.create("lenet", 4, (8, 8, 1), jax.random.key(2))
  x = np.random.default_rng(1).uniform(size=(1, 8, 8, 1)).astype(np.float32)
  y = np.array([3])
  delta = jax.tree.map(
      lambda p: jnp.asarray(np.random.default_rng(p.size).normal(
          size=p.shape) * 1e-2, jnp.float32), params["params"])
  n_mm, b_mm = influence.i2f(apply_fn, params, x, y, delta, eps=0.1)
  n_xla, b_xla = influence.i2f(apply_fn, params, x, y, delta, eps=0.1,
                               matmul_conv=False)
  assert float(n_mm) > 0
  np.testing.assert_allclose(n_mm, n_xla, rtol=1e-4)
  np.testing.assert_allclose(b_mm, b_xla, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("fn, name", [
    ("i2f", "eps"), ("i2f", "tol"), ("i2f", "gd_lr"), ("i2f_per_image", "eps"),
    ("i2f_expectation", "eps"), ("i2f_expectation", "noise_std"),
])
def test_non_finite_hyperparameters_raise_naming_the_argument(small, fn, name,
                                                              bad):
  """Item 2: the library's I²F entry points reject NaN/Inf damping, noise,
  tolerance and step size with a ValueError naming the argument."""
  apply_fn, params, x, delta = small
  y = np.array([2])
  if fn == "i2f":
    call = lambda v: influence.i2f(apply_fn, params, x, y, delta, solver=(
        "gd" if name == "gd_lr" else "cg"), **{name: v})
  elif fn == "i2f_per_image":
    deltas = jax.tree.map(lambda d: d[None], delta)
    call = lambda v: influence.i2f_per_image(apply_fn, params, x, y, deltas,
                                             eps=v)
  else:
    call = lambda v: influence.i2f_expectation(
        apply_fn, params, x, y, **{"noise_std": 0.1, "key": 0, name: v})
  with pytest.raises(ValueError, match=f"{fn}: argument '{name}' must be "
                     "finite"):
    call(bad)
