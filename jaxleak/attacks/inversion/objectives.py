"""Gradient-matching objectives: the victim's operator, distances, priors.

Every optimisation-based gradient-inversion attack minimises

    J(x') = D(A(x'), g*) + sum_k alpha_k R_k(x')

over a candidate batch ``x'``, where ``g*`` is the observed (possibly defended)
gradient, ``A`` the victim's gradient operator and ``R_k`` image priors. This
module provides each piece as a pure function so that new attacks (diffusion
guidance, I²F experiments, ...) can compose them:

* `victim_loss` / `victim_gradient` — the forward operator
  ``A(x) = ∇_θ L(f_θ(x), y)`` with ``L`` the **mean** cross-entropy over the
  batch (the gradient of a sum would be B times larger).
* `local_update_gradient` — the fedAvg generalisation of ``A`` (several local
  SGD steps).
* `l2_distance`, `cosine_distance` — distances between gradient pytrees.
* `total_variation`, `l2_prior`, `bn_matching` — image priors.

All functions are differentiable w.r.t. the images (second-order autodiff
through ``jax.grad``), jit-compatible, and take parameters as arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxleak._src import tree_util
from jaxleak.models import losses

Array = jax.Array
Params = Any
PyTree = Any
ApplyFn = Callable[[Params, Array], Array]

__all__ = (
    "trainable",
    "with_trainable",
    "victim_loss",
    "victim_gradient",
    "victim_gradient_and_bn_stats",
    "local_update_gradient",
    "tree_vdot",
    "tree_sq_norm",
    "tree_rms",
    "tree_size",
    "l2_distance",
    "cosine_distance",
    "DISTANCES",
    "total_variation",
    "l2_prior",
    "bn_matching",
)


# ----------------------------------------------------------------------------
# Trainable parameters.


# One implementation for the whole library (jaxleak._src.tree_util): for a
# Flax variables dict the trainable part is ``params["params"]`` (running
# BatchNorm averages are not trained, so they have no gradient to leak); any
# other pytree is trainable whole.
trainable = tree_util.trainable
with_trainable = tree_util.with_trainable


# ----------------------------------------------------------------------------
# The victim's gradient operator A(x).


def victim_loss(apply_fn: ApplyFn, params: Params, images: Array,
                labels: Array) -> Array:
  """The victim's training loss: mean cross-entropy over the batch.

  ``L(x, y) = (1/B) sum_b CE(f_θ(x_b), y_b)``. Integer labels ``[B]`` give the
  usual cross-entropy; float labels ``[B, num_classes]`` (probability rows)
  give the soft cross-entropy ``-sum_c y_bc log softmax(f_θ(x_b))_c`` that
  DLG optimises jointly with the images.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    params: model parameters (the full variables dict).
    images: ``[B, H, W, C]`` in [0, 1].
    labels: ``[B]`` ints or ``[B, num_classes]`` probabilities.

  Returns:
    The scalar mean loss.
  """
  logits = apply_fn(params, images)
  if jnp.issubdtype(jnp.asarray(labels).dtype, jnp.floating):
    return losses.soft_cross_entropy(logits, labels)
  return losses.cross_entropy_loss(logits, labels)


def victim_gradient(apply_fn: ApplyFn, params: Params, images: Array,
                    labels: Array) -> PyTree:
  """The forward operator ``A(x) = ∇_θ L(f_θ(x), y)`` of gradient inversion.

  The gradient is taken w.r.t. the trainable parameters only (see
  `trainable`) of the batch-mean loss `victim_loss`. Differentiating a
  distance of this w.r.t. `images` is second-order autodiff, which JAX does
  by nesting ``jax.grad``.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    params: model parameters.
    images: ``[B, H, W, C]``.
    labels: ``[B]`` ints or ``[B, num_classes]`` probabilities.

  Returns:
    A pytree shaped like ``trainable(params)``.
  """

  def loss(p):
    return victim_loss(apply_fn, with_trainable(params, p), images, labels)

  return jax.grad(loss)(trainable(params))


def victim_gradient_and_bn_stats(
    apply_fn: ApplyFn, params: Params, images: Array, labels: Array
) -> tuple[PyTree, list[tuple[Array, Array]]]:
  """`victim_gradient` plus the batch statistics every BatchNorm layer saw.

  Requires a `jaxleak.models.ModelFn` (``apply_fn.with_bn_stats``). The
  statistics are differentiable w.r.t. `images`, which the BN-matching prior
  of GradInversion needs.

  Returns:
    ``(grads, stats)`` with ``stats`` a list of per-layer ``(mean, var)``.
  """

  def loss(p):
    logits, stats = apply_fn.with_bn_stats(with_trainable(params, p), images)
    if jnp.issubdtype(jnp.asarray(labels).dtype, jnp.floating):
      value = losses.soft_cross_entropy(logits, labels)
    else:
      value = losses.cross_entropy_loss(logits, labels)
    return value, stats

  return jax.grad(loss, has_aux=True)(trainable(params))


def local_update_gradient(apply_fn: ApplyFn, params: Params, images: Array,
                          labels: Array, *, local_steps: int,
                          local_lr: float,
                          local_batch_size: int | None = None) -> PyTree:
  """The shared update of fedAvg-style local training, as a gradient.

  The victim runs ``K = local_steps`` plain SGD steps with learning rate
  ``η = local_lr``; step k uses the images ``[k s, (k + 1) s)`` (mod B) of its
  batch, ``s = local_batch_size`` (the whole batch when None). It shares

      Δ = (θ_0 - θ_K) / (K η) = (1/K) sum_k ∇_θ L(θ_k; batch_k),

  the average gradient along its local trajectory, which equals
  `victim_gradient` for ``K = 1`` (any ``η``) and keeps its scale for larger
  K. An attacker who knows K, η and s applies this same function to its
  candidate images (breaching's fedAvg user, ``local_updates``).

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    params: the server's parameters θ_0.
    images: ``[B, H, W, C]``.
    labels: ``[B]`` ints or ``[B, num_classes]`` probabilities.
    local_steps: K >= 1 (static).
    local_lr: η > 0.
    local_batch_size: images per local step, 1 <= s <= B (static); None
      means B.

  Returns:
    A pytree shaped like ``trainable(params)``.
  """
  if local_steps == 1 and local_batch_size in (None, images.shape[0]):
    return victim_gradient(apply_fn, params, images, labels)
  b = images.shape[0]
  s = b if local_batch_size is None else local_batch_size
  theta0 = trainable(params)
  theta = theta0
  # K is small and static, so the steps are unrolled: slices stay static and
  # XLA:CPU runs unrolled convolutions faster than inside a while loop.
  for k in range(local_steps):
    idx = [(k * s + i) % b for i in range(s)]
    xb = images[jnp.asarray(idx)] if s != b else images
    yb = labels[jnp.asarray(idx)] if s != b else labels
    g = victim_gradient(apply_fn, with_trainable(params, theta), xb, yb)
    theta = jax.tree.map(lambda t, gi: t - local_lr * gi, theta, g)
  scale = 1.0 / (local_steps * local_lr)
  return jax.tree.map(lambda t0, t: (t0 - t) * scale, theta0, theta)


# ----------------------------------------------------------------------------
# Pytree algebra and gradient distances.


def _safe_sqrt(x: Array) -> Array:
  # sqrt with a zero (not NaN) gradient at 0, where the distance is matched.
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def tree_vdot(a: PyTree, b: PyTree) -> Array:
  """``<a, b>`` over all leaves (``optax.tree_utils.tree_vdot``)."""
  return optax.tree_utils.tree_vdot(a, b)


def tree_sq_norm(a: PyTree) -> Array:
  """``||a||^2`` over all leaves (``optax.tree_utils.tree_norm``, squared)."""
  return optax.tree_utils.tree_norm(a, squared=True)


def tree_size(a: PyTree) -> int:
  """Number of scalar coordinates in all leaves."""
  return sum(int(jnp.size(x)) for x in jax.tree.leaves(a))


def tree_rms(a: PyTree) -> Array:
  """Root mean square over all coordinates: ``sqrt(||a||^2 / n)``."""
  return jnp.sqrt(tree_sq_norm(a) / tree_size(a))


def l2_distance(a: PyTree, b: PyTree, *, squared: bool = True) -> Array:
  """Euclidean gradient distance summed over layers.

  ``D(a, b) = sum_l ||a_l - b_l||^2`` (DLG, iDLG, GradInversion) when
  `squared`, else its square root ``||a - b||_2`` (the DPS-style guidance
  loss, which differentiates the norm).
  """
  sq = sum(jnp.sum(jnp.square(x - y)) for x, y in
           zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  return sq if squared else _safe_sqrt(sq)


def cosine_distance(a: PyTree, b: PyTree, *, eps: float = 1e-12) -> Array:
  """``1 - <a, b> / (||a|| ||b||)`` over the concatenated gradient.

  The distance of Inverting Gradients (Geiping et al., 2020): invariant to the
  gradient's scale, so it ignores the magnitude the learning rate, batch size
  or a multiplicative defence would change. `eps` guards zero gradients.
  """
  dot = tree_vdot(a, b)
  norm = jnp.sqrt(jnp.maximum(tree_sq_norm(a) * tree_sq_norm(b), eps**2))
  return 1.0 - dot / norm


DISTANCES: dict[str, Callable[[PyTree, PyTree], Array]] = {
    "l2": l2_distance,
    "cosine": cosine_distance,
}
"""Gradient distances by name: ``D(candidate_grads, observed_grads)``."""


# ----------------------------------------------------------------------------
# Image priors.


def total_variation(images: Array, *, p: float = 1.0, q: float = 1.0,
                    eps: float = 1e-8) -> Array:
  """Anisotropic total variation, breaching's parametrisation.

  ``TV(x) = mean_{b,i,j,c} ((|Δ_h x| + ε)^p + (|Δ_w x| + ε)^p)^q`` with
  forward differences ``Δ_h x = x[i+1, j] - x[i, j]`` and
  ``Δ_w x = x[i, j+1] - x[i, j]`` over the ``(H-1) x (W-1)`` positions where
  both exist. ``p = q = 1`` (default) is Inverting Gradients' TV.

  Args:
    images: ``[B, H, W, C]`` with H, W >= 2.
    p: inner exponent.
    q: outer exponent.
    eps: keeps the gradient of ``|.|^p`` finite for p < 1.

  Returns:
    A scalar.
  """
  dh = images[:, 1:, :-1, :] - images[:, :-1, :-1, :]
  dw = images[:, :-1, 1:, :] - images[:, :-1, :-1, :]
  inner = (jnp.abs(dh) + eps) ** p + (jnp.abs(dw) + eps) ** p
  return jnp.mean(inner ** q)


def l2_prior(images: Array) -> Array:
  """``mean_b ||x_b||_2^2``: the L2 image prior of GradInversion."""
  return jnp.mean(jnp.sum(jnp.square(images.reshape(images.shape[0], -1)),
                          axis=1))


def bn_matching(stats: Sequence[tuple[Array, Array]],
                targets: Sequence[tuple[Array, Array]], *,
                first_layer_scale: float = 10.0) -> Array:
  """DeepInversion's BatchNorm-statistics prior.

  ``R_BN(x) = sum_l s_l (||μ_l(x) - μ_l*||_2 + ||σ²_l(x) - σ²_l*||_2)`` with
  ``s_1 = first_layer_scale`` and ``s_l = 1`` otherwise (breaching and Yin et
  al. weight the first layer by 10).

  Args:
    stats: per-layer ``(mean, var)`` of the candidate batch.
    targets: per-layer ``(mean, var)`` to match (the victim batch's statistics
      or the model's running averages).
    first_layer_scale: weight of the first BatchNorm layer.

  Returns:
    A scalar (0 for models without BatchNorm).
  """
  total = jnp.zeros((), jnp.float32)
  for i, ((mu, var), (mu_t, var_t)) in enumerate(zip(stats, targets)):
    scale = first_layer_scale if i == 0 else 1.0
    total = total + scale * (_safe_sqrt(jnp.sum(jnp.square(mu - mu_t)))
                             + _safe_sqrt(jnp.sum(jnp.square(var - var_t))))
  return total
