"""User-level gradient inversion with a diffusion prior: one representative image.

Per-sample inversion fails at large batch sizes: a gradient averaged over
B = 30 or 100 images does not pin down any single image. Li, Lowy, Liu,
Koike-Akino, Malin, Parsons and Wang ("Exploring User-level Gradient
Inversion with a Diffusion Prior", arXiv 2409.07291, FL@FM NeurIPS 2023)
instead recover a *representative image* carrying what the user's whole
batch shares (an identity, a class, an attribute), with a denoising
diffusion model as the image prior. No code was published and the paper's
schedule, window sizes and learning rates could not be read; what follows
is a reconstruction of the described design, every part configurable:

* **Variable.** A latent ``z`` at one timestep of a deterministic DDIM chain
  ``t_0 = T-1 > t_1 > ... > t_{S-1} = 0`` through the prior's UNet (eta = 0,
  `diffusion.ddim_step`); the representative is the chain's clean output.
  The first stage optimises ``z_T`` (or, when the first stage starts later,
  an intermediate ``z_t`` reached from random noise).
* **Objective.** ``J(z) = D(A(img(x̂₀(z)), ȳ), g) + α TV(img(x̂₀(z)))`` where
  ``g`` is the observed batch gradient, ``A(x, y) = ∇_θ L(f_θ(x), y)`` the
  victim's gradient operator (`GradientObservation.operator`), ``ȳ`` the
  batch's majority label (the most frequent given label, or recovered from
  the gradient as the most negative output-bias gradient, which for the
  batch-mean cross-entropy ``mean_b (p_b - e_{y_b})`` is the class holding
  most of the batch) and ``D`` the cosine distance (Inverting Gradients'),
  or the L2 norm relative to ``‖g‖``. With ``k > 1`` representatives the
  victim sees all k images labelled ``ȳ`` as one batch.
* **Time schedule.** Stages ``((s_0, n_0), (s_1, n_1), ...)`` with chain
  indices ``s_0 < s_1 < ...``: stage j optimises the latent at ``t_{s_j}``
  for ``n_j`` Adam iterations. The next stage starts from the current
  latent carried down the chain (unguided DDIM) to ``t_{s_{j+1}}``, so the
  high-noise stages settle the semantics and the later ones the detail.
* **Sliding window.** A stage at ``s`` back-propagates through only the
  ``w`` DDIM steps ``s .. s+w-1`` and replaces the rest of the chain by the
  Tweedie estimate ``x̂₀ = (x - √(1-ᾱ) ε̂) / √ᾱ`` at ``t_{s+w}`` (one more
  UNet call). When the window reaches the end of the chain ``x̂₀`` is the
  chain's exact output, so the gradient is the full-chain gradient. Each
  UNet call is wrapped in ``jax.checkpoint``; the window is unrolled and
  every stage uses the same compiled program (the chain is padded with
  identity steps at t = -1), so memory grows with ``w`` and not with S.
* **Optimiser.** Adam on ``z`` (``optax.scale_by_adam``; the learning rate
  is a traced argument), one jit-compiled step per iteration; by default
  the latent is projected back to the norm it had when its stage began
  (for ``z_T`` the Gaussian shell of radius ≈ √n), which keeps it where the
  deterministic chain decodes images rather than noise.

The final representative is the full chain from the last latent, mapped to
the victim's image space ``(x₀ + 1) / 2`` (resized and channel-matched as
in `diffusion_guided`) and clipped to [0, 1].

Choices of this reconstruction (not from the paper): the default chain of
20 DDIM steps, window 4, three stages starting at chain indices 0, S/5 and
2S/5 with 50%, 30% and 20% of the iterations, Adam learning rate 0.05,
clipping x̂₀ to [-1, 1] inside the chain as the prior's sampler does, and
sampling a class-conditional prior unconditionally (its null class) by
default, so that the class comes from the gradient, not from the label.
Options beyond the described design: ``class_conditional`` conditions a
class-conditional prior on the majority label recovered from the gradient
(still a gradient-only attack: the label is read off the gradient), with
classifier-free guidance ``guidance_scale`` inside the chain; and
``num_candidates`` starts from the best of several unguided chain outputs
by the same gradient objective.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
from jaxleak.attacks.inversion import _compile
from jaxleak.attacks.inversion import labels as labels_lib
from jaxleak.attacks.inversion import objectives
from jaxleak.attacks.inversion import registry
from jaxleak.attacks.inversion import results
from jaxleak.attacks.inversion import threat_model

__all__ = (
    "RepresentativeProblem",
    "UserLevelResult",
    "check_stages",
    "default_stages",
    "majority_label",
    "prior_representative",
    "run_chain",
    "select_start",
    "stepwise_value_and_grad",
    "user_level_diffusion",
)

Array = jax.Array
FN = "user_level_diffusion"
LOOPS = ("fused", "stepwise")


@dataclasses.dataclass(frozen=True, eq=False)
class UserLevelResult(results.InversionResult):
  """An `InversionResult` for k representative images of one user.

  ``images`` is ``[k, H, W, C]`` in the victim's space and ``labels`` the
  majority label ``ȳ`` repeated k times.

  Attributes:
    majority_label: ``ȳ``, the label the representative was optimised at.
    stages: the ``(chain index, iterations)`` time schedule used.
    stage_timesteps: the diffusion timestep each stage optimised at.
  """

  majority_label: int = -1
  stages: tuple[tuple[int, int], ...] = ()
  stage_timesteps: tuple[int, ...] = ()


# ----------------------------------------------------------------------------
# Schedule helpers.


def default_stages(num_steps: int, iterations: int
                   ) -> tuple[tuple[int, int], ...]:
  """Three stages at chain indices 0, S/5, 2S/5 with 50/30/20% of the work.

  Short chains or budgets collapse to fewer (distinct, non-empty) stages.
  """
  starts = sorted({0, num_steps // 5, (2 * num_steps) // 5})
  shares = {1: (1.0,), 2: (0.6, 0.4), 3: (0.5, 0.3, 0.2)}[len(starts)]
  counts = [round(iterations * s) for s in shares]
  counts[0] += iterations - sum(counts)
  return tuple((s, n) for s, n in zip(starts, counts) if n > 0)


def check_stages(stages: Any, num_steps: int, fn: str = FN
                 ) -> tuple[tuple[int, int], ...]:
  """Validates a time schedule: ((start, iterations), ...) pairs.

  Starts are chain indices in [0, num_steps), strictly increasing (higher
  noise first); iterations are positive ints.
  """
  try:
    pairs = tuple((s, n) for s, n in stages)
  except (TypeError, ValueError):
    raise ValueError(f"{fn}: argument 'stages' must be a sequence of "
                     f"(start, iterations) pairs, got {stages!r}") from None
  if not pairs:
    raise ValueError(f"{fn}: argument 'stages' must hold at least one "
                     "(start, iterations) pair")
  out = []
  for s, n in pairs:
    for v, what in ((s, "start"), (n, "iterations")):
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{fn}: argument 'stages' must hold int pairs, got "
                         f"{what} {v!r}")
    if not 0 <= s < num_steps:
      raise ValueError(f"{fn}: argument 'stages' has start {s} outside the "
                       f"chain's indices [0, {num_steps}) (steps={num_steps})")
    if n < 1:
      raise ValueError(f"{fn}: argument 'stages' has {n} iterations at start "
                       f"{s}; each stage needs at least 1")
    if out and s <= out[-1][0]:
      raise ValueError(f"{fn}: argument 'stages' must have strictly "
                       "increasing starts (high noise first), got "
                       f"{[p[0] for p in pairs]}")
    out.append((int(s), int(n)))
  return tuple(out)


def majority_label(observation: threat_model.GradientObservation
                   ) -> tuple[int, float, str]:
  """``(ȳ, confidence, how)``: the batch's most frequent label.

  With known labels it is their mode (confidence: its share of the batch).
  Otherwise the output layer's bias gradient ``mean_b (p_b - e_{y_b})`` is
  most negative at the class holding most of the batch (the kernel gradient
  summed over its input axis when the layer has no bias); the confidence is
  that class's share of the negative evidence.
  """
  if observation.has_labels:
    counts = np.bincount(np.asarray(observation.labels),
                         minlength=observation.num_classes)
    y = int(np.argmax(counts))
    return y, float(counts[y] / counts.sum()), "known"
  w, c = labels_lib.last_layer_gradient(observation.gradient,
                                        observation.num_classes)
  scores = np.asarray(c if c is not None else jnp.sum(w, axis=0), np.float64)
  y = int(np.argmin(scores))
  evidence = np.maximum(-scores, 0.0)
  conf = float(evidence[y] / evidence.sum()) if evidence.sum() > 0 else 0.0
  return y, conf, "bias_gradient" if c is not None else "kernel_gradient"


# ----------------------------------------------------------------------------
# The differentiable chain (static structure; arrays travel as `consts`).


def _victim_images(x0: Array, victim_shape: tuple[int, int, int]) -> Array:
  from jaxleak.attacks.inversion import diffusion_guided  # pylint: disable=g-import-not-at-top
  img = (x0 + 1.0) * 0.5
  if tuple(img.shape[1:]) != tuple(victim_shape):
    img = diffusion_guided._resize_images(img, victim_shape)  # pylint: disable=protected-access
  return img


@dataclasses.dataclass(frozen=True)
class RepresentativeProblem:
  """Static description of the representative-image objective (hashable).

  Attributes:
    unet_apply: ``eps = unet_apply(params, x_t, t, cond)``.
    victim_apply: ``logits = victim_apply(params, x)``.
    prior_shape: ``(R, R, C)`` of the prior.
    victim_shape: ``(H, W, C)`` of the victim's inputs.
    window: w, the DDIM steps back-propagated through.
    distance: "cosine" or "l2" (relative to ``‖g‖``).
    clip_x0: clip x̂₀ to [-1, 1] inside each DDIM step.
    checkpoint: ``jax.checkpoint`` each UNet call.
    local_steps, local_lr, local_batch_size: the victim's protocol.
    matmul_conv: victim convolutions with matrix-product kernel derivatives.
    guidance_scale: classifier-free guidance weight s of a conditional
      prior (1: plain conditional); with s != 1 ``consts["cond"]`` holds
      the k labels followed by k null labels.
  """

  unet_apply: Callable[..., Array]
  victim_apply: Callable[..., Array]
  prior_shape: tuple[int, int, int]
  victim_shape: tuple[int, int, int]
  window: int = 4
  distance: str = "cosine"
  clip_x0: bool = True
  checkpoint: bool = True
  local_steps: int = 1
  local_lr: float = 1e-3
  local_batch_size: int | None = None
  matmul_conv: bool = True
  guidance_scale: float = 1.0

  def guided_eps(self, prior_params: Any, x: Array, t: Array, cond: Any,
                 checkpoint: bool = False) -> Array:
    """The UNet's noise estimate; classifier-free guided when
    ``guidance_scale != 1`` and a condition is given:
    ``eps(x, null) + s (eps(x, cond) - eps(x, null))`` in one batched call
    (``cond`` then holds the labels followed by the null labels)."""
    f = self.unet_apply
    if checkpoint:
      f = jax.checkpoint(f)
    if cond is None or self.guidance_scale == 1.0:
      return f(prior_params, x, jnp.broadcast_to(t, (x.shape[0],)), cond)
    both = f(prior_params, jnp.concatenate([x, x]),
             jnp.broadcast_to(t, (2 * x.shape[0],)), cond)
    e_cond, e_null = jnp.split(both, 2)
    return e_null + self.guidance_scale * (e_cond - e_null)

  def eps(self, prior_params: Any, x: Array, t: Array, cond: Any) -> Array:
    return self.guided_eps(prior_params, x, t, cond, self.checkpoint)

  def ddim(self, schedule: Any, x: Array, t: Array, t_prev: Array,
           eps: Array) -> Array:
    """Deterministic DDIM step; the identity at t = -1 (chain padding)."""
    from jaxleak import diffusion  # pylint: disable=g-import-not-at-top
    ab_t = diffusion.alpha_bar(schedule, t)
    ab_prev = diffusion.alpha_bar(schedule, t_prev)
    sq = jnp.sqrt(jnp.maximum(1.0 - ab_t, 1e-12))  # Safe at t = -1.
    x0 = (x - jnp.sqrt(1.0 - ab_t) * eps) / jnp.sqrt(ab_t)
    if self.clip_x0:
      x0 = jnp.clip(x0, -1.0, 1.0)
      eps = (x - jnp.sqrt(ab_t) * x0) / sq
    x_prev = jnp.sqrt(ab_prev) * x0 + jnp.sqrt(1.0 - ab_prev) * eps
    return jnp.where(t < 0, x, x_prev)

  def decode(self, consts: dict[str, Any], z: Array, start: Array) -> Array:
    """``x̂₀`` from the latent at chain index `start` (diffusion space).

    ``w`` DDIM steps through the UNet, then the Tweedie estimate at the
    window's end; exactly the chain's output when the window covers it.
    ``consts["timesteps"]`` is the chain padded with ``w + 1`` entries -1.
    """
    from jaxleak import diffusion  # pylint: disable=g-import-not-at-top
    schedule, ts = consts["schedule"], consts["timesteps"]
    x = z
    for j in range(self.window):
      t = ts[start + j]
      eps = self.eps(consts["prior"], x, t, consts["cond"])
      x = self.ddim(schedule, x, t, ts[start + j + 1], eps)
    t = ts[start + self.window]
    eps = self.eps(consts["prior"], x, t, consts["cond"])
    x0 = diffusion.x0_hat(schedule, x, t, eps)  # Identity at t = -1.
    return jnp.where(t < 0, x, x0)

  def objective(self, x0: Array, consts: dict[str, Any]) -> Array:
    """``D(A(img(x0), ȳ), g) + α TV(img(x0))`` for diffusion-space x0."""
    img = _victim_images(x0, self.victim_shape)
    labels = jnp.full((x0.shape[0],), consts["label"], jnp.int32)
    with (matmul_conv_lib.intercept() if self.matmul_conv
          else contextlib.nullcontext()):
      grads = objectives.local_update_gradient(
          self.victim_apply, consts["victim"], img, labels,
          local_steps=self.local_steps, local_lr=self.local_lr,
          local_batch_size=self.local_batch_size)
    target = consts["target"]
    if self.distance == "cosine":
      d = objectives.cosine_distance(grads, target)
    else:
      d = objectives.l2_distance(grads, target, squared=False) / jnp.sqrt(
          jnp.maximum(objectives.tree_sq_norm(target), 1e-30))
    return d + consts["tv"] * objectives.total_variation(img)

  def loss(self, z: Array, consts: dict[str, Any], start: Array) -> Array:
    """The objective of the latent at chain index `start` (window + x̂₀)."""
    return self.objective(self.decode(consts, z, start), consts)

  def tweedie_loss(self, x: Array, consts: dict[str, Any], t: Array
                   ) -> Array:
    """The objective at the Tweedie estimate from x at timestep t."""
    from jaxleak import diffusion  # pylint: disable=g-import-not-at-top
    eps = self.eps(consts["prior"], x, t, consts["cond"])
    x0 = jnp.where(t < 0, x, diffusion.x0_hat(consts["schedule"], x, t, eps))
    return self.objective(x0, consts)

  def chain_step(self, consts: dict[str, Any], x: Array, t: Array,
                 t_prev: Array) -> Array:
    """One UNet call and DDIM step (no checkpoint: a single call)."""
    eps = self.guided_eps(consts["prior"], x, t, consts["cond"])
    return self.ddim(consts["schedule"], x, t, t_prev, eps)


@_compile.jit(static_argnums=0)
def _adam_step(problem: RepresentativeProblem, consts, z, opt_state, start,
               lr, radius):
  loss, g = jax.value_and_grad(problem.loss)(z, consts, start)
  z, opt_state = _adam_update(z, g, opt_state, lr, radius)
  return z, opt_state, loss


@_compile.jit(static_argnums=0)
def _chain_step(problem: RepresentativeProblem, consts, x, t, t_prev):
  return problem.chain_step(consts, x, t, t_prev)


@_compile.jit(static_argnums=0)
def _chain_step_vjp(problem: RepresentativeProblem, consts, x, t, t_prev,
                    cotangent):
  _, vjp = jax.vjp(lambda x: problem.chain_step(consts, x, t, t_prev), x)
  return vjp(cotangent)[0]


@_compile.jit(static_argnums=0)
def _tweedie_value_and_grad(problem: RepresentativeProblem, consts, x, t):
  return jax.value_and_grad(problem.tweedie_loss)(x, consts, t)


@_compile.jit(static_argnums=0)
def _objective(problem: RepresentativeProblem, consts, x0):
  return problem.objective(x0, consts)


def select_start(problem: RepresentativeProblem, consts: dict[str, Any],
                 z: Array, num_candidates: int, key: Any, steps: int
                 ) -> tuple[Array, tuple[float, ...]]:
  """The best of `num_candidates` starting latents by the gradient objective.

  Candidate 0 is `z` itself, the others fresh Gaussian draws; each is
  decoded by the full unguided chain (all candidates in one batch) and
  scored by ``problem.objective`` (the gradient distance at the chain's
  output). Returns the winning latent and every candidate's loss.
  """
  k = z.shape[0]
  extra = jax.random.normal(key, ((num_candidates - 1) * k,) + z.shape[1:],
                            z.dtype)
  zc = jnp.concatenate([z, extra])
  cond = consts["cond"]
  if cond is not None:  # Labels (then null labels) for every candidate.
    lab, rest = cond[:k], cond[k:]
    cond = jnp.concatenate([jnp.tile(lab, num_candidates),
                            jnp.tile(rest, num_candidates)])
  x0 = run_chain(problem, {**consts, "cond": cond}, zc, 0, steps)
  losses = tuple(float(_objective(problem, consts, x0[i * k:(i + 1) * k]))
                 for i in range(num_candidates))
  best = int(np.argmin(losses))
  return zc[best * k:(best + 1) * k], losses


@jax.jit
def _adam_update(z, grad, opt_state, lr, radius):
  """Adam on z; with radius [k] > 0, z is put back on that sphere per image."""
  updates, opt_state = optax.scale_by_adam().update(grad, opt_state)
  z = z - lr * updates
  norm = jnp.sqrt(jnp.sum(jnp.square(z), axis=(1, 2, 3), keepdims=True))
  r = radius.reshape(-1, 1, 1, 1)
  return jnp.where(r > 0, z * r / jnp.maximum(norm, 1e-12), z), opt_state


def stepwise_value_and_grad(problem: RepresentativeProblem, consts, ts,
                            z: Array, start: int) -> tuple[Array, Array]:
  """``problem.loss`` and its gradient, with the window done step by step.

  The vjp of each DDIM step recomputes its UNet call from the stored input
  (checkpointing by hand), from three small compiled programs reused for
  every step, stage and chain length instead of one program holding w + 1
  UNet calls, which XLA:CPU takes minutes to compile. Identity steps past
  the chain's end are skipped. `ts` is the padded chain as host scalars.
  """
  steps = len(ts) - problem.window - 1
  w = min(problem.window, steps - start)
  xs = [z]
  for j in range(w):
    xs.append(_chain_step(problem, consts, xs[-1], ts[start + j],
                          ts[start + j + 1]))
  loss, g = _tweedie_value_and_grad(problem, consts, xs[w], ts[start + w])
  for j in reversed(range(w)):
    g = _chain_step_vjp(problem, consts, xs[j], ts[start + j],
                        ts[start + j + 1], g)
  return loss, g


def run_chain(problem: RepresentativeProblem, consts: dict[str, Any],
              x: Array, start: int, stop: int) -> Array:
  """Unguided DDIM from chain index `start` to `stop` (S = the clean image)."""
  ts = consts["timesteps"]
  for i in range(start, stop):
    x = _chain_step(problem, consts, x, ts[i], ts[i + 1])
  return x


def prior_representative(prior: Any, key: Any,
                         victim_shape: tuple[int, int, int], *,
                         steps: int = 20, num: int = 1,
                         clip_x0: bool = True,
                         label: int | None = None,
                         guidance_scale: float = 1.0) -> np.ndarray:
  """The "prior alone" baseline: the unguided chain from random noise.

  Same chain, starting latent (``key``) and image bridge as
  `user_level_diffusion`, with no gradient guidance; ``[num, H, W, C]``.
  With `label`, a class-conditional prior is conditioned on it (the
  baseline for ``class_conditional=True``: the recovered label alone, no
  gradient guidance), with classifier-free guidance weight
  `guidance_scale`; None samples the null class.
  """
  from jaxleak import diffusion  # pylint: disable=g-import-not-at-top
  fn = "prior_representative"
  key = validate.canonical_key(key, fn)
  prior = _load_prior(prior, fn)
  problem = RepresentativeProblem(
      unet_apply=prior.apply_fn, victim_apply=None,
      prior_shape=tuple(prior.image_shape),
      victim_shape=tuple(victim_shape), window=1, clip_x0=bool(clip_x0),
      guidance_scale=float(guidance_scale))
  validate.check_finite_number(guidance_scale, "guidance_scale", fn=fn)
  cond = None
  if label is not None:
    if not prior.conditional:
      raise ValueError(f"{fn}: argument 'label' given but prior "
                       f"{prior.name!r} is unconditional")
    label = validate.check_int(label, "label", fn=fn, low=0)
    validate.check_in_range(label, "label", 0, prior.num_classes - 1, fn=fn)
    cond = _condition(label, num, prior, guidance_scale)
  ts = diffusion.ddim_timesteps(prior.schedule.num_timesteps, steps)
  consts = {"prior": prior.params, "schedule": prior.schedule,
            "timesteps": jnp.asarray(np.append(ts, -1), jnp.int32),
            "cond": cond}
  z = jax.random.normal(key, (num,) + tuple(prior.image_shape), jnp.float32)
  x0 = run_chain(problem, consts, z, 0, steps)
  return np.asarray(jnp.clip(_victim_images(x0, problem.victim_shape), 0.0,
                             1.0), np.float32)


def _condition(label: int, k: int, prior: Any, guidance_scale: float
               ) -> Array:
  """``consts["cond"]``: k labels, then k null labels when guided."""
  cond = jnp.full((k,), label, jnp.int32)
  if guidance_scale != 1.0:
    cond = jnp.concatenate([cond, jnp.full((k,), prior.spec.null_class,
                                           jnp.int32)])
  return cond


def _load_prior(prior: Any, fn: str):
  from jaxleak.attacks.inversion import diffusion_guided  # pylint: disable=g-import-not-at-top
  return diffusion_guided._load_prior(prior, fn)  # pylint: disable=protected-access


# ----------------------------------------------------------------------------
# The attack.


def user_level_diffusion(
    observation: threat_model.GradientObservation, *, key: Any,
    ground_truth: Any = None, callback: Any = None, prior: Any = "mnist",
    steps: int = 20, iterations: int = 200,
    stages: Sequence[tuple[int, int]] | None = None, window: int | None = 4,
    lr: float = 0.05, tv: float = 0.0, distance: str = "cosine",
    num_representatives: int = 1, class_conditional: bool = False,
    guidance_scale: float = 1.0, num_candidates: int = 1,
    clip_x0: bool = True,
    checkpoint: bool = True, matmul_conv: bool = True,
    project_latent: bool = True, loop: str | None = None,
    log_every: int = 10) -> UserLevelResult:
  """Recovers representative image(s) of a user's batch from its gradient.

  See the module docstring for the objective, time schedule and sliding
  window (a reconstruction of Li et al., arXiv 2409.07291).

  Args:
    observation: the averaged gradient of one user's batch (`observe`).
    key: PRNG key or int seed (the starting latent).
    ground_truth: the user's batch, or ``(images, labels)``, for metrics
      only (SSIM to the batch; whether ``ȳ`` is the true majority).
    callback: ``callback(stage, iteration, loss)`` every `log_every`
      iterations (iteration counts across stages).
    prior: a `diffusion.Prior`, a shipped prior name or a prior folder.
    steps: S, the DDIM chain length, in [1, T].
    iterations: total Adam iterations, split by `default_stages` when
      `stages` is None.
    stages: the time schedule ``((start, iterations), ...)``, chain indices
      strictly increasing from high noise (0 is ``z_T``).
    window: w in [1, S], the DDIM steps back-propagated through (None: the
      whole chain).
    lr: Adam learning rate on the latent.
    tv: total-variation weight α (0: none).
    distance: "cosine" (default) or "l2" (relative to the observed norm).
    num_representatives: k >= 1 representative images for the user.
    class_conditional: condition a class-conditional prior on ``ȳ`` (off by
      default: the null class, so the class must come from the gradient).
    guidance_scale: classifier-free guidance weight of the conditional
      chain (1: none; only with `class_conditional`); each UNet call then
      evaluates the conditional and null branches in one batch.
    num_candidates: draw this many starting latents, decode each with the
      unguided chain and start from the one whose output best matches the
      gradient (`select_start`; 1: the first draw, no selection).
    clip_x0: clip x̂₀ inside each DDIM step (as the prior's sampler).
    checkpoint: ``jax.checkpoint`` each UNet call in the window.
    matmul_conv: victim convolutions with matrix-product kernel derivatives.
    project_latent: after each Adam step, rescale the latent to the norm it
      had at the start of the stage (for z_T: ≈ √n, the Gaussian's shell),
      so the optimisation moves along the prior's typical set instead of
      drifting to latents the deterministic chain decodes into noise.
    loop: "fused" (one jit-compiled Adam step per iteration, the window's
      w + 1 UNet calls in one program) or "stepwise" (the same gradient
      from one compiled DDIM step, its vjp and the Tweedie objective, run
      w times each: compiles in a fraction of the time on CPU, where a
      fused program with several UNet calls takes minutes to compile).
      None: "stepwise" on the CPU backend, "fused" on accelerators.
    log_every: iterations between callbacks.

  Returns:
    A `UserLevelResult` with ``images [k, H, W, C]`` in the victim's space.

  Raises:
    ValueError: for a bad schedule, window, distance or hyper-parameter.
    TypeError: for an observation that is not a `GradientObservation`.
  """
  t_start = time.perf_counter()
  from jaxleak import diffusion  # pylint: disable=g-import-not-at-top
  from jaxleak import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  if not isinstance(observation, threat_model.GradientObservation):
    raise TypeError(f"{FN}: argument 'observation' must be a "
                    "GradientObservation (see observe), got "
                    f"{type(observation).__name__}")
  key = validate.canonical_key(key, FN)
  steps = validate.check_int(steps, "steps", fn=FN)
  iterations = validate.check_int(iterations, "iterations", fn=FN)
  k = validate.check_int(num_representatives, "num_representatives", fn=FN)
  num_candidates = validate.check_int(num_candidates, "num_candidates",
                                      fn=FN)
  log_every = validate.check_int(log_every, "log_every", fn=FN)
  window = (steps if window is None
            else validate.check_int(window, "window", fn=FN))
  validate.check_choice(distance, "distance", ("cosine", "l2"), fn=FN)
  if loop is None:
    loop = "stepwise" if jax.default_backend() == "cpu" else "fused"
  validate.check_choice(loop, "loop", LOOPS, fn=FN)
  validate.check_positive(lr, "lr", fn=FN)
  validate.check_positive(tv, "tv", fn=FN, allow_zero=True)
  prior = _load_prior(prior, FN)
  validate.check_in_range(steps, "steps", 1, prior.schedule.num_timesteps,
                          fn=FN)
  if window > steps:
    raise ValueError(f"{FN}: argument 'window' ({window}) must not exceed "
                     f"the chain length steps ({steps}); pass window=None "
                     "for the whole chain")
  stages = check_stages(default_stages(steps, iterations) if stages is None
                        else stages, steps)
  gt_images, gt_labels = None, None
  if ground_truth is not None:
    gt_images, gt_labels = (ground_truth if isinstance(ground_truth, tuple)
                            else (ground_truth, None))
    gt_images = np.asarray(gt_images, np.float32)
    if gt_images.shape != observation.batch_shape:
      raise ValueError(f"{FN}: argument 'ground_truth' must have the user "
                       f"batch's shape {observation.batch_shape}, got "
                       f"{gt_images.shape}")

  y, confidence, how = majority_label(observation)
  use_cond = bool(class_conditional and prior.conditional
                  and prior.num_classes == observation.num_classes)
  validate.check_finite_number(guidance_scale, "guidance_scale", fn=FN)
  cond = _condition(y, k, prior, guidance_scale) if use_cond else None
  problem = RepresentativeProblem(
      unet_apply=prior.apply_fn, victim_apply=observation.apply_fn,
      prior_shape=tuple(prior.image_shape),
      victim_shape=tuple(observation.image_shape), window=window,
      distance=distance, clip_x0=bool(clip_x0), checkpoint=bool(checkpoint),
      local_steps=observation.local_steps, local_lr=observation.local_lr,
      local_batch_size=observation.local_batch_size,
      matmul_conv=bool(matmul_conv),
      guidance_scale=float(guidance_scale) if use_cond else 1.0)
  ts = diffusion.ddim_timesteps(prior.schedule.num_timesteps, steps)
  padded = np.concatenate([ts, -np.ones(window + 1, np.int32)])
  consts = {"prior": prior.params, "victim": observation.params,
            "target": observation.gradient, "schedule": prior.schedule,
            "timesteps": jnp.asarray(padded, jnp.int32), "cond": cond,
            "label": jnp.asarray(y, jnp.int32),
            "tv": jnp.asarray(tv, jnp.float32)}

  ts_host = [jnp.asarray(v, jnp.int32) for v in padded]
  z = jax.random.normal(key, (k,) + tuple(prior.image_shape), jnp.float32)
  candidate_losses = None
  if num_candidates > 1:
    z, candidate_losses = select_start(problem, consts, z, num_candidates,
                                       jax.random.fold_in(key, 1), steps)
  z = run_chain(problem, consts, z, 0, stages[0][0])  # An optional z_t start.
  history, done, position = [], 0, stages[0][0]
  lr_arr = jnp.asarray(lr, jnp.float32)
  for j, (start, n) in enumerate(stages):
    z = run_chain(problem, consts, z, position, start)
    position = start
    opt_state = optax.scale_by_adam().init(z)
    start_arr = jnp.asarray(start, jnp.int32)
    # The latent stays on the sphere it started the stage on (its norm).
    radius = (jnp.sqrt(jnp.sum(jnp.square(z), axis=(1, 2, 3)))
              if project_latent else jnp.zeros((k,), jnp.float32))
    for _ in range(n):
      if loop == "fused":
        z, opt_state, loss = _adam_step(problem, consts, z, opt_state,
                                        start_arr, lr_arr, radius)
      else:
        loss, g = stepwise_value_and_grad(problem, consts, ts_host, z, start)
        z, opt_state = _adam_update(z, g, opt_state, lr_arr, radius)
      history.append(loss)
      done += 1
      if callback is not None and (done % log_every == 0
                                   or done == iterations):
        callback(j, done, float(loss))
  x0 = run_chain(problem, consts, z, position, steps)
  images = np.asarray(jnp.clip(_victim_images(x0, problem.victim_shape),
                               0.0, 1.0), np.float32)
  history = np.asarray(jnp.stack(history), np.float64)
  metrics = None
  if gt_images is not None:
    # SSIM of each representative to every image of the batch.
    ssim = np.asarray(metrics_lib.ssim(
        np.repeat(images, gt_images.shape[0], axis=0),
        np.tile(gt_images, (k, 1, 1, 1)),
        filter_size=min(11, *gt_images.shape[1:3]) // 2 * 2 - 1
        if min(gt_images.shape[1:3]) < 11 else 11))
    metrics = {"mean_ssim_to_batch": float(ssim.mean()),
               "max_ssim_to_batch": float(ssim.max())}
    if gt_labels is not None:
      counts = np.bincount(np.asarray(gt_labels), minlength=max(
          observation.num_classes, y + 1))
      metrics["majority_label_correct"] = bool(counts[y] == counts.max())
  hyper = {"prior": prior.name, "steps": steps, "window": window,
           "lr": float(lr), "tv": float(tv), "distance": distance,
           "num_representatives": k, "class_conditional": use_cond,
           "guidance_scale": float(guidance_scale) if use_cond else 1.0,
           "clip_x0": bool(clip_x0), "checkpoint": bool(checkpoint),
           "matmul_conv": bool(matmul_conv), "loop": loop,
           "project_latent": bool(project_latent),
           "num_candidates": num_candidates,
           "candidate_losses": candidate_losses,
           "label_strategy": how,
           "stages": [list(s) for s in stages]}
  return UserLevelResult(
      attack=FN, images=images, labels=np.full((k,), y, np.int32),
      loss_history=history, wall_time_s=time.perf_counter() - t_start,
      metrics=metrics, label_confidence=confidence,
      restart_losses=(float(history[-1]),), hyperparams=hyper,
      majority_label=y, stages=stages,
      stage_timesteps=tuple(int(ts[s]) for s, _ in stages))


registry.register_attack("user_level_diffusion", user_level_diffusion)
