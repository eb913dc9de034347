"""Lower bounds on epsilon from in/out canary scores.

A canary is inserted with probability 1/2; an attack gives every canary a
score (higher = "in"). Any (epsilon, delta)-DP mechanism bounds how well the
in-scores can be told apart from the out-scores, so a good separation
*falsifies* small epsilons. Each estimator returns the largest epsilon it
falsifies at confidence ``1 - significance``: a statistically valid lower
bound on the mechanism's true epsilon (under each method's assumption).

Methods (the first two from `jax_privacy.auditing.CanaryScoreAuditor`,
jax-privacy 2.0.0, Bonferroni-corrected over every threshold):

  * ``"clopper_pearson"`` (Nasr et al. 2021, arXiv 2101.04535): one canary per
    *independent* run. At a threshold, Clopper-Pearson upper bounds FPR_ub and
    FNR_ub (each at significance/2) give
    ``eps >= ln(1 - FNR_ub - delta) - ln(FPR_ub)``. Valid for any mechanism.
  * ``"one_run"`` (Steinke, Nasr, Jagielski 2023, arXiv 2305.08846): all
    canaries in *one* run; guessing "in" for the top-scored canaries is a
    sequence of Bernoulli guesses whose accuracy an (eps, delta)-DP mechanism
    caps at ``e^eps / (1 + e^eps)`` (plus a delta term). Valid for any
    mechanism, but it saturates: with m canaries it cannot certify much more
    than ``ln(m)``-ish epsilons, whatever the attack.
  * ``"gdp"`` (Nasr et al. 2023, arXiv 2302.07956): the same Clopper-Pearson
    bounds, turned into a lower bound on the Gaussian-DP parameter
    ``mu >= Phi^-1(1 - FPR_ub) - Phi^-1(FNR_ub)`` (maximised over thresholds,
    Bonferroni over 2 x thresholds), then converted to epsilon at `delta` as
    the Gaussian mechanism with noise ``1 / mu``
    (`dp_accounting.get_epsilon_gaussian`). Much tighter than Clopper-Pearson
    at large epsilon, but the conversion *assumes* the mechanism's trade-off
    curve is Gaussian: exact for full-batch DP-SGD (a composition of Gaussian
    mechanisms), a heuristic otherwise.

How tight can a bound be? With 1000 canaries (500 in, 500 out) and *perfect*
separation, ``one_run`` certifies at most 4.76 and ``clopper_pearson`` 4.64
(10 000 canaries: 6.44 and 6.95), at delta 1e-5 and confidence 0.95: the
statistics cap the bound near ``ln(m)`` whatever the mechanism. For a
Gaussian mechanism the separation is never perfect, so at epsilon 8 these
bounds sit far below the theory; ``gdp`` exploits the known shape of the
trade-off curve and is not capped this way.

Why ``"gdp"`` is computed here and not with jax-privacy: in jax-privacy 2.0.0
(the only release on PyPI), ``CanaryScoreAuditor.epsilon_from_gdp`` takes
``max |mu|`` over thresholds. A *negative* mu (a threshold where the upper
confidence bounds make the attack look worse than chance) is no evidence
against privacy, yet its absolute value becomes a positive bound: on scores
from a perfectly private mechanism it reports epsilon > 0
(`tests/auditing/test_estimators.py` shows it). We take ``max(mu, 0)``, as the
later upstream fix does. jax-privacy's ``epsilon_from_gdp`` is not called.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxleak._src import validate

__all__ = (
  "METHODS",
  "attack_auroc",
  "check_scores",
  "clopper_pearson_upper",
  "epsilon_lower_bound",
  "gdp_mu_lower_bound",
)

METHODS = ("one_run", "clopper_pearson", "gdp")


def check_scores(in_scores: Any, out_scores: Any, *, fn: str
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Both score sets as 1-D float64 arrays; raises on empty or non-finite."""
  out = []
  for x, name in ((in_scores, "in_scores"), (out_scores, "out_scores")):
    a = np.asarray(x, np.float64)
    if a.ndim != 1 or a.size == 0:
      raise ValueError(f"{fn}: argument {name!r} must be a non-empty 1-D array "
                       f"of scores, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
      raise ValueError(f"{fn}: argument {name!r} holds NaN or Inf scores")
    out.append(a)
  return out[0], out[1]


def _check_params(delta: float, confidence: float, fn: str) -> None:
  validate.check_in_range(delta, "delta", 0.0, 1.0, fn=fn,
                          inclusive=(False, False))
  validate.check_in_range(confidence, "confidence", 0.5, 1.0, fn=fn,
                          inclusive=(False, False))


def clopper_pearson_upper(k: Any, n: int, significance: float) -> np.ndarray:
  """One-sided upper bound on a binomial rate: ``Beta.ppf(1 - a, k + 1, n - k)``.

  Equals 1 when ``k = n``. With probability ``1 - significance`` the true rate
  is below it.
  """
  import scipy.stats  # pylint: disable=g-import-not-at-top
  k = np.asarray(k)
  safe_k = np.minimum(k, n - 1)
  return np.where(k < n, scipy.stats.beta.ppf(1 - significance, safe_k + 1,
                                              n - safe_k), 1.0)


def gdp_mu_lower_bound(in_scores: Any, out_scores: Any, *,
                       significance: float) -> float:
  """Lower confidence bound on the GDP ``mu`` the scores demonstrate (>= 0).

  For every threshold t (all distinct scores and +inf), "in" is guessed when
  score >= t. A mu-GDP mechanism forces ``FNR >= Phi(Phi^-1(1 - FPR) - mu)``,
  so ``mu >= Phi^-1(1 - FPR) - Phi^-1(FNR)``; plugging in the Clopper-Pearson
  upper bounds of both rates (significance / (2 x #thresholds) each) keeps
  this a valid bound with probability ``1 - significance`` over all
  thresholds at once. Negative values are evidence of nothing: clamped at 0.
  """
  import scipy.stats  # pylint: disable=g-import-not-at-top
  ins, outs = check_scores(in_scores, out_scores, fn="gdp_mu_lower_bound")
  ins, outs = np.sort(ins), np.sort(outs)
  thresholds = np.concatenate([np.union1d(ins, outs), [np.inf]])
  false_neg = np.searchsorted(ins, thresholds, side="left")
  false_pos = outs.size - np.searchsorted(outs, thresholds, side="left")
  alpha = significance / (2 * thresholds.size)
  fnr_ub = clopper_pearson_upper(false_neg, ins.size, alpha)
  fpr_ub = clopper_pearson_upper(false_pos, outs.size, alpha)
  ok = (fnr_ub < 1.0) & (fpr_ub < 1.0)
  if not np.any(ok):
    return 0.0
  norm = scipy.stats.norm
  mu = norm.isf(fpr_ub[ok]) - norm.ppf(fnr_ub[ok])
  return float(max(0.0, np.max(mu)))


def _epsilon_gdp(in_scores, out_scores, delta, significance) -> float:
  mu = gdp_mu_lower_bound(in_scores, out_scores, significance=significance)
  if mu <= 0.0:
    return 0.0
  import dp_accounting  # pylint: disable=g-import-not-at-top
  return float(dp_accounting.get_epsilon_gaussian(1.0 / mu, delta))


def epsilon_lower_bound(in_scores: Any, out_scores: Any, *, method: str,
                        delta: float, confidence: float = 0.95) -> float:
  """Epsilon lower bound from held-in and held-out canary scores.

  Args:
    in_scores: scores of the canaries that were included (higher = "in").
    out_scores: scores of the canaries that were left out.
    method: ``"one_run"`` (all canaries in one run), ``"clopper_pearson"``
      (one canary per independent run) or ``"gdp"`` (independent runs,
      Gaussian trade-off assumed); see the module docstring.
    delta: the delta of the claim being audited.
    confidence: the bound holds with this probability (0.95: significance
      0.05).

  Returns:
    The largest epsilon the scores falsify (0 when they falsify none).
  """
  fn = "epsilon_lower_bound"
  validate.check_choice(method, "method", METHODS, fn=fn)
  _check_params(delta, confidence, fn)
  ins, outs = check_scores(in_scores, out_scores, fn=fn)
  significance = 1.0 - float(confidence)
  if method == "gdp":
    return _epsilon_gdp(ins, outs, float(delta), significance)
  from jax_privacy import auditing  # pylint: disable=g-import-not-at-top
  auditor = auditing.CanaryScoreAuditor(ins, outs)
  if method == "one_run":
    eps = auditor.epsilon_one_run(significance, float(delta))
  else:
    eps = auditor.epsilon_clopper_pearson(significance, float(delta))
  return float(max(0.0, eps))


def attack_auroc(in_scores: Any, out_scores: Any) -> float:
  """Area under the ROC curve of the threshold attack (0.5: chance)."""
  ins, outs = check_scores(in_scores, out_scores, fn="attack_auroc")
  from jax_privacy import auditing  # pylint: disable=g-import-not-at-top
  return float(auditing.CanaryScoreAuditor(ins, outs).attack_auroc())
