"""Data-parallel DP training: per-sample work sharded, noise drawn once.

One step, on a ``("data",)`` mesh of n devices:

  1. The padded Poisson batch is split over devices. Each device computes
     ``sum_{i in shard} mask_i w(||g_i||) g_i`` for its examples (two-pass or
     vmap path) inside `jax.shard_map`.
  2. ``lax.psum`` adds the n partial sums: the global weighted sum.
  3. Outside the shard_map, Gaussian noise of std ``sigma * Delta`` is drawn
     **once** from one replicated key and added to the global sum, which is
     divided by the expected batch size (`gaussian_privatizer`).
  4. The optimiser (post-processing, e.g. SGD with momentum) updates params.

Guarantee: the released update is exactly that of single-device
`jaxleak.dp.dp_aggregate` with the same rule, noise multiplier and key; the
noise is never multiplied by the device count (tested on 8 devices).
Privacy over training is the Poisson-subsampled Gaussian mechanism, tracked
by a `PrivacyLedger` that is checkpointed with the model.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxleak import data as data_lib
from jaxleak import models as models_lib
from jaxleak import report
from jaxleak import runloop
from jaxleak import sharding as sharding_lib
from jaxleak import training as training_lib
from jaxleak._src import host_memory
from jaxleak._src import validate
from jaxleak.dp import accounting
from jaxleak.dp import aggregate
from jaxleak.dp import per_example
from jaxleak.dp import weights as weights_lib

__all__ = (
  "DPStepMetrics",
  "DPTrainConfig",
  "DPTrainResult",
  "default_eval_every",
  "make_dp_optimizer",
  "make_dp_train_step",
  "make_weight_rule",
  "train_dp_classifier",
)


class DPStepMetrics(NamedTuple):
  loss: jax.Array          # mean loss over the real (unpadded) examples
  accuracy: jax.Array      # mean accuracy over the real examples
  batch_size: jax.Array    # realised number of real examples
  num_skipped: jax.Array   # examples dropped for a non-finite gradient norm


def make_weight_rule(rule: str, *, l2_norm_clip: float = 1.0, r: float = 0.1,
                     s: float = 1.0, gamma: float = 0.01
                     ) -> weights_lib.WeightRule:
  """Builds a weight rule by name ("clip", "auto_s", "nsgd", "psac", "psasc")."""
  validate.check_choice(rule, "rule", tuple(weights_lib.RULES),
                        fn="make_weight_rule")
  if rule == "clip":
    return weights_lib.clip(l2_norm_clip)
  if rule in ("auto_s", "normalize"):
    return weights_lib.auto_s(l2_norm_clip, gamma)
  if rule == "nsgd":
    return weights_lib.nsgd(l2_norm_clip, r)
  if rule == "psac":
    return weights_lib.psac(l2_norm_clip, r)
  return weights_lib.psasc(l2_norm_clip, r, s)


def make_dp_optimizer(weight_rule: weights_lib.WeightRule,
                      noise_multiplier: float, key: jax.Array | int, *,
                      expected_batch_size: int,
                      learning_rate: optax.ScalarOrSchedule,
                      momentum: float | None = None
                      ) -> optax.GradientTransformationExtraArgs:
  """Privatiser for weighted sums chained with SGD (momentum is post-processing)."""
  tail = [optax.scale_by_learning_rate(learning_rate)]
  if momentum:
    validate.check_in_range(momentum, "momentum", 0.0, 1.0,
                            inclusive=(True, False), fn="make_dp_optimizer")
    tail.insert(0, optax.trace(decay=momentum))
  return optax.chain(
      aggregate.gaussian_privatizer(weight_rule.sensitivity, noise_multiplier,
                                    key, expected_batch_size=expected_batch_size),
      *[optax.with_extra_args_support(t) for t in tail])


def make_dp_train_step(apply_fn: Callable[[Any, jax.Array], jax.Array],
                       weight_rule: weights_lib.WeightRule,
                       optimizer: optax.GradientTransformation, *,
                       mesh: jax.sharding.Mesh | None = None,
                       path: str = "auto",
                       microbatch_size: int | None = None,
                       loss_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None):
  """Returns a jitted ``step(params, opt_state, images, labels, mask)``.

  ``optimizer`` must start with a privatiser for weighted sums (see
  `make_dp_optimizer`). With a `mesh`, the batch arrays must be sharded over
  its ``"data"`` axis (`jaxleak.sharding.shard_batch`) and their leading size
  divisible by the device count.

  Returns from the step: ``(params, opt_state, DPStepMetrics)``. The step is
  ``jax.jit``-compiled; params and optimiser state are committed to their
  devices on every call (so the step compiles once), and the first call hands
  the compiler's freed heap back to the OS before running
  (`jaxleak._src.host_memory.CompileThenTrim`).
  """
  validate.check_choice(path, "path", per_example.PATHS, fn="make_dp_train_step")
  loss_fn = loss_fn or models_lib.cross_entropy_loss

  def batch_loss(params, batch):
    x, y = batch
    logits = apply_fn(params, x)
    return loss_fn(logits, y), logits

  def local_sums(params, images, labels, mask):
    out = per_example.weighted_grad_sum(
        batch_loss, params, (images, labels), weight_rule, mask=mask, path=path,
        microbatch_size=microbatch_size, has_aux=True)
    real = mask.astype(bool)
    # Loss and logits come free from the weighted-sum pass (aux [B, 1, C]).
    correct = jnp.argmax(out.aux[:, 0], -1) == labels
    stats = jnp.stack([
        jnp.sum(jnp.where(real & jnp.isfinite(out.losses), out.losses, 0.0)),
        jnp.sum(jnp.where(real, correct, False)).astype(jnp.float32),
        jnp.sum(real).astype(jnp.float32),
        jnp.sum(real & ~jnp.isfinite(out.norms)).astype(jnp.float32),
    ])
    return out.grad_sum, stats

  if mesh is not None:
    axis = sharding_lib.DATA_AXIS
    P = jax.sharding.PartitionSpec

    def per_device(params, images, labels, mask):
      # Without the cast, grads w.r.t. replicated params are implicitly
      # psum'd over devices, corrupting the per-example norms.
      params = sharding_lib.device_varying(params, axis)
      grad_sum, stats = local_sums(params, images, labels, mask)
      return jax.lax.psum(grad_sum, axis), jax.lax.psum(stats, axis)

    sums = jax.shard_map(per_device, mesh=mesh,
                         in_specs=(P(), P(axis), P(axis), P(axis)),
                         out_specs=(P(), P()))
  else:
    sums = local_sums

  @jax.jit
  def step(params, opt_state, images, labels, mask):
    grad_sum, stats = sums(params, images, labels, mask)
    # Noise is added here, once, to the global (already reduced) sum.
    updates, opt_state = optimizer.update(grad_sum, opt_state, params)
    params = optax.apply_updates(params, updates)
    n_real = jnp.maximum(stats[2], 1.0)
    return params, opt_state, DPStepMetrics(
        loss=stats[0] / n_real, accuracy=stats[1] / n_real,
        batch_size=stats[2], num_skipped=stats[3])

  # Compiling leaves the compiler's freed heap mapped; handing it back before
  # the first run keeps it from adding to the step's own memory.
  return host_memory.CompileThenTrim(step, carried_argnums=(0, 1))


@dataclasses.dataclass(frozen=True)
class DPTrainConfig:
  """Hyper-parameters of `train_dp_classifier` (all JSON-serialisable).

  Either `noise_multiplier` is given, or it is calibrated so that the whole
  run spends exactly `target_epsilon` at `delta` (PLD accountant).
  """
  rule: str = "psasc"
  l2_norm_clip: float = 1.0
  r: float = 0.1
  s: float = 1.0
  gamma: float = 0.01
  target_epsilon: float | None = 3.0
  noise_multiplier: float | None = None
  delta: float = 1e-5
  epochs: float = 20.0
  expected_batch_size: int = 256
  learning_rate: float = 1.0
  momentum: float | None = 0.9
  seed: int = 0
  path: str = "auto"  # layerwise where it applies; benchmarks/dp_throughput.py
  microbatch_size: int | None = None
  accountant: str = "pld"
  checkpoint_every: int = 100

  def validate(self, n_train: int) -> None:
    fn = "DPTrainConfig"
    validate.check_choice(self.rule, "rule", tuple(weights_lib.RULES), fn=fn)
    validate.check_positive(self.epochs, "epochs", fn=fn)
    validate.check_positive(self.learning_rate, "learning_rate", fn=fn)
    validate.check_positive(self.checkpoint_every, "checkpoint_every", fn=fn)
    validate.check_in_range(self.delta, "delta", 0.0, 1.0, fn=fn,
                            inclusive=(False, False))
    validate.check_choice(self.path, "path", per_example.PATHS, fn=fn)
    if (self.target_epsilon is None) == (self.noise_multiplier is None):
      raise ValueError(f"{fn}: give exactly one of 'target_epsilon' and "
                       "'noise_multiplier'")
    if self.target_epsilon is not None:
      validate.check_positive(self.target_epsilon, "target_epsilon", fn=fn)
    else:
      validate.check_positive(self.noise_multiplier, "noise_multiplier", fn=fn,
                              allow_zero=True)
    if not 1 <= self.expected_batch_size <= n_train:
      raise ValueError(
          f"{fn}: argument 'expected_batch_size'={self.expected_batch_size} must "
          f"be between 1 and the training-set size {n_train}")
    if self.delta >= 1.0 / n_train:
      raise ValueError(
          f"{fn}: argument 'delta'={self.delta} should be well below 1/n = "
          f"{1.0 / n_train:.2e}; a larger delta allows leaking whole examples")

  def sample_rate(self, n_train: int) -> float:
    return self.expected_batch_size / n_train

  def num_steps(self, n_train: int) -> int:
    return max(1, round(self.epochs * n_train / self.expected_batch_size))


class DPTrainResult(NamedTuple):
  params: Any
  history: list[dict[str, float]]
  test_accuracy: float
  epsilon: float
  noise_multiplier: float
  steps: int
  wall_time_s: float
  resumed_from: int | None


def _resolve_noise(config: DPTrainConfig, n_train: int) -> float:
  if config.noise_multiplier is not None:
    return float(config.noise_multiplier)
  return accounting.calibrate_noise(
      config.target_epsilon, sample_rate=config.sample_rate(n_train),
      steps=config.num_steps(n_train), delta=config.delta,
      accountant=config.accountant)


def default_eval_every(total_steps: int, sample_rate: float) -> int:
  """Steps between evaluations: one epoch, or a twentieth of a long run.

  Each evaluation computes epsilon (a PLD composition, about a second on a
  CPU), so a short run (2 epochs are ~31 steps of mnist_subset) evaluates
  once per epoch, not every step; a long one at most about 20 times.
  """
  return max(1, round(1 / sample_rate), int(total_steps) // 20)


def train_dp_classifier(apply_fn, params, train: data_lib.Dataset,
                        test: data_lib.Dataset, config: DPTrainConfig, *,
                        mesh: jax.sharding.Mesh | None = None,
                        workdir: str | os.PathLike | None = None,
                        progress: bool = True, eval_every: int | None = None,
                        preempt_after_steps: int | None = None,
                        run_info: dict[str, Any] | None = None) -> DPTrainResult:
  """DP training with Poisson sampling, sharded per-sample work and a ledger.

  Each step samples every training example independently with probability
  ``q = expected_batch_size / n`` (`jaxleak.data.PoissonSampler`, padded to a
  fixed size divisible by the device count, with a mask), so the accounting
  is exactly the Poisson-subsampled Gaussian mechanism.

  Checkpoints (in ``workdir/checkpoints``) hold params, optimiser state (with
  the noise key), the privacy ledger and the sampler step; rerunning resumes
  exactly.

  Args:
    eval_every: steps between evaluations (test accuracy and epsilon);
      default `default_eval_every` (one epoch or a twentieth of the run,
      whichever is longer). The last step is always evaluated.

  Returns:
    A `DPTrainResult` with the final params, evaluation history, test
    accuracy, epsilon spent and the noise multiplier used.
  """
  n = len(train)
  config.validate(n)
  mesh = mesh or sharding_lib.data_mesh()
  n_dev = mesh.shape[sharding_lib.DATA_AXIS]
  q = config.sample_rate(n)
  total_steps = config.num_steps(n)
  sigma = _resolve_noise(config, n)
  rule = make_weight_rule(config.rule, l2_norm_clip=config.l2_norm_clip,
                          r=config.r, s=config.s, gamma=config.gamma)
  max_b = data_lib.default_max_batch_size(n, q)
  max_b = -(-max_b // n_dev) * n_dev  # round up to a multiple of the devices
  if config.microbatch_size:
    per_dev = max_b // n_dev
    mb = min(config.microbatch_size, per_dev)
    while per_dev % mb:
      mb -= 1
    microbatch = mb
  else:
    microbatch = None
  sampler = data_lib.PoissonSampler(n, sample_rate=q, seed=config.seed,
                                    max_batch_size=max_b)
  eval_every = eval_every or default_eval_every(total_steps, q)
  optimizer = make_dp_optimizer(
      rule, sigma, jax.random.key(config.seed + 1_000_003),
      expected_batch_size=config.expected_batch_size,
      learning_rate=config.learning_rate, momentum=config.momentum)
  identity = {"config": dataclasses.asdict(config), "run": dict(run_info or {}),
              "noise_multiplier": sigma}
  loop = runloop.RunLoop(
      f"dp-{config.rule}", total_steps,
      checkpoint_dir=(None if workdir is None
                      else os.path.join(workdir, "checkpoints")),
      identity=identity, checkpoint_every=config.checkpoint_every,
      stop_after=preempt_after_steps, progress=progress)
  with loop:
    state, aux = loop.restore(
        {"params": params, "opt_state": optimizer.init(params)},
        {"ledger": accounting.PrivacyLedger(
            delta=config.delta, accountant=config.accountant).to_dict(),
         "sampler": sampler.state_dict(), "history": []})
    ledger = accounting.PrivacyLedger.from_dict(aux["ledger"])
    sampler.load_state_dict(aux["sampler"])
    state = sharding_lib.replicate(mesh, state)
    train_step = make_dp_train_step(apply_fn, rule, optimizer, mesh=mesh,
                                    path=config.path,
                                    microbatch_size=microbatch)
    images, labels = np.asarray(train.images), np.asarray(train.labels)

    def step_fn(step, state, aux):
      idx, mask = sampler.batch(step)
      batch = sharding_lib.shard_batch(mesh, (images[idx], labels[idx], mask))
      params, opt_state, m = train_step(state["params"], state["opt_state"],
                                        *batch)
      sampler.load_state_dict({"seed": config.seed, "step": step + 1})
      ledger.record(sigma, q)
      aux["ledger"], aux["sampler"] = ledger.to_dict(), sampler.state_dict()
      if (step + 1) % eval_every == 0 or step + 1 == total_steps:
        ev = training_lib.evaluate(apply_fn, params, test)
        aux["history"].append({
            "step": step + 1, "epoch": (step + 1) * q,
            "epsilon": ledger.epsilon(), "train_loss": float(m.loss),
            "train_accuracy": float(m.accuracy), "test_loss": ev["loss"],
            "test_accuracy": ev["accuracy"],
            "num_skipped": float(m.num_skipped)})
      last = aux["history"][-1] if aux["history"] else {}
      return ({"params": params, "opt_state": opt_state}, aux,
              {"loss": f"{float(m.loss):.3f}", "acc": f"{float(m.accuracy):.3f}",
               "test_acc": f"{last.get('test_accuracy', float('nan')):.3f}",
               "eps": f"{last.get('epsilon', 0.0):.2f}"})

    result = loop.run(step_fn, state, aux)
  history = result.aux["history"]
  return DPTrainResult(
      params=jax.device_get(result.state["params"]), history=history,
      test_accuracy=(history[-1]["test_accuracy"] if history
                     else float("nan")),
      epsilon=ledger.epsilon(), noise_multiplier=sigma, steps=result.step,
      wall_time_s=result.wall_time_s, resumed_from=result.resumed_from)


def write_dp_report(workdir: str, result: DPTrainResult, config: DPTrainConfig,
                    title: str) -> None:
  """metrics.json, report.md and accuracy/epsilon curves for a DP run."""
  from jaxleak import metrics  # pylint: disable=g-import-not-at-top
  h = result.history
  acc_png = metrics.save_history_curves(
      h, "step", {"test accuracy": "test_accuracy",
                  "train accuracy (batch)": "train_accuracy"},
      os.path.join(workdir, "accuracy_curve.png"), ylabel="accuracy",
      title=title)
  eps_png = metrics.save_history_curves(
      h, "step", {"epsilon spent": "epsilon"},
      os.path.join(workdir, "epsilon_curve.png"),
      ylabel=f"epsilon (delta={config.delta:g})", title="privacy spent")
  summary = {"test_accuracy": result.test_accuracy, "epsilon": result.epsilon,
             "delta": config.delta, "noise_multiplier": result.noise_multiplier,
             "steps": result.steps, "wall_time_s": result.wall_time_s,
             "resumed_from_step": result.resumed_from}
  report.write_json(os.path.join(workdir, "metrics.json"),
                    {**summary, "history": h, "config": dataclasses.asdict(config)})
  report.write_report(workdir, title, summary=summary,
                      tables={"Evaluation history": h},
                      figures={"Accuracy": acc_png, "Privacy spent": eps_png},
                      config=dataclasses.asdict(config))
