"""Gradient-guided conditional diffusion attacks: DPS-style and DSG guidance.

An attacker who holds a pretrained pixel-space diffusion prior and a white-box
victim reconstructs the private images from a (noisy) shared gradient by
changing only the *sampling* process of the prior (Huang, Meng, Chen, Zheng,
Yang, Yi and Wang, "Gradient-Guided Conditional Diffusion Models for Private
Image Reconstruction", arXiv 2411.03053; Meng et al., arXiv 2511.10423). The
sampler starts from noise; at every reverse step ``t -> t'`` it computes

    ε̂ = ε_φ(x_t, t),   x̂₀ = (x_t - √(1-ᾱ_t) ε̂) / √ᾱ_t        (Tweedie)
    x'_{t'} = μ_t(x_t) + σ_t z                     (unguided DDIM/DDPM step)
    D(x_t) = ‖g̃ - A(img(x̂₀))‖₂ (/ ‖g̃‖ when relative),   G = ∇_{x_t} D

where ``A(x) = ∇_θ L(f_θ(x), y)`` is the victim's gradient operator
(`GradientObservation.operator`), so ``G`` is a gradient of a gradient taken
through the victim *and* back through the UNet. The two attacks differ in how
``G`` moves the sample:

* `diffusion_dps` (DPS, Chung et al. 2023, as in the DSG code's ``ps`` class):
  ``x_{t'} = x'_{t'} - ζ G``. Differentiating the norm rather than its square
  is the DPS paper's step ``ζ_t = ζ / ‖g̃ - A(x̂₀)‖`` on the squared distance.
* `diffusion_dsg` (spherical Gaussian constraint, Yang et al. ICML 2024, class
  ``DSG``): with ``r = √n σ_t`` (n = H·W·C per image),
  ``d* = -r G / ‖G‖``, ``d_s = σ_t z``, ``d = d_s + m_r (d* - d_s)`` and
  ``x_{t'} = μ_t + r d / ‖d‖``: the step stays on the Gaussian's shell around
  the unguided mean, tilted towards steepest descent by the guidance rate
  ``m_r`` (0.2 by default; optionally decaying linearly to 0).

Implementation choices (documented so results can be compared):

* **Radius.** ``radius="sample"`` (default) uses the realised noise norm
  ``r = ‖σ_t z‖`` per image, which concentrates at ``√n σ_t`` (relative
  deviation ≈ 1/√(2n): 2% at 32x32x1), so that ``m_r = 0`` is *exactly* the
  unguided sampler; ``radius="fixed"`` is DSG's literal ``√n σ_t``.
* **Samplers.** "ddim" is `diffusion.ddim_step` with stochasticity ``eta``
  (DSG needs ``eta > 0``: with ``σ_t = 0`` the shell has radius 0); "ddpm"
  is the ancestral step of the *respaced* schedule (the posterior
  ``q(x_{t'} | x_t, x̂₀)`` with ``ᾱ_t / ᾱ_{t'}`` in place of ``α_t``), which is
  DDPM's own step when all T timesteps are used.
* **Image bridge.** ``img(x̂₀) = (x̂₀ + 1) / 2`` (not clipped by default, so
  the guidance gradient reaches every pixel), resized with
  ``jax.image.resize`` (antialiased linear) when the victim's input size
  differs from the prior's (e.g. a 32x32 MNIST prior against a 28x28
  victim); a 1-channel prior feeds an RGB victim by repetition and vice
  versa by the channel mean. Reconstructions are returned in the victim's
  shape. The experiments use 32x32 victims, so no resizing happens there.
* **Labels.** The victim's labels come from the observation or label
  recovery (`labels.recover_labels`, strategy "auto"); a class-conditional
  prior with the victim's number of classes is conditioned on them
  (``class_conditional=True``), otherwise it samples unconditionally (its
  null class).
* **Loop.** ``loop="python"`` (default) runs one jitted step per sampling
  step (one compilation serves every step: timesteps, step index, params,
  the observed gradient and the guidance weights are all traced arguments);
  ``loop="scan"`` compiles the whole sampler as one ``lax.scan``. Measured
  with ``benchmarks/diffusion_attack_speed.py`` on 2 busy CPU cores (32x32
  MNIST prior, LeNet victim) the Python loop took 42 ms (DPS) and 28 ms
  (DSG) per step against 1.24 s and 0.48 s inside the scan (XLA:CPU runs
  the UNet's convolutions far slower inside a while loop); compilation took
  about a minute or more either way.

Both attacks return a `DiffusionInversionResult`: the shared
`InversionResult` plus the trajectory of x̂₀ (in the victim's image space)
across sampling steps.
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

from jaxleak._src import matmul_conv as matmul_conv_lib
from jaxleak._src import validate
from jaxleak.attacks.inversion import _compile
from jaxleak.attacks.inversion import labels as labels_lib
from jaxleak.attacks.inversion import objectives
from jaxleak.attacks.inversion import registry
from jaxleak.attacks.inversion import results
from jaxleak.attacks.inversion import threat_model

__all__ = (
    "DiffusionInversionResult",
    "GuidedSampler",
    "GUIDANCE_METHODS",
    "SAMPLERS",
    "RADII",
    "RATE_SCHEDULES",
    "make_sampler",
    "run_guided_sampler",
    "diffusion_dps",
    "diffusion_dsg",
)

Array = jax.Array

GUIDANCE_METHODS = ("none", "dps", "dsg")
SAMPLERS = ("ddim", "ddpm")
RADII = ("sample", "fixed")
RATE_SCHEDULES = ("constant", "linear")
LOOPS = ("python", "scan")


@dataclasses.dataclass(frozen=True, eq=False)
class DiffusionInversionResult(results.InversionResult):
  """An `InversionResult` plus the sampler's x̂₀ trajectory.

  Attributes:
    trajectory: ``[S, B, H, W, C]`` float32 in [0, 1]: the Tweedie estimate
      x̂₀ at each of the S sampling steps, in the victim's image space (what
      the victim's operator saw, clipped for display), or None.
    timesteps: ``[S]`` the diffusion timestep of each sampling step.
  """

  trajectory: np.ndarray | None = None
  timesteps: np.ndarray | None = None


# ----------------------------------------------------------------------------
# The guided sampler (static structure; arrays travel as `consts`).


def _resize_images(images: Array, shape: tuple[int, int, int]) -> Array:
  """[B, h, w, c] -> [B, *shape]: antialiased linear resize, channel bridge."""
  h, w, c = shape
  if images.shape[-1] != c:
    if images.shape[-1] == 1:
      images = jnp.repeat(images, c, axis=-1)
    elif c == 1:
      images = jnp.mean(images, axis=-1, keepdims=True)
    else:
      raise ValueError(
          f"diffusion attack: cannot map {images.shape[-1]} prior channels to "
          f"{c} victim channels")
  if images.shape[1:3] != (h, w):
    images = jax.image.resize(images, (images.shape[0], h, w, c), "linear",
                              antialias=True)
  return images


def _per_image_norm(x: Array) -> Array:
  """‖x_b‖₂ per image, shaped [B, 1, 1, 1] (broadcastable)."""
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim)),
                          keepdims=True))


def _safe_div(num: Array, den: Array) -> Array:
  ok = den > 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


@dataclasses.dataclass(frozen=True)
class GuidedSampler:
  """Static description of a gradient-guided sampler (hashable).

  Arrays (UNet and victim params, noise schedule, observed gradient, labels,
  guidance weights) are passed as ``consts`` to the compiled step, never
  closed over, so one program serves every image, noise level and weight.

  Attributes:
    method: "none" (unguided), "dps" or "dsg".
    unet_apply: ``eps = unet_apply(params, x_t, t, cond)`` (NHWC, [-1, 1]).
    victim_apply: ``logits = victim_apply(params, x)``.
    prior_shape: ``(R, R, C)`` of the prior's images.
    victim_shape: ``(H, W, C)`` of the victim's inputs.
    sampler: "ddim" or "ddpm" (respaced ancestral).
    eta: DDIM stochasticity (ignored by "ddpm").
    clip_x0: clip x̂₀ to [-1, 1] inside the unguided transition.
    clip_guidance: clip x̂₀ before the victim sees it (zeroes the guidance
      gradient of saturated pixels).
    distance: "l2" (the norm ‖g̃ - A‖, not squared) or "cosine".
    relative: divide the L2 distance by ‖g̃‖ (a rescaled ζ; makes one ζ
      usable across victims whose gradients differ in scale).
    radius: "sample" or "fixed" (see the module docstring).
    rate_schedule: "constant" or "linear" (m_r decays linearly to 0).
    num_steps: sampling steps S (for the rate schedule).
    local_steps, local_lr, local_batch_size: the victim's protocol (see
      `objectives.local_update_gradient`).
    matmul_conv: victim convolutions with matrix-product kernel derivatives.
  """

  method: str
  unet_apply: Callable[..., Array]
  victim_apply: Callable[..., Array]
  prior_shape: tuple[int, int, int]
  victim_shape: tuple[int, int, int]
  sampler: str = "ddim"
  eta: float = 0.0
  clip_x0: bool = True
  clip_guidance: bool = False
  distance: str = "l2"
  relative: bool = True
  radius: str = "sample"
  rate_schedule: str = "constant"
  num_steps: int = 50
  local_steps: int = 1
  local_lr: float = 1e-3
  local_batch_size: int | None = None
  matmul_conv: bool = True

  # -- pieces -----------------------------------------------------------

  def victim_images(self, x0: Array) -> Array:
    """Diffusion space [-1, 1] -> the victim's [0, 1] input space."""
    img = (x0 + 1.0) * 0.5
    if self.clip_guidance:
      img = jnp.clip(img, 0.0, 1.0)
    if tuple(img.shape[1:]) != tuple(self.victim_shape):
      img = _resize_images(img, self.victim_shape)
    return img

  def measure(self, victim_params: Any, images: Array, labels: Array,
              target: Any) -> Array:
    """``D(g̃, A(images))``: the guidance loss."""
    with (matmul_conv_lib.intercept() if self.matmul_conv
          else contextlib.nullcontext()):
      grads = objectives.local_update_gradient(
          self.victim_apply, victim_params, images, labels,
          local_steps=self.local_steps, local_lr=self.local_lr,
          local_batch_size=self.local_batch_size)
    if self.distance == "cosine":
      return objectives.cosine_distance(grads, target)
    d = objectives.l2_distance(grads, target, squared=False)
    if self.relative:
      d = d / jnp.sqrt(jnp.maximum(objectives.tree_sq_norm(target), 1e-30))
    return d

  def transition(self, schedule: Any, x_t: Array, t: Array, t_prev: Array,
                 eps: Array, noise: Array):
    """The unguided step: `diffusion.StepOutput` (x_prev, mean, std, x0)."""
    from jaxleak import diffusion  # pylint: disable=g-import-not-at-top
    if self.sampler == "ddim":
      stochastic = self.eta != 0
      return diffusion.ddim_step(schedule, x_t, t, t_prev, eps, eta=self.eta,
                                 noise=noise if stochastic else None,
                                 clip_x0=self.clip_x0)
    # Ancestral DDPM step of the respaced schedule: the posterior
    # q(x_{t'} | x_t, x0) with alpha' = ab_t / ab_{t'} (DDPM when t' = t-1).
    ab_t = diffusion.alpha_bar(schedule, t)
    ab_prev = diffusion.alpha_bar(schedule, t_prev)
    alpha = ab_t / ab_prev
    beta = 1.0 - alpha
    x0 = diffusion.x0_hat(schedule, x_t, t, eps, clip=self.clip_x0)
    c0 = jnp.sqrt(ab_prev) * beta / (1.0 - ab_t)
    ct = jnp.sqrt(alpha) * (1.0 - ab_prev) / (1.0 - ab_t)
    var = (1.0 - ab_prev) / (1.0 - ab_t) * beta
    std = jnp.where(t_prev >= 0, jnp.sqrt(jnp.maximum(var, 1e-20)), 0.0)
    mean = c0 * x0 + ct * x_t
    return diffusion.StepOutput(mean + std * noise, mean, std, x0)

  def rate(self, hp: dict[str, Array], i: Array) -> Array:
    if self.rate_schedule == "constant":
      return hp["rate"]
    frac = i.astype(jnp.float32) / max(self.num_steps - 1, 1)
    return hp["rate"] * (1.0 - frac)

  # -- one reverse step ----------------------------------------------------

  def step(self, consts: dict[str, Any], x_t: Array, t: Array, t_prev: Array,
           i: Array, key: Array) -> tuple[Array, Array, Array]:
    """x_t -> (x_{t'}, victim-space x̂₀, D) for sampling step i."""
    from jaxleak import diffusion  # pylint: disable=g-import-not-at-top
    schedule, hp = consts["schedule"], consts["hp"]
    noise = jax.random.normal(key, x_t.shape, x_t.dtype)

    def forward(x):
      eps = self.unet_apply(consts["prior"], x, t, consts["cond"])
      out = self.transition(schedule, x, t, t_prev, eps, noise)
      x0 = diffusion.x0_hat(schedule, x, t, eps, clip=False)
      img = self.victim_images(x0)
      d = self.measure(consts["victim"], img, consts["labels"],
                       consts["target"])
      return d, (out, img)

    if self.method == "none":
      d, (out, img) = forward(x_t)
      return out.x_prev, img, d
    (d, (out, img)), g = jax.value_and_grad(forward, has_aux=True)(x_t)
    if self.method == "dps":
      return out.x_prev - hp["zeta"] * g, img, d
    # DSG: the step on the sphere of radius r around the unguided mean.
    std = jnp.broadcast_to(out.std, x_t.shape)
    d_sample = std * noise
    if self.radius == "sample":
      r = _per_image_norm(d_sample)
    else:
      n = float(np.prod(x_t.shape[1:]))
      r = np.sqrt(n) * std[:, :1, :1, :1]  # √n σ_t per image
    d_star = -r * _safe_div(g, _per_image_norm(g))
    m = self.rate(hp, i)
    d_mix = d_sample + m * (d_star - d_sample)
    x_prev = out.mean + d_mix * _safe_div(r, _per_image_norm(d_mix))
    return x_prev, img, d


