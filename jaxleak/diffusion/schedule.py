"""Noise schedules and the per-step DDPM/DDIM maths, as pure jax functions.

Notation (Ho et al. 2020; Song et al. 2021): timesteps t = 0 .. T-1,
``beta_t`` the noise added at step t, ``alpha_t = 1 - beta_t`` and
``alpha_bar_t = prod_{s <= t} alpha_s``. The forward process is

  x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,  eps ~ N(0, I),

and a noise-prediction network eps_hat = eps_theta(x_t, t) gives the Tweedie
(posterior-mean) estimate

  x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t).

Timestep -1 denotes the clean image: ``alpha_bar_{-1} = 1``. Every function
takes the schedule explicitly, works on any array shape (per-example
timesteps broadcast over the trailing image axes), and runs under `jit`,
`grad`, `vmap` and inside `lax.scan`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxleak._src import validate

__all__ = (
    "NoiseSchedule",
    "StepOutput",
    "linear_schedule",
    "cosine_schedule",
    "make_schedule",
    "SCHEDULES",
    "alpha_bar",
    "add_noise",
    "x0_hat",
    "eps_from_x0",
    "ddpm_posterior",
    "ddpm_step",
    "ddim_step",
    "ddim_timesteps",
)

SCHEDULES = ("linear", "cosine")


class NoiseSchedule(NamedTuple):
  """A discrete diffusion noise schedule (float32 arrays of length T).

  Attributes:
    betas: per-step noise variances beta_t.
    alphas: 1 - betas.
    alpha_bars: cumulative products of alphas.
  """

  betas: jax.Array
  alphas: jax.Array
  alpha_bars: jax.Array

  @property
  def num_timesteps(self) -> int:
    return int(self.betas.shape[0])


class StepOutput(NamedTuple):
  """One reverse step: the next sample and the quantities guidance needs.

  Attributes:
    x_prev: the sample at the earlier timestep (mean + std * noise).
    mean: the mean of p(x_prev | x_t) (DDPM) or the deterministic DDIM part.
    std: the standard deviation of the injected noise (broadcastable).
    x0_hat: the (optionally clipped) Tweedie estimate of x_0 used.
  """

  x_prev: jax.Array
  mean: jax.Array
  std: jax.Array
  x0_hat: jax.Array


def _from_betas(betas: np.ndarray) -> NoiseSchedule:
  # Betas are stored in float32; derive everything from those stored values
  # so that a schedule rebuilt from saved betas is bit-identical.
  betas = np.asarray(betas, np.float32).astype(np.float64)
  alphas = 1.0 - betas
  # Cumulative product in float64, stored in float32: less drift at large T.
  alpha_bars = np.cumprod(alphas)
  return NoiseSchedule(jnp.asarray(betas, jnp.float32),
                       jnp.asarray(alphas, jnp.float32),
                       jnp.asarray(alpha_bars, jnp.float32))


def _check_t(num_timesteps: int, fn: str) -> int:
  if isinstance(num_timesteps, bool) or not isinstance(
      num_timesteps, (int, np.integer)):
    raise TypeError(
        f"{fn}: argument 'num_timesteps' must be an int, got {num_timesteps!r}")
  validate.check_in_range(num_timesteps, "num_timesteps", 2, 100_000, fn=fn)
  return int(num_timesteps)


def linear_schedule(num_timesteps: int = 1000, beta_start: float = 1e-4,
                    beta_end: float = 0.02) -> NoiseSchedule:
  """DDPM's linear beta schedule (diffusers' "linear").

  Args:
    num_timesteps: T.
    beta_start: beta_0, in (0, 1).
    beta_end: beta_{T-1}, in [beta_start, 1).

  Returns:
    The schedule.
  """
  fn = "linear_schedule"
  num_timesteps = _check_t(num_timesteps, fn)
  validate.check_in_range(beta_start, "beta_start", 0.0, 1.0, fn=fn,
                          inclusive=(False, False))
  validate.check_in_range(beta_end, "beta_end", beta_start, 1.0, fn=fn,
                          inclusive=(True, False))
  return _from_betas(np.linspace(beta_start, beta_end, num_timesteps))


def cosine_schedule(num_timesteps: int = 1000, s: float = 0.008,
                    max_beta: float = 0.999) -> NoiseSchedule:
  """Nichol & Dhariwal's cosine schedule (diffusers' "squaredcos_cap_v2").

  alpha_bar(u) = cos((u + s) / (1 + s) * pi / 2)^2 for u = t / T, with
  beta_t = min(1 - alpha_bar(t+1) / alpha_bar(t), max_beta).
  """
  fn = "cosine_schedule"
  num_timesteps = _check_t(num_timesteps, fn)
  validate.check_positive(s, "s", fn=fn)
  validate.check_in_range(max_beta, "max_beta", 0.0, 1.0, fn=fn,
                          inclusive=(False, False))
  f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
  betas = [min(1 - f((i + 1) / num_timesteps) / f(i / num_timesteps), max_beta)
           for i in range(num_timesteps)]
  return _from_betas(np.asarray(betas))


def make_schedule(kind: str = "linear", num_timesteps: int = 1000
                  ) -> NoiseSchedule:
  """Builds a named schedule ("linear" or "cosine") with default constants."""
  validate.check_choice(kind, "kind", SCHEDULES, fn="make_schedule")
  if kind == "linear":
    return linear_schedule(num_timesteps)
  return cosine_schedule(num_timesteps)


def _bcast(v: jax.Array, like: jax.Array) -> jax.Array:
  """Reshapes per-example values [B] (or a scalar) to broadcast over `like`."""
  v = jnp.asarray(v)
  if v.ndim == 0:
    return v
  return v.reshape(v.shape + (1,) * (jnp.ndim(like) - v.ndim))


def _take(table: jax.Array, idx: jax.Array) -> jax.Array:
  """table[idx]; keeps the batch sharding of explicitly sharded indices."""
  try:
    sharding = jax.typeof(idx).sharding
    sharded = any(a is not None for a in sharding.spec)
  except (AttributeError, TypeError):
    sharded = False
  if sharded:
    # Explicit-sharding mode needs the gather's output sharding spelled out.
    return table.at[idx].get(out_sharding=sharding)
  return table[idx]


def _index(schedule: NoiseSchedule, t: jax.Array) -> jax.Array:
  return jnp.clip(t, 0, schedule.betas.shape[0] - 1).astype(jnp.int32)


def alpha_bar(schedule: NoiseSchedule, t: jax.Array) -> jax.Array:
  """alpha_bar_t, with alpha_bar_{-1} = 1 for the clean image (t = -1)."""
  t = jnp.asarray(t)
  return jnp.where(t < 0, 1.0, _take(schedule.alpha_bars, _index(schedule, t)))


def add_noise(schedule: NoiseSchedule, x0: jax.Array, t: jax.Array,
              noise: jax.Array) -> jax.Array:
  """Samples the forward process: sqrt(ab_t) x0 + sqrt(1 - ab_t) noise."""
  ab = _bcast(alpha_bar(schedule, t), x0)
  return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * noise


def x0_hat(schedule: NoiseSchedule, x_t: jax.Array, t: jax.Array,
           eps: jax.Array, clip: bool = False) -> jax.Array:
  """Tweedie estimate of x_0 from x_t and predicted noise eps.

  Args:
    schedule: the noise schedule.
    x_t: noisy images (any shape with batch first).
    t: timestep, a scalar or one per example.
    eps: the predicted noise, shaped like x_t.
    clip: clip the estimate to the data range [-1, 1]. Clipping zeroes the
      gradient outside the range; guidance usually wants clip=False.

  Returns:
    (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t), shaped like x_t.
  """
  ab = _bcast(alpha_bar(schedule, t), x_t)
  x0 = (x_t - jnp.sqrt(1.0 - ab) * eps) / jnp.sqrt(ab)
  return jnp.clip(x0, -1.0, 1.0) if clip else x0


def eps_from_x0(schedule: NoiseSchedule, x_t: jax.Array, t: jax.Array,
                x0: jax.Array) -> jax.Array:
  """The noise consistent with x_t and x0: (x_t - sqrt(ab_t) x0) / sqrt(1-ab_t)."""
  ab = _bcast(alpha_bar(schedule, t), x_t)
  return (x_t - jnp.sqrt(ab) * x0) / jnp.sqrt(1.0 - ab)


def ddpm_posterior(schedule: NoiseSchedule, x_t: jax.Array, t: jax.Array,
                   x0: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and std of q(x_{t-1} | x_t, x_0) (DDPM eq. 7, "fixed_small").

  mean = sqrt(ab_{t-1}) beta_t / (1 - ab_t) x0
         + sqrt(alpha_t) (1 - ab_{t-1}) / (1 - ab_t) x_t,
  var  = (1 - ab_{t-1}) / (1 - ab_t) beta_t   (0 at t = 0).
  """
  t = jnp.asarray(t)
  idx = _index(schedule, t)
  ab_t = _bcast(alpha_bar(schedule, t), x_t)
  ab_prev = _bcast(alpha_bar(schedule, t - 1), x_t)
  beta_t = _bcast(_take(schedule.betas, idx), x_t)
  alpha_t = _bcast(_take(schedule.alphas, idx), x_t)
  c0 = jnp.sqrt(ab_prev) * beta_t / (1.0 - ab_t)
  ct = jnp.sqrt(alpha_t) * (1.0 - ab_prev) / (1.0 - ab_t)
  var = (1.0 - ab_prev) / (1.0 - ab_t) * beta_t
  # Same floor diffusers uses, without its removed jnp.clip(a_min=...) call.
  std = jnp.sqrt(jnp.maximum(var, 1e-20))
  std = jnp.where(_bcast(t, x_t) > 0, std, 0.0)
  return c0 * x0 + ct * x_t, std


