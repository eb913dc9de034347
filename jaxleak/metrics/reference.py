"""What a dataset allows: the test accuracy of a linear probe on raw pixels.

A model trained by a jaxleak command is only worth measuring (unlearning,
membership inference, DP utility) when it classifies at least about as well
as a linear classifier on the flattened pixels, a baseline that needs no
tuning and has a closed form: ridge regression onto one-vs-all targets
(`sklearn.linear_model.RidgeClassifier`; Pedregosa et al., "Scikit-learn:
Machine Learning in Python", JMLR 2011). On scikit-learn's digits it reaches
0.933 test accuracy, on the 5000-image MNIST subset 0.842 (alpha = 10). A
model far below it is under-trained or broken, and the commands say so
instead of reporting figures about it without comment.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxleak._src import validate
from jaxleak.data.dataset import as_arrays

__all__ = ("accuracy_shortfall", "linear_probe_accuracy")


def linear_probe_accuracy(train: Any, test: Any, *, alpha: float = 10.0
                          ) -> float:
  """Test accuracy of a ridge (least-squares, one-vs-all) linear classifier.

  Args:
    train: training Dataset (or `(images, labels)`), images in [0, 1].
    test: held-out Dataset (or `(images, labels)`).
    alpha: L2 strength of the ridge solve (> 0).

  Returns:
    The fraction of test images classified correctly, in [0, 1].
  """
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  fn = "linear_probe_accuracy"
  validate.check_positive(alpha, "alpha", fn=fn)
  x_tr, y_tr = as_arrays(train, fn=fn, name="train")
  x_te, y_te = as_arrays(test, fn=fn, name="test")
  y_tr, y_te = np.asarray(y_tr), np.asarray(y_te)
  if np.unique(y_tr).size < 2:
    raise ValueError(f"{fn}: argument 'train' has fewer than 2 classes; "
                     "there is nothing to classify")
  flat = lambda x: np.asarray(x, np.float32).reshape(len(x), -1)
  probe = linear_model.RidgeClassifier(alpha=alpha).fit(flat(x_tr), y_tr)
  return float(np.mean(probe.predict(flat(x_te)) == y_te))


def accuracy_shortfall(accuracy: float, reference: float, *,
                       tolerance: float = 0.05) -> str | None:
  """A warning when `accuracy` is more than `tolerance` below `reference`.

  Returns None when the model is within `tolerance` of the linear probe (or
  above it), else a one-line explanation naming both figures.
  """
  if not accuracy < reference - tolerance:
    return None
  return (f"the original model reaches {accuracy:.3f} test accuracy, far "
          f"below the {reference:.3f} of a linear classifier on the raw "
          "pixels: it is under-trained (raise --epochs or --lr, or choose "
          "another --model), so the figures below describe a broken model")