def make_sampler(method: str, prior: Any,
                 observation: threat_model.GradientObservation,
                 **static: Any) -> GuidedSampler:
  """A `GuidedSampler` for `prior` against `observation`'s victim."""
  return GuidedSampler(
      method=method, unet_apply=prior.apply_fn, victim_apply=observation.apply_fn,
      prior_shape=tuple(prior.image_shape),
      victim_shape=tuple(observation.image_shape),
      local_steps=observation.local_steps, local_lr=observation.local_lr,
      local_batch_size=observation.local_batch_size, **static)


@_compile.jit(static_argnums=0)
def _step_jit(sampler, consts, x, t, t_prev, i, key):
  return sampler.step(consts, x, t, t_prev, i, key)


@_compile.jit(static_argnums=0)
def _scan_jit(sampler, consts, x_T, ts, t_prevs, keys):
  def body(x, inputs):
    i, t, tp, k = inputs
    x_prev, img, d = sampler.step(consts, x, t, tp, i, k)
    return x_prev, (img, d)

  idx = jnp.arange(ts.shape[0], dtype=jnp.int32)
  return jax.lax.scan(body, x_T, (idx, ts, t_prevs, keys))


def run_guided_sampler(sampler: GuidedSampler, consts: dict[str, Any],
                       key: Array, *, timesteps: Any, loop: str = "python",
                       log_every: int = 10,
                       callback: Callable[[int, int, float], None] | None = None
                       ) -> tuple[Array, Array, Array]:
  """Runs the guided sampler from fresh noise.

  Keys follow `diffusion.sample_loop`: ``x_T ~ N(0, I)`` from the first half
  of ``split(key)``, and the second half split into one key per step, so
  the unguided sampler (``method="none"``, DPS with ζ = 0, DSG with m_r = 0)
  reproduces ``sample_loop(ddim_step_fn(...), x_T, timesteps, key2)``.

  Returns:
    ``(x_0, trajectory [S, B, H, W, C], distances [S])``: the final sample in
    diffusion space, the victim-space x̂₀ and the guidance loss per step.
  """
  k_init, k_steps = jax.random.split(key)
  batch = consts["labels"].shape[0]
  x = jax.random.normal(k_init, (batch,) + tuple(sampler.prior_shape),
                        jnp.float32)
  ts = jnp.asarray(timesteps, jnp.int32)
  t_prevs = jnp.concatenate([ts[1:], jnp.array([-1], jnp.int32)])
  keys = jax.random.split(k_steps, ts.shape[0])
  if loop == "scan":
    x, (traj, ds) = _scan_jit(sampler, consts, x, ts, t_prevs, keys)
    if callback is not None:
      callback(0, int(ts.shape[0]), float(ds[-1]))
    return x, traj, ds
  imgs, ds = [], []
  s = int(ts.shape[0])
  for i in range(s):
    x, img, d = _step_jit(sampler, consts, x, ts[i], t_prevs[i],
                          jnp.asarray(i, jnp.int32), keys[i])
    imgs.append(img)
    ds.append(d)
    if callback is not None and ((i + 1) % log_every == 0 or i + 1 == s):
      callback(0, i + 1, float(d))
  return x, jnp.stack(imgs), jnp.stack(ds)