def ddpm_step(schedule: NoiseSchedule, x_t: jax.Array, t: jax.Array,
              eps: jax.Array, noise: jax.Array | None = None,
              clip_x0: bool = True) -> StepOutput:
  """One ancestral DDPM step x_t -> x_{t-1}.

  Args:
    schedule: the noise schedule.
    x_t: current samples.
    t: current timestep (scalar or per example); no noise is added at t = 0.
    eps: predicted noise at (x_t, t).
    noise: standard normal noise shaped like x_t; None means zero noise
      (returns the posterior mean).
    clip_x0: clip the Tweedie estimate to [-1, 1] before forming the mean
      (diffusers' `clip_sample=True`).

  Returns:
    `StepOutput(x_prev, mean, std, x0_hat)`.
  """
  x0 = x0_hat(schedule, x_t, t, eps, clip=clip_x0)
  mean, std = ddpm_posterior(schedule, x_t, t, x0)
  x_prev = mean if noise is None else mean + std * noise
  return StepOutput(x_prev, mean, std, x0)


def ddim_step(schedule: NoiseSchedule, x_t: jax.Array, t: jax.Array,
              t_prev: jax.Array, eps: jax.Array, eta: float = 0.0,
              noise: jax.Array | None = None, clip_x0: bool = False
              ) -> StepOutput:
  """One DDIM step x_t -> x_{t_prev} (Song et al. 2021, eq. 12).

  x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps + sigma z,
  sigma = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev).

  With eta = 0 the step is deterministic (no noise is used), so a sampler
  built from it is a fixed map from x_T to x_0 that can be differentiated
  end to end. `t_prev = -1` steps to the clean image (ab = 1).

  Args:
    schedule: the noise schedule.
    x_t: current samples.
    t: current timestep (scalar or per example).
    t_prev: the earlier timestep to step to (t_prev < t), or -1.
    eps: predicted noise at (x_t, t).
    eta: 0 for DDIM, 1 for DDPM-like stochasticity.
    noise: standard normal noise; required when eta > 0.
    clip_x0: clip the Tweedie estimate to [-1, 1]; eps is then recomputed
      from the clipped estimate so the step stays consistent.

  Returns:
    `StepOutput(x_prev, mean, std, x0_hat)` where mean is x_prev without
    the noise term.
  """
  ab_t = _bcast(alpha_bar(schedule, t), x_t)
  ab_prev = _bcast(alpha_bar(schedule, t_prev), x_t)
  x0 = x0_hat(schedule, x_t, t, eps, clip=clip_x0)
  if clip_x0:
    eps = (x_t - jnp.sqrt(ab_t) * x0) / jnp.sqrt(1.0 - ab_t)
  sigma = eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab_t)) * jnp.sqrt(
      jnp.maximum(1.0 - ab_t / ab_prev, 0.0))
  direction = jnp.sqrt(jnp.maximum(1.0 - ab_prev - sigma ** 2, 0.0)) * eps
  mean = jnp.sqrt(ab_prev) * x0 + direction
  if noise is None:
    if not isinstance(eta, (int, float)) or eta != 0:
      raise ValueError("ddim_step: argument 'noise' is required when eta > 0")
    x_prev = mean
  else:
    x_prev = mean + sigma * noise
  return StepOutput(x_prev, mean, sigma, x0)


def ddim_timesteps(num_train_timesteps: int, num_steps: int) -> np.ndarray:
  """Evenly spaced descending timesteps for a `num_steps`-step sampler.

  The first step starts from the last training timestep T-1 (pure noise) and
  the last one is t = 0 ("trailing" spacing, which is better than diffusers'
  default "leading" spacing at few steps); pair each with the next entry, and
  the last with -1, to get (t, t_prev).

  Args:
    num_train_timesteps: T of the schedule.
    num_steps: number of sampling steps, in [1, T].

  Returns:
    int32 array [num_steps], strictly decreasing from T-1 to 0 (a single
    step uses just T-1).
  """
  fn = "ddim_timesteps"
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
    raise TypeError(f"{fn}: argument 'num_steps' must be an int, got {num_steps!r}")
  validate.check_in_range(num_steps, "num_steps", 1, num_train_timesteps, fn=fn)
  if num_steps == 1:
    return np.asarray([num_train_timesteps - 1], np.int32)
  ts = np.round(np.linspace(num_train_timesteps - 1, 0, num_steps))
  return ts.astype(np.int32)
