"""Black-box input canaries: mislabelled training examples.

A canary is a real training image with a wrong label, inserted into the
training set with probability 1/2 (Nasr et al. 2021, arXiv 2101.04535; ML
Privacy Meter's ``dpaudit``). A model that memorises its training set fits
the wrong label of an included canary, so the canary's loss on its wrong
label is low when it was trained on; the score is the negated loss
(`jaxleak.attacks.membership.signals`, ``"loss"``: larger means "in").

This audits the whole pipeline (sampling, per-example gradients, weight
rule, noise, optimiser) but only through the final model: a weaker adversary
than the white-box gradient canaries of
`jaxleak.auditing.gradient_canaries`, so the bound is typically far below
the accountant's epsilon for DP training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from jaxleak import data as data_lib

__all__ = (
  "InputCanaries",
  "canary_scores",
  "make_canaries",
  "training_set",
)


class InputCanaries(NamedTuple):
  """Mislabelled canaries split off a dataset.

  Attributes:
    base: the remaining (correctly labelled) examples, always trained on.
    canaries: the canary images with their *wrong* labels.
    true_labels: the canaries' original labels (for reports).
    include: bool ``[m]``, which canaries go into the training set (p = 1/2).
  """
  base: data_lib.Dataset
  canaries: data_lib.Dataset
  true_labels: np.ndarray
  include: np.ndarray


def make_canaries(dataset: data_lib.Dataset, num_canaries: int, *,
                  seed: int = 0) -> InputCanaries:
  """Draws `num_canaries` examples, relabels each to a random wrong class.

  The canaries are taken out of `dataset` (so an excluded canary is never
  seen under either label) and each is included with probability 1/2; at most
  half of the dataset may become canaries.
  """
  fn = "make_canaries"
  n = len(dataset)
  if int(num_canaries) != num_canaries or not 2 <= num_canaries <= n // 2:
    raise ValueError(f"{fn}: argument 'num_canaries' must be an integer "
                     f"between 2 and half the training set ({n // 2}), got "
                     f"{num_canaries!r}")
  k = dataset.num_classes
  if k < 2:
    raise ValueError(f"{fn}: argument 'dataset' needs at least 2 classes to "
                     "mislabel an example")
  rng = np.random.default_rng(seed)
  order = rng.permutation(n)
  cidx, bidx = order[:num_canaries], order[num_canaries:]
  images, labels = np.asarray(dataset.images), np.asarray(dataset.labels)
  true = labels[cidx]
  wrong = ((true + rng.integers(1, k, size=num_canaries)) % k).astype(
      labels.dtype)
  include = rng.random(num_canaries) < 0.5
  if include.all() or not include.any():
    include[0] = ~include[0]
  def subset(idx, lab, tag):
    return data_lib.Dataset(images[idx], lab, dataset.class_names,
                            f"{dataset.name}-{tag}")
  return InputCanaries(base=subset(bidx, labels[bidx], "base"),
                       canaries=subset(cidx, wrong, "canaries"),
                       true_labels=true, include=include)


def training_set(c: InputCanaries) -> data_lib.Dataset:
  """The base examples plus the included canaries (wrong labels)."""
  inc = np.asarray(c.include, bool)
  images = np.concatenate([np.asarray(c.base.images),
                           np.asarray(c.canaries.images)[inc]])
  labels = np.concatenate([np.asarray(c.base.labels),
                           np.asarray(c.canaries.labels)[inc]])
  return data_lib.Dataset(images, labels, c.base.class_names,
                          c.base.name.replace("-base", "-with-canaries"))


def canary_scores(apply_fn: Callable[[Any, Any], Any], params: Any,
                  c: InputCanaries, *, signal: str = "loss"
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(in_scores, out_scores): a membership signal of each canary's wrong label.

  `signal` is any name in `jaxleak.attacks.membership.signals.SIGNALS`,
  oriented so that larger means "in" (``"loss"`` gives the negated loss).
  """
  from jaxleak.attacks.membership import signals  # pylint: disable=g-import-not-at-top
  logits = signals.model_logits(apply_fn, params, c.canaries.images)
  scores = signals.membership_score(signal, logits, c.canaries.labels)
  inc = np.asarray(c.include, bool)
  return scores[inc], scores[~inc]
