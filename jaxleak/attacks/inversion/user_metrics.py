"""User-level leakage metrics: what a representative image reveals of a user.

A *judge* classifier trained on data disjoint from the users scores the
representative images (one or k per user) of a user-level attack against the
users' private batches (Li et al., arXiv 2409.07291, Figure 1 and the
attribute-inference evaluation):

* `attribute_accuracy`: the share of users whose majority attribute (label)
  the judge predicts from the representative image (mean logits over the k
  representatives).
* `representative_similarity`: the mean cosine similarity between the
  representative's embedding (the judge's penultimate features: the input of
  its output layer) and each image of the user's batch, reported next to
  the batch's own pairwise similarities (how similar the user's images are
  to each other, the ceiling a single image can hope for).
* `identification_rate`: the share of users whose representative is closer
  (mean cosine similarity of embeddings) to their own batch than to any
  other user's batch. Users holding the same attribute (two users per class
  with 20 label users on 10 classes) are hard to tell apart by design.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = (
    "attribute_accuracy",
    "embed",
    "identification_rate",
    "judge_logits",
    "representative_similarity",
    "score_users",
)


def embed(apply_fn: Any, params: Any, images: Any, *,
          layer: str = "head") -> np.ndarray:
  """Penultimate features ``[N, D]``: the input of the Dense layer `layer`.

  Works for every jaxleak model (their output layer is named "head") by
  intercepting that module's call; inference-mode BatchNorm.
  """
  module = getattr(apply_fn, "module", None)
  if module is None:
    raise TypeError("embed: argument 'apply_fn' must be a model from "
                    "jaxleak.models.create (it needs its Linen module)")
  return np.asarray(_embed_jit(apply_fn, layer, params,
                               jnp.asarray(images, jnp.float32)))


def _embed_impl(apply_fn, layer, params, x):
  captured = []

  def interceptor(next_fun, args, kwargs, context):
    if context.module.name == layer and context.method_name == "__call__":
      captured.append(args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    apply_fn.module.apply(params, x, train=False)
  if not captured:
    raise ValueError(f"embed: the model has no layer named {layer!r}")
  return captured[-1].reshape(x.shape[0], -1)


_embed_jit = jax.jit(_embed_impl, static_argnums=(0, 1))
_logits_jit = jax.jit(lambda f, p, x: f.eval(p, x), static_argnums=0)


def judge_logits(apply_fn: Any, params: Any, images: Any) -> np.ndarray:
  """The judge's inference-mode logits ``[N, C]``."""
  return np.asarray(_logits_jit(apply_fn, params, jnp.asarray(
      images, jnp.float32)))


def _unit(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def attribute_accuracy(predicted: Sequence[int], attributes: Sequence[int]
                       ) -> float:
  """Share of users whose predicted attribute equals the true one."""
  predicted, attributes = np.asarray(predicted), np.asarray(attributes)
  if predicted.shape != attributes.shape or predicted.ndim != 1:
    raise ValueError("attribute_accuracy: arguments 'predicted' and "
                     "'attributes' must be 1-D of equal length, got "
                     f"{predicted.shape} and {attributes.shape}")
  return float(np.mean(predicted == attributes))


def representative_similarity(rep_embeddings: Sequence[Any],
                              batch_embeddings: Sequence[Any]
                              ) -> dict[str, Any]:
  """Cosine similarity of representatives to their user's batch.

  Args:
    rep_embeddings: per user, ``[k, D]`` (or ``[D]``) embeddings of its
      representative image(s).
    batch_embeddings: per user, ``[B, D]`` embeddings of its batch.

  Returns:
    ``{"mean", "per_user", "batch_pairwise_mean", "batch_pairwise_min",
    "batch_pairwise_max", "per_user_batch_pairwise"}``: ``mean`` averages,
    over users, the mean similarity between the representatives and each
    batch image; the ``batch_pairwise_*`` entries summarise the similarities
    between distinct images of the same batch (mean over users of each
    user's mean, and the overall min and max).
  """
  if len(rep_embeddings) != len(batch_embeddings):
    raise ValueError("representative_similarity: arguments "
                     "'rep_embeddings' and 'batch_embeddings' need one entry "
                     f"per user, got {len(rep_embeddings)} and "
                     f"{len(batch_embeddings)}")
  per_user, pair_means, lo, hi = [], [], np.inf, -np.inf
  for rep, batch in zip(rep_embeddings, batch_embeddings):
    rep, batch = _unit(np.atleast_2d(rep)), _unit(batch)
    per_user.append(float(np.mean(rep @ batch.T)))
    sims = batch @ batch.T
    off = sims[~np.eye(len(batch), dtype=bool)]
    if off.size:
      pair_means.append(float(off.mean()))
      lo, hi = min(lo, float(off.min())), max(hi, float(off.max()))
  return {"mean": float(np.mean(per_user)), "per_user": per_user,
          "batch_pairwise_mean": (float(np.mean(pair_means)) if pair_means
                                  else None),
          "batch_pairwise_min": lo if pair_means else None,
          "batch_pairwise_max": hi if pair_means else None,
          "per_user_batch_pairwise": pair_means}


def identification_rate(rep_embeddings: Sequence[Any],
                        batch_embeddings: Sequence[Any]) -> float:
  """Share of users whose representative is most similar to their own batch.

  Similarity of representative u to batch v: the mean cosine similarity of
  u's representative embedding(s) to v's images. Ties count as misses.
  """
  n = len(rep_embeddings)
  if n != len(batch_embeddings) or n < 2:
    raise ValueError("identification_rate: needs the same number (>= 2) of "
                     f"representatives and batches, got {n} and "
                     f"{len(batch_embeddings)}")
  reps = [_unit(np.atleast_2d(r)) for r in rep_embeddings]
  batches = [_unit(b) for b in batch_embeddings]
  hits = 0
  for u, rep in enumerate(reps):
    sims = np.asarray([np.mean(rep @ b.T) for b in batches])
    others = np.delete(sims, u)
    hits += int(sims[u] > others.max())
  return hits / n


def score_users(judge_apply: Callable[..., Any], judge_params: Any,
                representatives: Sequence[Any], batches: Sequence[Any],
                attributes: Sequence[int]) -> dict[str, Any]:
  """All three metrics for one attack over a set of users.

  Args:
    judge_apply: the judge classifier (`jaxleak.models.create`), trained on
      data disjoint from the users.
    judge_params: its parameters.
    representatives: per user, ``[k, H, W, C]`` images in [0, 1].
    batches: per user, ``[B, H, W, C]`` private images.
    attributes: per user, the true majority label.

  Returns:
    ``{"attribute_accuracy", "representative_similarity",
    "identification_rate", "predicted", "similarity"}``.
  """
  predicted = [int(np.argmax(judge_logits(judge_apply, judge_params,
                                          r).mean(0)))
               for r in representatives]
  rep_emb = [embed(judge_apply, judge_params, r) for r in representatives]
  batch_emb = [embed(judge_apply, judge_params, b) for b in batches]
  sim = representative_similarity(rep_emb, batch_emb)
  return {"attribute_accuracy": attribute_accuracy(predicted, attributes),
          "representative_similarity": sim["mean"],
          "identification_rate": (identification_rate(rep_emb, batch_emb)
                                  if len(batches) > 1 else None),
          "batch_pairwise_similarity": {
              k: sim[k] for k in ("batch_pairwise_mean", "batch_pairwise_min",
                                  "batch_pairwise_max")},
          "predicted": predicted,
          "per_user_similarity": sim["per_user"]}
