"""Reconstruction and label metrics, and figures, with the field's definitions.

Names and definitions follow breaching (Geiping et al.) so that numbers are
comparable across papers: per-image MSE, PSNR (dB) and Gaussian-window SSIM on
[0, 1] NHWC images, order-free label accuracy, and Hungarian matching of a
reconstructed batch to its ground truth; LPIPS (`perceptual`) when the
optional `[lpips]` extra is installed. Figures are written as PNG files;
matplotlib is only imported when a figure is saved.
"""

from jaxleak.metrics.figures import save_comparison_grid
from jaxleak.metrics.figures import save_curves
from jaxleak.metrics.figures import save_history_curves
from jaxleak.metrics.figures import save_image_grid
from jaxleak.metrics.image import image_metrics
from jaxleak.metrics.image import match_batch
from jaxleak.metrics.image import mse
from jaxleak.metrics.image import psnr
from jaxleak.metrics.image import ssim
from jaxleak.metrics.labels import label_accuracy
from jaxleak.metrics.perceptual import lpips
from jaxleak.metrics.perceptual import lpips_available

__all__ = (
    "image_metrics",
    "label_accuracy",
    "lpips",
    "lpips_available",
    "match_batch",
    "mse",
    "psnr",
    "save_comparison_grid",
    "save_curves",
    "save_history_curves",
    "save_image_grid",
    "ssim",
)
