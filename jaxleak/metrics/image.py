"""Image reconstruction metrics with the field's standard definitions.

All functions take images in NHWC (a batch) or HWC (one image) layout with
values in [0, data_range] (default [0, 1]) and return one value per image:
shape [B] for a batch, a scalar for a single image. Average them yourself when
you need a batch number, e.g. ``psnr(x, y).mean()``, which is how breaching
and Geiping et al. report PSNR (mean of per-image PSNRs). Reconstructions are
not clipped here; clip them to the data range first if the attack's output
can leave it.

`mse`, `psnr` and `ssim` are pure JAX and can be used under ``jax.jit`` (and
differentiated, e.g. as an attack objective).
"""

from __future__ import annotations

import functools
from typing import Any

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize

from jaxleak._src import validate

Array = jax.Array

MATCH_METRICS = ("mse", "psnr", "ssim")

# SSIM constants of Wang et al. (2004), as in skimage and dm-pix.
SSIM_FILTER_SIZE = 11
SSIM_FILTER_SIGMA = 1.5


def _as_float(x: Any) -> Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  return x


# Jitted cores: called eagerly, the public functions run one compiled program
# instead of dispatching (and compiling) every operation separately; inside a
# user's jit they are simply inlined.
@jax.jit
def _mse(x: Array, y: Array) -> Array:
  return jnp.mean(jnp.square(x - y), axis=(-3, -2, -1))


@jax.jit
def _psnr(x: Array, y: Array, data_range: float) -> Array:
  m = _mse(x, y)
  positive = m > 0
  # The inner where keeps log10 (and its gradient) finite where m == 0.
  value = 10.0 * jnp.log10(data_range**2 / jnp.where(positive, m, 1.0))
  return jnp.where(positive, value, jnp.inf)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _ssim(x: Array, y: Array, data_range: float, filter_size: int,
          filter_sigma: float) -> Array:
  return pix.ssim(x, y, max_val=data_range, filter_size=filter_size,
                  filter_sigma=filter_sigma)


def _check_pair(x: Any, y: Any, fn: str, names: tuple[str, str] = ("x", "y"),
                ranks: tuple[int, ...] = (3, 4)) -> tuple[Array, Array]:
  """Validates two image arrays of identical shape and returns them as floats."""
  a, b = names
  what = "HWC image or NHWC batch" if 3 in ranks else "NHWC batch"
  validate.check_rank(x, a, ranks, fn=fn, what=what)
  validate.check_rank(y, b, ranks, fn=fn, what=what)
  if np.shape(x) != np.shape(y):
    raise ValueError(
        f"{fn}: argument '{b}' must have the same shape as '{a}', got "
        f"{a} {tuple(np.shape(x))} and {b} {tuple(np.shape(y))}")
  return _as_float(x), _as_float(y)


def mse(x: Any, y: Any) -> Array:
  """Mean squared error per image.

  Args:
    x: images [B, H, W, C] or one image [H, W, C].
    y: images of the same shape.

  Returns:
    [B] (or a scalar for one image): mean over H, W, C of (x - y)^2.

  Raises:
    ValueError: if a rank is not 3 or 4, or the shapes differ.
  """
  x, y = _check_pair(x, y, "mse")
  return _mse(x, y)


def psnr(x: Any, y: Any, data_range: float = 1.0) -> Array:
  """Peak signal-to-noise ratio per image, in dB.

  PSNR = 10 log10(data_range^2 / MSE). Identical images (MSE = 0) give +inf
  deliberately, rather than a large finite number that would silently bias a
  batch mean; filter with ``jnp.isfinite`` if needed.

  Args:
    x: images [B, H, W, C] or one image [H, W, C].
    y: images of the same shape.
    data_range: the dynamic range of the images (1.0 for [0, 1] floats, 255
      for uint8).

  Returns:
    [B] (or a scalar for one image).

  Raises:
    ValueError: if a rank is not 3 or 4, the shapes differ, or data_range <= 0.
  """
  x, y = _check_pair(x, y, "psnr")
  validate.check_positive(data_range, "data_range", fn="psnr")
  return _psnr(x, y, data_range)


def ssim(x: Any, y: Any, data_range: float = 1.0, *,
         filter_size: int = SSIM_FILTER_SIZE,
         filter_sigma: float = SSIM_FILTER_SIGMA) -> Array:
  """Structural similarity per image (Wang et al., 2004), Gaussian window.

  Computed with ``dm_pix.ssim``: an 11x11 Gaussian window with sigma 1.5,
  K1 = 0.01, K2 = 0.03, population (not sample) covariances, averaged over the
  'valid' window positions and the channels. This equals
  ``skimage.metrics.structural_similarity(x, y, gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=data_range,
  channel_axis=-1)``.

  Args:
    x: images [B, H, W, C] or one image [H, W, C].
    y: images of the same shape.
    data_range: the dynamic range of the images.
    filter_size: Gaussian window size; H and W must be at least this large.
    filter_sigma: Gaussian window standard deviation.

  Returns:
    [B] (or a scalar for one image); 1 for identical images.

  Raises:
    ValueError: for bad ranks or shapes, or images smaller than the window.
  """
  x, y = _check_pair(x, y, "ssim")
  validate.check_positive(data_range, "data_range", fn="ssim")
  validate.check_positive(filter_size, "filter_size", fn="ssim")
  h, w = x.shape[-3], x.shape[-2]
  if min(h, w) < filter_size:
    raise ValueError(
        f"ssim: argument 'x' has spatial size {(h, w)}, smaller than the SSIM "
        f"window (filter_size={filter_size}); pass a smaller odd filter_size")
  return _ssim(x, y, data_range, filter_size, filter_sigma)


