"""The replayable minibatch-SGD recipe shared by training, retraining and DeltaGrad.

Every unlearning method that replays training (retraining, DeltaGrad) must see
the *same* minibatches as the original run, minus the forgotten examples. The
batch order here is therefore a pure function of ``(n, batch_size, seed,
epoch)`` (`jaxleak.data.epoch_permutation`), and the update is plain SGD with
an L2 term,

  w_{t+1} = w_t - eta_t (grad F_{B_t}(w_t) + lam w_t),
  F_{B}(w) = (1 / |B|) sum_{i in B} l(f_w(x_i), y_i),

with no momentum or adaptive state, because DeltaGrad's correction is only
defined for this update. Batches are index arrays of fixed width padded with
-1; a padded slot (or a forgotten example) carries mask 0, so one compiled
step serves every batch. A batch whose mask is all zero applies only the L2
term (its data term is defined as 0), the same convention in every method.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import math
from typing import Any, NamedTuple

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np
import optax

from jaxleak import data as data_lib
from jaxleak._src import validate

ApplyFn = Callable[[Any, jax.Array], jax.Array]
Params = Any

SCHEDULES = ("constant", "step", "cosine")


class SGDRecipe(NamedTuple):
  """How the original model was trained; replayed by retrain and DeltaGrad.

  Attributes:
    epochs: passes over the training set.
    batch_size: examples per minibatch (the last one of an epoch is smaller;
      it is padded and masked, so every example is used once per epoch).
    learning_rates: one learning rate per epoch.
    l2: L2 regularisation strength lam (the objective adds lam ||w||^2 / 2).
    seed: seeds the batch order (`epoch_permutation(n, seed=seed, epoch=e)`).
  """
  epochs: int
  batch_size: int
  learning_rates: tuple[float, ...]
  l2: float
  seed: int

  def to_json(self) -> dict[str, Any]:
    return {"epochs": self.epochs, "batch_size": self.batch_size,
            "learning_rates": list(self.learning_rates), "l2": self.l2,
            "seed": self.seed}

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> SGDRecipe:
    return cls(int(d["epochs"]), int(d["batch_size"]),
               tuple(float(v) for v in d["learning_rates"]), float(d["l2"]),
               int(d["seed"]))


class Unravel:
  """Flat vector -> params pytree; equal (and hashing equal) per layout.

  `jax.flatten_util.ravel_pytree` returns a fresh closure on every call, and
  a fresh static argument makes `jax.jit` recompile. This one compares by
  (treedef, shapes, dtypes), so jitted steps are reused across calls.
  """

  def __init__(self, params: Params):
    leaves, self.treedef = jax.tree.flatten(params)
    self.shapes = tuple(tuple(np.shape(x)) for x in leaves)
    self.dtypes = tuple(str(jnp.asarray(x).dtype) for x in leaves)
    self._key = (self.treedef, self.shapes, self.dtypes)

  def __call__(self, flat: jax.Array) -> Params:
    out, start = [], 0
    for shape, dtype in zip(self.shapes, self.dtypes):
      size = math.prod(shape)
      out.append(flat[start:start + size].reshape(shape).astype(dtype))
      start += size
    return jax.tree.unflatten(self.treedef, out)

  def __eq__(self, other: object) -> bool:
    return isinstance(other, Unravel) and self._key == other._key

  def __hash__(self) -> int:
    return hash(self._key)


def flatten(params: Params) -> tuple[jax.Array, Unravel]:
  """`(flat float vector, Unravel)`: `ravel_pytree` with a reusable inverse."""
  flat, _ = ravel_pytree(params)
  return flat, Unravel(params)


def sgd_recipe(epochs: int, batch_size: int, learning_rate: float, *,
               schedule: str = "step", l2: float = 0.0, seed: int = 0
               ) -> SGDRecipe:
  """Builds an `SGDRecipe` with a per-epoch learning-rate schedule.

  Args:
    epochs: number of epochs (>= 1).
    batch_size: minibatch size (>= 1).
    learning_rate: the initial learning rate eta_0 > 0.
    schedule: "constant"; "step" (eta_0 for the first half of the epochs,
      eta_0 / 2 after, DeltaGrad's MNIST recipe); or "cosine" (per-epoch
      cosine decay, eta_e = eta_0 (1 + cos(pi e / epochs)) / 2).
    l2: L2 strength lam >= 0.
    seed: non-negative batch-order seed.

  Returns:
    The recipe.
  """
  fn = "sgd_recipe"
  epochs = validate.check_int(epochs, "epochs", fn=fn)
  batch_size = validate.check_int(batch_size, "batch_size", fn=fn)
  validate.check_positive(learning_rate, "learning_rate", fn=fn)
  validate.check_choice(schedule, "schedule", SCHEDULES, fn=fn)
  validate.check_positive(l2, "l2", fn=fn, allow_zero=True)
  seed = validate.check_int(seed, "seed", fn=fn, low=0)
  eta = float(learning_rate)
  if schedule == "constant":
    lrs = [eta] * epochs
  elif schedule == "step":
    lrs = [eta if e < (epochs + 1) // 2 else eta / 2 for e in range(epochs)]
  else:
    lrs = [eta * 0.5 * (1 + math.cos(math.pi * e / epochs))
           for e in range(epochs)]
  return SGDRecipe(epochs, batch_size, tuple(lrs), float(l2), seed)


def steps_per_epoch(n: int, batch_size: int) -> int:
  """ceil(n / batch_size): the last, smaller batch is kept (padded)."""
  return -(-int(n) // int(batch_size))


def epoch_batches(n: int, batch_size: int, *, seed: int, epoch: int
                  ) -> np.ndarray:
  """Index matrix [steps_per_epoch, batch_size] of one epoch, -1 = padding."""
  order = data_lib.epoch_permutation(n, seed=seed, epoch=epoch)
  s = steps_per_epoch(n, batch_size)
  out = np.full((s * batch_size,), -1, np.int64)
  out[:n] = order
  return out.reshape(s, batch_size)


def compact_batches(idx: np.ndarray, keep: np.ndarray, width: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Drops unwanted entries of each batch and left-packs the rest.

  Retraining on D \\ R sees batch B_t \\ R at step t. Packing those into a
  narrower matrix (width = the largest |B_t \\ R|) avoids spending compute on
  masked-out examples, so the retraining baseline is timed fairly.

  Args:
    idx: [steps, B] batch indices, -1 for padding.
    keep: bool [n], True for examples to keep.
    width: output width (default: the largest kept count, at least 1).

  Returns:
    `(indices, mask)`: int32 [steps, width] (padding points at example 0) and
    float32 [steps, width].
  """
  valid = idx >= 0
  sel = valid & keep[np.where(valid, idx, 0)]
  counts = sel.sum(axis=1)
  w = max(int(counts.max(initial=0)), 1) if width is None else int(width)
  out = np.zeros((idx.shape[0], w), np.int32)
  mask = np.zeros((idx.shape[0], w), np.float32)
  for t in range(idx.shape[0]):
    kept = idx[t][sel[t]]
    out[t, :kept.size] = kept
    mask[t, :kept.size] = 1.0
  return out, mask


