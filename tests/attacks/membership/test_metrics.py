"""ROC, AUC and TPR at low FPR against scikit-learn; the log-log ROC figure."""

import numpy as np
import pytest
from sklearn import metrics as skm

from jaxleak.attacks import membership as mia


def _data(seed, ties=False):
  rng = np.random.default_rng(seed)
  pos, neg = rng.normal(0.7, 1, 400), rng.normal(0, 1, 600)
  if ties:
    pos, neg = np.round(pos, 1), np.round(neg, 1)
  return pos, neg


@pytest.mark.parametrize("ties", [False, True])
def test_roc_and_auc_match_sklearn(ties):
  pos, neg = _data(0, ties)
  y = np.r_[np.ones(pos.size), np.zeros(neg.size)]
  s = np.r_[pos, neg]
  fpr, tpr, thr = mia.roc_curve(pos, neg)
  sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, s, drop_intermediate=False)
  np.testing.assert_allclose(fpr, sk_fpr)
  np.testing.assert_allclose(tpr, sk_tpr)
  np.testing.assert_allclose(thr[1:], sk_thr[1:])
  res = mia.attack_metrics(pos, neg)
  assert res.auc == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
  # Balanced accuracy at the best threshold, by brute force.
  best = max(skm.balanced_accuracy_score(y, s >= t) for t in np.unique(s))
  assert res.balanced_accuracy == pytest.approx(best, abs=1e-12)


def test_tpr_at_fpr_interpolates_the_roc():
  pos, neg = _data(1)
  y = np.r_[np.ones(pos.size), np.zeros(neg.size)]
  sk_fpr, sk_tpr, _ = skm.roc_curve(y, np.r_[pos, neg],
                                    drop_intermediate=False)
  fpr, tpr, _ = mia.roc_curve(pos, neg)
  for target in (0.01, 0.001, 0.05, 0.5):
    # The upper envelope of sklearn's curve, linearly interpolated.
    i = np.searchsorted(sk_fpr, target, side="right") - 1
    j = min(i + 1, sk_fpr.size - 1)
    want = sk_tpr[i] if sk_fpr[j] == sk_fpr[i] else np.interp(
        target, sk_fpr[i:j + 1], sk_tpr[i:j + 1])
    assert mia.tpr_at_fpr(fpr, tpr, target) == pytest.approx(want, abs=1e-12)
  res = mia.attack_metrics(pos, neg)
  assert res.tpr_at_1pct_fpr == mia.tpr_at_fpr(fpr, tpr, 0.01)
  # Perfect separation: TPR 1 at any FPR, including 0.
  perfect = mia.attack_metrics([2.0, 3.0], [0.0, 1.0])
  assert perfect.auc == 1.0 and perfect.tpr_at_0_1pct_fpr == 1.0


def test_metric_errors():
  with pytest.raises(ValueError, match="'member_scores' is empty"):
    mia.attack_metrics([], [1.0])
  with pytest.raises(ValueError, match="'nonmember_scores' contains NaN"):
    mia.attack_metrics([1.0], [np.nan])


def test_save_roc_png(tmp_path):
  pos, neg = _data(2)
  path = mia.save_roc_png({"loss": mia.attack_metrics(pos, neg),
                           "raw": mia.roc_curve(neg, pos)[:2]},
                          tmp_path / "roc.png", title="test")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
