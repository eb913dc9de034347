"""Unlearners on regularised logistic regression: errors, contraction, DeltaGrad."""

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak import unlearning as ul


def _flat(p):
  return np.asarray(ravel_pytree(p)[0])


def _dist(a, b):
  return float(np.linalg.norm(_flat(a) - _flat(b)))


# -- interface and bad input --------------------------------------------------

def test_registry_and_get():
  assert set(ul.available()) >= {"mini_unlearning", "retrain", "finetune",
                                 "neg_grad", "deltagrad"}
  with pytest.raises(TypeError, match="'epoch'.*accepted: epochs"):
    ul.get("finetune", epoch=3)
  with pytest.raises(ValueError, match="argument 'name'"):
    ul.get("sisa")


@pytest.mark.parametrize("bad, match", [
    (np.array([0, 5, 1438]), r"'forget_indices' must be in \[0, 1438\)"),
    (np.array([-1, 3]), r"'forget_indices' must be in"),
    (np.array([4, 7, 4]), r"'forget_indices' has 1 duplicated"),
    (np.arange(1438), r"retained set .* is empty"),
    (np.array([0.5, 2.0]), r"'forget_indices' must be integers"),
])
def test_bad_forget_indices(model, trained, digits, bad, match):
  _, history = trained
  for name in ("mini_unlearning", "deltagrad", "retrain"):
    with pytest.raises((ValueError, TypeError), match=match):
      ul.get(name)(model, history, bad, digits[0])


def test_history_from_another_model(model, trained, digits, logreg):
  apply_fn, history = trained
  train = digits[0]
  # Same architecture, other weights.
  other = ul.Model(apply_fn, jax.tree.map(lambda x: x + 1e-3, model.params))
  with pytest.raises(ValueError, match="'history' was recorded for a different"
                     " model: its final parameters differ"):
    ul.mini_unlearning(other, history, [1, 2], train)
  # Another architecture.
  from jaxleak import models  # pylint: disable=g-import-not-at-top
  mlp, p = models.create("mlp", 10, train.image_shape, jax.random.key(0),
                         hidden=(8,))
  with pytest.raises(ValueError, match="'history' was recorded for a different"
                     " model"):
    ul.deltagrad(ul.Model(mlp, p), history, [1, 2], train)
  # Other data of the same size.
  shuffled = train.subset(np.roll(np.arange(len(train)), 1))
  with pytest.raises(ValueError, match="'data' differs from the training set"):
    ul.finetune(model, history, [1, 2], shuffled)
  with pytest.raises(ValueError, match="'data' has 100 examples"):
    ul.retrain(model, history, [1, 2], train.subset(np.arange(100)))
  with pytest.raises(TypeError, match="'history' must be a TrainingHistory"):
    ul.neg_grad(model, {"params": 1}, [1], train)


# -- Mini-Unlearning ------------------------------------------------------------

def test_gradient_map_contracts_geometrically(model, trained, forget30, digits):
  """T(w) = w - eta grad F_{-R}(w), eta = 1/L: d_{k+1} <= (1 - eta mu) d_k."""
  apply_fn, history = trained
  train = digits[0]
  lam = history.recipe.l2
  # The retrained optimum, to high accuracy, by the preconditioned iteration.
  fast = ul.contraction_unlearning(model, history, forget30, train, steps=60,
                                   anchor=False, prox=0.0, keep_iterates=True)
  w_opt, unravel = ravel_pytree(fast.params)
  assert fast.grad_norms[-1] < 1e-4 * fast.grad_norms[0]
  keep = np.ones(len(train), bool)
  keep[forget30] = False
  x, y = train.images[keep], train.labels[keep]

  def objective(w):
    logits = apply_fn(unravel(w), x)
    lse = jax.nn.logsumexp(logits, -1)
    nll = jnp.mean(lse - jnp.take_along_axis(logits, y[:, None], 1)[:, 0])
    return nll + lam / 2 * jnp.sum(w * w)

  # L by power iteration on Hessian-vector products; mu >= lam (L2 term).
  hvp = jax.jit(lambda v: jax.jvp(jax.grad(objective), (w_opt,), (v,))[1])
  v = jnp.ones_like(w_opt)
  for _ in range(50):
    v = hvp(v)
    lip = float(jnp.linalg.norm(v))
    v = v / lip
  eta = 1.0 / lip
  q = 1.0 - eta * lam
  trace = ul.contraction_unlearning(
      model, history, forget30, train, steps=25, precondition="none",
      step_size=eta, anchor=False, prox=0.0, keep_iterates=True)
  d = np.linalg.norm(trace.iterates - np.asarray(w_opt)[None], axis=1)
  ratios = d[1:] / d[:-1]
  # The contraction bound, with slack for the non-quadratic loss.
  assert np.all(ratios <= q + 1e-3), (ratios.max(), q)
  assert np.all(ratios < 1.0)
  # The L-BFGS-preconditioned map is far faster on the same problem.
  d_fast = np.linalg.norm(fast.iterates - np.asarray(w_opt)[None], axis=1)
  assert d_fast[25] < 1e-2 * d_fast[0] < d[-1]


