"""Training that records the history unlearning methods need, within a budget.

`train_with_history` runs the replayable SGD recipe (`SGDRecipe`) and keeps:

* for every method: the initial and final parameters w_0, w* and the recipe,
  so retraining replays exactly the original batches minus the forget set;
* for Mini-Unlearning (minimal history): the mean full-data loss gradient
  grad F_D(w*) at the final model and `snapshots` pairs
  (w_j, grad F_D(w_j)) at the ends of the last epochs before the final one:
  ``(snapshots + 1)`` parameter and gradient vectors in total;
* for DeltaGrad (full history): every iteration's parameters w_t and mean
  minibatch loss gradient grad F_{B_t}(w_t), i.e. ``2 T P`` floats for T
  steps and P parameters.

Memory budget. The DeltaGrad cache is the only part that grows with training
length. If ``2 T P * 4`` bytes (plus the minimal history) exceed
`max_history_bytes`, ``on_budget="raise"`` raises ValueError, and
``on_budget="stride"`` caches only every s-th step with the smallest stride s
that fits; DeltaGrad then runs the uncached steps as explicit (exact)
iterations, which is correct but slower.

Storage. With a `workdir`, the history is written with orbax through
`jaxleak.checkpoint.Checkpointer`: the training state after every epoch
(``history/state``), each epoch's DeltaGrad rows (``history/steps/<epoch>``,
written once, so saving is linear in T) and, at the end, the minimal history
(``history/final``). Rerunning with the same arguments resumes after the last
finished epoch and gives the same history as an uninterrupted run;
`load_history(workdir)` reads a finished history back.
"""

from __future__ import annotations

from collections.abc import Callable
import hashlib
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxleak import checkpoint as checkpoint_lib
from jaxleak import runloop
from jaxleak._src import validate
from jaxleak.data.dataset import as_arrays
from jaxleak.unlearning import _grads
from jaxleak.unlearning import _sgd

ApplyFn = Callable[[Any, jax.Array], jax.Array]
Params = Any

__all__ = (
    "TrainingHistory",
    "train_with_history",
    "save_history",
    "load_history",
    "history_bytes",
    "data_checksum",
)

BUDGET_POLICIES = ("raise", "stride")


class TrainingHistory(NamedTuple):
  """What `train_with_history` recorded (flat vectors use `ravel_pytree` order).

  Attributes:
    recipe: the SGD recipe of the run.
    init_params: w_0 (pytree).
    final_params: w* (pytree).
    full_grad: float32 [P], grad F_D(w*), the mean loss gradient on all of D
      (without the L2 term).
    snapshot_params: float32 [m, P], flat w_j at the ends of the m epochs
      before the last, oldest first.
    snapshot_grads: float32 [m, P], grad F_D(w_j) (mean, no L2 term).
    step_params: float32 [T_c, P], w_t of the cached steps
      t = 0, s, 2s, ... (s = `cache_stride`); [0, P] without a cache.
    step_grads: float32 [T_c, P], grad F_{B_t}(w_t), the mean minibatch loss
      gradient of those steps.
    cache_stride: s >= 1, or 0 when no per-step cache was kept.
    num_examples: n = |D|.
    fingerprint: JSON identity: checksums of w_0, w* and the data.
  """
  recipe: _sgd.SGDRecipe
  init_params: Params
  final_params: Params
  full_grad: jax.Array
  snapshot_params: jax.Array
  snapshot_grads: jax.Array
  step_params: jax.Array
  step_grads: jax.Array
  cache_stride: int
  num_examples: int
  fingerprint: dict[str, Any]

  @property
  def num_steps(self) -> int:
    """T, the number of SGD steps of the recipe."""
    return self.recipe.epochs * _sgd.steps_per_epoch(self.num_examples,
                                                     self.recipe.batch_size)

  @property
  def nbytes(self) -> int:
    """Bytes held by the per-step cache and the minimal history."""
    arrays = (self.full_grad, self.snapshot_params, self.snapshot_grads,
              self.step_params, self.step_grads)
    return int(sum(np.asarray(a).nbytes for a in arrays))

  def is_cached(self, t: int) -> bool:
    return self.cache_stride > 0 and t % self.cache_stride == 0


