"""Training with history: contents, replay, budget, orbax round trip, resume."""

import itertools

import jax
from jax.flatten_util import ravel_pytree
import numpy as np
import pytest

from jaxleak import models
from jaxleak import unlearning as ul


def _flat(p):
  return np.asarray(ravel_pytree(p)[0])


def test_history_contents(trained, digits, recipe):
  apply_fn, h = trained
  train, _ = digits
  n, p = len(train), 650
  steps = recipe.epochs * -(-n // recipe.batch_size)
  assert h.num_steps == steps and h.cache_stride == 1
  assert h.step_params.shape == (steps, p) == h.step_grads.shape
  assert h.snapshot_params.shape == (2, p) == h.snapshot_grads.shape
  # The first cached step is w_0; the cached gradient at w* is the true mean.
  np.testing.assert_array_equal(h.step_params[0], _flat(h.init_params))
  w, unravel = ravel_pytree(h.final_params)
  loss = lambda w: models.cross_entropy_loss(
      apply_fn(unravel(w), train.images), train.labels)
  np.testing.assert_allclose(h.full_grad, jax.grad(loss)(w), atol=2e-6)
  assert h.nbytes == ul.history_bytes(p, steps, 2, 1)


def test_retrain_with_empty_forget_set_replays_training(model, trained, digits):
  _, h = trained
  params = ul.retrain(model, h, np.zeros(0, int), digits[0])
  np.testing.assert_allclose(_flat(params), _flat(h.final_params), atol=1e-6)


def test_save_load_round_trip_is_exact(tmp_path, model, trained, digits,
                                      forget30):
  _, h = trained
  ul.save_history(h, tmp_path)
  back = ul.load_history(tmp_path, params_like=h.final_params)
  assert back.recipe == h.recipe and back.fingerprint == h.fingerprint
  assert back.cache_stride == h.cache_stride
  for a, b in zip(jax.tree.leaves(back[1:8]), jax.tree.leaves(h[1:8])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The restored history is accepted for the same model and gives the same
  # unlearned parameters.
  a = ul.mini_unlearning(model, back, forget30, digits[0], steps=4)
  b = ul.mini_unlearning(model, h, forget30, digits[0], steps=4)
  np.testing.assert_array_equal(_flat(a), _flat(b))


def test_resume_after_interruption_matches_uninterrupted(tmp_path, digits,
                                                        logreg):
  train = digits[0].subset(np.arange(300))
  apply_fn, params = logreg(train)
  recipe = ul.sgd_recipe(4, 64, 0.5, l2=1e-3, seed=3)
  full = ul.train_with_history(apply_fn, params, train, recipe, snapshots=1)
  assert ul.train_with_history(apply_fn, params, train, recipe, snapshots=1,
                               workdir=tmp_path, stop_after_epochs=2) is None
  resumed = ul.train_with_history(apply_fn, params, train, recipe,
                                  snapshots=1, workdir=tmp_path)
  for a, b in zip(jax.tree.leaves(resumed[1:8]), jax.tree.leaves(full[1:8])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  loaded = ul.load_history(tmp_path)
  np.testing.assert_array_equal(loaded.step_grads, full.step_grads)
  # A different run cannot resume from this workdir.
  other = ul.sgd_recipe(4, 64, 0.25, l2=1e-3, seed=3)
  with pytest.raises(ValueError, match="'workdir'.*different run"):
    ul.train_with_history(apply_fn, params, train, other, snapshots=1,
                          workdir=tmp_path)


def test_memory_budget_raises_or_strides(digits, logreg):
  train = digits[0].subset(np.arange(400))
  apply_fn, params = logreg(train)
  r = ul.sgd_recipe(4, 50, 0.5, l2=1e-2)
  steps = 4 * 8
  need = ul.history_bytes(650, steps, 1, 1)
  with pytest.raises(ValueError, match="max_history_bytes"):
    ul.train_with_history(apply_fn, params, train, r, snapshots=1,
                          max_history_bytes=need // 3)
  h = ul.train_with_history(apply_fn, params, train, r, snapshots=1,
                            max_history_bytes=need // 3, on_budget="stride")
  assert h.cache_stride >= 3 and h.nbytes <= need // 3
  assert h.step_params.shape[0] == -(-steps // h.cache_stride)
  # DeltaGrad still runs: uncached steps are explicit iterations.
  model = ul.Model(apply_fn, h.final_params)
  out = ul.deltagrad(model, h, np.arange(4), train)
  assert np.all(np.isfinite(_flat(out)))


def test_recipe_schedules():
  assert ul.sgd_recipe(4, 8, 0.1).learning_rates == (0.1, 0.1, 0.05, 0.05)
  assert ul.sgd_recipe(3, 8, 0.1, schedule="constant").learning_rates == (
      0.1,) * 3
  cos = ul.sgd_recipe(4, 8, 1.0, schedule="cosine").learning_rates
  assert cos[0] == 1.0 and all(a > b for a, b in itertools.pairwise(cos))
  with pytest.raises(ValueError, match="'schedule'"):
    ul.sgd_recipe(4, 8, 0.1, schedule="linear")
  with pytest.raises(ValueError, match="'batch_size'"):
    ul.sgd_recipe(4, 0, 0.1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", ["learning_rate", "l2"])
def test_sgd_recipe_rejects_non_finite_values_naming_them(name, bad):
  """Item 2: sgd_recipe(learning_rate/l2=nan/inf) names the argument."""
  lr = bad if name == "learning_rate" else 0.1
  l2 = bad if name == "l2" else 0.0
  with pytest.raises(ValueError, match=f"sgd_recipe: argument '{name}' must "
                     "be finite"):
    ul.sgd_recipe(2, 32, lr, l2=l2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0, -1.0])
def test_history_budget_must_be_a_finite_positive_number(digits, logreg,
                                                         recipe, bad):
  """Item 2: max_history_bytes=nan used to fail as 'needs 0.1 MiB but ... is
  nan MiB' and inf was accepted; both now name the argument before work."""
  train = digits[0]
  apply_fn, params = logreg(train)
  with pytest.raises(ValueError, match="train_with_history: argument "
                     "'max_history_bytes' must be finite and > 0"):
    ul.train_with_history(apply_fn, params, train, recipe,
                          max_history_bytes=bad)
