"""Unlearning baselines: exact retraining, fine-tuning and gradient ascent."""

from __future__ import annotations

from typing import Any

from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np

from jaxleak._src import validate
from jaxleak.unlearning import _sgd
from jaxleak.unlearning import base

Params = Any


@base.register("retrain")
def retrain(model: base.Model, history: Any, forget_indices: Any, data: Any, *,
            progress: bool = False) -> Params:
  """Retrains from scratch on D \\ R: the gold standard.

  Replays the original recipe from the original initialisation w_0 with
  exactly the original minibatches minus the forgotten examples,

    w_{t+1} = w_t - eta_t (grad F_{B_t \\ R}(w_t) + lam w_t),

  so that on a convex problem it is the reference every method is measured
  against, and on a non-convex one the run that shares all randomness with
  the original. The forgotten examples are removed from each batch and the
  rest packed (no compute is spent on them), so its wall time is fair.

  Args:
    model: the trained model (only apply_fn is used).
    history: its `TrainingHistory` (recipe and w_0).
    forget_indices: R.
    data: the training set D.
    progress: show a tqdm bar over epochs.

  Returns:
    The retrained parameters.
  """
  prob = base.prepare(model, history, forget_indices, data, "retrain")
  w0, _ = ravel_pytree(history.init_params)
  bar, tick = _bar(progress, history.recipe.epochs, "retrain")
  try:
    w = _sgd.replay(prob.apply_fn, prob.unravel, w0, prob.images, prob.labels,
                    history.recipe, prob.keep, progress=tick)
  finally:
    if bar is not None:
      bar.close()
  return prob.unravel(w)


@base.register("finetune")
def finetune(model: base.Model, history: Any, forget_indices: Any, data: Any,
             *, epochs: int = 2, learning_rate: float | None = None,
             batch_size: int | None = None, seed: int | None = None) -> Params:
  """Fine-tunes the trained model on the retained data D \\ R.

  `epochs` epochs of the recipe's SGD update (same L2 term) on D \\ R,
  starting at w*, with a fresh batch order over the retained examples.

  Args:
    model, history, forget_indices, data: see `Unlearner`.
    epochs: number of epochs (>= 1).
    learning_rate: default: the recipe's first-epoch learning rate.
    batch_size: default: the recipe's.
    seed: batch-order seed (default: the recipe's seed + 1).

  Returns:
    The fine-tuned parameters.
  """
  fn = "finetune"
  prob = base.prepare(model, history, forget_indices, data, fn)
  recipe = history.recipe
  epochs = validate.check_int(epochs, "epochs", fn=fn)
  lr = recipe.learning_rates[0] if learning_rate is None else learning_rate
  validate.check_positive(lr, "learning_rate", fn=fn)
  subset = np.flatnonzero(prob.keep)
  w = _run_subset(prob, subset, prob.w_star, epochs, float(lr), recipe.l2,
                  batch_size or recipe.batch_size,
                  recipe.seed + 1 if seed is None else seed)
  return prob.unravel(w)


@base.register("neg_grad")
def neg_grad(model: base.Model, history: Any, forget_indices: Any, data: Any,
             *, epochs: int = 1, learning_rate: float | None = None,
             batch_size: int | None = None, seed: int | None = None) -> Params:
  """Gradient ascent on the forget set ("NegGrad").

  w <- w + eta grad F_{B}(w) over minibatches B of R for `epochs` epochs,
  starting at w* (no L2 term: it is not part of the loss being ascended).

  Args:
    model, history, forget_indices, data: see `Unlearner`.
    epochs: number of epochs over R (>= 1).
    learning_rate: default: 1/10 of the recipe's last learning rate, small
      because ascent is unbounded.
    batch_size: default: the recipe's.
    seed: batch-order seed (default: the recipe's seed + 2).

  Returns:
    The parameters after ascent (w* itself when R is empty).
  """
  fn = "neg_grad"
  prob = base.prepare(model, history, forget_indices, data, fn)
  recipe = history.recipe
  epochs = validate.check_int(epochs, "epochs", fn=fn)
  lr = recipe.learning_rates[-1] / 10 if learning_rate is None else learning_rate
  validate.check_positive(lr, "learning_rate", fn=fn)
  if prob.r == 0:
    return prob.unravel(prob.w_star)
  # A negative step size turns the SGD epoch into ascent.
  w = _run_subset(prob, prob.forget, prob.w_star, epochs, -float(lr), 0.0,
                  batch_size or recipe.batch_size,
                  recipe.seed + 2 if seed is None else seed)
  return prob.unravel(w)


def _run_subset(prob: base.Problem, subset: np.ndarray, w, epochs: int,
                lr: float, l2: float, batch_size: int, seed: int):
  """SGD epochs over `subset` (indices into D) in a seeded order."""
  m = len(subset)
  batch_size = min(int(batch_size), m)
  x, y = jnp.asarray(prob.images), jnp.asarray(prob.labels)
  for e in range(epochs):
    local = _sgd.epoch_batches(m, batch_size, seed=seed, epoch=e)
    valid = local >= 0
    idx = np.where(valid, subset[np.where(valid, local, 0)], 0).astype(np.int32)
    w = _sgd.sgd_epoch(prob.apply_fn, prob.unravel, w, x, y, jnp.asarray(idx),
                       jnp.asarray(valid, jnp.float32), jnp.float32(lr),
                       jnp.float32(l2))
  return w


def _bar(progress: bool, total: int, desc: str):
  if not progress:
    return None, None
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  bar = tqdm(total=total, desc=desc, unit="epoch", dynamic_ncols=True)
  return bar, lambda _: bar.update(1)

