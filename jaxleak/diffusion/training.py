"""Training a diffusion prior: epsilon-prediction MSE, Adam, EMA, data-parallel.

`train_prior` is the resumable training loop behind ``jaxleak train-prior``.
It is data-parallel over all devices: the batch is sharded along a
one-axis ``("data",)`` mesh with explicit sharding, params, EMA params and
optimiser state are replicated, and XLA inserts the gradient all-reduce.
Every `checkpoint_every` steps (and on SIGINT) it saves params, EMA params,
optimiser state, step and RNG key through `jaxleak.runloop`; rerunning with
the same arguments resumes from the newest checkpoint and ends with the same
parameters as an uninterrupted run, because every batch and every noise
draw is a pure function of (seed, step).
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import functools
import hashlib
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxleak import runloop
from jaxleak._src import validate
from jaxleak.data import batching
from jaxleak.diffusion import schedule as schedule_lib
from jaxleak.diffusion.schedule import NoiseSchedule
from jaxleak.sharding import data_mesh

__all__ = (
    "TrainState",
    "TrainResult",
    "diffusion_loss",
    "make_optimizer",
    "init_train_state",
    "ema_update",
    "ema_decay_at",
    "make_train_step",
    "random_shift",
    "data_mesh",
    "train_prior",
)

P = jax.sharding.PartitionSpec


class TrainState(NamedTuple):
  """Everything a training run needs to continue exactly.

  Attributes:
    params: the UNet params being optimised.
    ema_params: exponential moving average of `params` (used for sampling).
    opt_state: the optax state.
    step: int32 scalar, optimiser steps taken.
    key: typed PRNG key; split once per step.
  """

  params: Any
  ema_params: Any
  opt_state: Any
  step: jax.Array
  key: jax.Array


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """What `train_prior` returns.

  Attributes:
    state: the final `TrainState`.
    history: one dict per logging interval: step, loss (mean over the
      interval), lr, elapsed wall time (s).
    wall_time_s: wall time of this invocation (not counting earlier runs
      that were resumed from).
    total_wall_time_s: wall time summed over the run and the runs it
      resumed from.
    resumed_from: the checkpoint step it resumed from, or None.
  """

  state: TrainState
  history: list[dict[str, float]]
  wall_time_s: float
  total_wall_time_s: float
  resumed_from: int | None


def diffusion_loss(apply_fn: Callable[..., jax.Array], params: Any,
                   schedule: NoiseSchedule, x0: jax.Array,
                   cond: jax.Array | None, key: jax.Array, *,
                   cond_drop_prob: float = 0.0,
                   null_class: int | None = None) -> jax.Array:
  """Epsilon-prediction loss of DDPM (Ho et al. 2020, "L_simple").

  Draws t ~ U{0..T-1} and eps ~ N(0, I) per example and returns
  mean ||eps - eps_theta(sqrt(ab_t) x0 + sqrt(1 - ab_t) eps, t)||^2.

  Args:
    apply_fn: `eps = apply_fn(params, x_t, t, cond)`.
    params: the UNet params.
    schedule: the noise schedule.
    x0: clean images in diffusion space [-1, 1], NHWC.
    cond: labels [B] or None.
    key: PRNG key.
    cond_drop_prob: probability of replacing a label by `null_class` (trains
      the unconditional branch for classifier-free guidance).
    null_class: the null label; needed when cond_drop_prob > 0.

  Returns:
    The scalar mean squared error.
  """
  k_t, k_eps, k_drop = jax.random.split(key, 3)
  b = x0.shape[0]
  sharding = _batch_sharding(x0)
  t = jax.random.randint(k_t, (b,), 0, schedule.num_timesteps,
                         out_sharding=sharding)
  eps = jax.random.normal(k_eps, x0.shape, x0.dtype,
                          out_sharding=_spec_like(x0, sharding))
  x_t = schedule_lib.add_noise(schedule, x0, t, eps)
  if cond is not None and cond_drop_prob > 0:
    drop = jax.random.bernoulli(k_drop, cond_drop_prob, (b,),
                                out_sharding=sharding)
    cond = jnp.where(drop, null_class, cond)
  pred = apply_fn(params, x_t, t, cond)
  return jnp.mean((pred - eps) ** 2)


def _batch_sharding(x: jax.Array) -> P | None:
  """P(<batch axes>) of an explicitly sharded `x`, else None."""
  try:
    spec = jax.typeof(x).sharding.spec
  except AttributeError:
    return None
  if not spec or spec[0] is None:
    return None
  return P(spec[0])


def _spec_like(x: jax.Array, batch: P | None) -> P | None:
  if batch is None:
    return None
  return P(batch[0], *([None] * (x.ndim - 1)))


def make_optimizer(learning_rate: float, total_steps: int, *,
                   warmup_steps: int = 100, grad_clip: float = 1.0,
                   final_lr_fraction: float = 0.1
                   ) -> optax.GradientTransformation:
  """Adam with linear warm-up, cosine decay and global-norm clipping."""
  fn = "make_optimizer"
  validate.check_positive(learning_rate, "learning_rate", fn=fn)
  validate.check_positive(total_steps, "total_steps", fn=fn)
  lr = _lr_schedule(learning_rate, total_steps, warmup_steps,
                    final_lr_fraction)
  return optax.chain(optax.clip_by_global_norm(grad_clip),
                     optax.adam(lr))


def _lr_schedule(learning_rate: float, total_steps: int, warmup_steps: int,
                 final_lr_fraction: float) -> optax.Schedule:
  warmup_steps = int(min(warmup_steps, max(int(total_steps) - 1, 0)))
  return optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, warmup_steps, max(int(total_steps), warmup_steps + 1),
      end_value=learning_rate * final_lr_fraction)


def init_train_state(params: Any, optimizer: optax.GradientTransformation,
                     key: jax.Array) -> TrainState:
  """A fresh `TrainState` at step 0 with EMA params equal to params.

  The params are copied: the jitted train step donates its state, which must
  never delete the caller's arrays.
  """
  params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
  return TrainState(params=params,
                    ema_params=jax.tree.map(jnp.copy, params),
                    opt_state=optimizer.init(params),
                    step=jnp.zeros((), jnp.int32),
                    key=key)


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
  """EMA decay with warm-up: min(decay, (1 + step) / (10 + step)).

  Early in training the average would otherwise be dominated by the random
  initialisation for ~1 / (1 - decay) steps.
  """
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema_params: Any, params: Any, decay: jax.Array) -> Any:
  """decay * ema + (1 - decay) * params, leaf by leaf."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p,
                      ema_params, params)


