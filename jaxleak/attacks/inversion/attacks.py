"""One gradient-matching attacker; DLG, iDLG, IG and GradInversion are configs.

Following breaching, an attack is a *configuration* of one optimisation-based
attacker (`gradient_matching`): an objective, regularisers, a label strategy,
an optimiser, an initialisation and restarts (`AttackConfig`). It minimises

    J(x') = α_D D(A(x'), g*) + α_TV TV(x') + α_2 ||x'||² + α_BN R_BN(x')

over a candidate batch ``x'`` (and, for DLG, label logits ``ℓ'``), with
``A`` the victim's gradient operator (`GradientObservation.operator`),
``g*`` the observed gradient and ``D`` the squared L2 or the cosine distance
(see `objectives`). The four classic attacks are named option sets
(`NAMED_ATTACKS`), each registered by name in the attack registry:

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

Every named attack has the signature
``attack(observation, *, key, ground_truth=None, callback=None, **options)
-> InversionResult``, where ``options`` are the `AttackConfig` fields that
attack exposes; ``ground_truth`` (images, or ``(images, labels)``) is used
only to compute metrics. A new variant is a new `AttackConfig`: run it with
`gradient_matching`, or name it with `named_attack` and `register_attack`.

An observation whose gradient is all zeros, or an objective that is exactly
zero at the first candidate, has nothing to invert: the attacker raises
ValueError rather than returning its random start as a reconstruction.
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib
import dataclasses
import inspect
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
from jaxleak.attacks.inversion import registry
from jaxleak.attacks.inversion import results
from jaxleak.attacks.inversion import threat_model

__all__ = (
    "AttackConfig",
    "MatchingProblem",
    "HYPERPARAMS",
    "make_problem",
    "INITS",
    "NAMED_ATTACKS",
    "dlg",
    "idlg",
    "inverting_gradients",
    "grad_inversion",
    "gradient_matching",
    "gradient_matching_attack",
    "named_attack",
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
BN_SOURCES = ("observed", "running")
JOINT_LABELS = "joint"
"""The label strategy that optimises soft labels with the images (DLG)."""


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
          lr, dict.fromkeys(step_decay_boundaries(self.steps), 0.1))
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
# The attack configuration.


@dataclasses.dataclass(frozen=True)
class AttackConfig:
  """The options of one gradient-matching attack (breaching's attack config).

  Objective:
    distance: "l2" (squared, summed over layers) or "cosine" (one minus the
      cosine similarity of the flattened gradients).
    distance_scale: α_D, the distance's weight.

  Regularisers (a weight of 0 removes the term from the program):
    tv: α_TV, total variation (a mean over pixels).
    l2: α_2, the squared pixel norm.
    bn: α_BN, DeepInversion's BatchNorm-statistics prior (needs a model with
      BatchNorm).
    bn_first_layer_scale: the first BN layer's weight s_1 in that prior.
    bn_source: "observed" (the victim batch's statistics, carried in the
      observation) or "running" (the model's running averages).

  Labels:
    label_strategy: "joint" (optimise label logits with the images, soft
      labels ``softmax(ℓ')``, as DLG), "auto", "known", "idlg", "analytic" or
      "yin" (see `labels.recover_labels`).
    use_revealed_labels: whether "auto" may take labels the observation
      reveals. False (iDLG) means "auto" always reads them from the gradient:
      "idlg" for one image, "yin" for a batch.

  Optimiser:
    optimizer: "lbfgs" (optax L-BFGS with a zoom line search), "adam" or
      "sgd".
    lr: learning rate in pixel units; None lets L-BFGS's line search set the
      step (a first-order optimiser then uses 0.1).
    schedule: "constant", "step" (×0.1 at 3/8, 5/8 and 7/8 of the steps) or
      "cosine" (linear warm-up, then cosine decay to 0).
    warmup: warm-up steps of the cosine schedule.
    signed: feed sign(∇J) to the optimiser (Geiping et al.'s "signed").
    boxed: project onto [0, 1] after every step.
    langevin: σ_L, Langevin noise ``σ_L · lr_t · N(0, I)`` after each step.

  Initialisation and restarts:
    init: the candidate's start, a name in `INITS`.
    steps: optimiser steps per restart.
    restarts: independent restarts; the lowest last loss is kept.

  Execution (no effect on the numbers beyond rounding):
    matmul_conv: compute convolution kernel derivatives as matrix products
      (`jaxleak._src.matmul_conv`; 1.7-1.8x faster steps on XLA:CPU for the ConvNet at
      batch 1 and 8).
    loop: "python" or "scan" (see `optimize`).
    log_every: steps between progress callbacks and host synchronisations.
  """

  distance: str = "l2"
  distance_scale: float = 1.0
  tv: float = 0.0
  l2: float = 0.0
  bn: float = 0.0
  bn_first_layer_scale: float = 10.0
  bn_source: str = "observed"
  label_strategy: str = "auto"
  use_revealed_labels: bool = True
  optimizer: str = "adam"
  lr: float | None = 0.1
  schedule: str = "constant"
  warmup: int = 0
  signed: bool = False
  boxed: bool = False
  langevin: float = 0.0
  init: str = "rand"
  steps: int = 1000
  restarts: int = 1
  matmul_conv: bool = True
  loop: str = "python"
  log_every: int = 100

  def replace(self, **changes: Any) -> AttackConfig:
    """A copy with options changed; TypeError naming an unknown option."""
    fields = {f.name for f in dataclasses.fields(self)}
    unknown = sorted(set(changes) - fields)
    if unknown:
      raise TypeError(f"AttackConfig: unknown option(s) {unknown}; options "
                      f"are {sorted(fields)}")
    return dataclasses.replace(self, **changes)

  def validate(self, fn: str) -> None:
    """Raises ValueError naming the first invalid option (as ``fn``'s)."""
    for name in ("steps", "restarts", "log_every"):
      validate.check_int(getattr(self, name), name, fn=fn)
    if self.lr is not None:
      validate.check_positive(self.lr, "lr", fn=fn)
    validate.check_choice(self.init, "init", tuple(INITS), fn=fn)
    validate.check_choice(self.optimizer, "optimizer", OPTIMIZERS, fn=fn)
    validate.check_choice(self.loop, "loop", optimize.LOOPS, fn=fn)
    validate.check_choice(self.distance, "distance",
                          tuple(objectives.DISTANCES), fn=fn)
    validate.check_choice(self.schedule, "schedule", SCHEDULES, fn=fn)
    validate.check_choice(self.bn_source, "bn_source", BN_SOURCES, fn=fn)
    validate.check_choice(
        self.label_strategy, "label_strategy",
        (JOINT_LABELS, "auto", "known") + tuple(labels_lib.LABEL_STRATEGIES),
        fn=fn)
    for name in ("distance_scale", "tv", "l2", "bn", "langevin",
                 "bn_first_layer_scale", "warmup"):
      validate.check_positive(getattr(self, name), name, fn=fn,
                              allow_zero=True)

  def resolved(self) -> AttackConfig:
    """Fills defaults that depend on other options (lr for first-order)."""
    if self.lr is None and self.optimizer != "lbfgs":
      return dataclasses.replace(self, lr=0.1)
    return self


# ----------------------------------------------------------------------------
# The attacker.


def _check_observation(observation: Any, fn: str) -> None:
  """Type-checks the observation and refuses one with nothing to invert."""
  if not isinstance(observation, threat_model.GradientObservation):
    raise TypeError(f"{fn}: argument 'observation' must be a "
                    "GradientObservation (see observe), got "
                    f"{type(observation).__name__}")
  if not any(np.any(np.asarray(leaf))
             for leaf in jax.tree.leaves(observation.gradient)):
    raise ValueError(
        f"{fn}: the observed gradient is all zeros, so there is nothing to "
        "invert (the victim's loss is flat at this batch: e.g. a classifier "
        "with fewer than 2 classes, or a defence that removed every "
        "coordinate)")
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

  The low-level runner under `gradient_matching`, for attacks that build
  their own `MatchingProblem`. Raises ValueError when the objective is
  exactly 0 at the first restart's initial candidate.
  """
  t0 = time.perf_counter() if start_time is None else start_time
  key = threat_model.canonical_key(key, name)
  gt_images, gt_labels = _split_ground_truth(ground_truth, observation, name)
  consts = _consts(observation, hp, labels, bn_targets)
  try:
    z, history, restart_losses = optimize.minimize(
        problem, consts, key=key, steps=problem.steps, restarts=restarts,
        loop=loop, log_every=log_every, callback=callback,
        stop_if_zero_at_start=True)
  except optimize.ZeroObjectiveError as err:
    # Chained, so the traceback keeps which restart it was.
    raise ValueError(
        f"{name}: the objective is exactly 0 at the initial candidate, so "
        "there is nothing to minimise and no reconstruction to report (the "
        "candidate already explains the observed gradient: e.g. a victim "
        f"whose gradient does not depend on its input)") from err
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




def _bn_targets(observation, config: AttackConfig, fn: str) -> Any:
  if config.bn <= 0:
    return None
  apply_fn = observation.apply_fn
  if not getattr(apply_fn, "has_batch_norm", False):
    raise ValueError(
        f"{fn}: the BN prior (argument 'bn' > 0) needs a model with "
        "BatchNorm (apply_fn.has_batch_norm); pass bn=0 or use "
        "inverting_gradients")
  if config.bn_source == "observed":
    if observation.bn_stats is None:
      raise ValueError(f"{fn}: argument 'bn_source' is 'observed' but the "
                       "observation has no bn_stats")
    return observation.bn_stats
  return apply_fn.bn_running_stats(observation.params)


def _recover_labels(observation, config: AttackConfig
                    ) -> labels_lib.LabelRecovery | None:
  strategy = config.label_strategy
  if strategy == JOINT_LABELS:
    return None
  if strategy == "auto" and not config.use_revealed_labels:
    strategy = "idlg" if observation.batch_size == 1 else "yin"
  return labels_lib.recover_labels(observation, strategy)


def _space(config: AttackConfig) -> str:
  return "box" if config.boxed else "free"


def gradient_matching(observation: threat_model.GradientObservation,
                      config: AttackConfig, *, key: Any,
                      ground_truth: Any = None,
                      callback: optimize.Callback | None = None,
                      name: str = "gradient_matching"
                      ) -> results.InversionResult:
  """Runs the gradient-matching attack that `config` describes.

  Validates the options, refuses an observation with an all-zero gradient,
  resolves the labels (or sets up joint label logits), builds the
  `MatchingProblem` and minimises it (see the module docstring).

  Args:
    observation: the attacker's view.
    config: the attack's options.
    key: PRNG key or int seed (initialisation of every restart, Langevin
      noise).
    ground_truth: private images, or ``(images, labels)``, for metrics only.
    callback: ``callback(restart, step, loss)`` every ``config.log_every``
      steps.
    name: the attack's name in errors and in the result.

  Returns:
    An `InversionResult`. ``hyperparams`` holds every option of `config`,
    the resolved label strategy and the space ("box" or "free");
    ``label_confidence`` is the label strategy's confidence, or for joint
    labels the mean max soft-label probability.

  Raises:
    TypeError: if `observation` is not a `GradientObservation`.
    ValueError: for an invalid option, an all-zero observed gradient, an
      objective that is exactly 0 at the start, or a BN prior without BN
      statistics.
  """
  t0 = time.perf_counter()
  _check_observation(observation, name)
  if not isinstance(config, AttackConfig):
    raise TypeError(f"{name}: argument 'config' must be an AttackConfig, got "
                    f"{type(config).__name__}")
  config = config.resolved()
  config.validate(name)
  bn_targets = _bn_targets(observation, config, name)
  rec = _recover_labels(observation, config)
  problem, values = make_problem(
      observation, distance_scale=config.distance_scale, tv=config.tv,
      l2=config.l2, bn=config.bn,
      bn_first_layer_scale=config.bn_first_layer_scale, lr=config.lr,
      langevin=config.langevin, distance=config.distance,
      joint_labels=rec is None, init_scheme=config.init,
      optimizer_name=config.optimizer, steps=config.steps,
      schedule=config.schedule, warmup=int(config.warmup),
      signed=bool(config.signed), boxed=bool(config.boxed),
      matmul_conv=bool(config.matmul_conv))
  hyperparams = {**dataclasses.asdict(config), "space": _space(config),
                 "label_strategy": (JOINT_LABELS if rec is None
                                    else rec.strategy)}
  return gradient_matching_attack(
      name, observation, key=key, problem=problem, hp=values,
      labels=None if rec is None else rec.labels,
      label_confidence=None if rec is None else rec.confidence,
      restarts=config.restarts, loop=config.loop,
      log_every=config.log_every, ground_truth=ground_truth,
      callback=callback, hyperparams=hyperparams, bn_targets=bn_targets,
      start_time=t0)


def named_attack(name: str, config: AttackConfig, options: tuple[str, ...],
                 doc: str) -> registry.AttackFn:
  """An attack function: `config` under `name`, tunable in `options`.

  The function has the registry's signature
  ``attack(observation, *, key, ground_truth=None, callback=None,
  **options)``; its keyword options and their defaults come from `config`
  (so `inspect.signature` and ``help`` show them), and an option outside
  `options` is a TypeError.
  """
  fields = {f.name for f in dataclasses.fields(AttackConfig)}
  if not set(options) <= fields:
    raise ValueError(f"named_attack: options {sorted(set(options) - fields)} "
                     "are not AttackConfig fields")

  def attack(observation, *, key, ground_truth=None, callback=None,
             **overrides):
    unknown = sorted(set(overrides) - set(options))
    if unknown:
      # Worded like Python's own error for a function's unknown keyword.
      raise TypeError(f"{name}() got an unexpected keyword argument "
                      f"{unknown[0]!r}; this attack's options are "
                      f"{list(options)}")
    return gradient_matching(observation, config.replace(**overrides),
                             key=key, ground_truth=ground_truth,
                             callback=callback, name=name)

  kw = inspect.Parameter.KEYWORD_ONLY
  params = [inspect.Parameter("observation",
                              inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("key", kw),
            inspect.Parameter("ground_truth", kw, default=None),
            inspect.Parameter("callback", kw, default=None)]
  params += [inspect.Parameter(o, kw, default=getattr(config, o))
             for o in options]
  attack.__signature__ = inspect.Signature(params)
  attack.__name__ = attack.__qualname__ = name
  attack.__module__ = __name__
  defaults = ", ".join(f"{o}={getattr(config, o)!r}" for o in options)
  attack.__doc__ = (f"{doc.strip()}\n\nOptions (see `AttackConfig`; "
                    f"defaults): {defaults}.\n\nReturns an `InversionResult` "
                    "(see `gradient_matching`).")
  attack.config = config
  attack.options = tuple(options)
  return attack


# ----------------------------------------------------------------------------
# The classic attacks: named option sets.

_RUN = ("steps", "restarts", "init", "matmul_conv", "loop", "log_every")

DLG = AttackConfig(label_strategy=JOINT_LABELS, optimizer="lbfgs", lr=None,
                   init="randn", steps=1200, log_every=50)
IDLG = dataclasses.replace(DLG, label_strategy="auto",
                           use_revealed_labels=False)
INVERTING_GRADIENTS = AttackConfig(
    distance="cosine", tv=1e-4, optimizer="adam", lr=0.1, schedule="step",
    signed=True, boxed=True, init="rand", steps=4800)
GRAD_INVERSION = AttackConfig(
    distance="l2", distance_scale=1e-4, tv=1e-4, l2=1e-6, bn=0.1,
    bn_first_layer_scale=10.0, optimizer="adam", lr=0.1, schedule="cosine",
    warmup=50, boxed=True, langevin=0.01, init="rand", steps=4800)

dlg = named_attack("dlg", DLG, _RUN + ("optimizer", "lr"), """
Deep Leakage from Gradients (Zhu, Liu and Han, NeurIPS 2019).

Jointly optimises the images ``x'`` and label logits ``ℓ'`` (both started
from N(0, 1)) to minimise the squared L2 gradient distance with soft labels
``softmax(ℓ')``:

    min_{x', ℓ'} sum_layers ||A(x', softmax(ℓ')) - g*||².

Pixels are unconstrained; recovered labels are ``argmax ℓ'``; it ignores
``observation.labels``. L-BFGS takes each of its 1200 steps with a zoom line
search of up to 15 evaluations (breaching's 1200; the original code runs 300
calls of PyTorch's L-BFGS with up to 20 iterations each); ``lr=None`` lets
the line search set the step (Adam/SGD default to 0.1).
""")

idlg = named_attack("idlg", IDLG, _RUN + ("optimizer", "lr",
                                          "label_strategy"), """
Improved DLG (Zhao, Mopuri and Bilen, 2020): labels first, then images.

The label is read from the output layer's gradient (`labels.recover_labels`;
"auto" = "idlg" for one image, "yin" for a batch, so the observation's own
labels are not used unless ``label_strategy="known"``), then DLG's L2
objective is minimised over the images only, with hard labels.
""")

inverting_gradients = named_attack(
    "inverting_gradients", INVERTING_GRADIENTS,
    _RUN + ("lr", "tv", "signed", "boxed", "schedule", "label_strategy"), """
Inverting Gradients (Geiping, Bauermeister, Dröge and Moeller, 2020).

Minimises the cosine gradient distance plus total variation

    J(x') = 1 - <A(x'), g*> / (||A(x')|| ||g*||) + α_TV TV(x')

with Adam on the sign of ∇J ("signed"), projecting onto the box [0, 1]
after every step, decaying the learning rate ×0.1 at 3/8, 5/8 and 7/8 of
the steps, and keeping the restart with the lowest loss. Steps: inversefed
4800, breaching 24000. α_TV defaults to 1e-4: breaching's 0.2 (in normalised
units) over-smoothed in our pixel-unit measurements (32x32 photo, 1000 steps:
10.9 dB at 0.2, 12.3 dB at 0.01, 12.6 dB at 0), and weights of 1e-5 to 1e-3
were within run-to-run noise of 0 on 16x16 photos and digits. Labels: "auto"
takes the observation's labels if known, else iDLG/yin.
""")

grad_inversion = named_attack(
    "grad_inversion", GRAD_INVERSION,
    _RUN + ("lr", "distance_scale", "tv", "l2", "bn", "bn_first_layer_scale",
            "bn_source", "langevin", "warmup", "label_strategy"), """
GradInversion / "See through Gradients" (Yin et al., CVPR 2021).

Minimises the scaled L2 gradient distance plus image priors and the
BatchNorm-statistics prior of DeepInversion:

    J(x') = α_D ||A(x') - g*||² + α_TV TV(x') + α_2 ||x'||²
          + α_BN sum_l s_l (||μ_l(x') - μ_l*|| + ||σ²_l(x') - σ²_l*||)

with Adam, linear warm-up then cosine decay, Langevin noise
``σ_L · lr_t · N(0, I)`` added after each step, and the box [0, 1].
Defaults are breaching's ``seethroughgradients`` weights (its 20,000
iterations cut to 4800); the group-consistency term of the paper is not
implemented (nor is it in breaching). ``bn > 0`` needs a BatchNorm model
(``bn=0`` allows any model); ``bn_source`` is "observed" (the victim batch's
statistics) or "running" (the model's running averages, as with a
pre-trained network).
""")

NAMED_ATTACKS: dict[str, AttackConfig] = {
    "dlg": DLG, "idlg": IDLG, "inverting_gradients": INVERTING_GRADIENTS,
    "grad_inversion": GRAD_INVERSION}
"""The classic attacks' configurations by registry name."""

for _fn in (dlg, idlg, inverting_gradients, grad_inversion):
  registry.register_attack(_fn.__name__, _fn)
del _fn