def masked_loss_sum(apply_fn: ApplyFn, params: Params, x: jax.Array,
                    y: jax.Array, mask: jax.Array) -> jax.Array:
  """sum_i mask_i l(f_params(x_i), y_i) with softmax cross-entropy."""
  losses = optax.softmax_cross_entropy_with_integer_labels(apply_fn(params, x), y)
  return jnp.sum(jnp.where(mask > 0, losses, 0.0))


def flat_loss_grad(apply_fn: ApplyFn, unravel: Callable[[jax.Array], Params]):
  """Returns `g(w_flat, x, y, mask) -> grad of masked_loss_sum` (flat)."""
  def loss(w, x, y, mask):
    return masked_loss_sum(apply_fn, unravel(w), x, y, mask)
  return jax.grad(loss)


@functools.partial(jax.jit, static_argnames=("apply_fn", "unravel", "record"))
def sgd_epoch(apply_fn: ApplyFn, unravel: Callable[[jax.Array], Params],
              w: jax.Array, images: jax.Array, labels: jax.Array,
              idx: jax.Array, mask: jax.Array, lr: jax.Array, l2: jax.Array,
              record: bool = False):
  """Runs one epoch of the masked SGD recipe on flat parameters.

  Args:
    apply_fn: the model.
    unravel: maps the flat vector back to the params pytree.
    w: flat float32 parameters [P].
    images, labels: the whole dataset on device.
    idx: int32 [steps, width] example indices (padding any valid index).
    mask: float32 [steps, width]; 0 drops an entry.
    lr: scalar learning rate of this epoch.
    l2: scalar lam.
    record: also return each step's (w_t, grad F_{B_t}(w_t)) (DeltaGrad).

  Returns:
    `w_end`, or `(w_end, (w_t [steps, P], g_t [steps, P]))` when recording;
    g_t is the mean *loss* gradient on the batch, without the L2 term.
  """
  grad_fn = flat_loss_grad(apply_fn, unravel)

  def step(w, inputs):
    i, m = inputs
    count = jnp.sum(m)
    g = grad_fn(w, images[i], labels[i], m) / jnp.maximum(count, 1.0)
    w_next = w - lr * (g + l2 * w)
    return w_next, ((w, g) if record else None)

  w_end, rec = jax.lax.scan(step, w, (idx, mask))
  return (w_end, rec) if record else w_end


