"""ROC metrics of a membership attack and the log-log ROC figure.

An attack outputs one score per example, larger meaning "member". With
member scores (positives) and non-member scores (negatives):

* ROC: for every threshold tau, TPR(tau) = P(s_member >= tau) and
  FPR(tau) = P(s_nonmember >= tau), from (0, 0) to (1, 1).
* AUC = P(s_member > s_nonmember) + P(tie) / 2 (the trapezoidal area).
* Balanced accuracy at the best threshold = max_tau (TPR + 1 - FPR) / 2.
* TPR at FPR = alpha, read off the ROC polyline by linear interpolation
  (Carlini et al. 2022 argue low-FPR TPR is the meaningful figure).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import os
from typing import Any, NamedTuple

import numpy as np
import sklearn.metrics

from jaxleak._src import validate
from jaxleak.metrics import figures

__all__ = ("roc_curve", "auc", "tpr_at_fpr", "best_balanced_accuracy",
           "AttackMetrics", "attack_metrics", "save_roc_png")

LOW_FPRS = (0.01, 0.001)


def _scores(x: Any, name: str, fn: str) -> np.ndarray:
  x = np.asarray(x, np.float64)
  validate.check_rank(x, name, 1, fn=fn)
  if x.size == 0:
    raise ValueError(f"{fn}: argument '{name}' is empty")
  if np.isnan(x).any():
    raise ValueError(f"{fn}: argument '{name}' contains NaN scores")
  return x


def roc_curve(member_scores: Any, nonmember_scores: Any
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The ROC curve over all distinct thresholds (`sklearn.metrics.roc_curve`).

  Every threshold is kept (``drop_intermediate=False``), so the low-FPR
  region that `tpr_at_fpr` reads is not thinned.

  Args:
    member_scores: [m] scores of members (positives).
    nonmember_scores: [k] scores of non-members (negatives).

  Returns:
    `(fpr, tpr, thresholds)`, each [d + 1] for d distinct scores; the first
    point is (0, 0) at threshold +inf, thresholds then decrease, and both
    rates are non-decreasing.
  """
  fn = "roc_curve"
  pos = _scores(member_scores, "member_scores", fn)
  neg = _scores(nonmember_scores, "nonmember_scores", fn)
  is_member = np.r_[np.ones(pos.size, bool), np.zeros(neg.size, bool)]
  return sklearn.metrics.roc_curve(is_member, np.r_[pos, neg],
                                   drop_intermediate=False)


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
  """Trapezoidal area under a ROC curve (`sklearn.metrics.auc`)."""
  return float(sklearn.metrics.auc(fpr, tpr))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
  """TPR of the ROC polyline at FPR = `target`, interpolated linearly.

  At a vertical segment (several points with FPR = target) the highest TPR
  is returned: that threshold achieves it without exceeding the FPR.
  """
  validate.check_in_range(target, "target", 0.0, 1.0, fn="tpr_at_fpr")
  i = int(np.searchsorted(fpr, target, side="right")) - 1
  if i + 1 >= fpr.size or fpr[i] == target:
    return float(tpr[i])
  frac = (target - fpr[i]) / (fpr[i + 1] - fpr[i])
  return float(tpr[i] + frac * (tpr[i + 1] - tpr[i]))


def best_balanced_accuracy(fpr: np.ndarray, tpr: np.ndarray) -> float:
  """max over thresholds of (TPR + 1 - FPR) / 2."""
  return float(np.max((tpr + 1.0 - fpr) / 2.0))


class AttackMetrics(NamedTuple):
  """Summary of one attack; `fpr`/`tpr` hold the full ROC for plotting."""
  auc: float
  balanced_accuracy: float
  tpr_at_1pct_fpr: float
  tpr_at_0_1pct_fpr: float
  fpr: np.ndarray
  tpr: np.ndarray

  def summary(self, prefix: str = "") -> dict[str, float]:
    """The scalar metrics as a flat dict (for metrics.json)."""
    return {f"{prefix}auc": self.auc,
            f"{prefix}balanced_accuracy": self.balanced_accuracy,
            f"{prefix}tpr_at_1pct_fpr": self.tpr_at_1pct_fpr,
            f"{prefix}tpr_at_0.1pct_fpr": self.tpr_at_0_1pct_fpr}


def attack_metrics(member_scores: Any, nonmember_scores: Any) -> AttackMetrics:
  """ROC AUC, best balanced accuracy and TPR at 1% and 0.1% FPR."""
  fpr, tpr, _ = roc_curve(member_scores, nonmember_scores)
  return AttackMetrics(
      auc=auc(fpr, tpr), balanced_accuracy=best_balanced_accuracy(fpr, tpr),
      tpr_at_1pct_fpr=tpr_at_fpr(fpr, tpr, LOW_FPRS[0]),
      tpr_at_0_1pct_fpr=tpr_at_fpr(fpr, tpr, LOW_FPRS[1]), fpr=fpr, tpr=tpr)


def save_roc_png(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]]
                 | Mapping[str, AttackMetrics], path: str | os.PathLike, *,
                 title: str | None = None, dpi: int = 100) -> str:
  """Writes ROC curves on log-log axes (low-FPR region visible) to a PNG.

  Args:
    curves: name -> (fpr, tpr) or name -> AttackMetrics; the legend shows
      each curve's AUC.
    path: output file.
    title: optional title.
    dpi: resolution.

  Returns:
    The path written.
  """
  if not curves:
    raise ValueError("save_roc_png: argument 'curves' is empty")
  floor = 1e-4
  lines = {}
  for name, c in curves.items():
    fpr, tpr = (c.fpr, c.tpr) if isinstance(c, AttackMetrics) else c
    fpr, tpr = np.asarray(fpr), np.asarray(tpr)
    # Log axes cannot show 0; clip to a floor below the smallest FPR shown.
    lines[f"{name} (AUC {auc(fpr, tpr):.3f})"] = (np.maximum(fpr, floor),
                                                   np.maximum(tpr, floor))
  lines["chance"] = ([floor, 1], [floor, 1])
  return figures.save_curves(
      lines, path, xlabel="false positive rate", ylabel="true positive rate",
      title=title, logx=True, logy=True, xlim=(floor, 1), ylim=(floor, 1),
      styles={"chance": "k--"}, legend_loc="lower right", figsize=(5.0, 5.0),
      dpi=dpi)