def test_mini_unlearning_beats_finetune_at_30_percent(model, trained, forget30,
                                                      digits, retrained30):
  _, history = trained
  train = digits[0]
  mini = ul.mini_unlearning(model, history, forget30, train, steps=4)
  ft = ul.finetune(model, history, forget30, train, epochs=2)
  d_orig = _dist(model.params, retrained30)
  d_mini = _dist(mini, retrained30)
  assert d_mini < 0.6 * d_orig
  assert d_mini < _dist(ft, retrained30)


def test_trained_model_is_the_fixed_point_when_nothing_is_forgotten(
    model, trained, digits):
  _, history = trained
  out = ul.mini_unlearning(model, history, [], digits[0], steps=3)
  np.testing.assert_allclose(_flat(out), _flat(model.params), atol=1e-6)


def test_cached_first_gradient_equals_retained_gradient(model, trained,
                                                        forget30, digits):
  _, history = trained
  kw = dict(steps=1, precondition="none", step_size=0.5)
  a = ul.contraction_unlearning(model, history, forget30, digits[0],
                                cached_gradient=True, **kw)
  b = ul.contraction_unlearning(model, history, forget30, digits[0],
                                cached_gradient=False, **kw)
  assert (a.forget_passes, a.retained_passes) == (1, 0)
  assert (b.forget_passes, b.retained_passes) == (0, 1)
  np.testing.assert_allclose(_flat(a.params), _flat(b.params), atol=1e-5)


# -- DeltaGrad and baselines ----------------------------------------------------

def test_deltagrad_with_only_explicit_steps_is_retraining(model, trained,
                                                           digits):
  _, history = trained
  forget = np.arange(0, 1438, 50)
  exact = ul.retrain(model, history, forget, digits[0])
  dg = ul.deltagrad(model, history, forget, digits[0], period=1, burn_in=0)
  np.testing.assert_allclose(_flat(dg), _flat(exact), atol=2e-5)


def test_deltagrad_small_ratio_closer_than_original(model, trained, digits):
  _, history = trained
  train = digits[0]
  forget = np.random.default_rng(5).choice(len(train), 14, replace=False)
  exact = ul.retrain(model, history, forget, train)
  dg = ul.deltagrad(model, history, forget, train)
  assert _dist(dg, exact) < 0.3 * _dist(model.params, exact)


def test_neg_grad_raises_forget_loss(model, trained, forget30, digits):
  _, history = trained
  train = digits[0]
  from jaxleak import training  # pylint: disable=g-import-not-at-top
  forget_set = train.subset(forget30)
  before = training.evaluate(model.apply_fn, model.params, forget_set)["loss"]
  out = ul.neg_grad(model, history, forget30, train, learning_rate=0.5)
  after = training.evaluate(model.apply_fn, out, forget_set)["loss"]
  assert after > before


# Item 2: non-finite hyper-parameters are errors naming the argument in the
# library too, not only behind the CLI's typed flags.
NON_FINITE_HYPERPARAMETERS = [
    ("mini_unlearning", "step_size"),
    ("mini_unlearning", "max_step_norm"),
    ("mini_unlearning", "prox"),
    ("finetune", "learning_rate"),
    ("neg_grad", "learning_rate"),
    ("deltagrad", "sigma_min"),
]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("method, name", NON_FINITE_HYPERPARAMETERS)
def test_unlearners_reject_non_finite_hyperparameters_naming_them(
    model, trained, digits, method, name, bad):
  """Item 2: unlearning.get(method, name=nan/inf) fails naming `name`."""
  _, history = trained
  with pytest.raises(ValueError, match=f"{method}: argument '{name}' must be "
                     "finite"):
    ul.get(method, **{name: bad})(model, history, [1, 2], digits[0])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_forget_ratio_must_be_finite(bad):
  """Item 2: random_forget_set(ratio=nan/inf) names 'ratio'."""
  with pytest.raises(ValueError, match="random_forget_set: argument 'ratio'"):
    ul.random_forget_set(100, bad, 0)
