"""Auditing images with I²F: noise draws, per-image predictions, correlations, plots.

Shared by the ``jaxleak i2f`` command and ``experiments/influence``. The
pattern is: draw a Gaussian gradient perturbation ``delta ~ N(0, s^2 I)``
shaped like the shared gradient (`gaussian_perturbation`), predict the
attacker's error with `predict` (I²F at several damping values, the lower
bound and ``sqrt(E[I^2])``), and compare predictions with measured attack
errors with `correlation` and `save_scatter`.

I²F predicts the *norm* of the reconstruction error ``||x_hat - x0||``; the
matching root-mean-square error per pixel is ``I / sqrt(d_x)``
(`predicted_rmse`). Pearson and Spearman coefficients are scale-free, so the
choice does not change them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import math
from typing import Any
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from jaxleak._src import tree_util
from jaxleak._src import validate
from jaxleak.influence.i2f import i2f as _i2f
from jaxleak.influence.i2f import i2f_expectation as _i2f_expectation
from jaxleak.influence.i2f import i2f_lower_bound as _i2f_lower_bound

__all__ = (
    "gaussian_perturbation",
    "stratified_indices",
    "predict",
    "predicted_rmse",
    "correlation",
    "save_scatter",
)


def gaussian_perturbation(params: Any, std: float, key: Any) -> Any:
  """``delta ~ N(0, std^2 I)`` shaped like the trainable params (the gradient).

  One normal draw per leaf, from `key` split in leaf order. To attack a
  gradient that carries exactly this `delta`, add it to the clean observed
  gradient (as `experiments/influence` and ``jaxleak i2f`` do).
  """
  validate.check_positive(std, "std", fn="gaussian_perturbation",
                          allow_zero=True)
  key = validate.canonical_key(key, "gaussian_perturbation")
  return tree_util.gaussian_like(tree_util.trainable(params), key, std)


def stratified_indices(labels: Any, n: int, seed: int = 0) -> np.ndarray:
  """`n` indices cycling through the classes (a prefix-stable choice).

  Each class's indices are shuffled with `seed`; the result takes one index
  of class 0, 1, ..., C-1, then the next of each, and so on, so the first
  ``m < n`` of ``stratified_indices(labels, n)`` equal
  ``stratified_indices(labels, m)`` (a larger study extends a smaller one).
  """
  labels = np.asarray(labels)
  validate.check_positive(n, "n", fn="stratified_indices")
  if n > labels.size:
    raise ValueError(f"stratified_indices: argument 'n' must be at most the "
                     f"number of examples {labels.size}, got {n}")
  rng = np.random.default_rng(seed)
  pools = [list(rng.permutation(np.flatnonzero(labels == c)))
           for c in np.unique(labels)]
  out: list[int] = []
  while len(out) < n:
    for pool in pools:
      if pool and len(out) < n:
        out.append(int(pool.pop(0)))
  return np.asarray(out, np.int64)


def predict(apply_fn: Any, params: Any, x: Any, y: Any, delta: Any, *,
            eps_values: Sequence[float] = (1.0,), lower_bound: bool = True,
            noise_std: float | None = None, key: Any = 0,
            num_probes: int = 8) -> dict[str, float]:
  """I²F predictions for one victim batch and one perturbation.

  Returns a dict with ``i2f_eps{eps:g}`` for each damping value (the first is
  also ``i2f``), ``lower_bound``, ``jdelta_norm`` and ``lambda_max`` (if
  `lower_bound`), ``delta_norm``, and with `noise_std` the Hutchinson
  ``i2f_expected = sqrt(E[I^2])`` at the first eps (no noise sampled).
  """
  # Checked before any I²F solve, so a bad value fails at once.
  for eps in eps_values:
    validate.check_positive(eps, "eps_values", fn="predict")
  if noise_std is not None:
    validate.check_positive(noise_std, "noise_std", fn="predict",
                            allow_zero=True)
  out: dict[str, float] = {}
  for i, eps in enumerate(eps_values):
    norm, _ = _i2f(apply_fn, params, x, y, delta, eps=float(eps))
    out[f"i2f_eps{eps:g}"] = float(norm)
    if i == 0:
      out["i2f"] = float(norm)
  if lower_bound:
    lb, jd, lam = _i2f_lower_bound(apply_fn, params, x, y, delta,
                                          return_parts=True)
    out.update(lower_bound=float(lb), jdelta_norm=float(jd),
               lambda_max=float(lam))
  out["delta_norm"] = float(math.sqrt(sum(
      float(jnp.sum(jnp.square(leaf))) for leaf in jax.tree.leaves(delta))))
  if noise_std is not None:
    e = _i2f_expectation(apply_fn, params, x, y, noise_std, key=key,
                                eps=float(eps_values[0]),
                                num_probes=num_probes)
    out["i2f_expected"] = float(math.sqrt(max(float(e), 0.0)))
  return out


def predicted_rmse(i2f_norm: Any, image_shape: Sequence[int]) -> Any:
  """``I / sqrt(d_x)``: I²F as a per-pixel root-mean-square error."""
  return np.asarray(i2f_norm) / math.sqrt(float(np.prod(image_shape)))


def _coefficient(statistic: Callable[..., Any], a: np.ndarray,
                 b: np.ndarray) -> float:
  """`scipy.stats` correlation coefficient; NaN for constant or short input."""
  if a.size < 2:
    return float("nan")
  with warnings.catch_warnings():
    # A constant series has no correlation; report NaN without a warning.
    warnings.simplefilter("ignore", scipy.stats.ConstantInputWarning)
    return float(statistic(a, b).statistic)


def correlation(predicted: Any, actual: Any) -> dict[str, float]:
  """Pearson, Spearman and log-log Pearson between two positive series.

  Returns ``{"pearson", "spearman", "pearson_log", "n"}``; ``pearson_log``
  uses ``log10`` of both (NaN if any value is not positive).
  """
  p = np.asarray(predicted, float).ravel()
  a = np.asarray(actual, float).ravel()
  if p.shape != a.shape:
    raise ValueError(f"correlation: arguments 'predicted' and 'actual' differ "
                     f"in length ({p.size} vs {a.size})")
  if p.size < 3:
    raise ValueError(f"correlation: need at least 3 pairs, got {p.size}")
  ok = np.isfinite(p) & np.isfinite(a)
  p, a = p[ok], a[ok]
  pearson = scipy.stats.pearsonr
  logs = (_coefficient(pearson, np.log10(p), np.log10(a))
          if np.all(p > 0) and np.all(a > 0) else float("nan"))
  return {"pearson": _coefficient(pearson, p, a),
          "spearman": _coefficient(scipy.stats.spearmanr, p, a),
          "pearson_log": logs, "n": int(p.size)}


def save_scatter(series: Mapping[str, tuple[Any, Any, Any]], path: str, *,
                 xlabel: str = "I²F prediction (RMSE)",
                 ylabel: str = "attack RMSE", title: str | None = None,
                 log: bool = True, diagonal: bool = True) -> str:
  """Scatter plot, one panel per entry ``name -> (predicted, actual, colour_by)``.

  ``colour_by`` (e.g. the noise variance) colours the points, one colour per
  distinct value, with a legend; None for one colour. The panel title carries
  the Pearson and Spearman coefficients. `diagonal` draws y = x.
  """
  from jaxleak.metrics import figures  # pylint: disable=g-import-not-at-top
  n = len(series)
  fig = figures.new_figure((4.2 * n, 4.0), 110)
  for i, (name, (pred, act, colour)) in enumerate(series.items()):
    ax = fig.add_subplot(1, n, i + 1)
    pred = np.asarray(pred, float)
    act = np.asarray(act, float)
    if colour is None:
      ax.scatter(pred, act, s=14, alpha=0.8)
    else:
      colour = np.asarray(colour)
      for v in np.unique(colour):
        m = colour == v
        label = f"{v:g}" if np.issubdtype(colour.dtype, np.number) else str(v)
        ax.scatter(pred[m], act[m], s=14, alpha=0.8, label=label)
      ax.legend(fontsize=7, title_fontsize=7, loc="upper left")
    if diagonal:
      lo = np.nanmin(np.concatenate([pred[pred > 0], act[act > 0]])) if log \
          else np.nanmin(np.concatenate([pred, act]))
      hi = np.nanmax(np.concatenate([pred, act]))
      ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    if log:
      ax.set_xscale("log")
      ax.set_yscale("log")
    c = correlation(pred, act)
    ax.set_title(f"{name}\nPearson {c['pearson']:.3f}, Spearman "
                 f"{c['spearman']:.3f} (n={c['n']})", fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return figures.save_figure(fig, path, 110)
