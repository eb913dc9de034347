"""Non-private classifier training that checkpoints and resumes exactly.

The loop is deliberately plain: a jitted `(params, opt_state, x, y) -> ...`
step over shuffled fixed-size batches whose order is a pure function of
`(seed, epoch)`. Resuming therefore only needs params, optimiser state and the
global step: the restored run replays the same batches in the same order and
ends with bit-identical parameters to an uninterrupted run.

Restoring, checkpointing, SIGINT and wall time are `jaxleak.runloop`'s; this
module keeps the step and its metrics. DP training (`jaxleak.dp_training`)
reuses `evaluate`.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import functools
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxleak import data as data_lib
from jaxleak import models as models_lib
from jaxleak import runloop
from jaxleak._src import validate

__all__ = (
  "Preempted",
  "TrainConfig",
  "TrainResult",
  "evaluate",
  "make_train_step",
  "train_classifier",
)

ApplyFn = Callable[[Any, jax.Array], jax.Array]


# Raised when training stops on purpose after `preempt_after_steps` steps.
Preempted = runloop.Preempted


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Hyper-parameters of `train_classifier` (all JSON-serialisable).

  Attributes:
    epochs: passes over the training set.
    batch_size: fixed batch size (the last partial batch is dropped).
    learning_rate: Adam learning rate (cosine-decayed to 0 over training).
    weight_decay: decoupled weight decay (AdamW); 0 disables it.
    seed: seeds the batch order; the model init key is the caller's.
    checkpoint_every: save every this many steps (and at every epoch end).
  """
  epochs: int = 20
  batch_size: int = 128
  learning_rate: float = 1e-3
  weight_decay: float = 0.0
  seed: int = 0
  checkpoint_every: int = 200

  def validate(self) -> None:
    fn = "TrainConfig"
    validate.check_positive(self.epochs, "epochs", fn=fn)
    validate.check_positive(self.batch_size, "batch_size", fn=fn)
    validate.check_positive(self.learning_rate, "learning_rate", fn=fn)
    validate.check_positive(self.weight_decay, "weight_decay", fn=fn,
                            allow_zero=True)
    validate.check_positive(self.checkpoint_every, "checkpoint_every", fn=fn)


class TrainResult(NamedTuple):
  params: Any
  history: list[dict[str, float]]
  test_accuracy: float
  steps: int
  wall_time_s: float
  resumed_from: int | None


def make_optimizer(config: TrainConfig, total_steps: int
                   ) -> optax.GradientTransformation:
  schedule = optax.cosine_decay_schedule(config.learning_rate, max(total_steps, 1))
  if config.weight_decay:
    return optax.adamw(schedule, weight_decay=config.weight_decay)
  return optax.adam(schedule)


def make_train_step(apply_fn: ApplyFn, optimizer: optax.GradientTransformation,
                    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None):
  """Returns a jitted `step(params, opt_state, x, y) -> (params, opt_state, loss, acc)`."""
  loss_fn = loss_fn or models_lib.cross_entropy_loss

  def objective(params, x, y):
    logits = apply_fn(params, x)
    return loss_fn(logits, y), logits

  @jax.jit
  def step(params, opt_state, x, y):
    (loss, logits), grads = jax.value_and_grad(objective, has_aux=True)(params, x, y)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    acc = jnp.mean(jnp.argmax(logits, -1) == y)
    return params, opt_state, loss, acc

  return step


def evaluate(apply_fn: ApplyFn, params: Any, dataset: data_lib.Dataset, *,
             batch_size: int = 500) -> dict[str, float]:
  """Mean cross-entropy and accuracy of `params` on the whole `dataset`.

  The last chunk is padded to `batch_size` (and the padding masked out) so
  that the evaluation compiles once.
  """
  images, labels = np.asarray(dataset.images), np.asarray(dataset.labels)
  n = len(labels)
  if n == 0:
    raise ValueError("evaluate: argument 'dataset' is empty")
  batch_size = min(batch_size, n)
  chunk_stats = _chunk_stats(apply_fn)
  total_loss, total_correct = 0.0, 0.0
  for start in range(0, n, batch_size):
    x, y = images[start:start + batch_size], labels[start:start + batch_size]
    m = len(y)
    mask = np.ones(batch_size, np.float32)
    if m < batch_size:
      pad = batch_size - m
      x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
      y = np.concatenate([y, np.zeros((pad,), y.dtype)])
      mask[m:] = 0.0
    loss_sum, correct = chunk_stats(params, x, y, mask)
    total_loss += float(loss_sum)
    total_correct += float(correct)
  return {"loss": total_loss / n, "accuracy": total_correct / n}


@functools.lru_cache(maxsize=16)
def _chunk_stats(apply_fn: ApplyFn):
  """Jitted summed loss and correct count of one masked chunk.

  Cached per `apply_fn`, so evaluating every epoch (or every DP report
  interval) compiles once instead of once per call.
  """
  @jax.jit
  def chunk_stats(params, x, y, mask):
    logits = apply_fn(params, x)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    correct = jnp.argmax(logits, -1) == y
    return jnp.sum(losses * mask), jnp.sum(correct * mask)
  return chunk_stats


