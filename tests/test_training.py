"""Tests for jaxleak.training: learning, exact resume after preemption."""

import jax
import numpy as np
import pytest

from jaxleak import models
from jaxleak import training

CONFIG = training.TrainConfig(epochs=3, batch_size=64, learning_rate=3e-3,
                              seed=1, checkpoint_every=7)


def _model(train):
  return models.create("mlp", train.num_classes, train.image_shape,
                       jax.random.key(0), hidden=(64,), act="tanh")


def _assert_same_params(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_learns_digits_and_history_is_complete(digits):
  train, test = digits
  apply_fn, params = _model(train)
  before = training.evaluate(apply_fn, params, test)["accuracy"]
  result = training.train_classifier(apply_fn, params, train, test, CONFIG,
                                     progress=False)
  assert before < 0.3
  assert result.test_accuracy > 0.85
  assert [h["epoch"] for h in result.history] == [1, 2, 3]
  assert result.steps == 3 * (len(train) // 64)
  assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_preempted_run_resumes_to_identical_params(digits, tmp_path):
  train, test = digits
  apply_fn, params = _model(train)
  straight = training.train_classifier(apply_fn, params, train, test, CONFIG,
                                       workdir=tmp_path / "a", progress=False)
  # Preempt mid-epoch (step 30 of 22 per epoch = inside epoch 2), then resume.
  with pytest.raises(training.Preempted):
    training.train_classifier(apply_fn, params, train, test, CONFIG,
                              workdir=tmp_path / "b", progress=False,
                              preempt_after_steps=30)
  fresh_apply, fresh_params = _model(train)
  resumed = training.train_classifier(fresh_apply, fresh_params, train, test,
                                      CONFIG, workdir=tmp_path / "b",
                                      progress=False)
  assert resumed.resumed_from == 30
  assert resumed.steps == straight.steps
  _assert_same_params(straight.params, resumed.params)
  assert resumed.history == straight.history


def test_workdir_of_another_run_is_refused(digits, tmp_path):
  train, test = digits
  apply_fn, params = _model(train)
  with pytest.raises(training.Preempted):
    training.train_classifier(apply_fn, params, train, test, CONFIG,
                              workdir=tmp_path, progress=False,
                              preempt_after_steps=2)
  other = training.TrainConfig(epochs=3, batch_size=64, learning_rate=1e-2,
                               seed=1, checkpoint_every=7)
  with pytest.raises(ValueError, match="argument 'workdir'.*different run"):
    training.train_classifier(apply_fn, params, train, test, other,
                              workdir=tmp_path, progress=False)


def test_bad_config_is_rejected(digits):
  train, test = digits
  apply_fn, params = _model(train)
  with pytest.raises(ValueError, match="'learning_rate'"):
    training.train_classifier(apply_fn, params, train, test,
                              training.TrainConfig(learning_rate=-1.0),
                              progress=False)
  with pytest.raises(ValueError, match="batch_size"):
    training.train_classifier(apply_fn, params, train, test,
                              training.TrainConfig(batch_size=10**6),
                              progress=False)