def random_shift(images: jax.Array, key: jax.Array, max_shift: int
                 ) -> jax.Array:
  """Translates each image by its own random (dy, dx) in [-max_shift, max_shift].

  Pixels shifted in from outside the image repeat its border (edge
  padding), so no black borders appear.

  Args:
    images: NHWC images.
    key: PRNG key.
    max_shift: largest shift in pixels (0 returns `images` unchanged).

  Returns:
    The shifted images, same shape and dtype.
  """
  if max_shift == 0:
    return images
  b, h, w, _ = images.shape
  s = int(max_shift)
  batch = _batch_sharding(images)
  offsets = jax.random.randint(key, (b, 2), -s, s + 1,
                               out_sharding=None if batch is None
                               else P(batch[0], None))
  # Clamped gathers along H then W: an edge-padded translation.
  rows = jnp.clip(jnp.arange(h)[None, :] - offsets[:, :1], 0, h - 1)
  cols = jnp.clip(jnp.arange(w)[None, :] - offsets[:, 1:], 0, w - 1)
  images = jnp.take_along_axis(images, rows[:, :, None, None], axis=1)
  return jnp.take_along_axis(images, cols[:, None, :, None], axis=2)


def make_train_step(apply_fn: Callable[..., jax.Array], schedule: NoiseSchedule,
                    optimizer: optax.GradientTransformation, *,
                    ema_decay: float = 0.999, cond_drop_prob: float = 0.0,
                    null_class: int | None = None, hflip: bool = False,
                    shift: int = 0,
                    mesh: jax.sharding.Mesh | None = None
                    ) -> Callable[[TrainState, jax.Array, jax.Array | None],
                                  tuple[TrainState, jax.Array]]:
  """Builds a jitted `(state, images, labels) -> (state, loss)` step.

  `images` are in diffusion space; under a data mesh they (and `labels`)
  should be sharded along the batch, and the state replicated.

  Args:
    apply_fn: `eps = apply_fn(params, x_t, t, cond)`.
    schedule: the noise schedule.
    optimizer: an optax transformation (e.g. `make_optimizer`).
    ema_decay: target EMA decay (with warm-up, `ema_decay_at`).
    cond_drop_prob: label-dropout probability for classifier-free guidance.
    null_class: the null label used when dropping labels.
    hflip: randomly flip images left-right (data augmentation).
    shift: random translations of up to `shift` pixels in each direction
      (data augmentation, `random_shift`); 0 disables them.
    mesh: the data mesh the step runs under (call it inside
      `jax.set_mesh(mesh)`), or None for a single device.

  Returns:
    The jitted step function.
  """
  fn = "make_train_step"
  validate.check_in_range(ema_decay, "ema_decay", 0.0, 1.0, fn=fn)
  validate.check_in_range(cond_drop_prob, "cond_drop_prob", 0.0, 1.0, fn=fn)
  if cond_drop_prob > 0 and null_class is None:
    raise ValueError(
        f"{fn}: argument 'null_class' is required when cond_drop_prob > 0")
  if isinstance(shift, bool) or not isinstance(shift, (int, np.integer)) or (
      shift < 0):
    raise ValueError(
        f"{fn}: argument 'shift' must be a non-negative int, got {shift!r}")

  def step(state: TrainState, images: jax.Array, labels: jax.Array | None,
           schedule: NoiseSchedule):
    key, k_loss, k_flip = jax.random.split(state.key, 3)
    if shift:
      # A key of its own (folded from the flip key) keeps the loss and flip
      # draws of runs without shifts unchanged.
      images = random_shift(images, jax.random.fold_in(k_flip, 1), shift)
    if hflip:
      sharding = _batch_sharding(images)
      flip = jax.random.bernoulli(k_flip, 0.5, (images.shape[0],),
                                  out_sharding=sharding)
      images = jnp.where(flip[:, None, None, None], images[:, :, ::-1, :],
                         images)
    loss, grads = jax.value_and_grad(diffusion_loss, argnums=1)(
        apply_fn, state.params, schedule, images, labels, k_loss,
        cond_drop_prob=cond_drop_prob, null_class=null_class)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = ema_update(state.ema_params, params,
                     ema_decay_at(state.step, ema_decay))
    return TrainState(params, ema, opt_state, state.step + 1, key), loss

  jitted = jax.jit(step, donate_argnums=0)
  # The schedule is an argument, not a closure constant, so that under a
  # data mesh it carries the mesh's (replicated) sharding like the state.
  if mesh is not None:
    schedule = jax.device_put(
        schedule, jax.sharding.NamedSharding(mesh, P()))
  return lambda state, images, labels: jitted(state, images, labels, schedule)