@functools.partial(jax.jit, static_argnames=("metric", "filter_size"))
def _pairwise(rec: Array, gt: Array, metric: str, data_range: float,
              filter_size: int) -> Array:
  """[B_gt, B_rec] metric between every ground-truth and reconstructed image."""

  def row(g):
    # One ground-truth image against all reconstructions; lax.map keeps memory
    # at O(B) images instead of O(B^2).
    g = jnp.broadcast_to(g, rec.shape)
    if metric == "mse":
      return mse(rec, g)
    if metric == "psnr":
      return psnr(rec, g, data_range)
    return ssim(rec, g, data_range, filter_size=filter_size)

  return jax.lax.map(row, gt)


@functools.partial(jax.jit, static_argnames="filter_size")
def _all_metrics(rec: Array, gt: Array, data_range: float,
                 filter_size: int) -> dict[str, Array]:
  # One compiled program for the three metrics.
  return {"mse": mse(rec, gt), "psnr": psnr(rec, gt, data_range),
          "ssim": ssim(rec, gt, data_range, filter_size=filter_size)}


def _ssim_window(shape: tuple[int, ...]) -> int:
  # The standard 11x11 window, shrunk to the largest odd size that fits images
  # smaller than 11 pixels (e.g. 8x8 toy reconstructions).
  m = min(shape[-3], shape[-2])
  return min(SSIM_FILTER_SIZE, m if m % 2 else m - 1)


def match_batch(reconstructions: Any, ground_truth: Any, *,
                metric: str = "mse", data_range: float = 1.0) -> np.ndarray:
  """Optimal one-to-one matching of reconstructions to ground-truth images.

  Batch gradient inversion recovers images in an arbitrary order. This solves
  the assignment problem (Hungarian algorithm,
  ``scipy.optimize.linear_sum_assignment``) on the pairwise per-image metric,
  minimising total MSE or maximising total PSNR / SSIM.

  Args:
    reconstructions: [B, H, W, C].
    ground_truth: [B, H, W, C].
    metric: "mse", "psnr" or "ssim".
    data_range: the dynamic range of the images.

  Returns:
    perm: int array [B] such that ``reconstructions[perm]`` is aligned with
    ``ground_truth`` (perm[i] is the reconstruction assigned to image i).

  Raises:
    ValueError: for bad shapes or an unknown metric.
  """
  fn = "match_batch"
  validate.check_choice(metric, "metric", MATCH_METRICS, fn=fn)
  rec, gt = _check_pair(reconstructions, ground_truth, fn,
                        names=("reconstructions", "ground_truth"), ranks=(4,))
  validate.check_positive(data_range, "data_range", fn=fn)
  values = np.asarray(_pairwise(rec, gt, metric, data_range,
                                _ssim_window(rec.shape)), np.float64)
  if metric == "mse":
    cost = values
  else:
    # Maximise; cap +inf PSNR (exact copies) so the solver sees finite costs.
    cost = -np.minimum(values, 1e6)
  rows, cols = optimize.linear_sum_assignment(cost)
  perm = np.empty(gt.shape[0], dtype=np.int64)
  perm[rows] = cols
  return perm


def image_metrics(reconstructions: Any, ground_truth: Any, *,
                  match: bool = True, match_metric: str = "mse",
                  data_range: float = 1.0) -> dict[str, Any]:
  """MSE, PSNR and SSIM of a reconstructed batch, optionally after re-ordering.

  Args:
    reconstructions: [B, H, W, C] (or one image [H, W, C]).
    ground_truth: same shape.
    match: re-order the reconstructions with `match_batch` first (the usual
      protocol for batch inversion, where the order is not recovered).
    match_metric: metric used for matching ("mse", "psnr" or "ssim").
    data_range: the dynamic range of the images.

  Returns:
    A dict of plain Python values (JSON-serialisable):
      "mse", "psnr", "ssim": means over the batch of the per-image values
        (PSNR is the mean of per-image dB values; +inf if any image is exact);
      "per_image": {"mse": [...], "psnr": [...], "ssim": [...]} in
        ground-truth order;
      "permutation": the indices applied to the reconstructions (identity
        when match=False);
      "ssim_filter_size": the SSIM window used (11, or the largest odd size
        that fits images smaller than 11 pixels).

  Raises:
    ValueError: for bad shapes or options.
  """
  fn = "image_metrics"
  rec, gt = _check_pair(reconstructions, ground_truth, fn,
                        names=("reconstructions", "ground_truth"))
  validate.check_choice(match_metric, "match_metric", MATCH_METRICS, fn=fn)
  validate.check_positive(data_range, "data_range", fn=fn)
  if rec.ndim == 3:
    rec, gt = rec[None], gt[None]
  if match:
    perm = match_batch(rec, gt, metric=match_metric, data_range=data_range)
    rec = rec[perm]
  else:
    perm = np.arange(gt.shape[0])
  window = _ssim_window(gt.shape)
  per_image = {k: np.asarray(v, np.float64) for k, v in
               _all_metrics(rec, gt, data_range, window).items()}
  result: dict[str, Any] = {k: float(v.mean()) for k, v in per_image.items()}
  result["per_image"] = {k: v.tolist() for k, v in per_image.items()}
  result["permutation"] = [int(i) for i in perm]
  result["ssim_filter_size"] = window
  return result
