"""Label-recovery metrics."""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from jaxleak._src import validate


def _int_labels(labels: Any, name: str) -> np.ndarray:
  arr = np.asarray(labels)
  validate.check_rank(arr, name, 1, fn="label_accuracy",
                      what="a 1-D array of integer class labels")
  if arr.size and not (np.issubdtype(arr.dtype, np.integer)
                       or np.all(np.mod(arr, 1) == 0)):
    raise ValueError(
        f"label_accuracy: argument '{name}' must hold integer class labels, "
        f"got dtype {arr.dtype}")
  return arr.astype(np.int64)


def label_accuracy(recovered: Any, true: Any) -> float:
  """Fraction of the true labels recovered, ignoring order (multiset overlap).

  Label-recovery attacks (iDLG, LLG, ...) return a multiset of labels without
  knowing which image each belongs to, so, as in breaching, the score is
  |recovered ∩ true| / |true| with multiplicities: recovering [1, 1, 2] for
  true [1, 2, 2] scores 2/3.

  Args:
    recovered: [B'] integer labels (B' may differ from B; extra labels just do
      not count).
    true: [B] integer labels, B >= 1.

  Returns:
    A float in [0, 1].

  Raises:
    ValueError: for non 1-D or non-integer inputs, or an empty `true`.
  """
  rec = _int_labels(recovered, "recovered")
  ref = _int_labels(true, "true")
  if ref.size == 0:
    raise ValueError("label_accuracy: argument 'true' must not be empty")
  overlap = collections.Counter(rec.tolist()) & collections.Counter(ref.tolist())
  return sum(overlap.values()) / ref.size
