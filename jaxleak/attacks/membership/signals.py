"""Per-example membership signals computed stably from logits.

Every signal takes logits z [B, C] (and integer labels y [B] where needed)
and returns one float per example. `membership_score` orients them so that a
larger score means "more likely a member" (members have low loss, high
confidence, low entropy), which is what the ROC metrics expect.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxleak._src import validate

__all__ = (
    "loss",
    "confidence",
    "true_class_confidence",
    "entropy",
    "modified_entropy",
    "logit_scaled_confidence",
    "SIGNALS",
    "membership_score",
    "model_logits",
)


def _check(logits: Any, labels: Any, fn: str) -> tuple[jax.Array, jax.Array]:
  logits = jnp.asarray(logits)
  validate.check_rank(logits, "logits", 2, fn=fn, what="batch, num_classes")
  if labels is None:
    return logits, None
  labels = jnp.asarray(labels)
  validate.check_shape(labels, "labels", (logits.shape[0],), fn=fn)
  return logits, labels


def _log_one_minus_softmax(logits: jax.Array) -> jax.Array:
  """log(1 - p_c) for every class, as logsumexp_{c' != c} z - logsumexp z.

  Direct log1p(-p_c) loses all precision once p_c rounds to 1.
  """
  c = logits.shape[-1]
  others = jnp.where(jnp.eye(c, dtype=bool)[None], -jnp.inf,
                     logits[:, None, :])                      # [B, C, C]
  return jax.nn.logsumexp(others, axis=-1) - jax.nn.logsumexp(
      logits, axis=-1, keepdims=True)


def loss(logits: Any, labels: Any) -> jax.Array:
  """Cross-entropy l = -log p_y."""
  logits, labels = _check(logits, labels, "loss")
  return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None],
                              axis=1)[:, 0]


def confidence(logits: Any, labels: Any = None) -> jax.Array:
  """max_c p_c (Salem et al. 2019); labels are ignored."""
  del labels
  logits, _ = _check(logits, None, "confidence")
  return jnp.max(jax.nn.softmax(logits), axis=-1)


def true_class_confidence(logits: Any, labels: Any) -> jax.Array:
  """p_y, the probability of the true label."""
  return jnp.exp(-loss(logits, labels))


def entropy(logits: Any, labels: Any = None) -> jax.Array:
  """H(p) = -sum_c p_c log p_c; labels are ignored."""
  del labels
  logits, _ = _check(logits, None, "entropy")
  logp = jax.nn.log_softmax(logits)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def modified_entropy(logits: Any, labels: Any) -> jax.Array:
  """Song & Mittal (2021): Mentr = -(1 - p_y) log p_y - sum_{c!=y} p_c log(1 - p_c).

  Monotone in the right direction for both correct and wrong predictions,
  unlike H(p): a confidently wrong prediction has a *large* Mentr.
  """
  logits, labels = _check(logits, labels, "modified_entropy")
  logp = jax.nn.log_softmax(logits)
  p = jnp.exp(logp)
  log1m = _log_one_minus_softmax(logits)
  is_y = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
  # Class y contributes -(1 - p_y) log p_y; the others -p_c log(1 - p_c).
  terms = jnp.where(is_y, -jnp.exp(log1m) * logp, -p * log1m)
  return jnp.sum(terms, axis=-1)


def logit_scaled_confidence(logits: Any, labels: Any) -> jax.Array:
  """LiRA's statistic phi = log(p_y / (1 - p_y)) = z_y - logsumexp_{c!=y} z_c.

  Computed from the logits, so it stays finite when p_y rounds to 0 or 1.
  """
  logits, labels = _check(logits, labels, "logit_scaled_confidence")
  z_y = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
  others = jnp.where(jax.nn.one_hot(labels, logits.shape[-1], dtype=bool),
                     -jnp.inf, logits)
  return z_y - jax.nn.logsumexp(others, axis=-1)


# name -> (signal, sign): score = sign * signal, larger = more member-like.
SIGNALS: dict[str, tuple[Callable[..., jax.Array], float]] = {
    "loss": (loss, -1.0),
    "confidence": (confidence, 1.0),
    "true_class_confidence": (true_class_confidence, 1.0),
    "entropy": (entropy, -1.0),
    "modified_entropy": (modified_entropy, -1.0),
    "logit_scaled_confidence": (logit_scaled_confidence, 1.0),
}


def membership_score(name: str, logits: Any, labels: Any) -> np.ndarray:
  """The signal `name`, oriented so that larger means "member" (numpy)."""
  validate.check_choice(name, "name", tuple(SIGNALS), fn="membership_score")
  signal, sign = SIGNALS[name]
  return sign * np.asarray(signal(logits, labels), np.float64)


@functools.partial(jax.jit, static_argnames=("apply_fn",))
def _logits_chunk(apply_fn, params, x):
  return apply_fn(params, x)


def model_logits(apply_fn: Callable[[Any, jax.Array], jax.Array], params: Any,
                 images: Any, *, batch_size: int = 1000) -> np.ndarray:
  """Logits of `images` in fixed-size chunks (one compile), as float32 numpy."""
  images = np.asarray(images, np.float32)
  n = images.shape[0]
  if n == 0:
    raise ValueError("model_logits: argument 'images' is empty")
  b = min(int(batch_size), n)
  out = []
  for start in range(0, n, b):
    x = images[start:start + b]
    m = x.shape[0]
    if m < b:
      x = np.concatenate([x, np.zeros((b - m,) + x.shape[1:], x.dtype)])
    out.append(np.asarray(_logits_chunk(apply_fn, params, x))[:m])
  return np.concatenate(out)
