"""Label recovery from the last layer's gradient (iDLG, analytic, Yin et al.).

For softmax cross-entropy the gradient of the mean loss w.r.t. the logits of
example b is ``(p_b - onehot(y_b)) / B``, so for the output layer
``z = h W + c`` (Flax kernel ``W`` of shape ``[D, num_classes]``)

    ∇c_k = (1/B) sum_b (p_bk - [y_b = k]),
    ∇W_jk = (1/B) sum_b h_bj (p_bk - [y_b = k]).

``p_bk - [y_b = k]`` is negative only for the true class, so with
non-negative penultimate features ``h`` (sigmoid, ReLU, pooled ReLU) the
column of the true class is the only one with negative entries for B = 1.
Each strategy turns this into a score per class (more negative = more likely
present) and picks the B most likely labels:

* ``"idlg"`` (Zhao et al. 2020, B = 1): score ``sum_j ∇W_jk``.
* ``"analytic"`` (the bias variant): score ``∇c_k``.
* ``"yin"`` (Yin et al. 2021): score ``min_j ∇W_jk``; the B most negative
  classes (one each).

Labels beyond the classes with a negative score are filled by repeating the
most negative classes in order, so a strategy always returns B labels. The
returned confidence is the share of the negative evidence that the chosen
classes account for: ``sum_{k chosen} max(-s_k, 0) / sum_k max(-s_k, 0)``
(1 when every negative class was picked, as for a clean single image).
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxleak._src import validate
from jaxleak.attacks.inversion import threat_model

__all__ = (
    "LabelRecovery",
    "recover_labels",
    "last_layer_gradient",
    "LABEL_STRATEGIES",
)


@dataclasses.dataclass(frozen=True)
class LabelRecovery:
  """Recovered labels.

  Attributes:
    labels: ``[B]`` int32 labels (an unordered multiset).
    confidence: in [0, 1]; see the module docstring (1 for known labels).
    scores: ``[num_classes]`` per-class scores (more negative = more likely),
      or None for known labels.
    strategy: the strategy used.
  """

  labels: np.ndarray
  confidence: float
  scores: np.ndarray | None
  strategy: str


def _leaf_paths(tree: Any) -> list[tuple[str, Any]]:
  return [(jax.tree_util.keystr(p), leaf)
          for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def last_layer_gradient(gradient: Any, num_classes: int
                        ) -> tuple[jax.Array, jax.Array | None]:
  """Finds the output layer's ``(∇W [D, num_classes], ∇c [num_classes])``.

  The output layer is the Dense layer named "head" (every jaxleak model);
  otherwise the unique 2-D kernel whose last axis is `num_classes`. Its bias
  gradient is the 1-D leaf next to it (None if it has no bias).

  Raises:
    ValueError: if no (or no unique) output layer can be identified.
  """
  leaves = _leaf_paths(gradient)
  kernels = [(p, x) for p, x in leaves
             if np.ndim(x) == 2 and np.shape(x)[-1] == num_classes]
  head = [(p, x) for p, x in kernels if "head" in p]
  chosen = head if len(head) == 1 else kernels
  if len(chosen) != 1:
    raise ValueError(
        "recover_labels: cannot identify the output layer in argument "
        f"'gradient': expected one 2-D kernel of shape [D, {num_classes}] "
        f"(preferably under a module named 'head'), found "
        f"{[p for p, _ in kernels] or 'none'}")
  path, kernel = chosen[0]
  prefix = path.rsplit("[", 1)[0]
  biases = [x for p, x in leaves if p.startswith(prefix) and np.ndim(x) == 1
            and np.shape(x)[0] == num_classes]
  return jnp.asarray(kernel), (jnp.asarray(biases[0]) if biases else None)


def _pick(scores: np.ndarray, batch_size: int) -> tuple[np.ndarray, float]:
  order = np.argsort(scores, kind="stable")
  negative = [int(k) for k in order if scores[k] < 0]
  pool = negative or [int(order[0])]
  chosen = negative[:batch_size]
  i = 0
  while len(chosen) < batch_size:
    chosen.append(pool[i % len(pool)])
    i += 1
  evidence = np.maximum(-scores, 0.0)
  total = float(evidence.sum())
  confidence = (float(evidence[sorted(set(chosen))].sum()) / total
                if total > 0 else 0.0)
  return np.asarray(chosen, np.int32), confidence


def _idlg_scores(w, c, batch_size):
  del c
  if batch_size != 1:
    raise ValueError(
        "recover_labels: strategy 'idlg' is defined for one image; got "
        f"batch_size={batch_size}. Use 'yin' or 'analytic' for batches")
  return jnp.sum(w, axis=0)


def _analytic_scores(w, c, batch_size):
  del w, batch_size
  if c is None:
    raise ValueError("recover_labels: strategy 'analytic' needs the output "
                     "layer's bias gradient, and the model's head has no bias")
  return c


def _yin_scores(w, c, batch_size):
  del c, batch_size
  return jnp.min(w, axis=0)


LABEL_STRATEGIES: dict[str, Callable[..., jax.Array]] = {
    "idlg": _idlg_scores,
    "analytic": _analytic_scores,
    "yin": _yin_scores,
}
"""Score functions ``(∇W, ∇c, B) -> [num_classes]`` by strategy name."""


def recover_labels(observation: threat_model.GradientObservation,
                   strategy: str = "auto") -> LabelRecovery:
  """Recovers the private labels from an observed gradient.

  Args:
    observation: the attacker's view.
    strategy: "idlg", "analytic", "yin", "known" (use
      ``observation.labels``), or "auto": known labels if the observation has
      them, else "idlg" for one image and "yin" for a batch.

  Returns:
    A `LabelRecovery` with B labels and a confidence.

  Raises:
    ValueError: for an unknown strategy, "known" without labels, "idlg" with
      B > 1, or a model whose output layer cannot be found.
  """
  fn = "recover_labels"
  validate.check_choice(strategy, "strategy",
                        ("auto", "known") + tuple(LABEL_STRATEGIES), fn=fn)
  b = observation.batch_size
  if strategy == "auto":
    strategy = ("known" if observation.has_labels
                else "idlg" if b == 1 else "yin")
  if strategy == "known":
    if not observation.has_labels:
      raise ValueError(f"{fn}: strategy 'known' needs an observation with "
                       "labels (observe(..., reveal_labels=True))")
    return LabelRecovery(np.asarray(observation.labels, np.int32), 1.0, None,
                         "known")
  w, c = last_layer_gradient(observation.gradient, observation.num_classes)
  scores = np.asarray(LABEL_STRATEGIES[strategy](w, c, b), np.float64)
  labels, confidence = _pick(scores, b)
  return LabelRecovery(labels, confidence, scores, strategy)