# ----------------------------------------------------------------------------
# The attacks.


def _load_prior(prior: Any, fn: str):
  from jaxleak import diffusion  # pylint: disable=g-import-not-at-top
  if isinstance(prior, diffusion.Prior):
    return prior
  if prior is None:
    raise ValueError(f"{fn}: argument 'prior' is required (a Prior, a shipped "
                     "prior name such as 'mnist', or a prior folder)")
  return diffusion.load_prior(prior)


def _guided_attack(fn: str, method: str,
                   observation: threat_model.GradientObservation, *,
                   key: Any, ground_truth: Any, callback: Any, prior: Any,
                   steps: int, sampler: str, eta: float, distance: str,
                   relative: bool, class_conditional: bool,
                   label_strategy: str, clip_x0: bool, clip_guidance: bool,
                   radius: str, rate_schedule: str, matmul_conv: bool,
                   loop: str, log_every: int, return_trajectory: bool,
                   hp: dict[str, float], extra: dict[str, Any]
                   ) -> DiffusionInversionResult:
  t0 = time.perf_counter()
  from jaxleak import diffusion  # pylint: disable=g-import-not-at-top
  from jaxleak.attacks.inversion import attacks as attacks_lib  # pylint: disable=g-import-not-at-top
  attacks_lib._check_observation(observation, fn)  # pylint: disable=protected-access
  key = threat_model.canonical_key(key, fn)
  prior = _load_prior(prior, fn)
  steps = validate.check_int(steps, "steps", fn=fn)
  log_every = validate.check_int(log_every, "log_every", fn=fn)
  validate.check_in_range(steps, "steps", 1, prior.schedule.num_timesteps,
                          fn=fn)
  validate.check_choice(sampler, "sampler", SAMPLERS, fn=fn)
  validate.check_choice(distance, "distance", tuple(objectives.DISTANCES),
                        fn=fn)
  validate.check_choice(radius, "radius", RADII, fn=fn)
  validate.check_choice(rate_schedule, "rate_schedule", RATE_SCHEDULES, fn=fn)
  validate.check_choice(loop, "loop", LOOPS, fn=fn)
  validate.check_positive(eta, "eta", fn=fn, allow_zero=True)
  gt_images, gt_labels = attacks_lib._split_ground_truth(  # pylint: disable=protected-access
      ground_truth, observation, fn)
  rec = labels_lib.recover_labels(observation, label_strategy)
  labels = jnp.asarray(rec.labels, jnp.int32)
  cond = None
  use_cond = (class_conditional and prior.conditional
              and prior.num_classes == observation.num_classes)
  if use_cond:
    cond = labels
  guided = make_sampler(
      method, prior, observation, sampler=sampler, eta=float(eta),
      clip_x0=bool(clip_x0), clip_guidance=bool(clip_guidance),
      distance=distance, relative=bool(relative), radius=radius,
      rate_schedule=rate_schedule, num_steps=steps,
      matmul_conv=bool(matmul_conv))
  consts = {"prior": prior.params, "victim": observation.params,
            "target": observation.gradient, "labels": labels, "cond": cond,
            "schedule": prior.schedule,
            "hp": {k: jnp.asarray(v, jnp.float32) for k, v in hp.items()}}
  # Evenly spaced from T-1 to 0 for both samplers (DDPM on the respaced
  # schedule).
  ts = diffusion.ddim_timesteps(prior.schedule.num_timesteps, steps)
  x0, traj, ds = run_guided_sampler(guided, consts, key, timesteps=ts,
                                    loop=loop, log_every=log_every,
                                    callback=callback)
  images = np.asarray(jnp.clip(guided.victim_images(x0), 0.0, 1.0),
                      np.float32)
  history = np.asarray(ds, np.float64)
  wall = time.perf_counter() - t0
  metrics = None
  if gt_images is not None:
    metrics = results.evaluate(images, np.asarray(rec.labels), gt_images,
                               gt_labels)
  hyper = dict(prior=prior.name, prior_resolution=prior.resolution,
               steps=steps, sampler=sampler, eta=float(eta),
               distance=distance, relative=bool(relative),
               class_conditional=bool(use_cond), label_strategy=rec.strategy,
               clip_x0=bool(clip_x0), clip_guidance=bool(clip_guidance),
               loop=loop, matmul_conv=bool(matmul_conv), **extra)
  if method == "dsg":
    hyper.update(radius=radius, rate_schedule=rate_schedule)
  return DiffusionInversionResult(
      attack=fn, images=images, labels=np.asarray(rec.labels, np.int32),
      loss_history=history, wall_time_s=wall, metrics=metrics,
      label_confidence=rec.confidence,
      restart_losses=(float(history[-1]),), hyperparams=hyper,
      trajectory=(np.clip(np.asarray(traj, np.float32), 0.0, 1.0)
                  if return_trajectory else None),
      timesteps=np.asarray(ts, np.int32))