def train_classifier(apply_fn: ApplyFn, params: Any, train: data_lib.Dataset,
                     test: data_lib.Dataset, config: TrainConfig, *,
                     workdir: str | os.PathLike | None = None,
                     progress: bool = True,
                     preempt_after_steps: int | None = None,
                     run_info: dict[str, Any] | None = None) -> TrainResult:
  """Trains a classifier with Adam; checkpoints to and resumes from `workdir`.

  Args:
    apply_fn: `apply_fn(params, x) -> logits`, e.g. from `jaxleak.models.create`.
    params: initial parameters (ignored when resuming from a checkpoint).
    train: training set.
    test: evaluation set (evaluated at every epoch end).
    config: hyper-parameters.
    workdir: if given, checkpoints go to `workdir/checkpoints` and an existing
      checkpoint there is resumed. The stored config must match `config`.
    progress: show a tqdm progress bar with loss and accuracy.
    preempt_after_steps: stop with `Preempted` right after this global step
      has been checkpointed (simulates a preemption; rerun to resume).
    run_info: extra JSON identifying the run (model, dataset, init); it must
      also match on resume.

  Returns:
    A `TrainResult` with final params, per-epoch history, test accuracy and
    the wall time summed over every resumed segment of the run.

  Raises:
    ValueError: bad config, or a workdir holding a different run.
    jaxleak.runloop.Interrupted: SIGINT (the interrupted step is saved).
  """
  config.validate()
  steps_per_epoch = data_lib.num_batches(len(train), config.batch_size,
                                         drop_remainder=True)
  if steps_per_epoch == 0:
    raise ValueError(
        f"train_classifier: argument 'config.batch_size'={config.batch_size} is "
        f"larger than the training set ({len(train)} examples)")
  total_steps = steps_per_epoch * config.epochs
  optimizer = make_optimizer(config, total_steps)
  identity = {"config": dataclasses.asdict(config), "run": dict(run_info or {})}
  loop = runloop.RunLoop(
      "train", total_steps,
      checkpoint_dir=(None if workdir is None
                      else os.path.join(workdir, "checkpoints")),
      identity=identity, checkpoint_every=config.checkpoint_every,
      save_when=lambda done: done % steps_per_epoch == 0,
      stop_after=preempt_after_steps, progress=progress)
  with loop:
    state, aux = loop.restore(
        {"params": params, "opt_state": optimizer.init(params)},
        {"history": [], "epoch_loss_sum": 0.0, "epoch_acc_sum": 0.0,
         "epoch_count": 0})
    train_step = make_train_step(apply_fn, optimizer)
    batch_at = _BatchCursor(train, config.batch_size, config.seed,
                            steps_per_epoch)

    def step_fn(step, state, aux):
      x, y = batch_at(step)
      params, opt_state, loss, acc = train_step(state["params"],
                                                state["opt_state"], x, y)
      aux["epoch_loss_sum"] += float(loss)
      aux["epoch_acc_sum"] += float(acc)
      aux["epoch_count"] += 1
      epoch = step // steps_per_epoch
      if (step + 1) % steps_per_epoch == 0:
        test_metrics = evaluate(apply_fn, params, test)
        aux["history"].append({
            "epoch": epoch + 1, "step": step + 1,
            "train_loss": aux["epoch_loss_sum"] / aux["epoch_count"],
            "train_accuracy": aux["epoch_acc_sum"] / aux["epoch_count"],
            "test_loss": test_metrics["loss"],
            "test_accuracy": test_metrics["accuracy"],
        })
        aux.update(epoch_loss_sum=0.0, epoch_acc_sum=0.0, epoch_count=0)
      test_acc = (aux["history"][-1]["test_accuracy"] if aux["history"]
                  else float("nan"))
      return ({"params": params, "opt_state": opt_state}, aux,
              {"epoch": epoch + 1, "loss": f"{float(loss):.4f}",
               "test_acc": f"{test_acc:.4f}"})

    result = loop.run(step_fn, state, aux)
  history = result.aux["history"]
  return TrainResult(
      params=result.state["params"], history=history,
      test_accuracy=(float(history[-1]["test_accuracy"]) if history
                     else float("nan")),
      steps=result.step, wall_time_s=result.wall_time_s,
      resumed_from=result.resumed_from)


class _BatchCursor:
  """Batch `step` of the run: epoch `step // spe` in `(seed, epoch)` order.

  Steps are asked for in order, so one epoch iterator is kept and advanced;
  a resume mid-epoch starts the iterator at the resumed batch.
  """

  def __init__(self, train, batch_size, seed, steps_per_epoch):
    self._args = (train, batch_size, seed, steps_per_epoch)
    self._iter, self._next = None, None

  def __call__(self, step):
    train, batch_size, seed, spe = self._args
    if self._iter is None or self._next != step:
      epoch, offset = divmod(step, spe)
      self._iter = data_lib.batches(train, batch_size, seed=seed, epoch=epoch,
                                    shuffle=True, drop_remainder=True,
                                    start_batch=offset)
    self._next = step + 1
    if self._next % spe == 0:
      batch, self._iter = next(self._iter), None
      return batch
    return next(self._iter)

