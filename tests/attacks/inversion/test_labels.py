"""Label recovery: iDLG, analytic bias, yin."""

import numpy as np
import pytest

from jaxleak.attacks import inversion


def test_idlg_recovers_single_labels(get_model, digits):
  apply_fn, params = get_model("lenet")
  images, labels = digits
  for i in range(12):
    obs = inversion.observe(apply_fn, params, images[i:i + 1],
                            labels[i:i + 1], key=0, reveal_labels=False)
    rec = inversion.recover_labels(obs)  # auto -> idlg for one image
    assert rec.strategy == "idlg"
    assert rec.labels.tolist() == [labels[i]]
    assert rec.confidence == pytest.approx(1.0)
    assert rec.scores.shape == (10,) and rec.scores.argmin() == labels[i]


def test_batch_strategies_recover_distinct_labels(get_model, digits):
  apply_fn, params = get_model("convnet", width=4)
  images, labels = digits
  # One image each of classes 0, 3, 5 and 8.
  idx = [int(np.flatnonzero(labels == c)[0]) for c in (0, 3, 5, 8)]
  obs = inversion.observe(apply_fn, params, images[idx], labels[idx], key=0,
                          reveal_labels=False)
  for strategy in ("yin", "analytic"):
    rec = inversion.recover_labels(obs, strategy)
    assert sorted(rec.labels.tolist()) == [0, 3, 5, 8], strategy
    assert 0.0 < rec.confidence <= 1.0
  assert inversion.recover_labels(obs).strategy == "yin"
  with pytest.raises(ValueError, match="'idlg' is defined for one image"):
    inversion.recover_labels(obs, "idlg")
  with pytest.raises(ValueError, match="strategy 'known' needs"):
    inversion.recover_labels(obs, "known")
  with pytest.raises(ValueError, match="argument 'strategy' must be one of"):
    inversion.recover_labels(obs, "psychic")
  known = inversion.observe(apply_fn, params, images[idx], labels[idx], key=0)
  rec = inversion.recover_labels(known)
  assert rec.strategy == "known" and rec.confidence == 1.0
  np.testing.assert_array_equal(rec.labels, labels[idx])


def test_repeated_labels_are_filled_from_the_most_negative_classes(
    get_model, digits):
  apply_fn, params = get_model("lenet")
  images, labels = digits
  # Four images of two classes: three 2s and one 5.
  idx = np.concatenate([np.flatnonzero(labels == 2)[:3],
                        np.flatnonzero(labels == 5)[:1]])
  obs = inversion.observe(apply_fn, params, images[idx], labels[idx], key=0,
                          reveal_labels=False)
  rec = inversion.recover_labels(obs, "analytic")
  # The bias gradient is negative exactly for the classes present.
  negative = [int(k) for k in np.argsort(rec.scores) if rec.scores[k] < 0]
  assert sorted(negative) == [2, 5], rec.scores
  # B = 4 labels from 2 negative classes: the negative classes from the most
  # negative, then the same again in that order (never a class absent from
  # the batch).
  assert rec.labels.tolist() == negative + negative, (rec.labels, negative)
  assert rec.confidence == pytest.approx(1.0)
  # One class only: every label is that class.
  idx = np.flatnonzero(labels == 2)[:3]
  obs = inversion.observe(apply_fn, params, images[idx], labels[idx], key=0,
                          reveal_labels=False)
  rec = inversion.recover_labels(obs, "analytic")
  assert rec.labels.tolist() == [2, 2, 2]
  w, c = inversion.last_layer_gradient(obs.gradient, 10)
  assert w.shape[-1] == 10 and c.shape == (10,)