def diffusion_dps(
    observation: threat_model.GradientObservation, *, key: Any,
    ground_truth: Any = None, callback: Any = None, prior: Any = "mnist",
    steps: int = 100, zeta: float = 1.0, sampler: str = "ddim",
    eta: float = 0.0, distance: str = "l2", relative: bool = True,
    class_conditional: bool = True, label_strategy: str = "auto",
    clip_x0: bool = True, clip_guidance: bool = False,
    matmul_conv: bool = True, loop: str = "python", log_every: int = 10,
    return_trajectory: bool = True) -> DiffusionInversionResult:
  """DPS-style gradient-guided diffusion attack.

  Every reverse step takes the prior's unguided step and subtracts
  ``ζ ∇_{x_t} D(g̃, A(x̂₀(x_t)))`` (gradient of the victim's gradient, back
  through the UNet): ``x_{t'} = x'_{t'} - ζ G``.

  Args:
    observation: the attacker's view (`observe`).
    key: PRNG key or int seed (starting noise and step noise).
    ground_truth: private images, or ``(images, labels)``, for metrics only.
    callback: ``callback(0, step, D)`` every `log_every` steps.
    prior: a `diffusion.Prior`, a shipped prior name ("mnist") or a folder.
    steps: sampling steps S (evenly spaced timesteps from T-1 to 0).
    zeta: the guidance step size ζ (in diffusion-space units per unit of
      the (relative) distance).
    sampler: "ddim" or "ddpm".
    eta: DDIM stochasticity (0: deterministic DDIM).
    distance: "l2" (``‖g̃ - A‖``) or "cosine".
    relative: divide the L2 distance by ``‖g̃‖``.
    class_conditional: condition a class-conditional prior on the labels.
    label_strategy: "auto", "known", "idlg", "analytic" or "yin".
    clip_x0: clip x̂₀ in the unguided step.
    clip_guidance: clip x̂₀ before the victim sees it.
    matmul_conv: victim convolutions with matrix-product kernel derivatives.
    loop: "python" (a jitted step per sampling step) or "scan".
    log_every: steps between callbacks.
    return_trajectory: keep the x̂₀ trajectory in the result.

  Returns:
    A `DiffusionInversionResult`; ``loss_history`` is D at every step.
  """
  validate.check_positive(zeta, "zeta", fn="diffusion_dps", allow_zero=True)
  return _guided_attack(
      "diffusion_dps", "dps", observation, key=key, ground_truth=ground_truth,
      callback=callback, prior=prior, steps=steps, sampler=sampler, eta=eta,
      distance=distance, relative=relative,
      class_conditional=class_conditional, label_strategy=label_strategy,
      clip_x0=clip_x0, clip_guidance=clip_guidance, radius="sample",
      rate_schedule="constant", matmul_conv=matmul_conv, loop=loop,
      log_every=log_every, return_trajectory=return_trajectory,
      hp={"zeta": float(zeta), "rate": 0.0}, extra={"zeta": float(zeta)})