def replay(apply_fn: ApplyFn, unravel: Callable[[jax.Array], Params],
           w: jax.Array, images: np.ndarray, labels: np.ndarray,
           recipe: SGDRecipe, keep: np.ndarray | None = None, *,
           progress: Callable[[int], None] | None = None) -> jax.Array:
  """Runs the whole recipe from flat `w` on the examples with `keep` True.

  With `keep=None` this is the original training run; with `keep = not R` it
  is exact retraining on D \\ R with the original batch order minus R.

  Args:
    apply_fn: the model.
    unravel: flat -> params pytree.
    w: flat starting parameters (the original w_0 for retraining).
    images, labels: the full original training set D (indices refer to it).
    recipe: the training recipe.
    keep: optional bool [n]; False entries are excluded from every batch.
    progress: called with the epoch index after each epoch.

  Returns:
    The flat parameters after the last epoch.
  """
  n = len(labels)
  keep = np.ones(n, bool) if keep is None else np.asarray(keep, bool)
  x, y = jnp.asarray(images), jnp.asarray(labels)
  l2 = jnp.float32(recipe.l2)
  # One width for the whole run, so the epoch compiles once.
  width = max(_max_kept(n, recipe, keep), 1)
  for e in range(recipe.epochs):
    idx = epoch_batches(n, recipe.batch_size, seed=recipe.seed, epoch=e)
    bidx, bmask = compact_batches(idx, keep, width)
    w = sgd_epoch(apply_fn, unravel, w, x, y, jnp.asarray(bidx),
                  jnp.asarray(bmask), jnp.float32(recipe.learning_rates[e]), l2)
    if progress is not None:
      progress(e)
  return w


def _max_kept(n: int, recipe: SGDRecipe, keep: np.ndarray) -> int:
  best = 0
  for e in range(recipe.epochs):
    idx = epoch_batches(n, recipe.batch_size, seed=recipe.seed, epoch=e)
    valid = idx >= 0
    best = max(best, int((valid & keep[np.where(valid, idx, 0)]).sum(1).max()))
  return best


def step_learning_rates(recipe: SGDRecipe, n: int) -> np.ndarray:
  """float32 [T]: the learning rate of every global step t."""
  s = steps_per_epoch(n, recipe.batch_size)
  return np.repeat(np.asarray(recipe.learning_rates, np.float32), s)


def pad_to(x: np.ndarray, size: int) -> np.ndarray:
  """Pads the leading axis of `x` with zeros to `size`."""
  if x.shape[0] == size:
    return x
  pad = np.zeros((size - x.shape[0],) + x.shape[1:], x.dtype)
  return np.concatenate([x, pad])
