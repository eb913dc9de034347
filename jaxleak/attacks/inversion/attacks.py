"""Optimisation-based attacks: DLG, iDLG, Inverting Gradients, GradInversion.

All four minimise one family of objectives over a candidate batch ``x'``
(and, for DLG, label logits ``ℓ'``):

    J(x') = α_D D(A(x'), g*) + α_TV TV(x') + α_2 ||x'||² + α_BN R_BN(x')

with ``A`` the victim's gradient operator (`GradientObservation.operator`),
``g*`` the observed gradient and ``D`` the squared L2 or the cosine distance
(see `objectives`). They differ in the distance, the priors, the optimiser and
the parametrisation:

========================  ========  ==============================  =========
attack                    D         optimiser (default steps)       space
========================  ========  ==============================  =========
dlg (Zhu et al. 2019)     L2        L-BFGS + line search (1200)     free
idlg (Zhao et al. 2020)   L2        L-BFGS + line search (1200)     free
inverting_gradients       cosine    Adam on sign(∇), step decay     box
  (Geiping et al. 2020)             (4800), restarts by loss
grad_inversion            L2 ×1e-4  Adam, warm-up + cosine decay,   box
  (Yin et al. 2021)                 Langevin noise (4800)
========================  ========  ==============================  =========

"free" attacks optimise unconstrained pixels (DLG's ``randn`` start lies
outside [0, 1]) and their reconstructions are clipped to [0, 1] only when
returned; "box" attacks project onto [0, 1] after every step (the box
constraint). Images are NHWC float32 in [0, 1] throughout; there is no
normalisation layer, so learning rates are in pixel units (breaching's are in
normalised units, about 4x larger for CIFAR statistics).

Steps are configurable per call (cheap variants for large studies). By
default the convolutions' kernel derivatives are computed as matrix products
(``matmul_conv``, see `jaxleak._src.matmul_conv`), which makes the second-order steps
1.7-1.8x faster on XLA:CPU without changing the numbers beyond rounding.

Every attack has the signature
``attack(observation, *, key, ground_truth=None, callback=None, **hparams)
-> InversionResult``; ``ground_truth`` (images, or ``(images, labels)``) is
used only to compute metrics.
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib
import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxleak._src import matmul_conv as matmul_conv_lib
from jaxleak._src import validate
from jaxleak.attacks.inversion import labels as labels_lib
from jaxleak.attacks.inversion import objectives
from jaxleak.attacks.inversion import optimize
from jaxleak.attacks.inversion import results
from jaxleak.attacks.inversion import threat_model

__all__ = (
    "MatchingProblem",
    "HYPERPARAMS",
    "make_problem",
    "INITS",
    "dlg",
    "idlg",
    "inverting_gradients",
    "grad_inversion",
    "gradient_matching_attack",
)

Array = jax.Array


def _init_randn(key, shape):
  return jax.random.normal(key, shape, jnp.float32)


def _init_rand(key, shape):
  return jax.random.uniform(key, shape, jnp.float32)


def _init_half(key, shape):
  # Mid-grey plus a little noise to break the symmetry between images.
  return 0.5 + 0.1 * jax.random.normal(key, shape, jnp.float32)


INITS: dict[str, Callable[[Array, tuple[int, ...]], Array]] = {
    "randn": _init_randn,
    "rand": _init_rand,
    "half": _init_half,
}
"""Candidate initialisations in pixel space: N(0, 1) (DLG), U(0, 1), and
0.5 + 0.1 N(0, 1)."""

OPTIMIZERS = ("adam", "lbfgs", "sgd")
SCHEDULES = ("constant", "step", "cosine")


def step_decay_boundaries(steps: int) -> tuple[int, ...]:
  """Inverting Gradients' lr drops (×0.1) at 3/8, 5/8 and 7/8 of the steps.

  Exactly breaching's ``⌊N / 2.667⌋, ⌊N / 1.6⌋, ⌊N / 1.142⌋``.
  """
  return tuple(int(steps / d) for d in (2.667, 1.6, 1.142))


HYPERPARAMS = ("distance_scale", "tv", "l2", "bn", "bn_first_layer_scale",
               "lr", "langevin")
"""Numeric hyper-parameters passed to the compiled step as traced values."""


def warmup_cosine_schedule(lr: Array | float, warmup: int, steps: int
                           ) -> optax.Schedule:
  """Linear warm-up from 0 over `warmup` steps, then cosine decay to 0.

  ``lr_t = lr t / w`` for ``t < w``, else
  ``lr (1 + cos(π (t - w) / (N - w))) / 2``. Unlike optax's version, `lr` may
  be a traced value.
  """
  w = max(int(warmup), 0)
  span = max(int(steps) - w, 1)

  def schedule(t):
    t = jnp.asarray(t, jnp.float32)
    decay = 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip((t - w) / span, 0.0, 1.0)))
    ramp = t / w if w > 0 else 1.0
    return lr * jnp.where(t < w, ramp, decay)

  return schedule


@dataclasses.dataclass(frozen=True)
class MatchingProblem(optimize.Problem):
  """The gradient-matching objective and its optimiser (static structure).

  Static fields fix the program: which terms exist (``use_tv``, ``use_l2``,
  ``use_bn``, ``use_langevin``), the distance, optimiser, schedule shape and
  parametrisation. Consts passed to the compiled step: ``params``, ``target``
  (the observed gradient), ``labels`` (``[B]`` ints; absent for joint label
  optimisation), ``bn_targets`` (per-layer ``(mean, var)``; only with the BN
  prior) and ``hp``, a dict of the `HYPERPARAMS` values, so changing a weight
  or the learning rate reuses the compiled step.
  """

  apply_fn: Callable[..., Array]
  batch_shape: tuple[int, int, int, int]
  num_classes: int
  local_steps: int = 1
  local_lr: float = 1e-3
  local_batch_size: int | None = None
  distance: str = "l2"
  use_tv: bool = False
  tv_p: float = 1.0
  tv_q: float = 1.0
  use_l2: bool = False
  use_bn: bool = False
  joint_labels: bool = False
  init_scheme: str = "randn"
  optimizer_name: str = "adam"
  use_lr: bool = True
  steps: int = 1000
  schedule: str = "constant"
  warmup: int = 0
  signed: bool = False
  boxed: bool = False
  use_langevin: bool = False
  matmul_conv: bool = False
  memory_size: int = 10
  max_linesearch_steps: int = 15

  # -- candidate -----------------------------------------------------------

  def init(self, key, consts):
    del consts
    kx, kl = jax.random.split(key)
    x = INITS[self.init_scheme](kx, self.batch_shape)
    if self.boxed:
      x = jnp.clip(x, 0.0, 1.0)
    if self.joint_labels:
      # DLG's dummy label logits ~ N(0, 1).
      return (x, jax.random.normal(kl, (self.batch_shape[0],
                                        self.num_classes), jnp.float32))
    return x

  def images(self, z):
    return z[0] if self.joint_labels else z

  # -- objective -----------------------------------------------------------

  def _gradient(self, params, x, y):
    return objectives.local_update_gradient(
        self.apply_fn, params, x, y, local_steps=self.local_steps,
        local_lr=self.local_lr, local_batch_size=self.local_batch_size)

  def objective(self, z, consts):
    params, hp = consts["params"], consts["hp"]
    if self.joint_labels:
      x, y = z[0], jax.nn.softmax(z[1], axis=-1)
    else:
      x, y = z, consts["labels"]
    with (matmul_conv_lib.intercept() if self.matmul_conv
          else contextlib.nullcontext()):
      grads, stats = self._gradient_and_stats(params, x, y)
    loss = hp["distance_scale"] * objectives.DISTANCES[self.distance](
        grads, consts["target"])
    if self.use_tv:
      loss = loss + hp["tv"] * objectives.total_variation(x, p=self.tv_p,
                                                          q=self.tv_q)
    if self.use_l2:
      loss = loss + hp["l2"] * objectives.l2_prior(x)
    if self.use_bn:
      loss = loss + hp["bn"] * objectives.bn_matching(
          stats, consts["bn_targets"],
          first_layer_scale=hp["bn_first_layer_scale"])
    return loss

  def _gradient_and_stats(self, params, x, y):
    stats = None
    if (self.use_bn and self.local_steps == 1
        and self.local_batch_size is None):
      grads, stats = objectives.victim_gradient_and_bn_stats(
          self.apply_fn, params, x, y)
    else:
      grads = self._gradient(params, x, y)
      if self.use_bn:
        _, stats = self.apply_fn.with_bn_stats(params, x)
    return grads, stats

  # -- optimiser -----------------------------------------------------------

  def learning_rate(self, hp) -> optax.Schedule | Array | None:
    if not self.use_lr:
      return None
    lr = hp["lr"]
    if self.schedule == "constant":
      return lr
    if self.schedule == "step":
      return optax.piecewise_constant_schedule(
          lr, {b: 0.1 for b in step_decay_boundaries(self.steps)})
    return warmup_cosine_schedule(lr, self.warmup, self.steps)

  def optimizer(self, consts):
    lr = self.learning_rate(consts["hp"])
    if self.optimizer_name == "lbfgs":
      return optax.lbfgs(
          learning_rate=lr, memory_size=self.memory_size,
          linesearch=optax.scale_by_zoom_linesearch(
              max_linesearch_steps=self.max_linesearch_steps))
    base = (optax.adam(lr) if self.optimizer_name == "adam"
            else optax.sgd(lr))
    if self.signed:
      # "Signed = hard": the optimiser sees only sign(∇J) (Geiping et al.).
      return optax.chain(optax.scale_by_sign(), base)
    return base

  @property
  def uses_linesearch(self):
    return self.optimizer_name == "lbfgs"

  def project(self, z):
    if not self.boxed:
      return z
    if self.joint_labels:
      return (jnp.clip(z[0], 0.0, 1.0), z[1])
    return jnp.clip(z, 0.0, 1.0)

  def perturb(self, z, step, key, consts):
    if not self.use_langevin:
      return z
    # Langevin dynamics as in breaching: x += σ_L · lr_t · N(0, I).
    hp = consts["hp"]
    lr = self.learning_rate(hp)
    lr_t = lr(step) if callable(lr) else lr
    x = self.images(z)
    x = x + hp["langevin"] * lr_t * jax.random.normal(key, x.shape, x.dtype)
    if self.boxed:
      x = jnp.clip(x, 0.0, 1.0)
    return (x, z[1]) if self.joint_labels else x


# ----------------------------------------------------------------------------
# Shared driver.


def _check_hparams(fn: str, *, steps, restarts, lr, init, optimizer, loop,
                   log_every, weights: dict[str, float]) -> None:
  for name, value in (("steps", steps), ("restarts", restarts),
                      ("log_every", log_every)):
    validate.check_int(value, name, fn=fn)
  if lr is not None:
    validate.check_positive(lr, "lr", fn=fn)
  validate.check_choice(init, "init", tuple(INITS), fn=fn)
  validate.check_choice(optimizer, "optimizer", OPTIMIZERS, fn=fn)
  validate.check_choice(loop, "loop", optimize.LOOPS, fn=fn)
  for name, value in weights.items():
    validate.check_positive(value, name, fn=fn, allow_zero=True)


def _check_observation(observation: Any, fn: str) -> None:
  if not isinstance(observation, threat_model.GradientObservation):
    raise TypeError(f"{fn}: argument 'observation' must be a "
                    "GradientObservation (see observe), got "
                    f"{type(observation).__name__}")


def _split_ground_truth(ground_truth: Any, observation, fn: str):
  if ground_truth is None:
    return None, None
  if isinstance(ground_truth, results.GroundTruth) or (
      isinstance(ground_truth, tuple) and len(ground_truth) == 2):
    images, true_labels = ground_truth
  else:
    images, true_labels = ground_truth, None
  images = np.asarray(images, np.float32)
  if images.shape != observation.batch_shape:
    raise ValueError(f"{fn}: argument 'ground_truth' must have the private "
                     f"batch's shape {observation.batch_shape}, got "
                     f"{images.shape}")
  if true_labels is None and observation.has_labels:
    true_labels = np.asarray(observation.labels)
  return images, true_labels


def _consts(observation, hp, labels=None, bn_targets=None) -> dict[str, Any]:
  consts = {"params": observation.params, "target": observation.gradient,
            "hp": {k: jnp.asarray(v, jnp.float32) for k, v in hp.items()}}
  if labels is not None:
    consts["labels"] = jnp.asarray(labels, jnp.int32)
  if bn_targets is not None:
    consts["bn_targets"] = [(jnp.asarray(m), jnp.asarray(v))
                            for m, v in bn_targets]
  return consts


def make_problem(observation: threat_model.GradientObservation, *,
                 distance_scale: float = 1.0, tv: float = 0.0, l2: float = 0.0,
                 bn: float = 0.0, bn_first_layer_scale: float = 10.0,
                 lr: float | None = None, langevin: float = 0.0,
                 **static: Any) -> tuple[MatchingProblem, dict[str, float]]:
  """Splits an attack's settings into a `MatchingProblem` and its `hp` dict.

  Numeric weights go into ``hp`` (traced, so new values reuse the compiled
  step); a zero weight removes its term from the program altogether.
  ``**static`` are `MatchingProblem` fields (distance, optimizer_name, ...).
  """
  problem = MatchingProblem(
      apply_fn=observation.apply_fn, batch_shape=observation.batch_shape,
      num_classes=observation.num_classes,
      local_steps=observation.local_steps, local_lr=observation.local_lr,
      local_batch_size=observation.local_batch_size, use_tv=tv > 0,
      use_l2=l2 > 0, use_bn=bn > 0, use_lr=lr is not None,
      use_langevin=langevin > 0, **static)
  hp = {"distance_scale": distance_scale, "tv": tv, "l2": l2, "bn": bn,
        "bn_first_layer_scale": bn_first_layer_scale,
        "lr": 0.0 if lr is None else lr, "langevin": langevin}
  return problem, {k: float(v) for k, v in hp.items()}


def gradient_matching_attack(
    name: str, observation: threat_model.GradientObservation, *,
    key: Any, problem: MatchingProblem, hp: dict[str, float],
    labels: np.ndarray | None,
    label_confidence: float | None, restarts: int, loop: str,
    log_every: int, ground_truth: Any, callback: optimize.Callback | None,
    hyperparams: dict[str, Any], bn_targets: Any = None,
    start_time: float | None = None) -> results.InversionResult:
  """Runs a `MatchingProblem` and packages an `InversionResult`.

  The building block of the registered attacks; new attacks that only change
  the objective's weights or the optimiser can call it directly.
  """
  t0 = time.perf_counter() if start_time is None else start_time
  key = threat_model.canonical_key(key, name)
  gt_images, gt_labels = _split_ground_truth(ground_truth, observation, name)
  consts = _consts(observation, hp, labels, bn_targets)
  z, history, restart_losses = optimize.minimize(
      problem, consts, key=key, steps=problem.steps, restarts=restarts,
      loop=loop, log_every=log_every, callback=callback)
  images = np.clip(np.asarray(problem.images(z), np.float32), 0.0, 1.0)
  if problem.joint_labels:
    probs = np.asarray(jax.nn.softmax(z[1], axis=-1))
    labels = probs.argmax(-1).astype(np.int32)
    # DLG has no label score; report the mean probability of the argmax.
    label_confidence = float(probs.max(-1).mean())
  wall = time.perf_counter() - t0
  metrics = None
  if gt_images is not None:
    metrics = results.evaluate(images, labels, gt_images, gt_labels)
  return results.InversionResult(
      attack=name, images=images, labels=np.asarray(labels, np.int32),
      loss_history=history, wall_time_s=wall, metrics=metrics,
      label_confidence=label_confidence, restart_losses=restart_losses,
      hyperparams={**hyperparams, "matmul_conv": problem.matmul_conv})


# ----------------------------------------------------------------------------
# The attacks.


def dlg(observation: threat_model.GradientObservation, *, key: Any,
        ground_truth: Any = None, callback: optimize.Callback | None = None,
        steps: int = 1200, optimizer: str = "lbfgs", lr: float | None = None,
        init: str = "randn", restarts: int = 1,
        matmul_conv: bool = True, loop: str = "python",
        log_every: int = 50) -> results.InversionResult:
  """Deep Leakage from Gradients (Zhu, Liu and Han, NeurIPS 2019).

  Jointly optimises the images ``x'`` and label logits ``ℓ'`` (both started
  from N(0, 1)) to minimise the squared L2 gradient distance with soft labels
  ``softmax(ℓ')``:

      min_{x', ℓ'} sum_layers ||A(x', softmax(ℓ')) - g*||².

  Pixels are unconstrained; recovered labels are ``argmax ℓ'``. Ignores
  ``observation.labels`` (DLG recovers labels jointly).

  Args:
    observation: the attacker's view.
    key: PRNG key or int seed.
    ground_truth: private images, or ``(images, labels)``, for metrics only.
    callback: ``callback(restart, step, loss)`` every `log_every` steps.
    steps: optimiser iterations (L-BFGS: each with a zoom line search of up
      to 15 evaluations). Default 1200 as breaching; the original code runs
      300 calls of PyTorch's L-BFGS with up to 20 iterations each.
    optimizer: "lbfgs" (default, as DLG), "adam" or "sgd".
    lr: learning rate; None for L-BFGS means the line search sets the step
      (Adam/SGD default to 0.1).
    init: "randn" (DLG), "rand" or "half".
    restarts: independent restarts, the lowest final loss is kept.
    matmul_conv: compute convolution kernel derivatives as matrix products
      (`jaxleak._src.matmul_conv`: same numbers; 1.7-1.8x faster steps on XLA:CPU for
      the ConvNet at batch 1 and 8).
    loop: "python" or "scan" (see `optimize`).
    log_every: steps between progress callbacks.

  Returns:
    An `InversionResult`; ``label_confidence`` is the mean max soft-label
    probability.
  """
  fn = "dlg"
  t0 = time.perf_counter()
  _check_observation(observation, fn)
  if optimizer != "lbfgs" and lr is None:
    lr = 0.1
  _check_hparams(fn, steps=steps, restarts=restarts, lr=lr, init=init,
                 optimizer=optimizer, loop=loop, log_every=log_every,
                 weights={})
  problem, values = make_problem(
      observation, lr=lr, distance="l2", joint_labels=True, init_scheme=init,
      optimizer_name=optimizer, steps=steps,
      matmul_conv=bool(matmul_conv))
  hp = dict(steps=steps, optimizer=optimizer, lr=lr, init=init,
            restarts=restarts, loop=loop, distance="l2", space="free")
  return gradient_matching_attack(
      fn, observation, key=key, problem=problem, hp=values, labels=None,
      label_confidence=None, restarts=restarts, loop=loop,
      log_every=log_every, ground_truth=ground_truth, callback=callback,
      hyperparams=hp, start_time=t0)


def idlg(observation: threat_model.GradientObservation, *, key: Any,
         ground_truth: Any = None, callback: optimize.Callback | None = None,
         steps: int = 1200, optimizer: str = "lbfgs", lr: float | None = None,
         init: str = "randn", restarts: int = 1, label_strategy: str = "auto",
         matmul_conv: bool = True, loop: str = "python",
         log_every: int = 50) -> results.InversionResult:
  """Improved DLG (Zhao, Mopuri and Bilen, 2020): labels first, then images.

  The label is read from the output layer's gradient (`labels.recover_labels`;
  "auto" = "idlg" for one image, "yin" for a batch, so the observation's own
  labels are not used unless ``label_strategy="known"``), then DLG's L2
  objective is minimised over the images only, with hard labels.

  Args:
    observation: the attacker's view.
    key: PRNG key or int seed.
    ground_truth: private images, or ``(images, labels)``, for metrics only.
    callback: ``callback(restart, step, loss)``.
    steps: optimiser iterations (default 1200, as `dlg`).
    optimizer: "lbfgs" (default), "adam" or "sgd".
    lr: None (line search) for L-BFGS; 0.1 by default otherwise.
    init: "randn", "rand" or "half".
    restarts: independent restarts.
    label_strategy: "auto", "idlg", "analytic", "yin" or "known".
    matmul_conv: compute convolution kernel derivatives as matrix products
      (`jaxleak._src.matmul_conv`: same numbers; 1.7-1.8x faster steps on XLA:CPU for
      the ConvNet at batch 1 and 8).
    loop: "python" or "scan".
    log_every: steps between progress callbacks.

  Returns:
    An `InversionResult` with the recovered labels and their confidence.
  """
  fn = "idlg"
  t0 = time.perf_counter()
  _check_observation(observation, fn)
  if optimizer != "lbfgs" and lr is None:
    lr = 0.1
  _check_hparams(fn, steps=steps, restarts=restarts, lr=lr, init=init,
                 optimizer=optimizer, loop=loop, log_every=log_every,
                 weights={})
  if label_strategy == "auto":
    label_strategy = "idlg" if observation.batch_size == 1 else "yin"
  rec = labels_lib.recover_labels(observation, label_strategy)
  problem, values = make_problem(
      observation, lr=lr, distance="l2", init_scheme=init,
      optimizer_name=optimizer, steps=steps,
      matmul_conv=bool(matmul_conv))
  hp = dict(steps=steps, optimizer=optimizer, lr=lr, init=init,
            restarts=restarts, label_strategy=rec.strategy, loop=loop,
            distance="l2", space="free")
  return gradient_matching_attack(
      fn, observation, key=key, problem=problem, hp=values,
      labels=rec.labels, label_confidence=rec.confidence,
      restarts=restarts, loop=loop, log_every=log_every,
      ground_truth=ground_truth, callback=callback, hyperparams=hp,
      start_time=t0)


def inverting_gradients(
    observation: threat_model.GradientObservation, *, key: Any,
    ground_truth: Any = None, callback: optimize.Callback | None = None,
    steps: int = 4800, lr: float = 0.1, tv: float = 1e-4, restarts: int = 1,
    init: str = "rand", signed: bool = True, boxed: bool = True,
    schedule: str = "step", label_strategy: str = "auto",
    matmul_conv: bool = True, loop: str = "python",
    log_every: int = 100) -> results.InversionResult:
  """Inverting Gradients (Geiping, Bauermeister, Dröge and Moeller, 2020).

  Minimises the cosine gradient distance plus total variation

      J(x') = 1 - <A(x'), g*> / (||A(x')|| ||g*||) + α_TV TV(x')

  with Adam on the sign of ∇J ("signed"), projecting onto the box [0, 1]
  after every step, decaying the learning rate ×0.1 at 3/8, 5/8 and 7/8 of
  the steps, and keeping the restart with the lowest loss.

  Args:
    observation: the attacker's view.
    key: PRNG key or int seed.
    ground_truth: private images, or ``(images, labels)``, for metrics only.
    callback: ``callback(restart, step, loss)``.
    steps: iterations per restart (inversefed 4800, breaching 24000).
    lr: Adam learning rate in pixel units.
    tv: α_TV (TV is a mean over pixels, breaching's convention). Default
      1e-4: breaching's 0.2 (in normalised units) over-smoothed in our
      pixel-unit measurements (32x32 photo, 1000 steps: 10.9 dB at 0.2,
      12.3 dB at 0.01, 12.6 dB at 0), and weights of 1e-5 to 1e-3 were
      within run-to-run noise of 0 on 16x16 photos and digits.
    restarts: independent restarts (the paper uses several).
    init: "rand" (U(0, 1), default), "randn" or "half".
    signed: feed sign(∇J) to Adam.
    boxed: project onto [0, 1] after each step.
    schedule: "step" (default), "cosine" or "constant".
    label_strategy: "auto" (the observation's labels if known, else
      iDLG/yin), "known", "idlg", "analytic" or "yin".
    matmul_conv: compute convolution kernel derivatives as matrix products
      (`jaxleak._src.matmul_conv`: same numbers; 1.7-1.8x faster steps on XLA:CPU for
      the ConvNet at batch 1 and 8).
    loop: "python" or "scan".
    log_every: steps between progress callbacks.

  Returns:
    An `InversionResult`.
  """
  fn = "inverting_gradients"
  t0 = time.perf_counter()
  _check_observation(observation, fn)
  _check_hparams(fn, steps=steps, restarts=restarts, lr=lr, init=init,
                 optimizer="adam", loop=loop, log_every=log_every,
                 weights={"tv": tv})
  validate.check_choice(schedule, "schedule", SCHEDULES, fn=fn)
  rec = labels_lib.recover_labels(observation, label_strategy)
  problem, values = make_problem(
      observation, tv=tv, lr=lr, distance="cosine", init_scheme=init,
      optimizer_name="adam", steps=steps, schedule=schedule,
      signed=bool(signed), boxed=bool(boxed),
      matmul_conv=bool(matmul_conv))
  hp = dict(steps=steps, lr=lr, tv=tv, restarts=restarts, init=init,
            signed=signed, boxed=boxed, schedule=schedule,
            label_strategy=rec.strategy, loop=loop, distance="cosine",
            space="box" if boxed else "free")
  return gradient_matching_attack(
      fn, observation, key=key, problem=problem, hp=values,
      labels=rec.labels, label_confidence=rec.confidence,
      restarts=restarts, loop=loop, log_every=log_every,
      ground_truth=ground_truth, callback=callback, hyperparams=hp,
      start_time=t0)


def grad_inversion(
    observation: threat_model.GradientObservation, *, key: Any,
    ground_truth: Any = None, callback: optimize.Callback | None = None,
    steps: int = 4800, lr: float = 0.1, distance_scale: float = 1e-4,
    tv: float = 1e-4, l2: float = 1e-6, bn: float = 0.1,
    bn_first_layer_scale: float = 10.0, bn_source: str = "observed",
    langevin: float = 0.01, warmup: int = 50, restarts: int = 1,
    init: str = "rand", label_strategy: str = "auto",
    matmul_conv: bool = True, loop: str = "python",
    log_every: int = 100) -> results.InversionResult:
  """GradInversion / "See through Gradients" (Yin et al., CVPR 2021).

  Minimises the scaled L2 gradient distance plus image priors and the
  BatchNorm-statistics prior of DeepInversion:

      J(x') = α_D ||A(x') - g*||² + α_TV TV(x') + α_2 ||x'||²
            + α_BN sum_l s_l (||μ_l(x') - μ_l*|| + ||σ²_l(x') - σ²_l*||)

  with Adam, linear warm-up then cosine decay, Langevin noise
  ``σ_L · lr_t · N(0, I)`` added after each step, and the box [0, 1].
  Defaults are breaching's ``seethroughgradients`` weights (its 20,000
  iterations cut to 4800); the group-consistency term of the paper is not
  implemented (nor is it in breaching).

  Args:
    observation: the attacker's view; needs a BatchNorm model (``bn > 0``).
    key: PRNG key or int seed.
    ground_truth: private images, or ``(images, labels)``, for metrics only.
    callback: ``callback(restart, step, loss)``.
    steps: iterations per restart.
    lr: peak Adam learning rate.
    distance_scale: α_D.
    tv: α_TV.
    l2: α_2.
    bn: α_BN (0 disables the BN prior and allows models without BN).
    bn_first_layer_scale: s_1 (the first BN layer's weight).
    bn_source: "observed" (the victim batch's statistics in the observation)
      or "running" (the model's stored running averages, as with a
      pre-trained network).
    langevin: σ_L.
    warmup: warm-up steps of the cosine schedule.
    restarts: independent restarts.
    init: "rand", "randn" or "half".
    label_strategy: "auto" (the observation's labels if known, else
      iDLG/yin), "known", "idlg", "analytic" or "yin".
    matmul_conv: compute convolution kernel derivatives as matrix products
      (`jaxleak._src.matmul_conv`: same numbers; 1.7-1.8x faster steps on XLA:CPU for
      the ConvNet at batch 1 and 8).
    loop: "python" or "scan".
    log_every: steps between progress callbacks.

  Returns:
    An `InversionResult`.

  Raises:
    ValueError: if ``bn > 0`` and the BN statistics are unavailable.
  """
  fn = "grad_inversion"
  t0 = time.perf_counter()
  _check_observation(observation, fn)
  _check_hparams(fn, steps=steps, restarts=restarts, lr=lr, init=init,
                 optimizer="adam", loop=loop, log_every=log_every,
                 weights={"distance_scale": distance_scale, "tv": tv,
                          "l2": l2, "bn": bn, "langevin": langevin,
                          "bn_first_layer_scale": bn_first_layer_scale})
  validate.check_choice(bn_source, "bn_source", ("observed", "running"), fn=fn)
  validate.check_positive(warmup, "warmup", fn=fn, allow_zero=True)
  bn_targets = None
  if bn > 0:
    apply_fn = observation.apply_fn
    if not getattr(apply_fn, "has_batch_norm", False):
      raise ValueError(
          f"{fn}: the BN prior (argument 'bn' > 0) needs a model with "
          "BatchNorm (apply_fn.has_batch_norm); pass bn=0 or use "
          "inverting_gradients")
    if bn_source == "observed":
      if observation.bn_stats is None:
        raise ValueError(f"{fn}: argument 'bn_source' is 'observed' but the "
                         "observation has no bn_stats")
      bn_targets = observation.bn_stats
    else:
      bn_targets = apply_fn.bn_running_stats(observation.params)
  rec = labels_lib.recover_labels(observation, label_strategy)
  problem, values = make_problem(
      observation, distance_scale=distance_scale, tv=tv, l2=l2, bn=bn,
      bn_first_layer_scale=bn_first_layer_scale, lr=lr, langevin=langevin,
      distance="l2", init_scheme=init, optimizer_name="adam", steps=steps,
      schedule="cosine", warmup=int(warmup), boxed=True,
      matmul_conv=bool(matmul_conv))
  hp = dict(steps=steps, lr=lr, distance_scale=distance_scale, tv=tv, l2=l2,
            bn=bn, bn_first_layer_scale=bn_first_layer_scale,
            bn_source=bn_source, langevin=langevin, warmup=warmup,
            restarts=restarts, init=init, label_strategy=rec.strategy,
            loop=loop, distance="l2", space="box")
  return gradient_matching_attack(
      fn, observation, key=key, problem=problem, hp=values,
      labels=rec.labels, label_confidence=rec.confidence,
      restarts=restarts, loop=loop, log_every=log_every,
      ground_truth=ground_truth, callback=callback, hyperparams=hp,
      bn_targets=bn_targets, start_time=t0)