def data_checksum(images: np.ndarray, labels: np.ndarray) -> str:
  """A 16-hex-digit fingerprint of a training set (catches the wrong data).

  Hashes the shapes, every label and an evenly strided sample of at most
  2^18 pixel values, so it costs about a millisecond even for large sets;
  it detects another dataset, subset or order, not deliberate tampering.
  """
  digest = hashlib.sha256()
  images = np.asarray(images, np.float32)
  labels = np.ascontiguousarray(np.asarray(labels, np.int32))
  flat = images.reshape(-1)
  stride = max(1, flat.size // 2**18)
  digest.update(f"{images.shape}{labels.shape}".encode())
  digest.update(labels.tobytes())
  digest.update(np.ascontiguousarray(flat[::stride]).tobytes())
  return digest.hexdigest()[:16]


def history_bytes(num_params: int, num_steps: int, snapshots: int,
                  stride: int) -> int:
  """Bytes of a history: (2 T_c + 2 m + 1) P float32 values."""
  cached = 0 if stride == 0 else -(-num_steps // stride)
  return 4 * int(num_params) * (2 * cached + 2 * int(snapshots) + 1)


def _choose_stride(num_params: int, num_steps: int, snapshots: int,
                   cache_steps: bool, budget: int | None, policy: str) -> int:
  fn = "train_with_history"
  stride = 1 if cache_steps else 0
  if budget is None:
    return stride
  need = history_bytes(num_params, num_steps, snapshots, stride)
  if need <= budget:
    return stride
  minimal = history_bytes(num_params, num_steps, snapshots, 0)
  if policy == "raise" or minimal + 8 * num_params > budget:
    raise ValueError(
        f"{fn}: the history needs {need / 2**20:.1f} MiB ({num_steps} steps x "
        f"{num_params} params for DeltaGrad, plus {snapshots} snapshots) but "
        f"argument 'max_history_bytes' is {budget / 2**20:.1f} MiB; raise it, "
        "pass on_budget='stride' to cache every s-th step only, or "
        "cache_steps=False (no DeltaGrad)")
  # Smallest stride whose cache fits next to the minimal history.
  rows = (budget - minimal) // (8 * num_params)
  return max(1, -(-num_steps // max(rows, 1)))


def train_with_history(apply_fn: ApplyFn, params: Params, data: Any,
                       recipe: _sgd.SGDRecipe, *, snapshots: int = 2,
                       cache_steps: bool = True,
                       max_history_bytes: int | None = 2**30,
                       on_budget: str = "raise",
                       workdir: str | os.PathLike | None = None,
                       progress: bool = False,
                       stop_after_epochs: int | None = None
                       ) -> TrainingHistory:
  """Trains with the SGD recipe and records the unlearning history.

  Args:
    apply_fn: `apply_fn(params, x) -> logits`.
    params: the initial parameters w_0 (float32 pytree).
    data: the training set D: a Dataset or `(images, labels)`.
    recipe: the training recipe (`sgd_recipe`).
    snapshots: m >= 0 epoch-end snapshots for Mini-Unlearning (at most
      epochs - 1).
    cache_steps: keep DeltaGrad's per-step cache.
    max_history_bytes: memory budget of the history in bytes (> 0; None:
      unbounded).
    on_budget: "raise" or "stride" (see the module docstring).
    workdir: folder to store the history in (and resume from).
    progress: show a tqdm bar over epochs.
    stop_after_epochs: stop (returning None) once this many epochs are done
      and saved; simulates a preemption for resume tests.

  Returns:
    The `TrainingHistory` (None if stopped early by `stop_after_epochs`).

  Raises:
    ValueError: bad arguments, a budget that cannot be met, or a workdir
      holding the history of a different run.
  """
  fn = "train_with_history"
  images, labels = as_arrays(data, fn=fn)
  n = int(len(labels))
  if n == 0:
    raise ValueError(f"{fn}: argument 'data' is empty")
  if not isinstance(recipe, _sgd.SGDRecipe):
    raise TypeError(f"{fn}: argument 'recipe' must be an SGDRecipe (see "
                    f"sgd_recipe), got {type(recipe).__name__}")
  snapshots = validate.check_int(snapshots, "snapshots", fn=fn, low=0)
  if snapshots > recipe.epochs - 1:
    raise ValueError(
        f"{fn}: argument 'snapshots'={snapshots} must be at most epochs - 1 = "
        f"{recipe.epochs - 1} (one snapshot per earlier epoch end)")
  validate.check_choice(on_budget, "on_budget", BUDGET_POLICIES, fn=fn)
  if max_history_bytes is not None:  # None is the unbounded budget
    validate.check_positive(max_history_bytes, "max_history_bytes", fn=fn)
  validate.check_finite(params, "params", fn=fn)

  w0, unravel = _sgd.flatten(params)
  if w0.dtype != jnp.float32:
    raise TypeError(f"{fn}: argument 'params' must be float32, got {w0.dtype}")
  p = int(w0.size)
  spe = _sgd.steps_per_epoch(n, recipe.batch_size)
  num_steps = spe * recipe.epochs
  stride = _choose_stride(p, num_steps, snapshots, cache_steps,
                          max_history_bytes, on_budget)
  identity = {
      "recipe": recipe.to_json(), "num_params": p, "num_examples": n,
      "snapshots": snapshots, "cache_stride": stride,
      "init_checksum": checkpoint_lib.tree_checksum(params),
      "data_checksum": data_checksum(images, labels),
  }

  # Host copies of what is recorded; the step cache is appended per epoch.
  snap_first = recipe.epochs - 1 - snapshots  # first epoch whose end is kept
  snap_p = np.zeros((snapshots, p), np.float32)
  snap_g = np.zeros((snapshots, p), np.float32)
  root = (None if workdir is None
          else os.path.join(os.fspath(workdir), "history"))
  loop = runloop.RunLoop(
      "train+history", recipe.epochs,
      checkpoint_dir=None if root is None else os.path.join(root, "state"),
      identity=identity, checkpoint_every=1, stop_after=stop_after_epochs,
      progress=progress, unit="epoch",
      where=(None if workdir is None
             else runloop.describe_workdir(workdir)))
  steps_ckpt = None
  if root is not None:
    steps_ckpt = checkpoint_lib.Checkpointer(
        os.path.join(root, "steps"), max_to_keep=max(2, recipe.epochs + 1))
  x, y = jnp.asarray(images), jnp.asarray(labels)
  full = _grads.SubsetGradient(apply_fn, unravel, images, labels)
  l2 = jnp.float32(recipe.l2)
  all_kept = np.ones(n, bool)
  cache_rows: list[tuple[np.ndarray, np.ndarray]] = []  # without a workdir

  def epoch_fn(e, state, aux):
    w, snap_p, snap_g = state["w"], np.array(state["snap_p"]), np.array(
        state["snap_g"])
    idx = _sgd.epoch_batches(n, recipe.batch_size, seed=recipe.seed, epoch=e)
    bidx, bmask = _sgd.compact_batches(idx, all_kept, recipe.batch_size)
    out = _sgd.sgd_epoch(apply_fn, unravel, jnp.asarray(w), x, y,
                         jnp.asarray(bidx), jnp.asarray(bmask),
                         jnp.float32(recipe.learning_rates[e]), l2,
                         record=stride > 0)
    if stride > 0:
      w, (ws, gs) = out
      rows = [t - e * spe for t in range(e * spe, (e + 1) * spe)
              if t % stride == 0]
      chunk = (np.asarray(ws)[rows], np.asarray(gs)[rows])
      if steps_ckpt is not None:
        # Written before the epoch's state, so a resumed run never lacks it.
        steps_ckpt.save(e, {"w": chunk[0], "g": chunk[1]}, {"epoch": e})
      else:
        cache_rows.append(chunk)
    else:
      w = out
    if snapshots and e >= snap_first and e < recipe.epochs - 1:
      j = e - snap_first
      snap_p[j] = np.asarray(w)
      snap_g[j] = np.asarray(full.mean(w))
    return {"w": w, "snap_p": snap_p, "snap_g": snap_g}, aux, {}

  try:
    with loop:
      state, aux = loop.restore({"w": w0, "snap_p": snap_p, "snap_g": snap_g})
      try:
        result = loop.run(epoch_fn, state, aux)
      except runloop.Preempted:
        return None
    w = jnp.asarray(result.state["w"])
    snap_p = np.array(result.state["snap_p"])
    snap_g = np.array(result.state["snap_g"])
    full_grad = np.asarray(full.mean(w))
    if stride > 0 and steps_ckpt is not None:
      step_w, step_g = _read_step_chunks(steps_ckpt, recipe.epochs, p)
    elif stride > 0:
      step_w = np.concatenate([r[0] for r in cache_rows])
      step_g = np.concatenate([r[1] for r in cache_rows])
    else:
      step_w = step_g = np.zeros((0, p), np.float32)
  finally:
    if steps_ckpt is not None:
      steps_ckpt.close()
  final_params = unravel(w)
  fingerprint = {
      "init_checksum": identity["init_checksum"],
      "final_checksum": checkpoint_lib.tree_checksum(final_params),
      "data_checksum": identity["data_checksum"],
      "num_params": p,
  }
  history = TrainingHistory(
      recipe=recipe, init_params=params, final_params=final_params,
      full_grad=jnp.asarray(full_grad), snapshot_params=jnp.asarray(snap_p),
      snapshot_grads=jnp.asarray(snap_g), step_params=jnp.asarray(step_w),
      step_grads=jnp.asarray(step_g), cache_stride=stride, num_examples=n,
      fingerprint=fingerprint)
  if root is not None:
    _save_final(root, history)
  return history


def _read_step_chunks(ckpt: checkpoint_lib.Checkpointer, epochs: int, p: int
                      ) -> tuple[np.ndarray, np.ndarray]:
  ws, gs = [], []
  steps = set(ckpt.steps)
  for e in range(epochs):
    if e not in steps:
      raise FileNotFoundError(
          f"the DeltaGrad cache of epoch {e} is missing from {ckpt.directory}")
    state, _ = ckpt.restore(step=e)
    ws.append(np.asarray(state["w"], np.float32).reshape(-1, p))
    gs.append(np.asarray(state["g"], np.float32).reshape(-1, p))
  return np.concatenate(ws), np.concatenate(gs)


def _minimal_state(history: TrainingHistory) -> dict[str, Any]:
  return {"init_params": history.init_params,
          "final_params": history.final_params,
          "full_grad": history.full_grad,
          "snapshot_params": history.snapshot_params,
          "snapshot_grads": history.snapshot_grads}


def _meta(history: TrainingHistory) -> dict[str, Any]:
  return {"recipe": history.recipe.to_json(),
          "cache_stride": history.cache_stride,
          "num_examples": history.num_examples,
          "fingerprint": history.fingerprint}


def _save_final(root: str, history: TrainingHistory) -> None:
  with checkpoint_lib.Checkpointer(os.path.join(root, "final")) as ckpt:
    ckpt.save(0, _minimal_state(history), _meta(history))


def save_history(history: TrainingHistory, directory: str | os.PathLike) -> str:
  """Writes `history` with orbax under `directory`/history; returns that path.

  The per-step cache is written as one chunk per epoch, the minimal history
  as one checkpoint, exactly as `train_with_history(workdir=...)` does.
  """
  root = os.path.join(os.fspath(directory), "history")
  n = history.num_examples
  spe = _sgd.steps_per_epoch(n, history.recipe.batch_size)
  if history.cache_stride > 0:
    sw, sg = np.asarray(history.step_params), np.asarray(history.step_grads)
    with checkpoint_lib.Checkpointer(
        os.path.join(root, "steps"),
        max_to_keep=max(2, history.recipe.epochs + 1)) as ckpt:
      row = 0
      for e in range(history.recipe.epochs):
        k = sum(1 for t in range(e * spe, (e + 1) * spe)
                if t % history.cache_stride == 0)
        ckpt.save(e, {"w": sw[row:row + k], "g": sg[row:row + k]},
                  {"epoch": e})
        row += k
  _save_final(root, history)
  return root


def load_history(directory: str | os.PathLike,
                 params_like: Params | None = None) -> TrainingHistory:
  """Reads a history written by `train_with_history` or `save_history`.

  Args:
    directory: the workdir given when the history was written.
    params_like: optional params pytree of the model; the stored w_0 and w*
      are put into its pytree structure (plain nested dicts otherwise).

  Returns:
    The `TrainingHistory`, bit-identical to the one that was saved.

  Raises:
    FileNotFoundError: no finished history in `directory` (an interrupted
      run leaves only `history/state`; rerun training to resume it).
  """
  root = os.path.join(os.fspath(directory), "history")
  final_dir = os.path.join(root, "final")
  if not os.path.isdir(final_dir):
    raise FileNotFoundError(
        f"load_history: argument 'directory'={os.fspath(directory)!r} has no "
        f"finished training history ({final_dir} is missing)")
  with checkpoint_lib.Checkpointer(final_dir) as ckpt:
    state, meta = ckpt.restore(step=0)
  recipe = _sgd.SGDRecipe.from_json(meta["recipe"])
  init_params, final_params = state["init_params"], state["final_params"]
  if params_like is not None:
    treedef = jax.tree.structure(params_like)
    init_params = jax.tree.unflatten(treedef, jax.tree.leaves(init_params))
    final_params = jax.tree.unflatten(treedef, jax.tree.leaves(final_params))
  p = int(meta["fingerprint"]["num_params"])
  stride = int(meta["cache_stride"])
  if stride > 0:
    with checkpoint_lib.Checkpointer(
        os.path.join(root, "steps"), max_to_keep=max(2, recipe.epochs + 1)
    ) as ckpt:
      step_w, step_g = _read_step_chunks(ckpt, recipe.epochs, p)
  else:
    step_w = step_g = np.zeros((0, p), np.float32)
  return TrainingHistory(
      recipe=recipe, init_params=init_params, final_params=final_params,
      full_grad=jnp.asarray(state["full_grad"]),
      snapshot_params=jnp.asarray(state["snapshot_params"]).reshape(-1, p),
      snapshot_grads=jnp.asarray(state["snapshot_grads"]).reshape(-1, p),
      step_params=jnp.asarray(step_w), step_grads=jnp.asarray(step_g),
      cache_stride=stride, num_examples=int(meta["num_examples"]),
      fingerprint=dict(meta["fingerprint"]))