def diffusion_dsg(
    observation: threat_model.GradientObservation, *, key: Any,
    ground_truth: Any = None, callback: Any = None, prior: Any = "mnist",
    steps: int = 100, guidance_rate: float = 0.2,
    rate_schedule: str = "constant", radius: str = "sample",
    sampler: str = "ddim", eta: float = 1.0, distance: str = "l2",
    relative: bool = True, class_conditional: bool = True,
    label_strategy: str = "auto", clip_x0: bool = True,
    clip_guidance: bool = False, matmul_conv: bool = True,
    loop: str = "python", log_every: int = 10,
    return_trajectory: bool = True) -> DiffusionInversionResult:
  """Spherical-Gaussian-constrained (DSG) gradient-guided diffusion attack.

  Each step moves to ``μ_t + r d / ‖d‖`` with ``d = d_s + m_r (d* - d_s)``,
  the unguided random step ``d_s = σ_t z`` tilted towards the steepest
  descent direction ``d* = -r G / ‖G‖`` of the gradient distance.

  Args:
    observation: the attacker's view.
    key: PRNG key or int seed.
    ground_truth: private images, or ``(images, labels)``, for metrics only.
    callback: ``callback(0, step, D)`` every `log_every` steps.
    prior: a `diffusion.Prior`, a shipped prior name or a folder.
    steps: sampling steps S.
    guidance_rate: m_r in [0, 1] (0.2 as the paper; 0 = unguided).
    rate_schedule: "constant" or "linear" (m_r decays linearly to 0 at the
      last step: less guidance late in denoising).
    radius: "sample" (the realised ``‖σ_t z‖``; m_r = 0 is then exactly
      unguided sampling) or "fixed" (``√n σ_t``, DSG's rule).
    sampler: "ddim" (needs ``eta > 0``) or "ddpm".
    eta: DDIM stochasticity (1 by default: the shell needs σ_t > 0).
    distance: "l2" or "cosine".
    relative: divide the L2 distance by ``‖g̃‖`` (the direction d* does not
      depend on the scale; kept for a comparable loss history).
    class_conditional: condition a class-conditional prior on the labels.
    label_strategy: "auto", "known", "idlg", "analytic" or "yin".
    clip_x0: clip x̂₀ in the unguided step.
    clip_guidance: clip x̂₀ before the victim sees it.
    matmul_conv: victim convolutions with matrix-product kernel derivatives.
    loop: "python" or "scan".
    log_every: steps between callbacks.
    return_trajectory: keep the x̂₀ trajectory in the result.

  Returns:
    A `DiffusionInversionResult`.

  Raises:
    ValueError: for ``sampler="ddim"`` with ``eta=0`` (no noise, no shell) or
      a guidance rate outside [0, 1].
  """
  fn = "diffusion_dsg"
  validate.check_in_range(guidance_rate, "guidance_rate", 0.0, 1.0, fn=fn)
  if sampler == "ddim" and eta == 0:
    raise ValueError(f"{fn}: argument 'eta' must be > 0 with the DDIM sampler "
                     "(DSG steps on the sphere of radius sqrt(n) sigma_t, "
                     "which is 0 for deterministic DDIM); or use "
                     "sampler='ddpm'")
  return _guided_attack(
      fn, "dsg", observation, key=key, ground_truth=ground_truth,
      callback=callback, prior=prior, steps=steps, sampler=sampler, eta=eta,
      distance=distance, relative=relative,
      class_conditional=class_conditional, label_strategy=label_strategy,
      clip_x0=clip_x0, clip_guidance=clip_guidance, radius=radius,
      rate_schedule=rate_schedule, matmul_conv=matmul_conv, loop=loop,
      log_every=log_every, return_trajectory=return_trajectory,
      hp={"zeta": 0.0, "rate": float(guidance_rate)},
      extra={"guidance_rate": float(guidance_rate)})


registry.register_attack("diffusion_dps", diffusion_dps)
registry.register_attack("diffusion_dsg", diffusion_dsg)