def _lr_at(optimizer_lr: Callable[[int], float] | None, step: int) -> float:
  return float(optimizer_lr(step)) if optimizer_lr is not None else float("nan")


def train_prior(apply_fn: Callable[..., jax.Array], params: Any,
                schedule: NoiseSchedule, images: np.ndarray,
                labels: np.ndarray | None, *, steps: int, batch_size: int,
                learning_rate: float = 1e-3, warmup_steps: int = 100,
                ema_decay: float = 0.999, cond_drop_prob: float = 0.0,
                null_class: int | None = None, hflip: bool = False,
                shift: int = 0, seed: int = 0, workdir: str | None = None,
                checkpoint_every: int = 500, log_every: int = 10,
                callback: Callable[[int, TrainState], None] | None = None,
                callback_every: int = 0, progress: bool = True,
                devices: list[Any] | None = None,
                stop_after: int | None = None,
                run_info: dict[str, Any] | None = None) -> TrainResult:
  """Trains (or resumes training) a diffusion UNet.

  Args:
    apply_fn: `eps = apply_fn(params, x_t, t, cond)`.
    params: initial UNet params (ignored when resuming; they give the
      structure to restore into).
    schedule: the noise schedule.
    images: training images NHWC in [0, 1] (mapped to [-1, 1] here).
    labels: int labels [N] for a class-conditional UNet, else None.
    steps: total optimiser steps of the run.
    batch_size: global batch size (a multiple of the device count).
    learning_rate: peak Adam learning rate (warm-up, cosine decay to 10%).
    warmup_steps: linear warm-up steps.
    ema_decay: EMA decay (with warm-up).
    cond_drop_prob: label dropout for classifier-free guidance.
    null_class: the null label (required with cond_drop_prob > 0).
    hflip: random left-right flips.
    shift: random translations of up to this many pixels (0: none).
    seed: seeds init key, batch order and noise.
    workdir: folder for checkpoints (``<workdir>/checkpoints``); None
      disables checkpointing and resuming.
    checkpoint_every: steps between checkpoints (the last step is always
      checkpointed).
    log_every: steps per history entry.
    callback: called as `callback(step, state)` every `callback_every` steps
      and after the last step (e.g. to write a sample grid).
    callback_every: 0 disables periodic callbacks.
    progress: show a tqdm progress bar.
    devices: devices of the data mesh (default: all devices, `jax.devices()`,
      as `jaxleak.sharding.data_mesh`).
    stop_after: stop (after checkpointing) once this step is reached, as a
      preempted job would; rerun to resume.
    run_info: extra JSON identifying the run (UNet spec, dataset); a
      checkpoint in `workdir` of a run with another identity (these
      settings, or any argument above that shapes training) is refused.

  Returns:
    A `TrainResult`.
  """
  fn = "train_prior"
  validate.check_images(images, "images", fn=fn)
  n = int(np.shape(images)[0])
  validate.check_positive(steps, "steps", fn=fn)
  validate.check_positive(batch_size, "batch_size", fn=fn)
  steps, batch_size = int(steps), int(batch_size)
  if labels is not None:
    validate.check_shape(labels, "labels", (n,), fn=fn)
  if batch_size > n:
    raise ValueError(
        f"{fn}: argument 'batch_size' ({batch_size}) exceeds the number of "
        f"training images ({n})")
  mesh = data_mesh(devices=devices or None)
  n_dev = mesh.devices.size
  if batch_size % n_dev:
    raise ValueError(
        f"{fn}: argument 'batch_size' ({batch_size}) must be a multiple of "
        f"the {n_dev} local devices (data-parallel mesh)")

  identity = {
      "run": dict(run_info or {}), "num_images": n,
      "data_checksum": _data_checksum(images, labels),
      "schedule_betas": hashlib.sha256(
          np.asarray(schedule.betas, np.float64).tobytes()).hexdigest()[:16],
      "steps": steps, "batch_size": batch_size,
      "learning_rate": float(learning_rate), "warmup_steps": int(warmup_steps),
      "ema_decay": float(ema_decay), "cond_drop_prob": float(cond_drop_prob),
      "null_class": null_class, "hflip": bool(hflip), "seed": int(seed)}
  if shift:
    # Only when set, so checkpoints of runs without shifts still resume.
    identity["shift"] = int(shift)
  lr_fn = _lr_schedule(learning_rate, steps, warmup_steps, 0.1)
  replicated = jax.sharding.NamedSharding(mesh, P())
  batch_sh = jax.sharding.NamedSharding(mesh, P("data"))
  state = init_train_state(params, make_optimizer(
      learning_rate, steps, warmup_steps=warmup_steps), jax.random.key(seed))
  loop = runloop.RunLoop(
      "train-prior", steps,
      checkpoint_dir=(None if workdir is None
                      else os.path.join(workdir, "checkpoints")),
      identity=identity, checkpoint_every=checkpoint_every,
      stop_after=stop_after, progress=progress)
  with loop, jax.set_mesh(mesh):
    # The checkpoint holds the state as a dict (NamedTuple-free on disk).
    raw, aux = loop.restore(state._asdict(), {"history": []})
    state = jax.device_put(TrainState(**raw), replicated)
    train_step = _cached_train_step(
        apply_fn, _ScheduleKey(schedule), float(learning_rate), steps,
        int(warmup_steps), float(ema_decay), float(cond_drop_prob),
        null_class, bool(hflip), int(shift), mesh)
    x_all = np.asarray(images, np.float32) * 2.0 - 1.0
    y_all = None if labels is None else np.asarray(labels, np.int32)
    per_epoch = n // batch_size
    losses: list[float] = []  # since the last history entry

    def step_fn(step, raw, aux):
      epoch, b = divmod(step, per_epoch)
      # The batch is a pure function of (seed, step): exact resume.
      order = _epoch_order(n, seed, epoch)
      idx = order[b * batch_size:(b + 1) * batch_size]
      x = jax.device_put(x_all[idx], batch_sh)
      y = None if y_all is None else jax.device_put(y_all[idx], batch_sh)
      state, loss = train_step(TrainState(**raw), x, y)
      losses.append(float(loss))
      done = step + 1
      if done % log_every == 0 or done == steps:
        aux["history"].append({"step": done, "loss": float(np.mean(losses)),
                               "lr": _lr_at(lr_fn, step),
                               "wall_time_s": loop.wall_time_s})
        losses.clear()
      if callback is not None and callback_every and (
          done % callback_every == 0):
        callback(done, state)
      return state._asdict(), aux, {"loss": f"{float(loss):.4f}"}

    try:
      result = loop.run(step_fn, state._asdict(), aux)
    except runloop.Preempted:
      # `stop_after` ends this call like a preempted job: the caller sees
      # state.step < steps and reruns to resume.
      result = loop.last_result
    state = TrainState(**result.state)
    if callback is not None and int(state.step) == steps and not (
        callback_every and steps % callback_every == 0):
      callback(steps, state)
  return TrainResult(state=state, history=result.aux["history"],
                     wall_time_s=result.segment_wall_time_s,
                     total_wall_time_s=result.wall_time_s,
                     resumed_from=result.resumed_from)


