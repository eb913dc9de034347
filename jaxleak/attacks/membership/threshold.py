"""Threshold attacks (no shadow models) and the unlearning "MIA efficacy".

Threshold attacks score every example by one signal of the target model
(`signals.SIGNALS`): the loss attack of Yeom et al. (2018), the confidence
and entropy attacks of Salem et al. (2019) and the modified-entropy attack of
Song & Mittal (2021). `threshold_attack` evaluates one of them on members
versus non-members over all thresholds (ROC); `fit_class_thresholds` fits
per-class thresholds on reference data for a hard member/non-member rule.

`mia_efficacy` is the metric common in unlearning papers: a logistic
regression on [loss, confidence, entropy] separates the retained training
examples (members) from test examples (non-members); applied to the forget
set, the fraction it calls *non-member* measures forgetting (a retrained
model's value is the target).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxleak._src import validate
from jaxleak.attacks.membership import metrics
from jaxleak.attacks.membership import signals

__all__ = ("ATTACKS", "threshold_attack", "fit_class_thresholds",
           "predict_members", "efficacy_features", "mia_efficacy")

# Threshold attacks by name -> the signal they threshold.
ATTACKS: dict[str, str] = {
    "loss": "loss",
    "confidence": "confidence",
    "entropy": "entropy",
    "modified_entropy": "modified_entropy",
    "logit_confidence": "logit_scaled_confidence",
}


def threshold_attack(name: str, member_logits: Any, member_labels: Any,
                     nonmember_logits: Any, nonmember_labels: Any
                     ) -> metrics.AttackMetrics:
  """Runs threshold attack `name` on members vs non-members.

  Args:
    name: one of `ATTACKS`.
    member_logits, member_labels: the target model's logits [m, C] and the
      labels [m] of the (candidate) members.
    nonmember_logits, nonmember_labels: the same for non-members.

  Returns:
    The attack's `AttackMetrics` (AUC 0.5 = no information).
  """
  validate.check_choice(name, "name", tuple(ATTACKS), fn="threshold_attack")
  signal = ATTACKS[name]
  return metrics.attack_metrics(
      signals.membership_score(signal, member_logits, member_labels),
      signals.membership_score(signal, nonmember_logits, nonmember_labels))


def fit_class_thresholds(scores: Any, labels: Any, is_member: Any,
                         num_classes: int) -> np.ndarray:
  """Per-class thresholds maximising balanced accuracy on reference data.

  Args:
    scores: [n] membership scores (larger = member) of reference examples
      (e.g. a shadow model's training and held-out data).
    labels: [n] their classes.
    is_member: bool [n] reference membership.
    num_classes: C.

  Returns:
    float [C] thresholds tau_c: predict member iff score >= tau_c. A class
    without both members and non-members gets the global threshold.
  """
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels)
  is_member = np.asarray(is_member, bool)
  fn = "fit_class_thresholds"
  validate.check_shape(labels, "labels", scores.shape, fn=fn)
  validate.check_shape(is_member, "is_member", scores.shape, fn=fn)
  if is_member.all() or not is_member.any():
    raise ValueError(
        f"{fn}: argument 'is_member' must contain both members and non-members")

  def best(s, m):
    fpr, tpr, thr = metrics.roc_curve(s[m], s[~m])
    return float(thr[np.argmax(tpr - fpr)])

  global_tau = best(scores, is_member)
  out = np.full((int(num_classes),), global_tau)
  for c in range(int(num_classes)):
    sel = labels == c
    if is_member[sel].any() and (~is_member[sel]).any():
      out[c] = best(scores[sel], is_member[sel])
  return out


def predict_members(scores: Any, labels: Any, thresholds: np.ndarray
                    ) -> np.ndarray:
  """bool [n]: score >= the threshold of the example's class."""
  return np.asarray(scores) >= np.asarray(thresholds)[np.asarray(labels)]


def efficacy_features(logits: Any, labels: Any) -> np.ndarray:
  """[n, 3] features (loss, max confidence, entropy) of the MIA efficacy."""
  return np.stack([
      np.asarray(signals.loss(logits, labels)),
      np.asarray(signals.confidence(logits)),
      np.asarray(signals.entropy(logits)),
  ], axis=1).astype(np.float64)


def mia_efficacy(member_features: Any, nonmember_features: Any,
                 query_features: Any, *, seed: int = 0,
                 max_per_class: int | None = None) -> float:
  """Fraction of `query_features` classified as non-members.

  A standardised logistic regression is fitted on members (label 1) vs
  non-members (label 0), each side subsampled to the same size so the
  classifier is not biased towards the larger set.

  Args:
    member_features: [m, d], e.g. `efficacy_features` of retained examples.
    nonmember_features: [k, d], e.g. of test examples.
    query_features: [q, d], e.g. of the forget set.
    seed: subsampling and solver seed.
    max_per_class: cap on examples per side (default min(m, k)).

  Returns:
    The fraction of queries predicted non-member (higher = better
    forgetting).
  """
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.pipeline import make_pipeline  # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import StandardScaler  # pylint: disable=g-import-not-at-top

  fn = "mia_efficacy"
  mem = np.asarray(member_features, np.float64)
  non = np.asarray(nonmember_features, np.float64)
  qry = np.asarray(query_features, np.float64)
  for x, name in ((mem, "member_features"), (non, "nonmember_features"),
                  (qry, "query_features")):
    validate.check_rank(x, name, 2, fn=fn)
    if not len(x):
      raise ValueError(f"{fn}: argument '{name}' is empty")
  k = min(len(mem), len(non))
  if max_per_class is not None:
    k = min(k, int(max_per_class))
  rng = np.random.default_rng(seed)
  mem = mem[rng.choice(len(mem), k, replace=False)]
  non = non[rng.choice(len(non), k, replace=False)]
  # Non-finite features (an infinite loss) would break the solver.
  x = np.nan_to_num(np.concatenate([mem, non]), posinf=1e6, neginf=-1e6)
  y = np.r_[np.ones(k), np.zeros(k)]
  clf = make_pipeline(StandardScaler(),
                      LogisticRegression(max_iter=1000, random_state=seed))
  clf.fit(x, y)
  pred = clf.predict(np.nan_to_num(qry, posinf=1e6, neginf=-1e6))
  return float(np.mean(pred == 0))

