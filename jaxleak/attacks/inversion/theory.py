"""Theory utilities for gradient inversion under gradient noise.

The reconstruction-vulnerability measure of gradient-guided diffusion
attacks (Huang et al., arXiv 2411.03053; Meng et al., arXiv 2511.10423) is
the Frobenius norm of the victim's input-parameter mixed Jacobian,

    RV = max_x ‖J(x)‖_F,    J(x) = ∂/∂x ∂/∂θ L(f_θ(x), y)  ∈ R^{d_x × d_θ},

the sensitivity of the shared gradient ``A(x) = ∇_θ L`` to the input: a
larger RV means the gradient carries more information about x per unit of
gradient noise, so reconstruction degrades more slowly with noise. The max
over all x is replaced by a max over candidate inputs (data samples).

``‖J‖_F²`` is estimated matrix-free with Hutchinson probes through the
Jacobian products shared with I²F (`jaxleak.influence.jacobian`): with
Rademacher probes ``v`` in parameter space, ``E ‖J v‖² = ‖J‖_F²`` and
``J v = ∇_x ⟨∇_θ L, v⟩`` is one forward-over-reverse product.

`linearized_error_bound` gives the shape of a noise-driven error floor:
linearising ``A`` at the private x*, any unbiased reconstruction from
``g̃ = A(x*) + n``, ``n ~ N(0, s² I)``, has ``E ‖x̂ - x*‖² ≥
s² tr((J J^T)^+) ≥ s² k² / ‖J‖_F²`` (Cramér-Rao for a linear Gaussian model,
then Cauchy-Schwarz on the k = rank(J) singular values), i.e. a per-pixel
RMSE of at least ``s k / (√d_x ‖J‖_F)``: linear in the noise and inversely
proportional to RV. This is our derivation of the bound's *shape* (the
papers' exact constants are not available to us), not the papers' bound.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxleak._src import validate
from jaxleak.attacks.inversion import objectives
from jaxleak.attacks.inversion import threat_model

__all__ = (
    "RVResult",
    "reconstruction_vulnerability",
    "mixed_jacobian_frobenius_exact",
    "linearized_error_bound",
)


class RVResult(NamedTuple):
  """Reconstruction vulnerability over candidate inputs.

  Attributes:
    rv: ``max_i ‖J(x_i)‖_F`` (the RV measure).
    per_input: ``[N]`` the estimate of ``‖J(x_i)‖_F`` per candidate.
    argmax: index of the maximising candidate.
    num_probes: Hutchinson probes per candidate.
    num_params: d_θ (trainable parameters).
    input_size: d_x (values per input image).
  """

  rv: float
  per_input: np.ndarray
  argmax: int
  num_probes: int
  num_params: int
  input_size: int


def _loss_fn(apply_fn: Callable[..., jax.Array], params: Any,
             label: jax.Array) -> Callable[[Any, jax.Array], jax.Array]:
  """``loss(θ_trainable, x)``: the victim's mean CE on one labelled input."""

  def loss(theta, x):
    return objectives.victim_loss(
        apply_fn, objectives.with_trainable(params, theta), x, label)

  return loss


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _frob_sq_hutchinson(apply_fn, params, x, label, key, num_probes, space):
  from jaxleak.influence import jacobian  # pylint: disable=g-import-not-at-top
  loss = _loss_fn(apply_fn, params, label)
  return jacobian.frobenius_norm_sq_hutchinson(
      loss, objectives.trainable(params), x, key, num_probes, space=space)


