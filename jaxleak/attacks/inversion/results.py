"""The result every inversion attack returns, and its metrics.

Metric names and definitions follow breaching so numbers are comparable:
``mse``, ``psnr`` (dB, data range 1) and ``ssim`` (Gaussian window; breaching
reports CW-SSIM, which differs) are means over the batch of per-image values
on reconstructions clipped to [0, 1], after re-ordering them to the ground
truth by an optimal (Hungarian) assignment; ``label_acc`` is the order-free
multiset overlap of recovered and true labels; ``lpips`` (AlexNet LPIPS, see
`jaxleak.metrics.perceptual`; lower is closer) is the mean over the same
matched pairs when the optional ``[lpips]`` extra is installed, else None.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
from typing import Any, NamedTuple

import numpy as np

from jaxleak import metrics as metrics_lib

__all__ = ("InversionResult", "GroundTruth", "evaluate", "METRIC_NAMES")

METRIC_NAMES = ("mse", "psnr", "ssim", "lpips", "label_acc")


class GroundTruth(NamedTuple):
  """The private batch, for scoring only (attacks never optimise with it)."""

  images: Any
  labels: Any | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class InversionResult:
  """What an attack returns.

  Attributes:
    attack: the attack's registry name.
    images: ``[B, H, W, C]`` reconstructions, float32 clipped to [0, 1]
      (attacks that optimise unconstrained pixels are clipped here).
    labels: ``[B]`` recovered (or known) labels, int32.
    loss_history: the objective at every step of the chosen restart
      (float64; NaN where it diverged).
    wall_time_s: wall-clock seconds for the whole attack, compilation and
      all restarts included.
    metrics: `evaluate`'s dict when ground truth was given, else None.
    label_confidence: the label strategy's confidence (None for attacks that
      optimise labels jointly without a score).
    restart_losses: final objective of every restart; the lowest was chosen.
    hyperparams: the attack's resolved hyper-parameters.
  """

  attack: str
  images: np.ndarray
  labels: np.ndarray
  loss_history: np.ndarray
  wall_time_s: float
  metrics: dict[str, Any] | None = None
  label_confidence: float | None = None
  restart_losses: tuple[float, ...] = ()
  hyperparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def final_loss(self) -> float:
    return float(min(self.restart_losses)) if self.restart_losses else float(
        self.loss_history[-1])

  def summary(self) -> dict[str, Any]:
    """Headline numbers as plain Python values (JSON-friendly)."""
    out: dict[str, Any] = {"attack": self.attack,
                           "final_loss": self.final_loss,
                           "wall_time_s": self.wall_time_s,
                           "steps": int(len(self.loss_history)),
                           "restarts": len(self.restart_losses),
                           "labels": [int(v) for v in self.labels]}
    if self.label_confidence is not None:
      out["label_confidence"] = self.label_confidence
    if self.metrics:
      out.update({k: self.metrics[k] for k in METRIC_NAMES
                  if k in self.metrics})
    return out


def evaluate(images: Any, labels: Any, ground_truth: Any,
             true_labels: Any = None, *, lpips: bool | None = None
             ) -> dict[str, Any]:
  """Scores a reconstruction against the private batch.

  Args:
    images: ``[B, H, W, C]`` reconstructions (clipped to [0, 1] here).
    labels: ``[B]`` recovered labels, or None.
    ground_truth: ``[B, H, W, C]`` private images in [0, 1].
    true_labels: ``[B]`` private labels, or None (then no ``label_acc``).
    lpips: compute LPIPS; None (default) computes it when the ``[lpips]``
      extra is installed and the images have 1 or 3 channels.

  Returns:
    ``{"mse", "psnr", "ssim", "lpips", "label_acc", "per_image",
    "permutation", "ssim_filter_size"}`` as plain Python values;
    ``label_acc`` is None without both label arrays, ``lpips`` None when not
    computed.
  """
  rec = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  gt = np.asarray(ground_truth, np.float32)
  out = metrics_lib.image_metrics(rec, gt, match=rec.shape[0] > 1)
  acc = None
  if labels is not None and true_labels is not None:
    acc = metrics_lib.label_accuracy(np.asarray(labels),
                                     np.asarray(true_labels))
  if lpips is None:
    lpips = metrics_lib.lpips_available() and gt.shape[-1] in (1, 3)
  per_image = dict(out["per_image"])
  mean_lpips = None
  if lpips:
    rec4, gt4 = (rec[None], gt[None]) if gt.ndim == 3 else (rec, gt)
    values = metrics_lib.lpips(rec4[np.asarray(out["permutation"])], gt4)
    per_image["lpips"] = values.tolist()
    mean_lpips = float(values.mean())
  return {"mse": out["mse"], "psnr": out["psnr"], "ssim": out["ssim"],
          "lpips": mean_lpips, "label_acc": acc, "per_image": per_image,
          "permutation": out["permutation"],
          "ssim_filter_size": out["ssim_filter_size"]}
