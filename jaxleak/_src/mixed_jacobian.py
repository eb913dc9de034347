"""Matrix-free products with the input-parameter mixed Jacobian of a loss.

For a loss ``L(theta, x)`` (theta: a params pytree, x: an input array) the
mixed Jacobian is

    J := d/dx d/dtheta L(theta, x)   in R^{d_x x d_theta},
    J[i, j] = d^2 L / (dx_i dtheta_j).

It is the linearisation of the victim's gradient map ``x -> grad_theta L``
that every gradient-inversion analysis rests on: I²F (Zhang et al. 2023)
solves ``(J J^T + eps I) b = J delta``, and the reconstruction-vulnerability
measure of gradient-guided diffusion attacks is ``RV = ||J||_F``.

Neither product materialises J:

* ``J @ delta`` (delta: a params-shaped pytree, a gradient perturbation) is
  the input-gradient of the directional derivative ``<grad_theta L, delta>``,
  written as ``grad_x jvp_theta``: one forward-over-reverse pass.
* ``J^T @ b`` (b: an input-shaped array) is the params-gradient of
  ``<grad_x L, b>``, written as ``grad_theta jvp_x``.

Both are exact (no finite differences) and compose with `jax.jit` and
`jax.vmap` (batch over images by vmapping over ``x`` and ``b``).

A low-layer module: `jaxleak.influence` (I²F) and
`jaxleak.attacks.inversion.theory` (reconstruction vulnerability) both use it;
`jaxleak.influence.jacobian` is its public face.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxleak._src import validate

__all__ = (
    "LossFn",
    "jacobian_vp",
    "jacobian_tvp",
    "gram_vp",
    "frobenius_norm_sq_hutchinson",
)

# loss_fn(params, x) -> scalar
LossFn = Callable[[Any, jax.Array], jax.Array]


def jacobian_vp(loss_fn: LossFn, params: Any, x: jax.Array,
                delta: Any) -> jax.Array:
  """``J @ delta = d/dx <grad_theta L(theta, x), delta>``.

  Args:
    loss_fn: ``loss_fn(params, x) -> scalar``.
    params: the parameters theta (a pytree).
    x: the input.
    delta: a direction in parameter space, same pytree and shapes as params.

  Returns:
    An array shaped like `x`.
  """
  validate.check_same_structure(delta, params, "delta", "params",
                               fn="jacobian_vp")

  def directional(x_):
    return jax.jvp(lambda p: loss_fn(p, x_), (params,), (delta,))[1]

  return jax.grad(directional)(x)


def jacobian_tvp(loss_fn: LossFn, params: Any, x: jax.Array,
                 b: jax.Array) -> Any:
  """``J^T @ b = d/dtheta <grad_x L(theta, x), b>``.

  Args:
    loss_fn: ``loss_fn(params, x) -> scalar``.
    params: the parameters theta (a pytree).
    x: the input.
    b: a direction in input space, shaped like `x`.

  Returns:
    A pytree shaped like `params`.
  """
  if jnp.shape(b) != jnp.shape(x):
    raise ValueError(f"jacobian_tvp: argument 'b' has shape {jnp.shape(b)}, "
                     f"x has {jnp.shape(x)}")

  def directional(p):
    return jax.jvp(lambda x_: loss_fn(p, x_), (x,), (b,))[1]

  return jax.grad(directional)(params)


def gram_vp(loss_fn: LossFn, params: Any, x: jax.Array,
            b: jax.Array) -> jax.Array:
  """``(J J^T) @ b`` in input space (d_x x d_x, symmetric PSD)."""
  return jacobian_vp(loss_fn, params, x, jacobian_tvp(loss_fn, params, x, b))


def frobenius_norm_sq_hutchinson(loss_fn: LossFn, params: Any, x: jax.Array,
                                 key: jax.Array, num_probes: int = 16, *,
                                 space: str = "input") -> jax.Array:
  """Unbiased Hutchinson estimate of ``||J||_F^2 = tr(J J^T)``.

  ``E_v ||J^T v||^2 = tr(J J^T)`` for probes with ``E[v v^T] = I``. Probes
  are Rademacher (lower variance than Gaussian for the same mean).

  Args:
    loss_fn: ``loss_fn(params, x) -> scalar``.
    params: the parameters.
    x: the input.
    key: PRNG key for the probes.
    num_probes: number of probes (the estimate's std falls as 1/sqrt(n)).
    space: "input" (probes v in x-space, products ``J^T v``) or "params"
      (probes in parameter space, products ``J v``); same expectation.

  Returns:
    Scalar estimate of the squared Frobenius norm.
  """
  fn = "frobenius_norm_sq_hutchinson"
  validate.check_positive(num_probes, "num_probes", fn=fn)
  validate.check_choice(space, "space", ("input", "params"), fn=fn)
  keys = jax.random.split(key, int(num_probes))

  def rademacher(k, like):
    return jax.random.rademacher(k, jnp.shape(like), jnp.result_type(like))

  def probe(k):
    if space == "input":
      v = rademacher(k, x)
      out = jacobian_tvp(loss_fn, params, x, v)
    else:
      leaves, treedef = jax.tree.flatten(params)
      ks = jax.random.split(k, len(leaves))
      v = jax.tree.unflatten(treedef, [rademacher(kk, leaf)
                                       for kk, leaf in zip(ks, leaves)])
      out = jacobian_vp(loss_fn, params, x, v)
    return optax.tree_utils.tree_norm(out, squared=True)

  return jnp.mean(jax.lax.map(probe, keys))
