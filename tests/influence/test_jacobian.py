"""Mixed-Jacobian products against explicit Jacobians on a tiny model."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak import influence
from jaxleak import models


@pytest.fixture(scope="module")
def tiny():
  # float32 here; tests cast to float64 inside `jax.enable_x64` blocks, so
  # x64 cannot leak into other tests.
  apply_fn, params = models.create("mlp", 3, (2, 2, 1), jax.random.key(0),
                                   hidden=(5,))
  x = np.random.default_rng(0).uniform(size=(2, 2, 2, 1))
  loss_fn = influence.classifier_loss(apply_fn, np.array([0, 2]))
  return loss_fn, params, x


def _f64(params, x):
  return (jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params),
          jnp.asarray(x, jnp.float64))


def _explicit_jacobian(loss_fn, params, x):
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  grad_theta = lambda x_: jax.flatten_util.ravel_pytree(
      jax.grad(loss_fn)(unravel(flat), x_))[0]
  jac = jax.jacfwd(grad_theta)(x)  # [d_theta, *x.shape]
  return jac.reshape(flat.size, -1).T, unravel  # J: [d_x, d_theta]


def test_products_match_explicit_jacobian(tiny):
  loss_fn, params, x = tiny
  with jax.enable_x64(True):
    params, x = _f64(params, x)
    J, unravel = _explicit_jacobian(loss_fn, params, x)
    rng = np.random.default_rng(1)
    delta_flat = jnp.asarray(rng.normal(size=J.shape[1]))
    b = jnp.asarray(rng.normal(size=x.shape))
    jd = influence.jacobian_vp(loss_fn, params, x, unravel(delta_flat))
    np.testing.assert_allclose(jd.ravel(), J @ delta_flat, rtol=1e-10,
                               atol=1e-12)
    jtb = influence.jacobian_tvp(loss_fn, params, x, b)
    np.testing.assert_allclose(jax.flatten_util.ravel_pytree(jtb)[0],
                               J.T @ b.ravel(), rtol=1e-10, atol=1e-12)
    gb = influence.gram_vp(loss_fn, params, x, b)
    np.testing.assert_allclose(gb.ravel(), J @ (J.T @ b.ravel()), rtol=1e-10,
                               atol=1e-12)
    # jacrev agrees with jacfwd (a second independent construction).
    flat = jax.flatten_util.ravel_pytree(params)[0]
    J2 = jax.jacrev(lambda x_: jax.flatten_util.ravel_pytree(
        jax.grad(loss_fn)(unravel(flat), x_))[0])(x).reshape(flat.size, -1).T
    np.testing.assert_allclose(J2, J, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("space", ["input", "params"])
def test_hutchinson_estimates_the_frobenius_norm(tiny, space):
  loss_fn, params, x = tiny
  with jax.enable_x64(True):
    params, x = _f64(params, x)
    J, _ = _explicit_jacobian(loss_fn, params, x)
    exact = float(jnp.sum(J ** 2))
    est = float(influence.frobenius_norm_sq_hutchinson(
        loss_fn, params, x, jax.random.key(0), 2000, space=space))
  assert est == pytest.approx(exact, rel=0.08)
  assert exact > 0


def test_bad_directions_are_rejected(tiny):
  loss_fn, params, x = tiny
  x = jnp.asarray(x, jnp.float32)
  with pytest.raises(ValueError, match="'delta'"):
    influence.jacobian_vp(loss_fn, params, x, {"w": jnp.zeros(3)})
  with pytest.raises(ValueError, match="'b'"):
    influence.jacobian_tvp(loss_fn, params, x, jnp.zeros((3,)))
  with pytest.raises(ValueError, match="'num_probes'"):
    influence.frobenius_norm_sq_hutchinson(loss_fn, params, x,
                                           jax.random.key(0), 0)