def reconstruction_vulnerability(apply_fn: Callable[..., jax.Array],
                                 params: Any, images: Any, labels: Any, *,
                                 key: Any, num_probes: int = 32,
                                 space: str = "params") -> RVResult:
  """RV = max over candidate inputs of ``‖∂/∂x ∂/∂θ L(f_θ(x), y)‖_F``.

  Args:
    apply_fn: ``logits = apply_fn(params, x)`` (e.g. a `jaxleak.models`
      ModelFn).
    params: the victim's parameters (a Flax variables dict: only the
      trainable ``params["params"]`` are differentiated).
    images: ``[N, H, W, C]`` candidate inputs in [0, 1]; each is scored as a
      batch of one (the single-image threat model).
    labels: ``[N]`` int labels.
    key: PRNG key or int seed for the probes.
    num_probes: Hutchinson probes per candidate (relative std of the squared
      norm ≈ sqrt(2 / num_probes) at worst for Rademacher probes).
    space: "params" (probes v in θ-space, products ``J v = ∇_x⟨∇_θL, v⟩``,
      the spec's form) or "input" (products ``J^T u``); same expectation.

  Returns:
    An `RVResult`.
  """
  fn = "reconstruction_vulnerability"
  key = threat_model.canonical_key(key, fn)
  images = jnp.asarray(images, jnp.float32)
  validate.check_images(images, "images", fn=fn)
  labels = np.asarray(labels)
  validate.check_shape(labels, "labels", (images.shape[0],), fn=fn)
  validate.check_choice(space, "space", ("params", "input"), fn=fn)
  if (not isinstance(num_probes, (int, np.integer)) or num_probes < 1
      or isinstance(num_probes, bool)):
    raise ValueError(f"{fn}: argument 'num_probes' must be a positive int, "
                     f"got {num_probes!r}")
  out = []
  for i in range(images.shape[0]):
    sq = _frob_sq_hutchinson(apply_fn, params, images[i:i + 1],
                             jnp.asarray(labels[i:i + 1], jnp.int32),
                             jax.random.fold_in(key, i), int(num_probes),
                             space)
    out.append(float(jnp.sqrt(jnp.maximum(sq, 0.0))))
  per = np.asarray(out, np.float64)
  theta = objectives.trainable(params)
  return RVResult(rv=float(per.max()), per_input=per,
                  argmax=int(per.argmax()), num_probes=int(num_probes),
                  num_params=objectives.tree_size(theta),
                  input_size=int(np.prod(images.shape[1:])))


def mixed_jacobian_frobenius_exact(apply_fn: Callable[..., jax.Array],
                                   params: Any, image: Any, label: Any
                                   ) -> float:
  """Exact ``‖∂/∂x ∂/∂θ L‖_F`` for one input, by materialising J.

  ``jax.jacfwd`` over the input of the parameter gradient: d_x forward
  passes and memory d_x × d_θ, so only for tiny models (tests).

  Args:
    apply_fn: the victim.
    params: its parameters.
    image: ``[1, H, W, C]``.
    label: ``[1]`` int label.

  Returns:
    The Frobenius norm.
  """
  image = jnp.asarray(image, jnp.float32)
  label = jnp.asarray(label, jnp.int32)
  loss = _loss_fn(apply_fn, params, label)
  jac = jax.jacfwd(lambda x: jax.grad(loss)(objectives.trainable(params), x))(
      image)
  return float(jnp.sqrt(sum(jnp.sum(jnp.square(leaf))
                            for leaf in jax.tree.leaves(jac))))


def linearized_error_bound(noise_std: Any, rv: float, input_size: int,
                           num_params: int) -> np.ndarray:
  """Per-pixel RMSE floor ``s k / (√d_x RV)`` with ``k = min(d_x, d_θ)``.

  The shape of the noise-driven error bound (see the module docstring):
  linear in the gradient-noise std `s` and inversely proportional to RV.
  It assumes J has full rank k; a lower rank lowers the floor but leaves
  ``d_x - k`` directions unidentifiable.

  Args:
    noise_std: absolute std(s) of the Gaussian gradient noise.
    rv: ``‖J‖_F`` at the private input (or the RV measure).
    input_size: d_x.
    num_params: d_θ.

  Returns:
    The bound, shaped like `noise_std`.
  """
  validate.check_positive(rv, "rv", fn="linearized_error_bound")
  k = min(int(input_size), int(num_params))
  return np.asarray(noise_std, np.float64) * k / (np.sqrt(input_size) * rv)