def _data_checksum(images: np.ndarray, labels: np.ndarray | None) -> str:
  """A cheap fingerprint of the training set (another dataset, subset, order)."""
  images = np.asarray(images, np.float32).reshape(-1)
  digest = hashlib.sha256(np.ascontiguousarray(
      images[::max(1, images.size // 2**18)]).tobytes())
  if labels is not None:
    digest.update(np.ascontiguousarray(np.asarray(labels, np.int64)).tobytes())
  return digest.hexdigest()[:16]


class _ScheduleKey:
  """Hashable wrapper of a schedule (by value) for the step cache."""

  def __init__(self, schedule: NoiseSchedule):
    self.schedule = schedule
    self._bytes = np.asarray(schedule.betas).tobytes()

  def __hash__(self):
    return hash(self._bytes)

  def __eq__(self, other):
    return isinstance(other, _ScheduleKey) and self._bytes == other._bytes


@functools.lru_cache(maxsize=8)
def _cached_train_step(apply_fn, schedule_key, learning_rate, steps,
                       warmup_steps, ema_decay, cond_drop_prob, null_class,
                       hflip, shift, mesh):
  # Reusing the jitted step across train_prior calls with the same settings
  # (a resumed run in the same process, tests) skips a long recompile.
  optimizer = make_optimizer(learning_rate, steps, warmup_steps=warmup_steps)
  return make_train_step(apply_fn, schedule_key.schedule, optimizer,
                         ema_decay=ema_decay, cond_drop_prob=cond_drop_prob,
                         null_class=null_class, hflip=hflip, shift=shift,
                         mesh=mesh)


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
  return batching.epoch_permutation(n, seed=seed, epoch=epoch)
