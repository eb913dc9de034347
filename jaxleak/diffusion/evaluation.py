"""Measurements of a prior's quality: class agreement and memorisation.

* `class_agreement`: the share of class-conditional samples that an
  independent classifier assigns to the class they were conditioned on.
* `nearest_neighbour_ssim`: for each sample, the SSIM to its most similar
  training image. Values near 1 mean the prior reproduces training images;
  compare with the same statistic for held-out real images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxleak._src import validate

__all__ = (
    "AgreementResult",
    "class_agreement",
    "NearestNeighbours",
    "nearest_neighbour_ssim",
)


class AgreementResult(NamedTuple):
  """Classifier agreement with the conditioning labels.

  Attributes:
    accuracy: fraction of samples classified as their conditioning label.
    per_class: accuracy per conditioning class [num_classes].
    confusion: counts [num_classes, num_classes], rows = conditioning label,
      columns = predicted class.
    predictions: the predicted class of every sample [N].
  """

  accuracy: float
  per_class: np.ndarray
  confusion: np.ndarray
  predictions: np.ndarray


def class_agreement(predict_fn: Callable[[jax.Array], jax.Array],
                    images: Any, labels: Any, num_classes: int, *,
                    batch_size: int = 250) -> AgreementResult:
  """Classifies `images` and compares with the labels they were sampled for.

  Args:
    predict_fn: maps an NHWC batch in [0, 1] to logits [B, num_classes].
    images: samples [N, H, W, C] in [0, 1].
    labels: the conditioning labels [N].
    num_classes: number of classes.
    batch_size: images per `predict_fn` call.

  Returns:
    An `AgreementResult`.
  """
  fn = "class_agreement"
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels, np.int64)
  validate.check_images(images, "images", fn=fn)
  validate.check_shape(labels, "labels", (images.shape[0],), fn=fn)
  preds = []
  for s in range(0, images.shape[0], batch_size):
    logits = predict_fn(jnp.asarray(images[s:s + batch_size]))
    preds.append(np.asarray(jnp.argmax(logits, axis=-1)))
  preds = np.concatenate(preds)
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (labels, preds), 1)
  totals = np.maximum(confusion.sum(1), 1)
  return AgreementResult(accuracy=float(np.mean(preds == labels)),
                         per_class=np.diag(confusion) / totals,
                         confusion=confusion, predictions=preds)


class NearestNeighbours(NamedTuple):
  """Most similar reference for each query image.

  Attributes:
    ssim: SSIM to the nearest reference [N].
    index: index of that reference [N].
  """

  ssim: np.ndarray
  index: np.ndarray


def nearest_neighbour_ssim(queries: Any, references: Any, *,
                           exclude_self: bool = False) -> NearestNeighbours:
  """SSIM from each query image to its most similar reference image.

  Uses `jaxleak.metrics.ssim` (11x11 Gaussian window, data range 1).

  Args:
    queries: images [N, H, W, C] in [0, 1] (e.g. prior samples).
    references: images [M, H, W, C] in [0, 1] (e.g. the training set).
    exclude_self: ignore the reference with the same index as the query
      (when queries are the references, to get leave-one-out neighbours).

  Returns:
    `NearestNeighbours(ssim, index)`.
  """
  from jaxleak import metrics  # pylint: disable=g-import-not-at-top
  fn = "nearest_neighbour_ssim"
  q = jnp.asarray(queries, jnp.float32)
  r = jnp.asarray(references, jnp.float32)
  validate.check_images(q, "queries", fn=fn)
  validate.check_images(r, "references", fn=fn)
  if q.shape[1:] != r.shape[1:]:
    raise ValueError(
        f"{fn}: argument 'references' has image shape {r.shape[1:]}, "
        f"queries have {q.shape[1:]}")

  @jax.jit
  def scores(q):
    # [M] SSIM of one query against every reference.
    return jax.lax.map(
        lambda img: metrics.ssim(jnp.broadcast_to(img, r.shape), r), q)

  s = np.asarray(scores(q))  # [N, M]
  if exclude_self:
    n = min(s.shape)
    s[np.arange(n), np.arange(n)] = -np.inf
  idx = np.argmax(s, axis=1)
  return NearestNeighbours(ssim=s[np.arange(s.shape[0]), idx], index=idx)
