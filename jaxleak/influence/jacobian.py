"""Products with the input-parameter mixed Jacobian of a loss (public API).

The products themselves live in the low layer `jaxleak._src.mixed_jacobian`
(shared with `jaxleak.attacks.inversion.theory`); see its docstring for the
maths. This module adds the classifier loss whose Jacobian I²F analyses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxleak._src.mixed_jacobian import frobenius_norm_sq_hutchinson
from jaxleak._src.mixed_jacobian import gram_vp
from jaxleak._src.mixed_jacobian import jacobian_tvp
from jaxleak._src.mixed_jacobian import jacobian_vp
from jaxleak._src.mixed_jacobian import LossFn
from jaxleak.models import cross_entropy_loss

__all__ = (
    "LossFn",
    "classifier_loss",
    "jacobian_vp",
    "jacobian_tvp",
    "gram_vp",
    "frobenius_norm_sq_hutchinson",
)


def classifier_loss(apply_fn: Callable[[Any, jax.Array], jax.Array],
                    labels: Any) -> LossFn:
  """Mean softmax cross-entropy of `apply_fn` on fixed integer `labels`.

  Args:
    apply_fn: ``logits = apply_fn(params, x)`` with x an NHWC batch.
    labels: int labels [B] for the batch the loss will be called on.

  Returns:
    ``loss_fn(params, x) -> scalar``, the batch-mean cross-entropy (the loss
    whose gradient a federated client shares).
  """
  labels = jnp.asarray(labels, jnp.int32)

  def loss_fn(params: Any, x: jax.Array) -> jax.Array:
    return cross_entropy_loss(apply_fn(params, x), labels)

  return loss_fn
