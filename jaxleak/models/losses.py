"""Classification losses shared by training, DP and inversion code."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxleak._src import validate


def cross_entropy_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy with integer labels.

  Args:
    logits: [B, num_classes].
    labels: [B] integer class indices.

  Returns:
    Scalar mean over the batch. With B = 1 (e.g. under ``jax.vmap`` over
    single-example batches) this is the per-example loss, so the mean of
    per-example gradients equals the batch gradient.

  Raises:
    ValueError: if the ranks or batch sizes do not match.
  """
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  validate.check_rank(logits, "logits", 2, fn="cross_entropy_loss",
                      what="batch, num_classes")
  validate.check_rank(labels, "labels", 1, fn="cross_entropy_loss",
                      what="integer class indices")
  if logits.shape[0] != labels.shape[0]:
    raise ValueError(
        "cross_entropy_loss: argument 'labels' must have one entry per row of "
        f"'logits', got labels shape {labels.shape} and logits shape "
        f"{logits.shape}")
  return jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def soft_cross_entropy(logits: jax.Array, soft_targets: jax.Array) -> jax.Array:
  """Mean cross-entropy against probability vectors (soft or recovered labels).

  Computes mean_b( -sum_c t[b, c] * log_softmax(logits)[b, c] ). Gradient
  inversion attacks that optimise a label distribution pass
  ``softmax(label_logits)`` here.

  Args:
    logits: [B, num_classes].
    soft_targets: [B, num_classes], rows summing to 1.

  Returns:
    Scalar mean over the batch.

  Raises:
    ValueError: if the shapes differ.
  """
  logits, soft_targets = jnp.asarray(logits), jnp.asarray(soft_targets)
  validate.check_rank(logits, "logits", 2, fn="soft_cross_entropy",
                      what="batch, num_classes")
  validate.check_shape(soft_targets, "soft_targets", logits.shape,
                       fn="soft_cross_entropy")
  return jnp.mean(-jnp.sum(soft_targets * jax.nn.log_softmax(logits), axis=-1))
