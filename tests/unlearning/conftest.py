"""Shared, session-scoped fixtures: regularised logistic regression on digits.

Training once per session keeps the unlearning tests fast: every test file
reuses the same trained model and history (1438 examples, 650 parameters).
"""

import jax
import numpy as np
import pytest

from jaxleak import models
from jaxleak import unlearning as ul

L2 = 1e-2


def _logreg(train, seed=0):
  return models.create("mlp", train.num_classes, train.image_shape,
                       jax.random.key(seed), hidden=())


@pytest.fixture(scope="session")
def logreg():
  """`logreg(train, seed=0) -> (apply_fn, params)`: softmax regression."""
  return _logreg


@pytest.fixture(scope="session")
def recipe():
  return ul.sgd_recipe(epochs=8, batch_size=128, learning_rate=0.5,
                       schedule="step", l2=L2, seed=0)


@pytest.fixture(scope="session")
def trained(digits, recipe):
  """(apply_fn, history) of logistic regression trained with full history."""
  train, _ = digits
  apply_fn, params = _logreg(train)
  history = ul.train_with_history(apply_fn, params, train, recipe, snapshots=2)
  return apply_fn, history


@pytest.fixture(scope="session")
def model(trained):
  apply_fn, history = trained
  return ul.Model(apply_fn, history.final_params)


@pytest.fixture(scope="session")
def forget30(digits):
  train, _ = digits
  rng = np.random.default_rng(1)
  return np.sort(rng.choice(len(train), int(0.3 * len(train)), replace=False))


@pytest.fixture(scope="session")
def retrained30(model, trained, forget30, digits):
  _, history = trained
  return ul.retrain(model, history, forget30, digits[0])
