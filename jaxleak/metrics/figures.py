"""PNG figures for reconstructions and curves (matplotlib, Agg canvas).

Matplotlib is imported inside the functions, so ``import jaxleak.metrics``
stays fast, and figures are drawn on an explicit Agg canvas (``Figure`` plus
``FigureCanvasAgg``) rather than through pyplot, so no global backend or
figure state is touched and the functions are safe in headless jobs.

`new_figure` and `save_figure` are public for multi-panel figures that the
ready-made helpers do not cover (the I²F audit, the launchers' studies).

Figure sizes are deterministic: a grid with `ncols` x `nrows` cells is exactly
``round(ncols * cell_size * dpi)`` x ``round(nrows * cell_size * dpi)`` pixels
(no tight bounding box), which keeps figures from different runs aligned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import math
import os
from typing import Any

import numpy as np

from jaxleak._src import validate

PathLike = str | os.PathLike


def new_figure(figsize: tuple[float, float], dpi: int):
  """A matplotlib `Figure` on its own Agg canvas (no pyplot, no global state)."""
  # pylint: disable=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  # pylint: enable=g-import-not-at-top

  fig = Figure(figsize=figsize, dpi=dpi)
  FigureCanvasAgg(fig)
  return fig


def save_figure(fig, path: PathLike, dpi: int, *, tight: bool = False) -> str:
  """Writes a `new_figure` figure as PNG (parent folders created); the path.

  With `tight`, the saved area is cropped to what is drawn
  (``bbox_inches="tight"``).
  """
  path = os.fspath(path)
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  fig.savefig(path, format="png", dpi=dpi,
              bbox_inches="tight" if tight else None)
  return path


def _as_images(images: Any, name: str, fn: str) -> np.ndarray:
  arr = np.asarray(images)
  validate.check_rank(arr, name, (3, 4), fn=fn,
                      what="HWC image or NHWC batch")
  if arr.ndim == 3:
    arr = arr[None]
  if arr.shape[-1] not in (1, 3, 4):
    raise ValueError(
        f"{fn}: argument '{name}' must have 1, 3 or 4 channels in the last "
        f"axis (NHWC), got shape {arr.shape}")
  if arr.shape[0] == 0:
    raise ValueError(f"{fn}: argument '{name}' holds no images")
  if np.issubdtype(arr.dtype, np.floating):
    # Display range [0, 1]; reconstructions may overshoot.
    arr = np.clip(arr.astype(np.float32), 0.0, 1.0)
  return arr


def _check_labels(labels: Sequence[str] | None, n: int, name: str, fn: str,
                  what: str) -> None:
  if labels is not None and len(labels) != n:
    raise ValueError(
        f"{fn}: argument '{name}' must have one entry per {what} ({n}), got "
        f"{len(labels)}")


def save_image_grid(images: Any, path: PathLike, *, nrow: int | None = None,
                    titles: Sequence[str] | None = None,
                    row_labels: Sequence[str] | None = None,
                    cell_size: float = 1.5, dpi: int = 100) -> str:
  """Saves images as a grid PNG.

  Args:
    images: [B, H, W, C] (or [H, W, C]) with C in {1, 3, 4}; float images are
      clipped to [0, 1], integer images are shown as uint8. Single-channel
      images use a grey colormap.
    path: output file (parent directories are created).
    nrow: images per row (torchvision's convention); default min(B, 8).
    titles: one title per image (e.g. its PSNR), or None.
    row_labels: one label per grid row, written left of the row, or None.
    cell_size: size of one cell in inches.
    dpi: resolution; the PNG is ncols*cell_size*dpi x nrows*cell_size*dpi.

  Returns:
    The path written, as a string.

  Raises:
    ValueError: for bad shapes or label counts.
  """
  fn = "save_image_grid"
  imgs = _as_images(images, "images", fn)
  n = imgs.shape[0]
  ncols = min(n, 8) if nrow is None else nrow
  validate.check_positive(ncols, "nrow", fn=fn)
  ncols = int(min(ncols, n))
  nrows = math.ceil(n / ncols)
  _check_labels(titles, n, "titles", fn, "image")
  _check_labels(row_labels, nrows, "row_labels", fn, "grid row")
  validate.check_positive(cell_size, "cell_size", fn=fn)
  validate.check_positive(dpi, "dpi", fn=fn)

  fig = new_figure((ncols * cell_size, nrows * cell_size), dpi)
  axes = fig.subplots(nrows, ncols, squeeze=False)
  grey = imgs.shape[-1] == 1
  for idx, ax in enumerate(axes.ravel()):
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
      spine.set_visible(False)
    if idx >= n:
      ax.set_axis_off()
      continue
    img = imgs[idx]
    if grey:
      vmax = 1.0 if np.issubdtype(img.dtype, np.floating) else 255
      ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=vmax,
                interpolation="nearest")
    else:
      ax.imshow(img, interpolation="nearest")
    if titles is not None and titles[idx]:
      ax.set_title(titles[idx], fontsize=7, pad=2)
  if row_labels is not None:
    for r, label in enumerate(row_labels):
      axes[r, 0].set_ylabel(label, fontsize=7)
  left = 0.12 if row_labels is not None else 0.02
  fig.subplots_adjust(left=left / max(1, ncols / 4), right=0.99, bottom=0.01,
                      top=0.9 if titles is not None else 0.99, wspace=0.05,
                      hspace=0.25 if titles is not None else 0.05)
  return save_figure(fig, path, dpi)


def save_comparison_grid(ground_truth: Any, reconstructions: Any,
                         path: PathLike, *, show_psnr: bool = True,
                         match: bool = False, data_range: float = 1.0,
                         labels: Sequence[str] = ("ground truth",
                                                  "reconstruction"),
                         cell_size: float = 1.5, dpi: int = 100) -> str:
  """Two-row PNG: ground truth on top, reconstructions below.

  Args:
    ground_truth: [B, H, W, C] (or [H, W, C]).
    reconstructions: same shape.
    path: output file.
    show_psnr: title each reconstruction with its PSNR against the image
      above it.
    match: re-order the reconstructions with `match_batch` (MSE) first.
    data_range: dynamic range for PSNR and matching.
    labels: the two row labels.
    cell_size: size of one cell in inches.
    dpi: resolution; the PNG is B*cell_size*dpi x 2*cell_size*dpi pixels.

  Returns:
    The path written, as a string.

  Raises:
    ValueError: if the shapes differ or are not images.
  """
  from jaxleak.metrics import image  # pylint: disable=g-import-not-at-top

  fn = "save_comparison_grid"
  gt = _as_images(ground_truth, "ground_truth", fn)
  rec = _as_images(reconstructions, "reconstructions", fn)
  if gt.shape != rec.shape:
    raise ValueError(
        f"{fn}: argument 'reconstructions' must have the same shape as "
        f"'ground_truth', got {rec.shape} and {gt.shape}")
  _check_labels(labels, 2, "labels", fn, "row")
  if match and gt.shape[0] > 1:
    rec = rec[image.match_batch(rec, gt, data_range=data_range)]
  n = gt.shape[0]
  titles = None
  if show_psnr:
    values = np.asarray(image.psnr(rec, gt, data_range))
    titles = [""] * n + [f"{v:.2f} dB" for v in values]
  return save_image_grid(np.concatenate([gt, rec]), path, nrow=n,
                         titles=titles, row_labels=list(labels),
                         cell_size=cell_size, dpi=dpi)


def save_curves(curves: Mapping[str, tuple[Any, Any]], path: PathLike, *,
                xlabel: str, ylabel: str, title: str | None = None,
                logy: bool = False, logx: bool = False,
                xlim: tuple[float, float] | None = None,
                ylim: tuple[float, float] | None = None,
                styles: Mapping[str, str] | None = None,
                legend_loc: str = "best",
                figsize: tuple[float, float] = (6.0, 4.0),
                dpi: int = 100) -> str:
  """Line plot of named curves (learning curves, attack losses, ...).

  Args:
    curves: {name: (xs, ys)} with 1-D xs and ys of equal length.
    path: output file.
    xlabel: x-axis label.
    ylabel: y-axis label.
    title: optional title.
    logy: logarithmic y axis (non-positive values are masked).
    logx: logarithmic x axis (non-positive values are masked).
    xlim: optional x-axis limits.
    ylim: optional y-axis limits.
    styles: optional matplotlib format string per curve name (e.g. "k--").
    legend_loc: matplotlib legend location.
    figsize: figure size in inches.
    dpi: resolution; the PNG is figsize*dpi pixels.

  Returns:
    The path written, as a string.

  Raises:
    ValueError: for an empty mapping or mismatched xs/ys.
  """
  fn = "save_curves"
  if not isinstance(curves, Mapping) or not curves:
    raise ValueError(
        f"{fn}: argument 'curves' must be a non-empty mapping "
        f"name -> (xs, ys), got {curves!r}")
  validate.check_positive(dpi, "dpi", fn=fn)
  prepared = []
  for name, value in curves.items():
    try:
      xs, ys = value
    except (TypeError, ValueError):
      raise ValueError(
          f"{fn}: argument 'curves'[{name!r}] must be a pair (xs, ys)") from None
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    if xs.ndim != 1 or xs.shape != ys.shape:
      raise ValueError(
          f"{fn}: argument 'curves'[{name!r}] must have 1-D xs and ys of equal "
          f"length, got shapes {xs.shape} and {ys.shape}")
    prepared.append((str(name), xs, ys))

  fig = new_figure(tuple(figsize), dpi)
  ax = fig.add_subplot(1, 1, 1)
  styles = styles or {}
  for name, xs, ys in prepared:
    fmt = styles.get(name)
    if fmt is None:
      ax.plot(xs, ys, label=name)
    else:
      ax.plot(xs, ys, fmt, lw=0.8, label=name)
  if logy:
    ax.set_yscale("log", nonpositive="mask")
  if logx:
    ax.set_xscale("log", nonpositive="mask")
  if xlim is not None:
    ax.set_xlim(*xlim)
  if ylim is not None:
    ax.set_ylim(*ylim)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  ax.grid(True, which="both" if (logx or logy) else "major", alpha=0.3)
  if any(name for name, _, _ in prepared):
    ax.legend(loc=legend_loc, fontsize=8)
  fig.tight_layout()  # Re-arranges axes only; the canvas size is unchanged.
  return save_figure(fig, path, dpi)


def save_history_curves(history: Sequence[Mapping[str, Any]], x: str,
                        columns: Mapping[str, str], path: PathLike,
                        **kwargs: Any) -> str:
  """`save_curves` of columns of a metrics history (one record per entry).

  Args:
    history: records such as a run's ``history`` (``[{"epoch": 1,
      "test_loss": ...}, ...]``).
    x: the record key on the x axis (also the default ``xlabel``).
    columns: {curve name: record key}, in legend order.
    path: output file.
    **kwargs: `save_curves` keywords (``ylabel`` is required there).

  Returns:
    The path written, as a string.
  """
  xs = [r[x] for r in history]
  kwargs.setdefault("xlabel", x)
  return save_curves({name: (xs, [r[key] for r in history])
                      for name, key in columns.items()}, path, **kwargs)
