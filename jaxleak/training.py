"""Non-private classifier training that checkpoints and resumes exactly.

The loop is deliberately plain: a jitted `(params, opt_state, x, y) -> ...`
step over shuffled fixed-size batches whose order is a pure function of
`(seed, epoch)`. Resuming therefore only needs params, optimiser state and the
global step: the restored run replays the same batches in the same order and
ends with bit-identical parameters to an uninterrupted run.

DP training (`jaxleak.dp`) and unlearning reuse `evaluate` and the checkpoint
layout used here.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import json
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxleak import checkpoint as checkpoint_lib
from jaxleak import data as data_lib
from jaxleak import models as models_lib
from jaxleak import report
from jaxleak._src import validate

__all__ = (
    "TrainConfig",
    "TrainResult",
    "make_train_step",
    "evaluate",
    "train_classifier",
    "Preempted",
)

ApplyFn = Callable[[Any, jax.Array], jax.Array]


class Preempted(RuntimeError):
  """Raised when training stops on purpose after `preempt_after_steps` steps."""


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

  @jax.jit
  def chunk_stats(params, x, y, mask):
    logits = apply_fn(params, x)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    correct = jnp.argmax(logits, -1) == y
    return jnp.sum(losses * mask), jnp.sum(correct * mask)

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
    A `TrainResult` with final params, per-epoch history and test accuracy.

  Raises:
    ValueError: bad config, or a workdir holding a different run.
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
  opt_state = optimizer.init(params)
  identity = {"config": dataclasses.asdict(config), "run": dict(run_info or {})}

  ckpt = None
  step, resumed_from = 0, None
  history: list[dict[str, float]] = []
  epoch_loss_sum, epoch_acc_sum, epoch_count = 0.0, 0.0, 0
  if workdir is not None:
    ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
    restored = ckpt.restore_latest({"params": params, "opt_state": opt_state})
    if restored is not None:
      state, meta, _ = restored
      if meta.get("identity") != _canonical_json(identity):
        raise ValueError(
            f"train_classifier: argument 'workdir'={os.fspath(workdir)!r} holds a "
            "checkpoint of a different run (model, data or config differ); use a "
            f"new workdir.\n  stored: {meta.get('identity')}\n  requested: "
            f"{_canonical_json(identity)}")
      params, opt_state = state["params"], state["opt_state"]
      step = resumed_from = int(meta["step"])
      history = list(meta["history"])
      epoch_loss_sum = float(meta["epoch_loss_sum"])
      epoch_acc_sum = float(meta["epoch_acc_sum"])
      epoch_count = int(meta["epoch_count"])

  def save(step):
    if ckpt is None:
      return
    ckpt.save(step, {"params": params, "opt_state": opt_state}, {
        "step": step,
        "identity": _canonical_json(identity),
        "history": history,
        "epoch_loss_sum": epoch_loss_sum,
        "epoch_acc_sum": epoch_acc_sum,
        "epoch_count": epoch_count,
    })

  train_step = make_train_step(apply_fn, optimizer)
  bar = None
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step",
               dynamic_ncols=True, mininterval=1.0)
  start_time = time.perf_counter()
  test_metrics = {"accuracy": float("nan"), "loss": float("nan")}
  if history:
    test_metrics = {"accuracy": history[-1]["test_accuracy"],
                    "loss": history[-1]["test_loss"]}
  try:
    while step < total_steps:
      epoch, offset = divmod(step, steps_per_epoch)
      batch_iter = data_lib.batches(train, config.batch_size, seed=config.seed,
                                    epoch=epoch, shuffle=True, drop_remainder=True)
      for i, (x, y) in enumerate(batch_iter):
        if i < offset:
          continue  # replay the epoch's order up to the resume point
        params, opt_state, loss, acc = train_step(params, opt_state, x, y)
        step += 1
        epoch_loss_sum += float(loss)
        epoch_acc_sum += float(acc)
        epoch_count += 1
        end_of_epoch = step % steps_per_epoch == 0
        if end_of_epoch:
          test_metrics = evaluate(apply_fn, params, test)
          history.append({
              "epoch": epoch + 1, "step": step,
              "train_loss": epoch_loss_sum / epoch_count,
              "train_accuracy": epoch_acc_sum / epoch_count,
              "test_loss": test_metrics["loss"],
              "test_accuracy": test_metrics["accuracy"],
          })
          epoch_loss_sum, epoch_acc_sum, epoch_count = 0.0, 0.0, 0
        if end_of_epoch or step % config.checkpoint_every == 0:
          save(step)
        if bar is not None:
          bar.update(1)
          # refresh=False: the bar redraws at most every `mininterval` s
          # instead of once per step (a line per step in a log file).
          bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss):.4f}",
                          test_acc=f"{test_metrics['accuracy']:.4f}",
                          refresh=False)
          if end_of_epoch:
            last = history[-1]
            bar.write(f"epoch {last['epoch']}: train loss "
                      f"{last['train_loss']:.4f}, test accuracy "
                      f"{last['test_accuracy']:.4f}")
        if preempt_after_steps is not None and step >= preempt_after_steps:
          save(step)
          raise Preempted(f"stopped after step {step} (preempt_after_steps)")
        if end_of_epoch:
          break
  finally:
    if bar is not None:
      bar.close()
    if ckpt is not None:
      ckpt.close()
  return TrainResult(
      params=params, history=history,
      test_accuracy=float(test_metrics["accuracy"]), steps=step,
      wall_time_s=time.perf_counter() - start_time, resumed_from=resumed_from)


def _canonical_json(obj: Any) -> Any:
  """Normalises `obj` through JSON so stored and fresh identities compare equal."""
  return json.loads(json.dumps(report.to_jsonable(obj)))
