"""The `Unlearner` interface, its registry and shared input validation.

Every unlearning method is a function

  unlearner(model, history, forget_indices, data) -> params

where `model` is the trained `Model(apply_fn, params)`, `history` the
`TrainingHistory` recorded while training it, `forget_indices` the indices R
into the training set `data` (D) to forget, and the result the unlearned
parameters. Hyper-parameters are keyword arguments bound with `get(name,
**hparams)`, which returns a callable with exactly that interface, so a new
rule (e.g. the paper's exact Mini-Unlearning update) is dropped in by
registering one function.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
from typing import Any, NamedTuple, Protocol

import jax
import numpy as np

from jaxleak import checkpoint as checkpoint_lib
from jaxleak._src import validate
from jaxleak._src.registry import Registry
from jaxleak.data.dataset import as_arrays
from jaxleak.unlearning import _sgd
from jaxleak.unlearning import history as history_lib

ApplyFn = Callable[[Any, jax.Array], jax.Array]
Params = Any

__all__ = ("Model", "Unlearner", "UNLEARNERS", "register", "get", "available",
           "Problem", "prepare")


class Model(NamedTuple):
  """A trained model: `apply_fn(params, x) -> logits` and its params."""
  apply_fn: ApplyFn
  params: Params


class Unlearner(Protocol):
  """`unlearner(model, history, forget_indices, data) -> params`."""

  def __call__(self, model: Model, history: history_lib.TrainingHistory,
               forget_indices: Any, data: Any) -> Params:
    ...


UNLEARNERS: Registry[Callable[..., Params]] = Registry("unlearner")


def register(name: str, fn: Callable[..., Params] | None = None, *,
             overwrite: bool = False) -> Any:
  """``UNLEARNERS.register(name, fn, overwrite=)``; without `fn`, a decorator.

  ``@unlearning.register("name")`` above ``fn(model, history,
  forget_indices, data, *, hparams...) -> params`` registers it.
  """
  if fn is None:
    return UNLEARNERS.register(name, overwrite=overwrite)
  return UNLEARNERS.register(name, fn, overwrite=overwrite)


def available() -> list[str]:
  """Registered unlearner names, sorted (``UNLEARNERS.available()``)."""
  return UNLEARNERS.available()


def get(name: str, **hparams: Any) -> Unlearner:
  """Returns the unlearner `name` with its keyword hyper-parameters bound.

  Raises:
    ValueError: unknown name.
    TypeError: a keyword the method does not accept (lists the accepted).
  """
  validate.check_choice(name, "name", available(), fn="unlearning.get")
  fn = UNLEARNERS.get(name)
  validate.check_keywords(fn, hparams, f"unlearner {name!r}",
                          fn="unlearning.get")
  bound = functools.partial(fn, **hparams)
  functools.update_wrapper(bound, fn)
  return bound


class Problem(NamedTuple):
  """Validated inputs of an unlearning call (host arrays + flat params).

  Attributes:
    apply_fn: the model.
    images, labels: the full training set D.
    forget: sorted int64 [r], the forget set R.
    keep: bool [n], True on the retained set D \\ R.
    w_star: flat float32 [P] trained parameters.
    unravel: flat -> pytree.
  """
  apply_fn: ApplyFn
  images: np.ndarray
  labels: np.ndarray
  forget: np.ndarray
  keep: np.ndarray
  w_star: jax.Array
  unravel: Callable[[jax.Array], Params]

  @property
  def n(self) -> int:
    return int(len(self.labels))

  @property
  def r(self) -> int:
    return int(len(self.forget))


def random_forget_set(n: int, ratio: float, seed: int, *, stream: int = 7
                      ) -> np.ndarray:
  """A uniformly random forget set R of ``round(ratio * n)`` of n indices.

  ``sort(default_rng([seed, stream]).choice(n, r, replace=False))``: the
  same (seed, stream) gives the same set in every program, so a study that
  revisits a cell (e.g. the unlearning distance study after the sweep)
  draws the sweep's set. The CLI and the audit use ``stream=7``; the sweep
  one stream per ratio.

  Args:
    n: the training-set size.
    ratio: the forgotten fraction, in (0, 1).
    seed: the seed.
    stream: a second seed word, for independent sets under one seed.

  Returns:
    Sorted int64 indices.
  """
  fn = "random_forget_set"
  n = validate.check_int(n, "n", fn=fn)
  validate.check_in_range(ratio, "ratio", 0.0, 1.0, fn=fn,
                          inclusive=(False, False))
  r = int(round(ratio * n))
  rng = np.random.default_rng([validate.check_int(seed, "seed", fn=fn, low=0),
                               validate.check_int(stream, "stream", fn=fn,
                                                  low=0)])
  return np.sort(rng.choice(n, r, replace=False))


def check_forget_indices(forget_indices: Any, n: int, fn: str) -> np.ndarray:
  """Validates R: integers in [0, n), no duplicates, not all of D.

  Args:
    forget_indices: integer indices, or a boolean mask of length n.
    n: the training-set size.
    fn: the public function name, for the messages.

  Returns:
    The sorted int64 indices.
  """
  idx = np.asarray(forget_indices)
  if idx.dtype == bool:
    validate.check_shape(idx, "forget_indices", (n,), fn=fn)
    idx = np.flatnonzero(idx)
  if idx.size == 0:
    idx = idx.reshape(0).astype(np.int64)
  validate.check_rank(idx, "forget_indices", 1, fn=fn)
  if idx.dtype.kind not in "iu":
    raise TypeError(
        f"{fn}: argument 'forget_indices' must be integers (or a bool mask), "
        f"got dtype {idx.dtype}")
  idx = idx.astype(np.int64)
  if idx.size and (idx.min() < 0 or idx.max() >= n):
    bad = idx[(idx < 0) | (idx >= n)]
    raise ValueError(
        f"{fn}: argument 'forget_indices' must be in [0, {n}) (the training "
        f"set has {n} examples), got {bad.size} out of range, e.g. "
        f"{bad[:5].tolist()}")
  uniq, counts = np.unique(idx, return_counts=True)
  if uniq.size != idx.size:
    dup = uniq[counts > 1]
    raise ValueError(
        f"{fn}: argument 'forget_indices' has {dup.size} duplicated "
        f"index(es), e.g. {dup[:5].tolist()}; pass each example once")
  if uniq.size >= n:
    raise ValueError(
        f"{fn}: argument 'forget_indices' removes all {n} training examples, "
        "so the retained set D \\ R is empty; nothing is left to learn from")
  return uniq


def prepare(model: Any, history: Any, forget_indices: Any, data: Any,
            fn: str) -> Problem:
  """Validates an unlearning call and returns its `Problem`.

  Raises:
    TypeError: wrong argument types.
    ValueError: a history recorded for another model or other data, or a bad
      forget set (out of range, duplicated, or leaving nothing).
  """
  if not (isinstance(model, tuple) and len(model) == 2 and callable(model[0])):
    raise TypeError(
        f"{fn}: argument 'model' must be a Model(apply_fn, params), got "
        f"{type(model).__name__}")
  apply_fn, params = model
  if not isinstance(history, history_lib.TrainingHistory):
    raise TypeError(
        f"{fn}: argument 'history' must be a TrainingHistory (from "
        f"train_with_history or load_history), got {type(history).__name__}")
  images, labels = as_arrays(data, fn=fn)
  n = int(len(labels))
  try:
    validate.check_same_structure(params, history.final_params, "model.params",
                                  "the history's parameters", fn=fn)
  except ValueError as e:
    raise ValueError(
        f"{fn}: argument 'history' was recorded for a different model: {e}"
    ) from None
  if checkpoint_lib.tree_checksum(params) != history.fingerprint.get(
      "final_checksum"):
    raise ValueError(
        f"{fn}: argument 'history' was recorded for a different model: its "
        "final parameters differ from model.params (another training run or "
        "a modified model)")
  if n != history.num_examples:
    raise ValueError(
        f"{fn}: argument 'data' has {n} examples but argument 'history' was "
        f"recorded on {history.num_examples}; pass the original training set")
  if history_lib.data_checksum(images, labels) != history.fingerprint.get(
      "data_checksum"):
    raise ValueError(
        f"{fn}: argument 'data' differs from the training set argument "
        "'history' was recorded on (same size, different examples or order)")
  forget = check_forget_indices(forget_indices, n, fn)
  keep = np.ones(n, bool)
  keep[forget] = False
  w_star, unravel = _sgd.flatten(params)
  return Problem(apply_fn, np.asarray(images), np.asarray(labels), forget, keep,
                 w_star, unravel)
