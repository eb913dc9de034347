"""The evaluation harness: metrics of every model, timing, offline LiRA."""

import numpy as np
import optax
import pytest

from jaxleak import unlearning as ul
from jaxleak.attacks import membership as mia
from jaxleak.unlearning import evaluation


def test_evaluate_unlearning_with_shadows(model, trained, forget30, digits,
                                          logreg):
  apply_fn, history = trained
  train, test = digits
  in_masks = mia.shadow_in_masks(len(train), 4, seed=0)
  inits = mia.stack_params([logreg(train, seed=k)[1] for k in range(4)])
  shadows = mia.train_shadow_models(
      apply_fn, inits, train.images, train.labels, in_masks,
      optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.5)), epochs=4,
      batch_size=128)
  results = evaluation.evaluate_unlearning(
      model, history, forget30, train, test,
      {"mini_unlearning": ul.get("mini_unlearning", steps=4)},
      shadows=evaluation.Shadows(shadows, in_masks))
  assert list(results) == ["original", "retrain", "mini_unlearning"]
  rt, mini, orig = (results[k].metrics for k in
                    ("retrain", "mini_unlearning", "original"))
  assert rt["distance_to_retrain"] == 0.0
  assert mini["distance_to_retrain"] < orig["distance_to_retrain"]
  assert orig["wall_time_s"] == 0.0 and rt["speedup_vs_retrain"] == 1.0
  assert 0.0 <= mini["compile_time_s"] <= mini["wall_time_s"]
  for m in (rt, mini, orig):
    for key in ("test_accuracy", "forget_accuracy", "mia_loss_auc",
                "mia_loss_balanced_accuracy", "mia_loss_tpr_at_1pct_fpr",
                "mia_loss_tpr_at_0.1pct_fpr", "mia_mentr_auc", "mia_efficacy",
                "mia_lira_auc"):
      assert np.isfinite(m[key]), key
  # A retrained model holds the forget set as non-members.
  assert abs(rt["mia_loss_auc"] - 0.5) < 0.1
  assert set(results["mini_unlearning"].roc) == {"loss", "modified_entropy",
                                                 "lira_offline"}


def test_random_forget_set_is_the_seeded_draw_every_program_makes():
  got = ul.random_forget_set(1000, 0.3, 2)
  want = np.sort(np.random.default_rng([2, 7]).choice(1000, 300,
                                                      replace=False))
  np.testing.assert_array_equal(got, want)
  swept = ul.random_forget_set(1000, 0.1, 2, stream=1000)
  np.testing.assert_array_equal(swept, np.sort(np.random.default_rng(
      [2, 1000]).choice(1000, 100, replace=False)))
  assert len(np.intersect1d(got, ul.random_forget_set(
      1000, 0.3, 3))) < 150  # another seed, another set
  with pytest.raises(ValueError, match="'ratio'"):
    ul.random_forget_set(10, 1.0, 0)
  with pytest.raises(ValueError, match="'seed' must be an int >= 0"):
    ul.random_forget_set(10, 0.5, -1)
